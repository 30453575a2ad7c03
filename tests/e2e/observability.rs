//! The admin listener of the real `serve` binary: `/livez`, `/readyz`
//! through its states (keys not loaded, ready, draining), `/metrics` checked
//! by `promtool check metrics`, and a real Prometheus server scraping it
//! whose query API must count every call by method and code.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use notes_api::pb::{GetNoteRequest, ListNotesRequest, notes_service_client::NotesServiceClient};
use serde_json::{Value, json};
use tokio::process::Command;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{
    LogSink, TestApp, claims, create_as, dynamodb_config, dynamodb_endpoint, pki, pki::write_files,
    process::start_serve_with_admin, sign, token_for, with_token,
};

async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A stub over mutual TLS to the `serve` on `port`.
async fn stub(port: u16) -> NotesServiceClient<tonic::transport::Channel> {
    NotesServiceClient::new(channel(port).await)
}

async fn channel(port: u16) -> tonic::transport::Channel {
    let pki = pki();
    tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                .identity(tonic::transport::Identity::from_pem(
                    &pki.client.cert_pem,
                    &pki.client.key_pem,
                )),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Polls `/readyz` until it answers `status` (30 s at most).
async fn wait_ready(admin: u16, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = get(admin, "/readyz").await;
        if got == status || Instant::now() > deadline {
            assert_eq!(got, status, "{body}");
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_is_503_until_keys_load_200_when_ready_and_503_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let memory = [("NOTES_STORE", "memory")];
    // Keys that can never load: a JWKS URL nobody serves.
    let (_unready, _, admin) = start_serve_with_admin(
        dir.path(),
        "unused",
        0,
        &[
            ("NOTES_STORE", "memory"),
            ("NOTES_JWKS_FILE", ""),
            ("NOTES_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
        ],
    )
    .await;
    let (live, _) = get(admin, "/livez").await;
    let not_ready = wait_ready(admin, 503).await;
    assert_eq!(live, 200);
    assert!(not_ready.contains("token keys"), "{not_ready}");

    let (mut server, port, admin) = start_serve_with_admin(dir.path(), "unused", 0, &memory).await;
    wait_ready(admin, 200).await;
    // An open stream keeps the drain going for the grace period.
    let mut watch = HealthClient::new(channel(port).await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    let pid = server.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let draining = wait_ready(admin, 503).await;
    let exited = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(draining.contains("draining"), "{draining}");
    assert!(exited.success());
}

#[tokio::test]
async fn readyz_turns_503_naming_the_store_when_its_table_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let config = dynamodb_config(dynamodb_endpoint());
    let store = notes_server::startup::init_table(&config).await.unwrap();
    let (_server, _, admin) = start_serve_with_admin(dir.path(), store.table(), 0, &[]).await;
    wait_ready(admin, 200).await;

    store
        .client()
        .delete_table()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    // The store is probed every 5 s.
    let unready = wait_ready(admin, 503).await;

    assert!(unready.contains("store"), "{unready}");
}

/// `promtool` and `prometheus`, installed by the test command.
fn tool(name: &str) -> String {
    std::env::var(format!("NOTES_TEST_{}", name.to_uppercase()))
        .unwrap_or_else(|_| panic!("{name} missing: run ./scripts/test, which installs it"))
}

/// Starts a Prometheus server on 127.0.0.1 scraping `target` every second.
async fn start_prometheus(dir: &Path, target: u16) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: notes\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let child = Command::new(tool("prometheus"))
        .kill_on_drop(true)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, port)
}

/// `sum by (grpc_method, grpc_code)` of NotesService's handled calls, as
/// Prometheus's query API answers it.
async fn handled(prometheus: u16) -> Vec<(String, String, f64)> {
    let query = "sum by (grpc_method, grpc_code) (grpc_server_handled_total{grpc_service=\"notes.v1.NotesService\"})";
    let Ok(response) = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{prometheus}/api/v1/query"))
        .form(&[("query", query)])
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = response.json().await.unwrap_or(json!({}));
    let mut rows: Vec<_> = body["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["metric"]["grpc_method"].as_str().unwrap_or("").to_owned(),
                r["metric"]["grpc_code"].as_str().unwrap_or("").to_owned(),
                r["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0),
            )
        })
        .filter(|(_, _, v)| *v > 0.0)
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    rows
}

#[tokio::test]
async fn a_real_prometheus_counts_every_call_by_method_and_code() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let crl = dir.path().join("crl.pem").display().to_string();
    let (_server, port, admin) = start_serve_with_admin(
        dir.path(),
        "unused",
        0,
        &[("NOTES_STORE", "memory"), ("NOTES_CLIENT_CRL", &crl)],
    )
    .await;
    let (_prometheus, prometheus) = start_prometheus(dir.path(), admin).await;
    let mut notes = stub(port).await;
    let token = token_for("alice");
    let mut read_only = claims("alice");
    read_only["scope"] = json!("notes/read");
    let read_only = sign(&read_only);

    for i in 0..3 {
        notes
            .create_note(with_token(
                crate::harness::create_request(&format!("n{i}")),
                &token,
            ))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let missing = GetNoteRequest {
            note_id: uuid::Uuid::now_v7().to_string(),
        };
        notes
            .get_note(with_token(missing, &token))
            .await
            .unwrap_err();
    }
    notes
        .list_notes(ListNotesRequest::default())
        .await
        .unwrap_err();
    notes
        .create_note(with_token(crate::harness::create_request("no"), &read_only))
        .await
        .unwrap_err();

    let expected = vec![
        ("CreateNote".to_owned(), "OK".to_owned(), 3.0),
        ("CreateNote".to_owned(), "PermissionDenied".to_owned(), 1.0),
        ("GetNote".to_owned(), "NotFound".to_owned(), 2.0),
        ("ListNotes".to_owned(), "Unauthenticated".to_owned(), 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = handled(prometheus).await;
    while seen != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = handled(prometheus).await;
    }
    assert_eq!(seen, expected);

    // The exposition itself passes promtool's checks.
    let (_, exposition) = get(admin, "/metrics").await;
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let checked = promtool.wait_with_output().await.unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for name in [
        "grpc_server_started_total",
        "grpc_server_handling_seconds_bucket",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "notes_auth_decisions_total",
        "notes_tls_handshakes_total",
        "notes_server_certificate_not_after_timestamp_seconds",
        "notes_crl_next_update_timestamp_seconds",
        "notes_ready 1",
    ] {
        assert!(exposition.contains(name), "{name} missing:\n{exposition}");
    }
}

#[tokio::test]
async fn refusals_by_the_auth_layer_are_counted_with_their_code_in_process() {
    let app = TestApp::spawn().await;
    create_as(&app, &token_for("alice")).await.unwrap();
    crate::harness::list_as(&app, "not-a-token")
        .await
        .unwrap_err();

    let text = notes_server::metrics::metrics().render();
    assert!(
        text.contains(
            "grpc_server_handled_total{grpc_code=\"Unauthenticated\",grpc_method=\"ListNotes\",grpc_service=\"notes.v1.NotesService\",grpc_type=\"unary\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("notes_auth_decisions_total{caller_kind=\"none\",issuer=\"none\",reason=\"malformed\",result=\"deny\"} 1"), "{text}");
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// An OTLP/gRPC trace collector on 127.0.0.1 that keeps every span.
#[derive(Clone, Default)]
struct Collector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            V::StringValue(s) => s.clone(),
            V::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_server_span_continues_the_callers_trace_and_reaches_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap().port();
    let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let table = crate::harness::dynamodb_config(crate::harness::dynamodb_endpoint()).table;
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let mut init = Command::new(crate::harness::process::bin("notes-server"));
    init.args(["init-table", "--table", &table, "--dynamodb-endpoint"])
        .arg(crate::harness::dynamodb_endpoint());
    assert!(init.status().await.unwrap().success());
    let (_server, port, _) = start_serve_with_admin(
        dir.path(),
        &table,
        0,
        &[
            ("NOTES_OTLP", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    let mut request = with_token(ListNotesRequest::default(), &token_for("alice"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    stub(port).await.list_notes(request).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let (server, query) = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let server = spans
            .iter()
            .find(|s| s.name == "notes.v1.NotesService/ListNotes")
            .cloned();
        // The call's Query, not the server's own reads of the token
        // revocation list (spans of their own, outside any call).
        let query = spans
            .iter()
            .find(|s| s.name == "Query" && hex(&s.trace_id) == TRACE_ID)
            .cloned();
        if let (Some(server), Some(query)) = (&server, &query) {
            break (server.clone(), query.clone());
        }
        assert!(Instant::now() < deadline, "spans received: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(&server, "rpc.system"), "grpc");
    assert_eq!(attribute(&server, "rpc.service"), "notes.v1.NotesService");
    assert_eq!(attribute(&server, "rpc.method"), "ListNotes");
    assert_eq!(attribute(&server, "rpc.grpc.status_code"), "0");
    assert_eq!(
        hex(&query.trace_id),
        TRACE_ID,
        "the DynamoDB call is in the trace"
    );
    assert_eq!(
        query.parent_span_id, server.span_id,
        "a child of the server span"
    );
    assert_eq!(attribute(&query, "db.system"), "dynamodb");
}

#[tokio::test]
async fn every_log_line_of_a_call_carries_its_trace_id() {
    let logs = LogSink::default();
    // Without an exporter the server builds no OpenTelemetry span: the trace
    // id comes from the caller's traceparent all the same.
    logs.install_server_telemetry();
    let app = TestApp::spawn().await;
    let mut request = with_token(ListNotesRequest::default(), &token_for("alice"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    app.raw().await.list_notes(request).await.unwrap();
    // A refusal's audit line too (the other audit event).
    let mut refused = tonic::Request::new(ListNotesRequest::default());
    refused
        .metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    let status = app.raw().await.list_notes(refused).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let text = logs.text();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "{text}");
    assert!(audit[0].contains("decision=\"allow\""), "{}", audit[0]);
    assert!(audit[1].contains("decision=\"deny\""), "{}", audit[1]);
    for line in audit {
        assert!(line.contains(&format!("trace_id={TRACE_ID}")), "{line}");
    }
}

#[tokio::test]
async fn the_client_continues_the_callers_trace_into_the_server() {
    use opentelemetry::trace::TraceContextExt;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let logs = LogSink::default();
    // Installs the W3C propagator and the OpenTelemetry layer, as a calling
    // service instrumented with OpenTelemetry has them.
    logs.install_server_telemetry_exporting();
    let app = TestApp::spawn().await;
    let client = app.client_as("alice").await;
    let caller = tracing::info_span!(target: "notes_server", "billing job");
    let trace_id = caller
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string();

    client.list(0, "").instrument(caller).await.unwrap();

    let text = logs.text();
    let audit = text
        .lines()
        .find(|l| l.contains("notes::audit"))
        .unwrap_or_else(|| panic!("no audit line: {text}"));
    assert_ne!(trace_id, "00000000000000000000000000000000");
    assert!(
        audit.contains(&format!("trace_id={trace_id}")),
        "{trace_id}: {audit}"
    );
}

#[tokio::test]
async fn a_stuck_log_writer_never_blocks_a_call_and_what_it_drops_is_counted_by_class() {
    /// A log destination that never accepts a byte (a full pipe, a hung disk).
    struct Stuck;
    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    std::mem::forget(notes_server::telemetry::init_non_blocking(
        false, false, Stuck, 8,
    ));
    let app = TestApp::spawn().await;
    let client = app.client_as("alice").await;

    // Every refusal writes an audit line into the shared queue of 8 lines
    // that never drains; every create an audit line into the queue
    // reserved for allowed calls, which the refusals cannot take.
    let calls = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..30 {
            crate::harness::list_as(&app, "not-a-token")
                .await
                .unwrap_err();
        }
        for i in 0..50 {
            client.create(&format!("n{i}"), None).await.unwrap();
        }
    })
    .await;

    assert!(calls.is_ok(), "calls waited for the log writer");
    let [audit, other] = notes_server::telemetry::dropped_log_lines();
    assert!(other > 0, "the shared queue dropped nothing");
    assert_eq!(audit, 0, "audit events of allowed calls were dropped");
    let text = notes_server::metrics::metrics().render();
    assert!(
        text.lines().any(
            |l| l.starts_with("notes_log_lines_dropped_total{class=\"other\"} ")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
}
