//! A typed Rust client for `notes.v1.NotesService`.
//!
//! The service requires mutual TLS (your service's client certificate) and a
//! Cognito access token on every call. A service calling it with a Cognito
//! machine token (client credentials):
//!
//! ```no_run
//! use std::sync::Arc;
//! use notes_client::{ClientCredentials, NotesClient, TlsFiles};
//!
//! # async fn demo() -> Result<(), notes_client::Error> {
//! let tls = TlsFiles::new("ca.pem", "billing.pem", "billing.key").load()?;
//! let tokens = ClientCredentials::new(
//!     "https://my-pool.auth.eu-west-1.amazoncognito.com/oauth2/token",
//!     "my-app-client-id",
//!     std::env::var("NOTES_CLIENT_SECRET").unwrap_or_default(),
//! )?
//! .scopes(["notes/read", "notes/write"]);
//! let client = NotesClient::builder("https://notes.internal:50051", tls)
//!     .token_provider(Arc::new(tokens))
//!     .connect()
//!     .await?;
//! let note = client.create("remember the milk", None).await?;
//! assert_eq!(client.get(&note.note_id).await?.content, "remember the milk");
//! # Ok(()) }
//! ```
//!
//! `client/examples/dev.rs` runs the same against `notes-server dev`
//! (`cargo run -p notes-client --example dev`).
//!
//! - The client is cheap to clone and safe to share across tasks: clones
//!   share one HTTP/2 channel.
//! - Tokens come from a [`TokenProvider`]: [`StaticToken`], [`TokenFile`]
//!   (re-read when it changes), [`ClientCredentials`] and [`UserSignIn`]
//!   (cached, refreshed before expiry, one refresh at a time).
//! - UNAVAILABLE and failed connections are retried with backoff and jitter
//!   on calls that are safe to repeat ([`RetryPolicy`], `notes_api::methods`);
//!   writes send a `request_id` (unless the caller passes none), so a retry
//!   answers the first outcome and never applies twice.
//!   [`NotesClient::retries`] counts the retries.
//! - Failures are an [`Error`] with one variant per condition a caller acts
//!   on, carrying the server's message.
//!
//! # Layout
//! - [`NotesClient`] and its [`ClientBuilder`]: connection, TLS, calls, `list_all`.
//! - [`tokens`]: the [`TokenProvider`] trait, static and file tokens.
//! - [`cognito`]: Cognito client credentials and user sign-in.
//! - [`retry`]: the [`RetryPolicy`].
//! - [`Error`]: one variant per status code a caller acts upon.
//! - [`pb`]: the generated messages (re-exported from `notes-api`).

#![forbid(unsafe_code)]

pub mod cognito;
mod error;
pub mod retry;
pub mod tokens;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::Stream;

use notes_api::methods::{self, Method, Retry};
use notes_api::pb::{
    CreateNoteRequest, DeleteNoteRequest, GetNoteRequest, ListNotesRequest, ListNotesResponse,
    Note, UpdateNoteRequest, notes_service_client::NotesServiceClient,
};
use tonic::{
    metadata::AsciiMetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

pub use cognito::{ClientCredentials, UserSignIn};
pub use error::Error;
pub use notes_api::pb;
pub use retry::RetryPolicy;
pub use tokens::{StaticToken, TokenFile, TokenProvider};

/// Mutual-TLS material, PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA that signed the server's certificate.
    pub ca_pem: Vec<u8>,
    /// This service's client certificate.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// Paths of mutual-TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (PEM) for the server.
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Names the three files.
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// Reads the three files; a missing or unreadable one is named in the error.
    pub fn load(&self) -> Result<TlsMaterial, Error> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::config_from(format!("cannot read {what} {}", path.display()), e)
            })
        };
        let material = TlsMaterial {
            ca_pem: read(&self.ca, "CA certificate")?,
            cert_pem: read(&self.cert, "client certificate")?,
            key_pem: read(&self.key, "client key")?,
        };
        // What each file must hold, checked here so the error names the file
        // (the transport would only say it found no key).
        let holds = |pem: &[u8], label: &str| {
            String::from_utf8_lossy(pem).contains(&format!("-----BEGIN {label}"))
                || (label == "PRIVATE KEY"
                    && ["RSA PRIVATE KEY", "EC PRIVATE KEY"]
                        .iter()
                        .any(|l| String::from_utf8_lossy(pem).contains(&format!("-----BEGIN {l}"))))
        };
        let check = |pem: &[u8], path: &PathBuf, what: &str, label: &str| {
            if holds(pem, label) {
                return Ok(());
            }
            let swapped = if label == "PRIVATE KEY" && holds(pem, "CERTIFICATE") {
                " (it holds a certificate: are --cert and --key swapped?)"
            } else if label == "CERTIFICATE" && holds(pem, "PRIVATE KEY") {
                " (it holds a private key: are --cert and --key swapped?)"
            } else {
                ""
            };
            Err(Error::config(format!(
                "{what} {} holds no PEM {label}{swapped}",
                path.display()
            )))
        };
        check(&material.ca_pem, &self.ca, "CA certificate", "CERTIFICATE")?;
        check(
            &material.cert_pem,
            &self.cert,
            "client certificate",
            "CERTIFICATE",
        )?;
        check(&material.key_pem, &self.key, "client key", "PRIVATE KEY")?;
        Ok(material)
    }
}

/// Builds a [`NotesClient`].
pub struct ClientBuilder {
    endpoint: String,
    tls: TlsMaterial,
    tokens: Option<Arc<dyn TokenProvider>>,
    domain_name: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    retry: RetryPolicy,
}

impl ClientBuilder {
    /// Uses this fixed token for every call.
    pub fn token(self, token: impl Into<String>) -> Self {
        self.token_provider(Arc::new(StaticToken::new(token)))
    }

    /// Asks `provider` for the token of every call (files, Cognito, ...).
    pub fn token_provider(mut self, provider: Arc<dyn TokenProvider>) -> Self {
        self.tokens = Some(provider);
        self
    }

    /// The TLS server name to verify, when it differs from the endpoint's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// How long to wait for the TCP and TLS connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline of every call attempt (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries UNAVAILABLE on calls that are safe to repeat (default:
    /// [`RetryPolicy::default`], 4 attempts); [`RetryPolicy::none`] turns it off.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    fn channel(&self) -> Result<Endpoint, Error> {
        // tonic sends in clear over http:// whatever TLS says: refuse it.
        let scheme = self
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.scheme_str().map(str::to_owned));
        if scheme.as_deref() != Some("https") {
            return Err(Error::config(format!(
                "endpoint {:?}: use https://HOST:PORT (the service speaks only mutual TLS, and a token is never sent in clear)",
                self.endpoint
            )));
        }
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.tls.ca_pem))
            .identity(Identity::from_pem(&self.tls.cert_pem, &self.tls.key_pem));
        if let Some(name) = &self.domain_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::config_from(format!("invalid endpoint {:?}", self.endpoint), e))?
            .tls_config(tls)
            .map_err(|e| Error::config_from("TLS configuration", e))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout))
    }

    /// Connects now, verifying the server's certificate against the CA and
    /// presenting the client certificate.
    pub async fn connect(self) -> Result<NotesClient, Error> {
        let channel = self.channel()?.connect().await.map_err(Error::connect)?;
        self.finish(channel)
    }

    /// Connects on the first call (and reconnects as needed); for services
    /// that start before the notes service is reachable.
    pub fn connect_lazy(self) -> Result<NotesClient, Error> {
        let channel = self.channel()?.connect_lazy();
        self.finish(channel)
    }

    fn finish(self, channel: Channel) -> Result<NotesClient, Error> {
        let tokens = self
            .tokens
            .ok_or_else(|| Error::config("no token: call .token() or .token_provider()"))?;
        Ok(NotesClient {
            inner: NotesServiceClient::new(channel),
            tokens,
            retry: self.retry,
            retries: Arc::default(),
        })
    }
}

/// Writes the current `tracing` span's OpenTelemetry context into the call's
/// metadata (W3C `traceparent`) through the global propagator, so a calling
/// service's trace continues into the notes service. Without a propagator
/// installed (`opentelemetry::global::set_text_map_propagator`) nothing is
/// written.
fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Injector<'a>(&'a mut tonic::metadata::MetadataMap);
    impl opentelemetry::propagation::Injector for Injector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                self.0.insert(key, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Injector(metadata));
    });
}

/// A connection to the notes service. Cheap to clone: clones share one
/// HTTP/2 channel and can be used from many tasks at once.
#[derive(Clone)]
pub struct NotesClient {
    inner: NotesServiceClient<Channel>,
    tokens: Arc<dyn TokenProvider>,
    retry: RetryPolicy,
    retries: Arc<AtomicU64>,
}

impl NotesClient {
    /// Starts building a client for `endpoint` (e.g. `https://notes.internal:50051`).
    pub fn builder(endpoint: impl Into<String>, tls: TlsMaterial) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            tls,
            tokens: None,
            domain_name: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }

    /// Attempts made beyond the first, over every call of this client and
    /// its clones (for the caller's metrics).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// `message` with the current token attached.
    async fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Error> {
        let token = self.tokens.token().await?;
        let mut value: AsciiMetadataValue = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::token("the token has characters not allowed in metadata"))?;
        // Keep it out of debug output.
        value.set_sensitive(true);
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", value);
        inject_trace_context(request.metadata_mut());
        Ok(request)
    }

    /// Runs `call` for `method`, retrying UNAVAILABLE under the policy when
    /// the method table ([`notes_api::methods`]) says the method is safe to
    /// repeat: reads always, writes only when `keyed` (the request carries a
    /// `request_id`).
    async fn call<T, R, F, Fut>(
        &self,
        method: &Method,
        keyed: bool,
        message: T,
        call: F,
    ) -> Result<R, Error>
    where
        T: Clone,
        F: Fn(NotesServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let attempts = match method.retry {
            Retry::Safe => self.retry.max_attempts.max(1),
            Retry::WithRequestId if keyed => self.retry.max_attempts.max(1),
            Retry::WithRequestId => 1,
        };
        let mut attempt = 1;
        loop {
            let request = self.request(message.clone()).await?;
            let err = match call(self.inner.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => Error::from(status),
            };
            if matches!(err, Error::Unauthenticated(_)) {
                self.tokens.invalidate();
            }
            if !err.is_transient() || attempt >= attempts {
                return Err(err);
            }
            tokio::time::sleep(self.retry.backoff(attempt)).await;
            attempt += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Creates a note. A `request_id` is always sent (a new UUID when none is
    /// given), so a retry returns the note the first attempt created.
    pub async fn create(&self, content: &str, request_id: Option<&str>) -> Result<Note, Error> {
        let request = CreateNoteRequest {
            content: content.to_owned(),
            // An empty id would mean "no key" to the server, and a retry
            // could then create a second note: never send one.
            request_id: request_id
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        self.call(
            &methods::CREATE_NOTE,
            true,
            request,
            |mut c, r| async move { c.create_note(r).await },
        )
        .await
    }

    /// Reads one note.
    pub async fn get(&self, note_id: &str) -> Result<Note, Error> {
        let request = GetNoteRequest {
            note_id: note_id.to_owned(),
        };
        self.call(&methods::GET_NOTE, false, request, |mut c, r| async move {
            c.get_note(r).await
        })
        .await
    }

    /// One page of notes, newest first. `page_size` 0 means the server's default.
    pub async fn list(&self, page_size: i32, page_token: &str) -> Result<ListNotesResponse, Error> {
        let request = ListNotesRequest {
            page_size,
            page_token: page_token.to_owned(),
        };
        self.call(
            &methods::LIST_NOTES,
            false,
            request,
            |mut c, r| async move { c.list_notes(r).await },
        )
        .await
    }

    /// Every note, newest first, fetching pages of `page_size` as the stream
    /// is read.
    pub fn list_all(
        &self,
        page_size: i32,
    ) -> impl Stream<Item = Result<Note, Error>> + Send + 'static {
        self.list_all_from(page_size, "")
    }

    /// Like [`list_all`](Self::list_all), starting at the page `page_token`
    /// names (the first page when empty).
    pub fn list_all_from(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> impl Stream<Item = Result<Note, Error>> + Send + 'static {
        struct Pages {
            client: NotesClient,
            buffered: std::vec::IntoIter<Note>,
            next: Option<String>,
        }
        let start = Pages {
            client: self.clone(),
            buffered: Vec::new().into_iter(),
            next: Some(page_token.to_owned()),
        };
        futures_util::stream::try_unfold(start, move |mut pages| async move {
            loop {
                if let Some(note) = pages.buffered.next() {
                    return Ok(Some((note, pages)));
                }
                let Some(token) = pages.next.take() else {
                    return Ok(None);
                };
                let page = pages.client.list(page_size, &token).await?;
                pages.buffered = page.notes.into_iter();
                pages.next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
            }
        })
    }

    /// Replaces a note's content; `expected_version` 0 is unconditional.
    /// A new `request_id` is sent, so an UNAVAILABLE answer is retried
    /// under the policy and a retry answers the first outcome.
    pub async fn update(
        &self,
        note_id: &str,
        content: &str,
        expected_version: i64,
    ) -> Result<Note, Error> {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.update_with_request_id(note_id, content, expected_version, Some(&request_id))
            .await
    }

    /// Like [`update`](Self::update) with the caller's `request_id` (for a
    /// retry that outlives this process), or none: then it is never retried.
    pub async fn update_with_request_id(
        &self,
        note_id: &str,
        content: &str,
        expected_version: i64,
        request_id: Option<&str>,
    ) -> Result<Note, Error> {
        let request = UpdateNoteRequest {
            note_id: note_id.to_owned(),
            content: content.to_owned(),
            expected_version,
            request_id: request_id.unwrap_or_default().to_owned(),
        };
        let keyed = !request.request_id.is_empty();
        self.call(
            &methods::UPDATE_NOTE,
            keyed,
            request,
            |mut c, r| async move { c.update_note(r).await },
        )
        .await
    }

    /// Deletes a note; `expected_version` 0 is unconditional. A new
    /// `request_id` is sent, so it is retried like [`update`](Self::update).
    pub async fn delete(&self, note_id: &str, expected_version: i64) -> Result<(), Error> {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.delete_with_request_id(note_id, expected_version, Some(&request_id))
            .await
    }

    /// Like [`delete`](Self::delete) with the caller's `request_id`, or none:
    /// then it is never retried.
    pub async fn delete_with_request_id(
        &self,
        note_id: &str,
        expected_version: i64,
        request_id: Option<&str>,
    ) -> Result<(), Error> {
        let request = DeleteNoteRequest {
            note_id: note_id.to_owned(),
            expected_version,
            request_id: request_id.unwrap_or_default().to_owned(),
        };
        let keyed = !request.request_id.is_empty();
        self.call(
            &methods::DELETE_NOTE,
            keyed,
            request,
            |mut c, r| async move { c.delete_note(r).await },
        )
        .await?;
        Ok(())
    }
}
