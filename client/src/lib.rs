//! A typed Rust client for `notes.v1.NotesService`.
//!
//! Connects over mutual TLS (the service requires a client certificate) and
//! attaches a Cognito access token to every call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), notes_client::Error> {
//! use notes_client::{NotesClient, TlsFiles};
//!
//! let tls = TlsFiles::new(".notes-dev/ca.pem", ".notes-dev/client.pem", ".notes-dev/client.key")
//!     .load()?;
//! let token = std::fs::read_to_string(".notes-dev/token").unwrap_or_default();
//! let mut client = NotesClient::builder("https://localhost:50051", tls, token.trim())
//!     .connect()
//!     .await?;
//! let note = client.create("remember the milk", None).await?;
//! let again = client.get(&note.note_id).await?;
//! assert_eq!(again.content, "remember the milk");
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`NotesClient`] and its [`ClientBuilder`]: connection, TLS, token, calls.
//! - [`Error`]: one variant per status code a caller acts upon.
//! - [`pb`]: the generated messages (re-exported from `notes-api`).

#![forbid(unsafe_code)]

mod error;

use std::{path::PathBuf, time::Duration};

use notes_api::pb::{
    CreateNoteRequest, DeleteNoteRequest, GetNoteRequest, ListNotesRequest, ListNotesResponse,
    Note, UpdateNoteRequest, notes_service_client::NotesServiceClient,
};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

pub use error::Error;
pub use notes_api::pb;

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

    /// Reads them.
    pub fn load(&self) -> Result<TlsMaterial, Error> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
        };
        Ok(TlsMaterial {
            ca_pem: read(&self.ca, "CA certificate")?,
            cert_pem: read(&self.cert, "client certificate")?,
            key_pem: read(&self.key, "client key")?,
        })
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl BearerToken {
    /// Fails if the token has characters that cannot go in a header.
    pub fn new(token: &str) -> Result<Self, Error> {
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                Error::Config("the token has characters not allowed in metadata".into())
            })?;
        // Keep it out of debug output.
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Builds a [`NotesClient`].
pub struct ClientBuilder {
    endpoint: String,
    tls: TlsMaterial,
    token: String,
    domain_name: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl ClientBuilder {
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

    /// Deadline of every call (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects, verifying the server's certificate against the CA and
    /// presenting the client certificate.
    pub async fn connect(self) -> Result<NotesClient, Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.tls.ca_pem))
            .identity(Identity::from_pem(&self.tls.cert_pem, &self.tls.key_pem));
        if let Some(name) = self.domain_name {
            tls = tls.domain_name(name);
        }
        let channel = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::Config(format!("invalid endpoint {:?}: {e}", self.endpoint)))?
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("TLS configuration: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(Error::connect)?;
        let token = BearerToken::new(&self.token)?;
        Ok(NotesClient {
            inner: NotesServiceClient::with_interceptor(channel, token),
        })
    }
}

/// A connection to the notes service. Cheap to clone: clones share the channel.
#[derive(Clone)]
pub struct NotesClient {
    inner: NotesServiceClient<InterceptedService<Channel, BearerToken>>,
}

impl NotesClient {
    /// Starts building a client for `endpoint` (e.g. `https://notes.internal:50051`).
    pub fn builder(
        endpoint: impl Into<String>,
        tls: TlsMaterial,
        token: impl Into<String>,
    ) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            tls,
            token: token.into(),
            domain_name: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }

    /// Creates a note; with a `request_id`, a retry returns the same note.
    pub async fn create(&mut self, content: &str, request_id: Option<&str>) -> Result<Note, Error> {
        let request = CreateNoteRequest {
            content: content.to_owned(),
            request_id: request_id.unwrap_or_default().to_owned(),
        };
        Ok(self.inner.create_note(request).await?.into_inner())
    }

    /// Reads one note.
    pub async fn get(&mut self, note_id: &str) -> Result<Note, Error> {
        let request = GetNoteRequest {
            note_id: note_id.to_owned(),
        };
        Ok(self.inner.get_note(request).await?.into_inner())
    }

    /// One page of notes, newest first. `page_size` 0 means the server's default.
    pub async fn list(
        &mut self,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListNotesResponse, Error> {
        let request = ListNotesRequest {
            page_size,
            page_token: page_token.to_owned(),
        };
        Ok(self.inner.list_notes(request).await?.into_inner())
    }

    /// Replaces a note's content; `expected_version` 0 is unconditional.
    pub async fn update(
        &mut self,
        note_id: &str,
        content: &str,
        expected_version: i64,
    ) -> Result<Note, Error> {
        let request = UpdateNoteRequest {
            note_id: note_id.to_owned(),
            content: content.to_owned(),
            expected_version,
        };
        Ok(self.inner.update_note(request).await?.into_inner())
    }

    /// Deletes a note; `expected_version` 0 is unconditional.
    pub async fn delete(&mut self, note_id: &str, expected_version: i64) -> Result<(), Error> {
        let request = DeleteNoteRequest {
            note_id: note_id.to_owned(),
            expected_version,
        };
        self.inner.delete_note(request).await?;
        Ok(())
    }
}
