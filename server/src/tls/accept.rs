//! The TLS accept loop, and admission: how many connections and handshakes
//! an outsider can make us hold.
//!
//! TCP accepts happen in one task. A new connection is admitted only while
//! there is room under three caps ([`Admission`]): open connections, TLS
//! handshakes in progress, and handshakes in progress from its IP address;
//! otherwise it is closed at once (never queued) and counted. Each handshake
//! runs in its own task under a timeout, so a slow or stalled client neither
//! blocks other handshakes nor holds a slot for long. Finished connections
//! are handed to tonic through a channel, carrying their [`ConnInfo`] and
//! their connection slot, which is freed when tonic drops the connection.
//!
//! A refused connection is not simply dropped: the server stops writing and
//! reads for a moment ([`linger`]), so the client reads why it was refused
//! instead of a reset.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::ServerTls;
use futures_util::task::AtomicWaker;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::{PeerIdentity, identity::IdentityCache};
use crate::telemetry::{LogEvery, escape};

/// Lets one open connection be closed from outside: its reads and writes
/// fail from then on, which ends the HTTP/2 connection.
#[derive(Debug, Default)]
struct Closer {
    closed: std::sync::atomic::AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the server: client certificate revoked or expired",
            ));
        }
        Ok(())
    }
}

/// One open connection's peer and closer.
type OpenConnection = (Arc<PeerIdentity>, Arc<Closer>);

/// Every open mutual-TLS connection with its peer, so a CRL reload can
/// close those whose certificate it revokes, and how many each identity
/// holds.
#[derive(Debug, Default)]
pub struct OpenConnections {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, OpenConnection>>,
    per_identity: Mutex<HashMap<super::Identity, usize>>,
}

impl OpenConnections {
    /// Registers a connection of `peer`, unless its identity already holds
    /// `max_per_identity`.
    fn register(
        &self,
        peer: Arc<PeerIdentity>,
        max_per_identity: usize,
    ) -> Option<(u64, Arc<Closer>)> {
        {
            let mut per_identity = self.per_identity.lock().unwrap_or_else(|e| e.into_inner());
            let held = per_identity.entry(peer.identity().clone()).or_default();
            if *held >= max_per_identity {
                return None;
            }
            *held += 1;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        crate::metrics::metrics().connections_open.inc();
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (peer, closer.clone()));
        Some((id, closer))
    }

    fn remove(&self, id: u64) {
        crate::metrics::metrics().connections_open.dec();
        let removed = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some((peer, _)) = removed {
            let mut per_identity = self.per_identity.lock().unwrap_or_else(|e| e.into_inner());
            let identity = peer.identity();
            if let Some(held) = per_identity.get_mut(identity) {
                *held -= 1;
                if *held == 0 {
                    per_identity.remove(identity);
                }
            }
        }
    }

    /// Closes every open connection whose peer matches; returns how many.
    pub fn close_where(&self, doomed: impl Fn(&PeerIdentity) -> bool) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for (peer, closer) in conns.values() {
            if !closer.closed.load(Ordering::Acquire) && doomed(peer) {
                closer.close();
                closed += 1;
            }
        }
        closed
    }

    /// How many mutual-TLS connections are open.
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many open connections a peer's identity may hold.
pub type PeerCap = Arc<dyn Fn(&PeerIdentity) -> usize + Send + Sync>;

/// The caps on what connecting peers can hold, and what they refused.
pub struct Admission {
    max_connections: usize,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    handshake_timeout: Duration,
    /// What was refused, for tests and metrics.
    pub refused: AdmissionRefusals,
    /// The established connections.
    pub open: Arc<OpenConnections>,
    /// How many connections each identity may hold.
    cap_of: PeerCap,
    log: LogEvery,
}

/// Connections closed at once because a cap was reached, by cap.
#[derive(Debug, Default)]
pub struct AdmissionRefusals {
    /// The open-connection cap.
    pub connections: AtomicU64,
    /// The in-progress handshake cap.
    pub handshakes: AtomicU64,
    /// The per-IP in-progress handshake cap.
    pub handshakes_per_ip: AtomicU64,
    /// The per-identity open-connection cap.
    pub connections_per_identity: AtomicU64,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Connections,
    Handshakes,
    HandshakesPerIp,
    ConnectionsPerIdentity,
}

/// A handshake slot: global and per-IP, released when dropped.
struct HandshakeSlot<'a> {
    _permit: OwnedSemaphorePermit,
    admission: &'a Admission,
    ip: IpAddr,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let mut per_ip = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// Caps of `max_connections` open connections, `max_handshakes`
    /// handshakes in progress (`max_per_ip` from one address), each handshake
    /// given `handshake_timeout`.
    pub fn new(
        max_connections: usize,
        max_handshakes: usize,
        max_per_ip: usize,
        handshake_timeout: Duration,
    ) -> Arc<Self> {
        Self::with_peers(
            max_connections,
            max_handshakes,
            max_per_ip,
            handshake_timeout,
            Arc::new(|_: &PeerIdentity| usize::MAX),
        )
    }

    /// [`new`](Self::new), also capping each identity's open connections
    /// at what `cap_of` says for it (checked once, after the handshake).
    pub fn with_peers(
        max_connections: usize,
        max_handshakes: usize,
        max_per_ip: usize,
        handshake_timeout: Duration,
        cap_of: PeerCap,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            connections: Arc::new(Semaphore::new(max_connections)),
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            max_per_ip,
            per_ip: Mutex::default(),
            handshake_timeout,
            refused: AdmissionRefusals::default(),
            open: Arc::default(),
            cap_of,
            log: LogEvery::new(Duration::from_secs(10)),
        })
    }

    /// Connections open now (accepted and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }

    fn refuse(&self, why: Refusal, remote_addr: SocketAddr) {
        let counter = match why {
            Refusal::Connections => &self.refused.connections,
            Refusal::Handshakes => &self.refused.handshakes,
            Refusal::HandshakesPerIp => &self.refused.handshakes_per_ip,
            Refusal::ConnectionsPerIdentity => &self.refused.connections_per_identity,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let cap = match why {
            Refusal::Connections => "connections",
            Refusal::Handshakes => "handshakes",
            Refusal::HandshakesPerIp => "handshakes_per_ip",
            Refusal::ConnectionsPerIdentity => "connections_per_identity",
        };
        crate::metrics::metrics()
            .connections_refused
            .with_label_values(&[cap])
            .inc();
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(%remote_addr, cap = ?why, suppressed, "connection refused: at capacity");
        }
    }

    fn admit_connection(&self, remote_addr: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let permit = self.connections.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refuse(Refusal::Connections, remote_addr);
        }
        permit
    }

    fn admit_handshake(&self, remote_addr: SocketAddr) -> Option<HandshakeSlot<'_>> {
        // One IPv6 host usually holds a whole /64: count it as one address.
        let ip = match remote_addr.ip() {
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
            v4 => v4,
        };
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            self.refuse(Refusal::Handshakes, remote_addr);
            return None;
        };
        {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_default();
            if *count >= self.max_per_ip {
                drop(per_ip);
                self.refuse(Refusal::HandshakesPerIp, remote_addr);
                return None;
            }
            *count += 1;
        }
        Some(HandshakeSlot {
            _permit: permit,
            admission: self,
            ip,
        })
    }
}

/// What a request knows about its connection; tonic puts it in the request
/// extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The verified client certificate's identity.
    pub peer: Arc<PeerIdentity>,
    /// What the audit trail remembers of this connection.
    pub audit_memory: Arc<crate::audit::ConnectionMemory>,
}

impl ConnInfo {
    /// A connection from `remote_addr` with the client certificate `peer`.
    pub fn new(remote_addr: SocketAddr, peer: Arc<PeerIdentity>) -> Self {
        Self {
            remote_addr,
            peer,
            audit_memory: Arc::default(),
        }
    }
}

/// An established mutual-TLS connection; holds its connection slot and
/// its place among the [`OpenConnections`].
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
    id: u64,
    closer: Arc<Closer>,
    open: Arc<OpenConnections>,
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.open.remove(self.id);
    }
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.closer.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.closer.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.closer.check(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` until `stop` is cancelled and yields
/// those that complete a mutual-TLS handshake within the handshake timeout,
/// each with the TLS configuration in force when it was accepted. Connections
/// beyond the connection or handshake caps are closed at once; one beyond
/// its identity's cap, known only after the handshake, is refused like any
/// other refused handshake ([`close_refused`]).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    admission: Arc<Admission>,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let accept_errors = LogEvery::new(Duration::from_secs(10));
        let mut backoff = Duration::from_millis(5);
        loop {
            let (tcp, remote_addr) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        backoff = Duration::from_millis(5);
                        accepted
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off
                        // (doubling to 1 s), keep serving, log once in a while.
                        if let Some(suppressed) = accept_errors.check() {
                            tracing::warn!(error = %err, suppressed, retry_in = ?backoff, "accept failed");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let Some(slot) = admission.admit_connection(remote_addr) else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // The configuration in force now; a later reload does not touch this connection.
            let acceptor = TlsAcceptor::from(tls.current());
            let tls = tls.clone();
            let tx = tx.clone();
            let admission = admission.clone();
            tokio::spawn(async move {
                let Some(handshake_slot) = admission.admit_handshake(remote_addr) else {
                    return;
                };
                let Some((stream, info)) =
                    handshake(acceptor, tcp, remote_addr, admission.handshake_timeout).await
                else {
                    return;
                };
                // Refusals from here on linger under the handshake slot, so
                // the handshake caps bound them too.
                let cap = (admission.cap_of)(&info.peer);
                let Some((id, closer)) = admission.open.register(info.peer.clone(), cap) else {
                    admission.refuse(Refusal::ConnectionsPerIdentity, remote_addr);
                    close_refused(stream).await;
                    return;
                };
                // The verifier checked both already; this keeps them true
                // even if a session were ever resumed, and for a certificate
                // that expires in the handshake. Checked once registered: a
                // reload's sweep either finds this connection or ran before
                // this check, which then sees the new CRLs.
                if !tls.is_live(&info.peer) {
                    admission.open.remove(id);
                    tracing::info!(%remote_addr, "client certificate revoked or expired; connection refused");
                    close_refused(stream).await;
                    return;
                }
                drop(handshake_slot);
                let _ = tx
                    .send(Ok(TlsConn {
                        stream,
                        info,
                        _slot: slot,
                        id,
                        closer,
                        open: admission.open.clone(),
                    }))
                    .await;
            });
        }
        tracing::debug!("accept loop stopped");
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    timeout: Duration,
) -> Option<(TlsStream<TcpStream>, ConnInfo)> {
    // Before authentication anyone can make these happen: one line per 10 s.
    static REFUSED: std::sync::LazyLock<LogEvery> =
        std::sync::LazyLock::new(|| LogEvery::new(Duration::from_secs(10)));
    let handshakes = &crate::metrics::metrics().tls_handshakes;
    let accept = acceptor.accept(tcp).into_fallible();
    let stream = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(stream)) => {
            handshakes.with_label_values(&["ok"]).inc();
            stream
        }
        Ok(Err((err, tcp))) => {
            handshakes.with_label_values(&["refused"]).inc();
            if let Some(suppressed) = REFUSED.check() {
                tracing::info!(%remote_addr, error = %escape(&err.to_string()), suppressed, "TLS handshake refused");
            }
            // The alert, if any, is written: let the client read it.
            linger(tcp).await;
            return None;
        }
        Err(_) => {
            handshakes.with_label_values(&["timeout"]).inc();
            if let Some(suppressed) = REFUSED.check() {
                tracing::info!(%remote_addr, ?timeout, suppressed, "TLS handshake timed out");
            }
            return None;
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first());
    static IDENTITIES: std::sync::LazyLock<IdentityCache> =
        std::sync::LazyLock::new(IdentityCache::default);
    let peer = match leaf.map(|der| IDENTITIES.identity_of(der)) {
        Some(Ok(peer)) => peer,
        Some(Err(err)) => {
            tracing::info!(%remote_addr, error = %crate::error::error_chain(&err), "client certificate unreadable");
            close_refused(stream).await;
            return None;
        }
        // The verifier requires a certificate; if none is here, refuse anyway.
        None => {
            tracing::info!(%remote_addr, "no client certificate after handshake");
            close_refused(stream).await;
            return None;
        }
    };
    tracing::debug!(%remote_addr, peer = %peer, "mTLS connection established");
    Some((stream, ConnInfo::new(remote_addr, peer)))
}

/// How long a refused connection is read from before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// How much a refused connection may send in that time.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes a refused connection so that the client reads the refusal (the
/// TLS alert already written) rather than a reset.
///
/// In TLS 1.3 a client's handshake ends before the server has checked its
/// certificate, so it sends its first request at once. Closing a socket with
/// such bytes unread makes the kernel answer with a reset, and a reset makes
/// the client's next write fail with "broken pipe" or discards the alert
/// still waiting to be read. So: stop writing (FIN after the alert), then
/// read and discard until the client hangs up, [`LINGER`] passes or
/// [`LINGER_BYTES`] arrive. The caller still holds the connection's slots,
/// the handshake slot included, so the caps bound how many connections
/// linger.
async fn linger(tcp: TcpStream) {
    linger_until(tcp, tokio::time::Instant::now() + LINGER).await;
}

async fn linger_until(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    let drain = async {
        let _ = tcp.shutdown().await;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, drain).await;
}

/// Refuses a connection whose handshake completed: `close_notify`, then
/// [`linger`], [`LINGER`] for both. (rustls has no way to send an alert
/// after the handshake.)
async fn close_refused(mut stream: TlsStream<TcpStream>) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
    linger_until(stream.into_inner().0, deadline).await;
}
