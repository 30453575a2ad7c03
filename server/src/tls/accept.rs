//! The TLS accept loop: TCP accepts in one task, each connection admitted
//! under the caps of [`crate::admission`] (open connections, silent
//! connections, handshakes in all and per address, connections per
//! identity) or closed at once; each connection's first bytes awaited
//! under their own short timeout, then its handshake under a timeout, in
//! its own task, so a silent, slow or stalled client neither blocks other
//! handshakes nor holds a slot for long. Finished
//! connections are handed to tonic through a channel as [`TlsConn`]s,
//! holding their slots until tonic drops them.
//!
//! A refused connection is not simply dropped: the server stops writing and
//! reads for a moment ([`linger`]), so the client reads why it was refused
//! instead of a reset.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{ConnInfo, OpenConnections, PeerIdentity, ServerTls, TlsConn, identity::IdentityCache};
use crate::{
    admission::Admission,
    telemetry::{LogEvery, escape},
};

/// How many open connections a peer's identity may hold.
pub type PeerCap = Arc<dyn Fn(&PeerIdentity) -> usize + Send + Sync>;

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
    open: Arc<OpenConnections>,
    cap_of: PeerCap,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    // This loop's own: certificates parsed once, and one line per 10 s
    // about refused handshakes (anyone can cause those before
    // authentication).
    let peers = Arc::new(Peers {
        identities: IdentityCache::default(),
        refused: LogEvery::new(Duration::from_secs(10)),
    });
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
            let loop_state = Loop {
                tls: tls.clone(),
                admission: admission.clone(),
                open: open.clone(),
                cap_of: cap_of.clone(),
                peers: peers.clone(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = loop_state.establish(acceptor, tcp, remote_addr, slot).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
        tracing::debug!("accept loop stopped");
    });
    ReceiverStream::new(rx)
}

/// What each connection's task needs of the accept loop.
struct Loop {
    tls: Arc<ServerTls>,
    admission: Arc<Admission>,
    open: Arc<OpenConnections>,
    cap_of: PeerCap,
    peers: Arc<Peers>,
}

impl Loop {
    /// The handshake of an admitted connection (under a handshake slot),
    /// then its identity's cap and a last check that its certificate is
    /// live; `None` when it is refused.
    async fn establish(
        self,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        remote_addr: SocketAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<TlsConn> {
        let admission = &self.admission;
        if !first_bytes(&self.peers, admission, &tcp, remote_addr).await {
            return None;
        }
        let handshake_slot = admission.admit_handshake(remote_addr)?;
        let timeout = admission.handshake_timeout;
        let (stream, peer) = handshake(&self.peers, acceptor, tcp, remote_addr, timeout).await?;
        let info = ConnInfo::new(remote_addr, peer, &admission.tenants);
        // Refusals from here on linger under the handshake slot, so the
        // handshake caps bound them too.
        let cap = (self.cap_of)(&info.peer);
        let Some(identity) = admission.admit_identity(&info.share.tenant, cap, remote_addr) else {
            close_refused(stream).await;
            return None;
        };
        let (id, closer) = self.open.register(info.peer.clone());
        // The verifier checked both already; this keeps them true even if a
        // session were ever resumed, and for a certificate that expires in
        // the handshake. Checked once registered: a reload's sweep either
        // finds this connection or ran before this check, which then sees
        // the new CRLs.
        if !self.tls.is_live(&info.peer) {
            self.open.remove(id);
            tracing::info!(%remote_addr, "client certificate revoked or expired; connection refused");
            close_refused(stream).await;
            return None;
        }
        drop(handshake_slot);
        Some(TlsConn {
            stream,
            info,
            _slot: slot,
            _identity: identity,
            id,
            closer,
            open: self.open,
        })
    }
}

/// What the accept loop keeps about its peers.
struct Peers {
    identities: IdentityCache,
    refused: LogEvery,
}

/// Waits, as a silent connection, for the first bytes of `tcp`; `false`
/// when none came within the first-bytes timeout, the peer hung up, or a
/// newer silent connection took this one's place.
async fn first_bytes(
    peers: &Peers,
    admission: &Admission,
    tcp: &TcpStream,
    remote_addr: SocketAddr,
) -> bool {
    let silent = admission.admit_silent(remote_addr);
    let timeout = admission.first_bytes_timeout;
    let mut byte = [0u8; 1];
    let outcome = tokio::select! {
        peeked = tokio::time::timeout(timeout, tcp.peek(&mut byte)) => match peeked {
            Ok(Ok(n)) if n > 0 => return true,
            Ok(_) => "closed",
            Err(_) => "first_bytes_timeout",
        },
        () = silent.evicted() => "silent_evicted",
    };
    // (An eviction is counted as a refusal by the admission.)
    if outcome == "first_bytes_timeout" {
        crate::metrics::metrics()
            .tls_handshakes
            .with_label_values(&[outcome])
            .inc();
    }
    if outcome != "closed"
        && let Some(suppressed) = peers.refused.check()
    {
        tracing::info!(%remote_addr, ?timeout, suppressed, outcome, "connection sent nothing; closed");
    }
    false
}

async fn handshake(
    peers: &Peers,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    timeout: Duration,
) -> Option<(TlsStream<TcpStream>, Arc<PeerIdentity>)> {
    let handshakes = &crate::metrics::metrics().tls_handshakes;
    let accept = acceptor.accept(tcp).into_fallible();
    let stream = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(stream)) => {
            handshakes.with_label_values(&["ok"]).inc();
            stream
        }
        Ok(Err((err, tcp))) => {
            handshakes.with_label_values(&["refused"]).inc();
            if let Some(suppressed) = peers.refused.check() {
                tracing::info!(%remote_addr, error = %escape(&err.to_string()), suppressed, "TLS handshake refused");
            }
            // The alert, if any, is written: let the client read it.
            linger(tcp).await;
            return None;
        }
        Err(_) => {
            handshakes.with_label_values(&["timeout"]).inc();
            if let Some(suppressed) = peers.refused.check() {
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
    let peer = match leaf.map(|der| peers.identities.identity_of(der)) {
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
    Some((stream, peer))
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
