//! Network fixtures: a TCP proxy to DynamoDB that a test can cut, and a
//! plain HTTP server for JWKS and token endpoints.

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};

/// A TCP proxy to a DynamoDB endpoint that a test can cut and restore: while
/// down it closes every open connection and refuses new ones, as a crashed or
/// partitioned DynamoDB would look to the server.
pub struct Proxy {
    pub endpoint: String,
    up: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (up, watch_up) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch_up = watch_up.clone();
                if !*watch_up.borrow() {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch_up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { endpoint, up }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Serves `router` over HTTP on 127.0.0.1 until the returned sender is dropped.
pub async fn serve_http(router: axum::Router) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop)
}
