//! An established mutual-TLS connection ([`TlsConn`]), what each request
//! knows of it ([`ConnInfo`]), and the registry of open connections that a
//! CRL reload closes revoked ones through ([`OpenConnections`]).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::PeerIdentity;
use crate::admission::IdentitySlot;

/// Lets one open connection be closed from outside: its reads and writes
/// fail from then on, which ends the HTTP/2 connection.
#[derive(Debug, Default)]
pub(super) struct Closer {
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
/// close those whose certificate it revokes.
#[derive(Debug, Default)]
pub struct OpenConnections {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, OpenConnection>>,
}

impl OpenConnections {
    /// Registers a connection of `peer`.
    pub(super) fn register(&self, peer: Arc<PeerIdentity>) -> (u64, Arc<Closer>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        crate::metrics::metrics().connections_open.inc();
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (peer, closer.clone()));
        (id, closer)
    }

    pub(super) fn remove(&self, id: u64) {
        crate::metrics::metrics().connections_open.dec();
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
    /// What admission keeps about this connection: its tenant, token-less
    /// streams and refusal budget.
    pub share: Arc<crate::admission::ConnectionShare>,
}

impl ConnInfo {
    /// A connection from `remote_addr` with the client certificate `peer`,
    /// a tenant among `tenants`.
    pub fn new(
        remote_addr: SocketAddr,
        peer: Arc<PeerIdentity>,
        tenants: &crate::admission::Tenants,
    ) -> Self {
        Self {
            remote_addr,
            audit_memory: Arc::default(),
            share: Arc::new(crate::admission::ConnectionShare::new(
                peer.identity_text().into(),
                tenants,
            )),
            peer,
        }
    }
}

/// An established mutual-TLS connection; holds its connection slot and
/// its place among the [`OpenConnections`].
pub struct TlsConn {
    pub(super) stream: TlsStream<TcpStream>,
    pub(super) info: ConnInfo,
    pub(super) _slot: OwnedSemaphorePermit,
    pub(super) _identity: IdentitySlot,
    pub(super) id: u64,
    pub(super) closer: Arc<Closer>,
    pub(super) open: Arc<OpenConnections>,
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
