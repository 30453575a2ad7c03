//! [`TestApp`]: a real server on 127.0.0.1 with an ephemeral port, built
//! by [`TestApp::builder`] through `startup::build`, exactly as `serve`
//! builds it, from settings over test files (PKI, the test issuer's JWKS,
//! the page-token key) written for each server; it shuts down when dropped.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use jsonwebtoken::jwk::JwkSet;
use notes_api::pb::notes_service_client::NotesServiceClient;
use notes_client::{NotesClient, TlsMaterial};
use notes_server::{
    Limits,
    auth::{Bindings, TokenPolicy, jwks::JwksSettings},
    certs::authority::CertifiedKey,
    config::{AuthSettings, DynamoConfig, IssuerSettings, JwksLocation, Settings, StoreSettings},
    startup,
    store::NoteStore,
    tls::{Identity as PeerName, TlsFiles},
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{
    init,
    pki::{pki, write_files},
    tokens::{test_policy, token_for},
};

/// Which store a test server uses.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The in-memory store.
    Memory,
    /// A fresh table on the test DynamoDB server (moto, started by scripts/test).
    DynamoDb,
    /// A fresh table on the test DynamoDB server, reached through this endpoint.
    DynamoDbAt(String),
}

/// The DynamoDB-compatible server that `scripts/test` started.
pub fn dynamodb_endpoint() -> String {
    const HELP: &str =
        "DynamoDB tests need the moto server: run ./scripts/test, which installs and starts it";
    let endpoint = std::env::var("NOTES_TEST_DYNAMODB_ENDPOINT").expect(HELP);
    // Without explicit credentials the AWS chain would probe instance metadata
    // over the network; the script sets dummy ones for moto.
    assert!(std::env::var_os("AWS_ACCESS_KEY_ID").is_some(), "{HELP}");
    endpoint
}

/// DynamoDB settings for a new, uniquely named table at `endpoint`.
pub fn dynamodb_config(endpoint: String) -> DynamoConfig {
    DynamoConfig {
        table: format!("notes-test-{}", uuid::Uuid::new_v4().simple()),
        dynamodb_endpoint: Some(endpoint),
        aws_region: Some("us-east-1".into()),
        dynamodb_timeout_ms: 3000,
        dynamodb_attempt_timeout_ms: 1000,
        dynamodb_max_attempts: 3,
    }
}

impl Backend {
    /// The store setting: a fresh table for DynamoDB, created at start.
    pub fn settings(&self) -> StoreSettings {
        let endpoint = match self {
            Backend::Memory => return StoreSettings::Memory,
            Backend::DynamoDb => dynamodb_endpoint(),
            Backend::DynamoDbAt(endpoint) => endpoint.clone(),
        };
        StoreSettings::Dynamodb {
            config: dynamodb_config(endpoint),
            create_if_missing: true,
        }
    }
}

/// The defaults, with timeouts short enough for tests.
pub fn test_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(2),
        grace_period: Duration::from_secs(2),
        tls_reload_interval: Duration::from_millis(100),
        ..Limits::default()
    }
}

/// One issuer whose keys are the JWKS file at `jwks`, with `policy`.
pub fn issuer_settings(policy: TokenPolicy, jwks: JwksLocation) -> AuthSettings {
    AuthSettings {
        issuers: vec![IssuerSettings {
            setting: "the test issuer",
            policy,
            jwks,
        }],
        max_token_bytes: notes_server::auth::verify::DEFAULT_MAX_TOKEN_BYTES,
        cache_capacity: notes_server::auth::verify::DEFAULT_CACHE_CAPACITY,
        bindings: Bindings::new(),
        several_issuers: false,
    }
}

/// Builds a [`TestApp`]: the settings `serve` would have over the test PKI
/// and issuer (memory store, short timeouts), changed only through
/// settings.
pub struct TestAppBuilder {
    dir: tempfile::TempDir,
    settings: Settings,
    store: Option<Arc<dyn NoteStore>>,
}

impl TestAppBuilder {
    /// Notes live in `backend`.
    pub fn store(mut self, backend: Backend) -> Self {
        self.settings.store = backend.settings();
        self
    }

    /// Notes live in this store (a wrapper that slows calls down or injects
    /// faults): `startup::build_with_store`, the one seam of the assembly.
    pub fn store_impl(mut self, store: Arc<dyn NoteStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The server's bounds (the harness's short timeouts otherwise).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.settings.limits = limits;
        self
    }

    /// Token issuers and policies.
    pub fn auth(mut self, auth: AuthSettings) -> Self {
        self.settings.auth = auth;
        self
    }

    /// The test issuer with `policy` instead of the default one.
    pub fn policy(self, policy: TokenPolicy) -> Self {
        let jwks = JwksLocation::File(self.dir.path().join("jwks.json"));
        self.auth(issuer_settings(policy, jwks))
    }

    /// The test issuer's policy over `keys`, written to a file of their own.
    pub fn keys(self, policy: TokenPolicy, keys: &JwkSet) -> Self {
        let path = self.dir.path().join("other-jwks.json");
        super::pki::write(&path, &serde_json::to_vec(keys).unwrap());
        self.auth(issuer_settings(policy, JwksLocation::File(path)))
    }

    /// The test issuer's policy over keys fetched from `url`.
    pub fn jwks_url(self, url: &str, jwks: JwksSettings) -> Self {
        self.auth(issuer_settings(
            test_policy(),
            JwksLocation::Url(url.to_owned(), jwks),
        ))
    }

    /// Certificate bindings.
    pub fn bindings(mut self, bindings: Bindings) -> Self {
        self.settings.auth.bindings = bindings;
        self
    }

    /// Only these certificate identities may call.
    pub fn allowed_identities(mut self, identities: impl IntoIterator<Item = PeerName>) -> Self {
        self.settings.allowed_identities = identities.into_iter().collect();
        self
    }

    /// Any other setting.
    pub fn settings(mut self, change: impl FnOnce(&mut Settings, &Path)) -> Self {
        change(&mut self.settings, self.dir.path());
        self
    }

    pub async fn spawn(self) -> TestApp {
        init();
        let server = match self.store {
            Some(store) => startup::build_with_store(self.settings, store),
            None => startup::build(self.settings).await,
        }
        .expect("the test settings build a server");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            server
                .serve(listener, None, async {
                    let _ = rx.await;
                })
                .await
                .expect("server failed");
        });
        TestApp {
            addr,
            shutdown: Some(tx),
            _dir: Arc::new(self.dir),
        }
    }
}

/// A running server; dropped, it shuts down.
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// The server's files, removed when the last holder is dropped.
    _dir: Arc<tempfile::TempDir>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let tls = TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            client_ca: dir.path().join("ca.pem"),
            crls: Vec::new(),
        };
        let auth = issuer_settings(
            test_policy(),
            JwksLocation::File(dir.path().join("jwks.json")),
        );
        let settings = Settings {
            limits: test_limits(),
            ..Settings::new(tls, auth, dir.path().join("page.key"))
        };
        TestAppBuilder {
            dir,
            settings,
            store: None,
        }
    }

    /// The default server: memory store, test issuer, test PKI.
    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn tls(&self) -> TlsMaterial {
        let pki = pki();
        TlsMaterial {
            ca_pem: pki.ca_pem.clone().into_bytes(),
            cert_pem: pki.client.cert_pem.clone().into_bytes(),
            key_pem: pki.client.key_pem.clone().into_bytes(),
        }
    }

    /// The typed client, authenticated as `subject`.
    pub async fn client_as(&self, subject: &str) -> NotesClient {
        self.client_with_token(&token_for(subject)).await
    }

    pub async fn client_with_token(&self, token: &str) -> NotesClient {
        NotesClient::builder(self.endpoint(), self.tls())
            .token(token)
            .connect()
            .await
            .expect("connect")
    }

    /// An mTLS channel presenting `identity` (or no certificate at all).
    pub async fn channel(&self, identity: Option<&CertifiedKey>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki().ca_pem));
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        Endpoint::from_shared(self.endpoint())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    /// The generated stub over a trusted-certificate channel, no token attached.
    pub async fn raw(&self) -> NotesServiceClient<Channel> {
        NotesServiceClient::new(self.channel(Some(&pki().client)).await)
    }
}
