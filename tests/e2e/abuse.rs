//! Hostile load on loopback, each attack bounded in count and time, each
//! checking that a legitimate client is served within a deadline during and
//! after it: a stream flood that ignores the server's stream limit (raw
//! HTTP/2 frames), rapid reset (the `h2` crate), idle connections beyond the
//! connection cap, stalled handshakes beyond the per-IP cap, a 5 MB message,
//! a 30 KB token, more calls than the in-flight bound, and a rate limit.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use futures_util::future::join_all;
use notes_api::pb::{
    CreateNoteRequest, ListNotesRequest, notes_service_client::NotesServiceClient,
};
use notes_client::{NotesClient, RetryPolicy};
use notes_server::{
    Limits,
    limits::RateLimit,
    store::{Change, MemoryStore, NewNote, Note, NotePage, NoteStore, StoreError},
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

use crate::harness::{
    TestApp, app::test_limits, claims, pki, pki::client_config, sign, token_for, with_token,
};

/// The resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A mutual-TLS connection with the test client certificate, ALPN h2, from
/// `local` (any loopback address) when given.
async fn tls_connect(addr: SocketAddr, local: Option<IpAddr>) -> TlsStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let tcp = socket.connect(addr).await.unwrap();
    TlsConnector::from(client_config(Some(&pki().client)))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Asserts that a legitimate caller on a new connection creates a note
/// within `deadline` (retrying a connection refused at capacity).
async fn legit_client_is_served(app: &TestApp, deadline: Duration, when: &str) {
    let served = tokio::time::timeout(deadline, async {
        loop {
            let client = NotesClient::builder(app.endpoint(), app.tls())
                .token(token_for("legit"))
                .retry(RetryPolicy::none())
                .connect()
                .await;
            if let Ok(client) = client
                && client.create("still served", None).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "{when}: a legitimate client was not served within {deadline:?}"
    );
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal (no Huffman coding).
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The HEADERS of a `grpc.health.v1.Health/Watch` call, HPACK-encoded by
/// hand with static-table names and literals that are never indexed.
fn watch_headers() -> Vec<u8> {
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
    block.push(0x04); // :path
    hpack_string(&mut block, "/grpc.health.v1.Health/Watch");
    block.push(0x01); // :authority
    hpack_string(&mut block, "localhost");
    block.extend_from_slice(&[0x0f, 0x10]); // content-type
    hpack_string(&mut block, "application/grpc");
    block.push(0x00); // a new name
    hpack_string(&mut block, "te");
    hpack_string(&mut block, "trailers");
    block
}

/// What a raw HTTP/2 client saw from the server.
#[derive(Debug, Default)]
struct Seen {
    /// Streams the server answered with response HEADERS (opened).
    answered: BTreeSet<u32>,
    /// Streams the server reset.
    reset: usize,
    /// The error codes of those resets.
    reset_codes: BTreeSet<u32>,
    /// The GOAWAY error code, if the server sent one.
    goaway: Option<u32>,
}

/// Reads frames until the connection ends or `limit` passes.
async fn read_frames(
    mut reader: tokio::io::ReadHalf<TlsStream<TcpStream>>,
    limit: Duration,
) -> Seen {
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(limit, async {
        let mut header = [0u8; 9];
        loop {
            if reader.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                return;
            }
            match header[3] {
                0x1 => {
                    seen.answered.insert(stream);
                }
                0x3 => {
                    seen.reset += 1;
                    if payload.len() >= 4 {
                        seen.reset_codes.insert(u32::from_be_bytes([
                            payload[0], payload[1], payload[2], payload[3],
                        ]));
                    }
                }
                0x7 if payload.len() >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                _ => {}
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn a_stream_flood_on_one_connection_gets_at_most_the_configured_streams() {
    const STREAMS: u32 = 20_000;
    let app = TestApp::spawn().await;
    let limit = Limits::default().max_concurrent_streams;
    let before = rss_kib();

    // A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS: 20,000 Watch
    // calls (streams that never end) written back to back.
    let tls = tls_connect(app.addr, None).await;
    let (reader, mut writer) = tokio::io::split(tls);
    let reading = tokio::spawn(read_frames(reader, Duration::from_secs(10)));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    writer.write_all(&out).await.unwrap();
    let headers = watch_headers();
    let empty_request = [0u8; 5];
    // 150 first, a pause for the server to answer the ones it opens, then
    // the rest back to back.
    for i in 0..STREAMS {
        if i == 150 {
            let _ = writer.flush().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let id = 2 * i + 1;
        let mut out = frame(0x1, 0x4, id, &headers); // HEADERS, END_HEADERS
        out.extend(frame(0x0, 0x1, id, &empty_request)); // DATA, END_STREAM
        if writer.write_all(&out).await.is_err() {
            break; // the server closed the connection
        }
    }
    let _ = writer.flush().await;
    legit_client_is_served(&app, Duration::from_secs(5), "during the stream flood").await;
    let seen = reading.await.unwrap();
    let during = rss_kib();
    legit_client_is_served(&app, Duration::from_secs(5), "after the stream flood").await;

    eprintln!(
        "stream flood: {STREAMS} requested, {} opened, {} reset, goaway {:?}; RSS {before} KiB -> {during} KiB",
        seen.answered.len(),
        seen.reset,
        seen.goaway
    );
    assert!(!seen.answered.is_empty(), "{seen:?}");
    assert!(
        seen.answered.len() <= limit as usize,
        "{} streams were opened at once, over the limit of {limit}",
        seen.answered.len()
    );
    assert!(
        seen.reset > 0 || seen.goaway.is_some(),
        "the excess streams were neither refused nor the connection closed: {seen:?}"
    );
    assert!(
        during.saturating_sub(before) < 64 * 1024,
        "RSS grew by {} KiB",
        during - before
    );
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_the_server_stays_responsive() {
    const STREAMS: u32 = 5_000;
    let app = TestApp::spawn().await;
    let before = rss_kib();
    let tls = tls_connect(app.addr, None).await;
    let (reader, mut writer) = tokio::io::split(tls);
    let reading = tokio::spawn(read_frames(reader, Duration::from_secs(10)));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    writer.write_all(&out).await.unwrap();
    let headers = watch_headers();

    // CVE-2023-44487: open a stream and cancel it at once, thousands of times.
    let mut sent = 0;
    for i in 0..STREAMS {
        let id = 2 * i + 1;
        let mut out = frame(0x1, 0x4, id, &headers); // HEADERS, END_HEADERS
        out.extend(frame(0x3, 0, id, &0x8u32.to_be_bytes())); // RST_STREAM CANCEL
        if writer.write_all(&out).await.is_err() {
            break;
        }
        sent += 1;
    }
    let _ = writer.flush().await;
    let seen = reading.await.unwrap();
    legit_client_is_served(&app, Duration::from_secs(5), "after rapid reset").await;
    eprintln!(
        "rapid reset: {sent} of {STREAMS} streams written and reset before the server closed; \
         goaway {:?}; RSS {before} KiB -> {} KiB",
        seen.goaway,
        rss_kib()
    );

    // ENHANCE_YOUR_CALM (0xb): the server saw the pattern and closed.
    assert_eq!(seen.goaway, Some(0xb), "{seen:?}");
    assert!(sent < STREAMS, "the server took all {STREAMS} resets");
}

/// Opens `count` TCP connections that never start a handshake.
async fn hold_idle(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    held
}

/// The first bytes of a ClientHello: a TLS handshake record's header. A
/// connection that sent them is doing TLS work, not silent.
const HANDSHAKE_START: [u8; 5] = [0x16, 0x03, 0x01, 0x02, 0x00];

/// Opens `count` TCP connections that start a handshake and stall in it.
async fn hold_stalled(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&HANDSHAKE_START).await.unwrap();
        held.push(stalled);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    held
}

/// Of `count` more connections that start a handshake, how many the server
/// closed at once: EOF (or a reset) within a second, long before any
/// handshake timeout.
async fn closed_at_once(addr: SocketAddr, count: usize) -> usize {
    let mut closed = 0;
    for _ in 0..count {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(&HANDSHAKE_START).await;
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(1), extra.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    closed
}

#[tokio::test]
async fn idle_connections_beyond_the_connection_cap_are_closed_at_once() {
    let rss_before = rss_kib();
    let app = TestApp::builder()
        .limits(Limits {
            max_connections: 20,
            ..test_limits()
        })
        .spawn()
        .await;
    let idle = hold_idle(app.addr, 20).await;
    let closed = closed_at_once(app.addr, 10).await;
    // The idle ones leave at the handshake timeout (2 s here), and then
    // there is room again.
    legit_client_is_served(
        &app,
        Duration::from_secs(6),
        "during the idle-connection attack",
    )
    .await;
    drop(idle);
    legit_client_is_served(
        &app,
        Duration::from_secs(5),
        "after the idle-connection attack",
    )
    .await;

    assert_eq!(
        closed, 10,
        "connections beyond the cap were not closed at once"
    );
    eprintln!(
        "idle connections: RSS {rss_before} KiB -> {} KiB",
        rss_kib()
    );
}

#[tokio::test]
async fn stalled_handshakes_from_one_address_beyond_its_cap_are_closed_at_once() {
    let rss_before = rss_kib();
    let app = TestApp::builder()
        .limits(Limits {
            max_handshakes_per_ip: 8,
            handshake_timeout: Duration::from_secs(10),
            ..test_limits()
        })
        .spawn()
        .await;
    let stalled = hold_stalled(app.addr, 8).await;
    let closed = closed_at_once(app.addr, 12).await;
    // Another address is not held back by this one's stalled handshakes.
    let other = IpAddr::from([127, 0, 0, 2]);
    let channel = tonic::transport::Endpoint::from_shared(app.endpoint())
        .unwrap()
        .local_address(Some(other))
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki().ca_pem))
                .identity(tonic::transport::Identity::from_pem(
                    &pki().client.cert_pem,
                    &pki().client.key_pem,
                )),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("a client from another address connects during the attack");
    NotesServiceClient::new(channel)
        .list_notes(with_token(ListNotesRequest::default(), &token_for("other")))
        .await
        .expect("and is served");
    drop(stalled);
    legit_client_is_served(&app, Duration::from_secs(5), "after the stalled handshakes").await;

    assert_eq!(
        closed, 12,
        "handshakes beyond the per-IP cap were not refused at once"
    );
    eprintln!(
        "stalled handshakes: RSS {rss_before} KiB -> {} KiB",
        rss_kib()
    );
}

#[tokio::test]
async fn a_5_mb_message_is_refused_resource_exhausted_before_decoding() {
    let rss_before = rss_kib();
    let app = TestApp::spawn().await;
    let mut stub = app.raw().await.max_encoding_message_size(16 * 1024 * 1024);
    let request = CreateNoteRequest {
        content: "x".repeat(5 * 1024 * 1024),
        request_id: String::new(),
    };

    let status = stub
        .create_note(with_token(request, &token_for("alice")))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    legit_client_is_served(&app, Duration::from_secs(5), "after a 5 MB message").await;
    eprintln!("5 MB message: RSS {rss_before} KiB -> {} KiB", rss_kib());
}

#[tokio::test]
async fn a_30_kb_token_is_unauthenticated_not_an_http_error() {
    let rss_before = rss_kib();
    let app = TestApp::spawn().await;
    let mut padded = claims("alice");
    padded["pad"] = serde_json::json!("x".repeat(30 * 1024));
    let token = sign(&padded);

    let status = app
        .raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    eprintln!("30 KB token: RSS {rss_before} KiB -> {} KiB", rss_kib());
}

/// A memory store whose every call takes `delay`.
struct SlowStore {
    inner: MemoryStore,
    delay: Duration,
}

#[async_trait]
impl NoteStore for SlowStore {
    async fn create(&self, owner: &str, note: NewNote) -> Result<Note, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.create(owner, note).await
    }
    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.get(owner, note_id).await
    }
    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<NotePage, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.list(owner, limit, after).await
    }
    async fn update(
        &self,
        owner: &str,
        note_id: Uuid,
        content: String,
        change: Change,
    ) -> Result<Note, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.update(owner, note_id, content, change).await
    }
    async fn delete(&self, owner: &str, note_id: Uuid, change: Change) -> Result<(), StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.delete(owner, note_id, change).await
    }
}

#[tokio::test]
async fn calls_beyond_the_in_flight_bound_fail_fast_unavailable_and_health_still_answers() {
    let rss_before = rss_kib();
    let app = TestApp::builder()
        .store_impl(Arc::new(SlowStore {
            inner: MemoryStore::new(),
            delay: Duration::from_millis(500),
        }))
        .limits(Limits {
            max_requests_in_flight: 4,
            ..test_limits()
        })
        .spawn()
        .await;
    let stub = app.raw().await;
    let token = token_for("alice");

    let calls = (0..20).map(|_| {
        let mut stub = stub.clone();
        let token = token.clone();
        async move {
            let result = stub
                .list_notes(with_token(ListNotesRequest::default(), &token))
                .await;
            (result.map(|_| ()), std::time::Instant::now())
        }
    });
    let health = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        HealthClient::new(app.channel(Some(&pki().client)).await)
            .check(HealthCheckRequest::default())
            .await
    };
    let (results, health) = tokio::join!(join_all(calls), health);

    let refused: Vec<_> = results.iter().filter(|(r, _)| r.is_err()).collect();
    let served: Vec<_> = results.iter().filter(|(r, _)| r.is_ok()).collect();
    assert!(
        health.is_ok(),
        "health was refused under overload: {health:?}"
    );
    assert!(served.len() >= 4, "{} served", served.len());
    assert!(refused.len() >= 10, "only {} of 20 refused", refused.len());
    for (result, _) in &refused {
        let status = result.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("overloaded"), "{status:?}");
    }
    // Refused at once: every refusal came back before the first served call.
    let first_served = served.iter().map(|(_, at)| *at).min().unwrap();
    assert!(refused.iter().all(|(_, at)| *at < first_served));
    eprintln!("overload: RSS {rss_before} KiB -> {} KiB", rss_kib());
}

#[tokio::test]
async fn a_caller_over_its_rate_is_refused_resource_exhausted_naming_the_limit() {
    let app = TestApp::builder()
        .limits(Limits {
            rate_limit: Some(RateLimit {
                per_second: 1.0,
                burst: 3,
            }),
            ..test_limits()
        })
        .spawn()
        .await;
    let alice = app.client_as("alice").await;
    let bob = app.client_as("bob").await;

    for _ in 0..3 {
        alice.list(0, "").await.unwrap();
    }
    let refused = alice.list(0, "").await.unwrap_err();
    bob.list(0, "")
        .await
        .expect("another caller has its own budget");
    let health = HealthClient::new(app.channel(Some(&pki().client)).await)
        .check(HealthCheckRequest::default())
        .await;

    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(
        refused.to_string().contains("calls per second"),
        "{refused}"
    );
    assert!(health.is_ok(), "{health:?}");
}

/// The resident set size of process `pid`, in KiB.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Opens an HTTP/2 connection (preface and SETTINGS) and waits for the
/// server's first frame, so the server holds its connection state.
async fn idle_h2_connection(addr: SocketAddr) -> TlsStream<TcpStream> {
    let mut tls = tls_connect(addr, None).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    tls.write_all(&out).await.unwrap();
    let mut header = [0u8; 9];
    tls.read_exact(&mut header).await.unwrap();
    tls
}

#[tokio::test]
async fn memory_per_idle_connection_and_per_open_stream_is_measured_and_bounded() {
    const CONNECTIONS: usize = 1_000;
    // Watch streams need no token: 8 per connection and 256 per identity.
    const STREAM_CONNECTIONS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    crate::harness::pki::write_files(dir.path());
    let (server, port) =
        crate::harness::process::start_serve(dir.path(), "unused", 0, &[("NOTES_STORE", "memory")])
            .await;
    let pid = server.id().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Warm up: the first connection and call allocate what every later one shares.
    drop(idle_h2_connection(addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_of(pid);

    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(idle_h2_connection(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_connections = rss_of(pid);

    let limit = Limits::default().max_tokenless_streams_per_connection as u32;
    let headers = watch_headers();
    for tls in connections.iter_mut().take(STREAM_CONNECTIONS) {
        let mut out = Vec::new();
        for i in 0..limit {
            let id = 2 * i + 1;
            out.extend(frame(0x1, 0x4, id, &headers));
            out.extend(frame(0x0, 0x1, id, &[0u8; 5]));
        }
        tls.write_all(&out).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let with_streams = rss_of(pid);
    let streams = STREAM_CONNECTIONS as u64 * u64::from(limit);

    let per_connection = (with_connections.saturating_sub(base)) as f64 / CONNECTIONS as f64;
    let per_stream = (with_streams.saturating_sub(with_connections)) as f64 / streams as f64;
    eprintln!(
        "memory (notes-server serve --store memory, debug build): RSS {base} KiB idle, {with_connections} KiB with \
         {CONNECTIONS} mTLS HTTP/2 connections ({per_connection:.1} KiB each), {with_streams} KiB \
         with {streams} open Watch streams ({per_stream:.1} KiB each)"
    );
    assert!(
        per_connection < 256.0,
        "{per_connection:.1} KiB per connection"
    );
    assert!(per_stream < 64.0, "{per_stream:.1} KiB per stream");
}

#[tokio::test]
async fn one_identity_cannot_hold_more_than_its_connections() {
    let app = TestApp::builder()
        .limits(Limits {
            max_connections_per_identity: 3,
            ..test_limits()
        })
        .spawn()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(idle_h2_connection(app.addr).await);
    }

    // A fourth of the same certificate is closed right after its handshake.
    let mut fourth = tls_connect(app.addr, None).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let _ = fourth.write_all(&out).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf)).await;
    // Another identity still connects and is served.
    let other = pki()
        .ca
        .issue_client(
            &notes_server::certs::authority::Subject {
                common_name: "other".into(),
                uris: vec!["spiffe://notes.test/other".into()],
                ..Default::default()
            },
            Duration::from_secs(3600),
        )
        .unwrap();
    let served = NotesServiceClient::new(app.channel(Some(&other)).await)
        .list_notes(with_token(ListNotesRequest::default(), &token_for("other")))
        .await;

    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the fourth connection was served: {read:?}"
    );
    assert!(served.is_ok(), "{served:?}");
    drop(held);
}

/// A connection over its identity's cap is refused only once its handshake
/// is done, and lingers for the client to read the refusal; it lingers under
/// its handshake slot, so a certificate refused over and over holds no more
/// than the per-IP handshake cap, and the connection cap stays free for
/// everyone else.
#[tokio::test]
async fn refusals_over_an_identitys_cap_linger_within_the_handshake_cap() {
    let app = TestApp::builder()
        .limits(Limits {
            max_connections_per_identity: 1,
            max_handshakes_per_ip: 4,
            ..test_limits()
        })
        .spawn()
        .await;
    let held = idle_h2_connection(app.addr).await;

    // Four more of the same certificate, kept open and silent: each refused
    // after its handshake, each lingering (or still in its handshake).
    let mut refused = Vec::new();
    for _ in 0..4 {
        refused.push(tls_connect(app.addr, None).await);
    }
    // They hold this address's four handshake slots.
    let closed = closed_at_once(app.addr, 1).await;

    assert_eq!(closed, 1, "lingering refusals held no handshake slot");
    drop((held, refused));
}

#[tokio::test]
async fn a_certificate_drawing_refusals_past_its_budget_is_refused_before_verification() {
    let app = TestApp::builder()
        .settings(|s, _| {
            s.refusal_budget = Some(RateLimit {
                per_second: 0.5,
                burst: 5,
            })
        })
        .spawn()
        .await;
    let forged = {
        let mut token = token_for("mallory");
        token.push_str("AAAA");
        token
    };
    // All on one connection: the budget is the connection's.
    let mut stub = app.raw().await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let status = stub
            .list_notes(with_token(ListNotesRequest::default(), &forged))
            .await
            .unwrap_err();
        codes.push(status.code());
    }
    let same_certificate = app.raw().await;
    let other = pki()
        .ca
        .issue_client(
            &notes_server::certs::authority::Subject {
                common_name: "other".into(),
                uris: vec!["spiffe://notes.test/innocent".into()],
                ..Default::default()
            },
            Duration::from_secs(3600),
        )
        .unwrap();
    let bob = token_for("bob");
    let innocent = NotesServiceClient::new(app.channel(Some(&other)).await)
        .list_notes(with_token(ListNotesRequest::default(), &bob))
        .await;

    let valid_after = stub
        .list_notes(with_token(ListNotesRequest::default(), &bob))
        .await;
    let other_connection = same_certificate
        .clone()
        .list_notes(with_token(ListNotesRequest::default(), &forged))
        .await;

    assert_eq!(codes[..5], [Code::Unauthenticated; 5], "{codes:?}");
    assert_eq!(codes[5..], [Code::ResourceExhausted; 3], "{codes:?}");
    // A token verified before (bob's, by the innocent caller) is in the
    // cache: never charged nor refused, even on the spent connection.
    assert!(valid_after.is_ok(), "{valid_after:?}");
    // Another connection of the same certificate has a budget of its own.
    assert_eq!(
        other_connection.unwrap_err().code(),
        Code::Unauthenticated,
        "another connection was refused for this one's refusals"
    );
    assert!(
        innocent.is_ok(),
        "another certificate is not held back: {innocent:?}"
    );
}
