//! The TLS accept loop.
//!
//! TCP accepts happen in one task; each handshake runs in its own task under
//! a timeout, so a slow or stalled client neither blocks other handshakes nor
//! holds a connection slot. Finished connections are handed to tonic through
//! a channel, carrying their [`ConnInfo`].

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::ServerTls;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::PeerIdentity;

/// What a request knows about its connection; tonic puts it in the request
/// extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The verified client certificate's identity.
    pub peer: Arc<PeerIdentity>,
}

/// An established mutual-TLS connection.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` until `stop` is cancelled and yields
/// those that complete a mutual-TLS handshake within `handshake_timeout`,
/// each with the TLS configuration in force when it was accepted.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    handshake_timeout: Duration,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            // The configuration in force now; a later reload does not touch this connection.
            let acceptor = TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = handshake(acceptor, tcp, remote_addr, handshake_timeout).await {
                    let _ = tx.send(Ok(conn)).await;
                }
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
) -> Option<TlsConn> {
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::info!(%remote_addr, error = %err, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::info!(%remote_addr, ?timeout, "TLS handshake timed out");
            return None;
        }
    };
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first());
    let peer = match leaf.map(|der| PeerIdentity::from_der(der)) {
        Some(Ok(peer)) => peer,
        Some(Err(err)) => {
            tracing::info!(%remote_addr, error = %crate::error::error_chain(&err), "client certificate unreadable");
            return None;
        }
        // The verifier requires a certificate; if none is here, refuse anyway.
        None => {
            tracing::info!(%remote_addr, "no client certificate after handshake");
            return None;
        }
    };
    tracing::debug!(%remote_addr, peer = %peer, "mTLS connection established");
    Some(TlsConn {
        stream,
        info: ConnInfo {
            remote_addr,
            peer: Arc::new(peer),
        },
    })
}
