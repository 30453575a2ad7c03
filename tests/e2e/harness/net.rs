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

/// What a [`LostReplyProxy`] does to requests of its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the first one, drop its reply and close the connection: a
    /// write that was applied, whose answer was lost.
    LoseReply,
    /// Accept every one and never answer.
    Stall,
    /// Answer every one with DynamoDB's ThrottlingException, unforwarded.
    Throttle,
    /// Answer the first one with ThrottlingException, forward the rest.
    ThrottleFirst,
    /// Answer every one with this DynamoDB error code, unforwarded: e.g.
    /// `AccessDeniedException`, what DynamoDB tells a role whose IAM policy
    /// lacks the action (moto does not enforce IAM).
    Answer(&'static str),
    /// Forward the first one and drop its reply; hold the second (the
    /// server's retry) until [`LostReplyProxy::release`], then forward it:
    /// another writer's write can land in between.
    LoseReplyThenHoldRetry,
    /// Hold the first one until [`LostReplyProxy::release`] (the server
    /// times out and retries meanwhile), then deliver it late and drop its
    /// reply: a request the network delivered after later writes.
    DeliverLate,
    /// Forward every one, and cut each answer with more than this many
    /// items down to them, with a `LastEvaluatedKey` at the last one kept:
    /// what DynamoDB does to a Query or Scan whose items pass 1 MB (moto
    /// does not apply that limit).
    Cut(usize),
}

/// `response` (an HTTP/1.1 message with a JSON body) with at most `keep`
/// items, as DynamoDB answers when it stops at 1 MB: the items it read,
/// their count and the key of the last one to continue from.
fn cut_items(response: &[u8], keep: usize, key_attrs: &[&str]) -> Vec<u8> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP message")
        + 4;
    let (head, body) = response.split_at(split);
    let mut json: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    let Some(items) = json.get_mut("Items").and_then(|i| i.as_array_mut()) else {
        return response.to_vec();
    };
    if items.len() <= keep || keep == 0 {
        return response.to_vec();
    }
    items.truncate(keep);
    let last = &items[keep - 1];
    let key: serde_json::Map<String, serde_json::Value> = key_attrs
        .iter()
        .map(|attr| ((*attr).to_owned(), last[*attr].clone()))
        .collect();
    json["Count"] = keep.into();
    json["ScannedCount"] = keep.into();
    json["LastEvaluatedKey"] = key.into();
    let body = serde_json::to_vec(&json).unwrap();
    let head = String::from_utf8_lossy(head);
    let mut out: String = head
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("content-length:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend(body);
    out
}

/// An HTTP/1.1 proxy to DynamoDB with the faults real networks and DynamoDB
/// have ([`Fault`]), for one operation (its `x-amz-target`); every other
/// request is forwarded.
pub struct LostReplyProxy {
    pub endpoint: String,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    released: watch::Sender<bool>,
    /// Held requests delivered (after a release).
    delivered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// DynamoDB's answer with error `code`, as its JSON protocol sends it.
fn error_response(code: &str) -> String {
    let body = format!(
        "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{code}\",\"message\":\"injected by the fault proxy\"}}"
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-requestid: fault-proxy\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One HTTP/1.1 message (head and a Content-Length body) read from `from`,
/// with the value of `header` if it is there; `None` at EOF.
pub(crate) async fn read_message(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    header: &str,
) -> Option<(Vec<u8>, Option<String>)> {
    use tokio::io::AsyncReadExt;
    let mut message = Vec::new();
    let mut byte = [0u8; 1];
    while !message.ends_with(b"\r\n\r\n") {
        if from.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        message.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&message).to_ascii_lowercase();
    let value = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
    };
    let length: usize = value("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    from.read_exact(&mut body).await.ok()?;
    message.extend(body);
    Some((message, value(header)))
}

impl LostReplyProxy {
    pub async fn start(upstream: &str, operation: &str) -> LostReplyProxy {
        Self::with_fault(upstream, operation, Fault::LoseReply).await
    }

    /// A proxy doing `fault` to `operation`.
    pub async fn with_fault(upstream: &str, operation: &str, fault: Fault) -> LostReplyProxy {
        use tokio::io::AsyncWriteExt;
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let target = format!("dynamodb_20120810.{}", operation.to_ascii_lowercase());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = dropped.clone();
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let (released, watch_released) = watch::channel(false);
        let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delivered_count = delivered.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let target = target.clone();
                let count = count.clone();
                let lost = lost.clone();
                let seen = seen.clone();
                let mut watch_released = watch_released.clone();
                let delivered_count = delivered_count.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    while let Some((request, op)) = read_message(&mut inbound, "x-amz-target").await
                    {
                        if op.as_deref() == Some(target.as_str()) {
                            let body = request
                                .windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .and_then(|at| serde_json::from_slice(&request[at + 4..]).ok());
                            seen.lock().unwrap().push(body.unwrap_or_default());
                            let nth = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                            let held = matches!(
                                (fault, nth),
                                (Fault::LoseReplyThenHoldRetry, 2) | (Fault::DeliverLate, 1)
                            );
                            if held {
                                let _ = watch_released.wait_for(|r| *r).await;
                                delivered_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if fault == Fault::DeliverLate {
                                    // Delivered late; whoever sent it gave up long ago.
                                    let _ = outbound.write_all(&request).await;
                                    let _ = read_message(&mut outbound, "").await;
                                    return;
                                }
                            }
                            let answer = match fault {
                                Fault::Stall => std::future::pending::<Option<&str>>().await,
                                Fault::Throttle => Some("ThrottlingException"),
                                Fault::ThrottleFirst if nth == 1 => Some("ThrottlingException"),
                                Fault::Answer(code) => Some(code),
                                Fault::ThrottleFirst
                                | Fault::LoseReply
                                | Fault::LoseReplyThenHoldRetry
                                | Fault::DeliverLate
                                | Fault::Cut(_) => None,
                            };
                            if let Some(code) = answer {
                                if inbound
                                    .write_all(error_response(code).as_bytes())
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                                continue;
                            }
                        }
                        if outbound.write_all(&request).await.is_err() {
                            return;
                        }
                        let Some((mut response, _)) = read_message(&mut outbound, "").await else {
                            return;
                        };
                        if let Fault::Cut(keep) = fault
                            && op.as_deref() == Some(target.as_str())
                        {
                            response = cut_items(&response, keep, &["userId", "noteId"]);
                        }
                        // Only the first reply of the operation is lost.
                        let drop_it =
                            matches!(fault, Fault::LoseReply | Fault::LoseReplyThenHoldRetry)
                                && op.as_deref() == Some(target.as_str())
                                && count.load(std::sync::atomic::Ordering::SeqCst) == 1
                                && !lost.swap(true, std::sync::atomic::Ordering::SeqCst);
                        if drop_it {
                            return; // applied upstream; the answer is lost
                        }
                        if inbound.write_all(&response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        LostReplyProxy {
            endpoint,
            dropped,
            bodies,
            released,
            delivered,
        }
    }

    /// Lets a held request go on ([`Fault::LoseReplyThenHoldRetry`],
    /// [`Fault::DeliverLate`]) and waits until it has been delivered.
    pub async fn release(&self) {
        self.released.send_replace(true);
        for _ in 0..200 {
            if self.delivered.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                // Give the upstream time to apply (or refuse) it.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no request was held");
    }

    /// The JSON bodies of the operation's requests, in order.
    pub fn request_bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// How many requests of the operation arrived (with `LoseReply`, the
    /// first one's reply was dropped).
    pub fn requests(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}
