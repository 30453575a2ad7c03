//! [`TestApp`]: a real server on 127.0.0.1 with an ephemeral port, built
//! by [`TestApp::builder`], that shuts down when dropped.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use notes_api::pb::notes_service_client::NotesServiceClient;
use notes_client::{NotesClient, TlsMaterial};
use notes_server::{
    App, Limits,
    api::PageTokens,
    auth::Authenticator,
    certs::authority::CertifiedKey,
    config::DynamoConfig,
    startup,
    store::{MemoryStore, NoteStore},
    tls::ServerTls,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{
    init,
    pki::{pki, test_tls},
    tokens::{test_authenticator, token_for},
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
    pub async fn store(&self) -> Arc<dyn NoteStore> {
        let endpoint = match self {
            Backend::Memory => return Arc::new(MemoryStore::new()),
            Backend::DynamoDb => dynamodb_endpoint(),
            Backend::DynamoDbAt(endpoint) => endpoint.clone(),
        };
        let store = startup::dynamodb_store(&dynamodb_config(endpoint))
            .await
            .unwrap();
        store.init_table(Duration::from_secs(30)).await.unwrap();
        Arc::new(store)
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

/// Builds a [`TestApp`]: memory store, the test issuer, the test PKI and
/// short timeouts unless told otherwise.
pub struct TestAppBuilder {
    backend: Backend,
    store: Option<Arc<dyn NoteStore>>,
    authenticator: Option<Arc<Authenticator>>,
    tls: Option<Arc<ServerTls>>,
    limits: Limits,
}

impl TestAppBuilder {
    /// Notes live in `backend`.
    pub fn store(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Notes live in this store (e.g. a wrapper that slows calls down).
    pub fn store_impl(mut self, store: Arc<dyn NoteStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The server's bounds (the harness's short timeouts otherwise).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Calls are decided by `authenticator`.
    pub fn authenticator(self, authenticator: Authenticator) -> Self {
        self.shared_authenticator(Arc::new(authenticator))
    }

    /// Calls are decided by `authenticator`, which the test keeps a handle on.
    pub fn shared_authenticator(mut self, authenticator: Arc<Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// The server's TLS configuration (e.g. reloading from files).
    pub fn tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    pub async fn spawn(self) -> TestApp {
        init();
        let store = match self.store {
            Some(store) => store,
            None => self.backend.store().await,
        };
        let app = App {
            store,
            authenticator: self
                .authenticator
                .unwrap_or_else(|| Arc::new(test_authenticator())),
            tls: self.tls.unwrap_or_else(test_tls),
            page_tokens: PageTokens::new(b"0123456789abcdef0123456789abcdef").unwrap(),
            limits: self.limits,
            admin: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            notes_server::run(
                listener,
                async {
                    let _ = rx.await;
                },
                app,
            )
            .await
            .expect("server failed");
        });
        TestApp {
            addr,
            shutdown: Some(tx),
        }
    }
}

/// A running server; dropped, it shuts down.
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
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
        TestAppBuilder {
            backend: Backend::Memory,
            store: None,
            authenticator: None,
            tls: None,
            limits: test_limits(),
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
