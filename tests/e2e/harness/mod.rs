//! The harness: one builder for test servers ([`TestApp::builder`]), one
//! token signer (the server's own [`TokenSigner`](notes_server::auth::signer::TokenSigner)),
//! one test PKI, and the fixtures several test modules share.
//!
//! - [`app`]: [`TestApp`], a server on an ephemeral port that shuts down when dropped.
//! - [`tokens`]: the test issuer, claims and signing.
//! - [`pki`]: the per-process test PKI, written to disk one way, and a raw TLS probe.
//! - [`cognito`]: a user pool on the moto server, and an auth file naming it.
//! - [`net`]: a cuttable TCP proxy to DynamoDB, and a plain HTTP test server.

pub mod app;
pub mod cognito;
pub mod net;
pub mod pki;
pub mod process;
pub mod tokens;

pub use app::{Backend, TestApp, dynamodb_config, dynamodb_endpoint};
pub use net::{Proxy, serve_http};
pub use pki::{CLIENT_SPIFFE, pki, tls_probe};
pub use tokens::{
    CLIENT_ID, ISSUER, KID, READ, claims, issuer, new_key, now, sign, sign_with, test_keys,
    test_policy, token_for,
};

/// The sum of a metric's series (this process's registry) whose labels
/// contain every one of `labels`.
pub fn metric_sum(name: &str, labels: &[&str]) -> f64 {
    notes_server::metrics::metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Installs the crypto provider once; logs to stderr when `TEST_LOG` is set.
pub fn init() {
    notes_server::tls::install_crypto_provider();
    if std::env::var_os("TEST_LOG").is_some() {
        std::mem::forget(notes_server::telemetry::init(false, false));
    }
}

/// Log lines written into memory, for tests that read what the server logged.
#[derive(Clone, Default)]
pub struct LogSink(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    /// Captures the logs of this test's thread (`filter` in `RUST_LOG`
    /// syntax) while the guard lives. A `#[tokio::test]` runs the server's
    /// tasks on that same thread, so this needs no process of its own and
    /// leaves the global subscriber alone.
    pub fn capture(filter: &str) -> (LogSink, tracing::subscriber::DefaultGuard) {
        let sink = LogSink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (sink, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Installs the server's own subscriber (OpenTelemetry layer included),
    /// text lines into this sink; for this test process (nextest runs each
    /// test in its own).
    pub fn install_server_telemetry(&self) {
        self.install(false);
    }

    /// [`install_server_telemetry`](Self::install_server_telemetry) with
    /// trace export on (`--otlp`; nothing listens at the default endpoint),
    /// so every span, a caller's too, is an OpenTelemetry span.
    pub fn install_server_telemetry_exporting(&self) {
        self.install(true);
    }

    fn install(&self, otlp: bool) {
        let writer = self.clone();
        std::mem::forget(notes_server::telemetry::init_with_writer(
            false,
            otlp,
            move || writer.clone(),
        ));
    }
}

/// `token` with the signature of another token of the same issuer: well
/// formed, and refused only by the signature check.
pub fn with_other_signature(token: &str) -> String {
    let other = token_for("mallory");
    let (signed, _) = token.rsplit_once('.').unwrap();
    let (_, signature) = other.rsplit_once('.').unwrap();
    format!("{signed}.{signature}")
}

/// A request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A CreateNote request with `content` and no `request_id`.
pub fn create_request(content: &str) -> notes_api::pb::CreateNoteRequest {
    notes_api::pb::CreateNoteRequest {
        content: content.into(),
        request_id: String::new(),
    }
}

/// CreateNote through the generated stub with `token`.
pub async fn create_as(app: &TestApp, token: &str) -> Result<notes_api::pb::Note, tonic::Status> {
    app.raw()
        .await
        .create_note(with_token(create_request("x"), token))
        .await
        .map(|r| r.into_inner())
}

/// ListNotes through the generated stub with `token`.
pub async fn list_as(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.raw()
        .await
        .list_notes(with_token(
            notes_api::pb::ListNotesRequest::default(),
            token,
        ))
        .await
        .map(|_| ())
}
