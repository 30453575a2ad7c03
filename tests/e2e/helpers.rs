//! The harness: a per-process test PKI and issuer, and [`TestApp`], a server
//! on an ephemeral port that shuts down when dropped.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::JwkSet};
use notes_api::pb::notes_service_client::NotesServiceClient;
use notes_client::{NotesClient, TlsMaterial};
use notes_server::{
    App,
    api::PageTokens,
    auth::{Authenticator, ScopePolicy, TokenPolicy, Verifier, keys::StaticKeys},
    config::DynamoConfig,
    server::Limits,
    store::{MemoryStore, NoteStore},
    tls::{
        self, ServerTls,
        pki::{CertificateAuthority, CertifiedKey, Subject},
    },
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};
use tokio_rustls::TlsConnector;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub const ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TestPool";
pub const CLIENT_ID: &str = "test-app-client";
pub const KID: &str = "test-key-1";
pub const READ: &str = "notes/read";
pub const WRITE: &str = "notes/write";
pub const CLIENT_SPIFFE: &str = "spiffe://notes.test/billing";

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Certificates: one CA for the server and trusted clients, and a second,
/// untrusted CA with a client certificate of its own.
pub struct TestPki {
    pub ca: CertificateAuthority,
    pub ca_pem: String,
    pub server: CertifiedKey,
    pub client: CertifiedKey,
    pub foreign_client: CertifiedKey,
}

/// The token issuer: an RSA key and its JWKS.
pub struct TestIssuer {
    pub key: EncodingKey,
    pub public_pem: String,
    pub jwks: JwkSet,
}

pub fn init() {
    tls::install_crypto_provider();
    if std::env::var_os("TEST_LOG").is_some() {
        notes_server::telemetry::init(false);
    }
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = CertificateAuthority::generate("notes test CA", DAY).unwrap();
        let server = ca
            .issue_server(
                &Subject {
                    common_name: "localhost".into(),
                    dns_names: vec!["localhost".into()],
                    ips: vec!["127.0.0.1".parse().unwrap()],
                    uris: vec![],
                },
                DAY,
            )
            .unwrap();
        let client = ca
            .issue_client(
                &Subject {
                    common_name: "billing".into(),
                    dns_names: vec!["billing.notes.test".into()],
                    ips: vec![],
                    uris: vec![CLIENT_SPIFFE.into()],
                },
                DAY,
            )
            .unwrap();
        let foreign = CertificateAuthority::generate("someone else's CA", DAY).unwrap();
        let foreign_client = foreign
            .issue_client(
                &Subject {
                    common_name: "billing".into(),
                    uris: vec![CLIENT_SPIFFE.into()],
                    ..Subject::default()
                },
                DAY,
            )
            .unwrap();
        TestPki {
            ca_pem: ca.cert_pem().to_owned(),
            ca,
            server,
            client,
            foreign_client,
        }
    })
}

/// A fresh RSA signing key with its public JWK (`kid` set, RS256).
pub fn new_key(kid: &str) -> (EncodingKey, jsonwebtoken::jwk::Jwk) {
    let (key, _) = rsa_key();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, jwk)
}

/// Signs `claims` with `alg`, `key` and `kid`.
pub fn sign_with(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa_key() -> (EncodingKey, String) {
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    (key, pair.public_key_pem())
}

pub fn issuer() -> &'static TestIssuer {
    static ISSUER_KEYS: OnceLock<TestIssuer> = OnceLock::new();
    ISSUER_KEYS.get_or_init(|| {
        let (key, public_pem) = rsa_key();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(KID.into());
        TestIssuer {
            key,
            public_pem,
            jwks: JwkSet { keys: vec![jwk] },
        }
    })
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid access token for `subject` with both scopes.
pub fn claims(subject: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "sub": subject,
        "client_id": CLIENT_ID,
        "username": subject,
        "token_use": "access",
        "scope": format!("{READ} {WRITE}"),
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

/// Signs `claims` RS256 with the issuer's key and `kid`.
pub fn sign(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    jsonwebtoken::encode(&header, claims, &issuer().key).unwrap()
}

/// A valid token for `subject`.
pub fn token_for(subject: &str) -> String {
    sign(&claims(subject))
}

/// The test issuer's policy: its client, both scopes for users and machines.
pub fn test_policy() -> TokenPolicy {
    TokenPolicy::new(ISSUER, [CLIENT_ID.to_owned()]).with_scopes(ScopePolicy::same_for_all(
        [READ.to_owned()].into(),
        [WRITE.to_owned()].into(),
    ))
}

/// The test issuer's keys, as a fixed JWKS.
pub fn test_keys() -> Arc<StaticKeys> {
    Arc::new(StaticKeys::from_jwks_json(&serde_json::to_vec(&issuer().jwks).unwrap()).unwrap())
}

/// The test PKI's server certificate, trusting the test CA's clients; fixed.
pub fn test_tls() -> Arc<ServerTls> {
    let pki = pki();
    let material = tls::TlsMaterial::from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        pki.ca_pem.as_bytes(),
    )
    .unwrap();
    ServerTls::fixed(tls::server_config(&material).unwrap())
}

/// The default authenticator of test servers.
pub fn test_authenticator() -> Authenticator {
    Authenticator::new(Verifier::new(test_policy(), test_keys()))
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
        let store = dynamodb_config(endpoint).store().await.unwrap();
        store.init_table(Duration::from_secs(30)).await.unwrap();
        Arc::new(store)
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_on(Backend::Memory).await
    }

    pub async fn spawn_on(backend: Backend) -> TestApp {
        Self::spawn_with(backend, test_authenticator()).await
    }

    /// A server on `backend` deciding with `authenticator`.
    pub async fn spawn_with(backend: Backend, authenticator: Authenticator) -> TestApp {
        Self::spawn_shared(backend, Arc::new(authenticator)).await
    }

    /// Like [`spawn_with`](Self::spawn_with), keeping a handle on the authenticator.
    pub async fn spawn_shared(backend: Backend, authenticator: Arc<Authenticator>) -> TestApp {
        Self::spawn_full(backend, authenticator, test_tls()).await
    }

    /// A server with its own TLS configuration (e.g. reloading from files).
    pub async fn spawn_full(
        backend: Backend,
        authenticator: Arc<Authenticator>,
        tls: Arc<ServerTls>,
    ) -> TestApp {
        init();
        let store = backend.store().await;
        let app = App {
            store,
            authenticator,
            tls,
            page_tokens: PageTokens::new(b"0123456789abcdef0123456789abcdef"),
            limits: Limits {
                handshake_timeout: Duration::from_secs(2),
                grace_period: Duration::from_secs(2),
                tls_reload_interval: Duration::from_millis(100),
                ..Limits::default()
            },
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

/// A request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

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

/// Handshakes with the server at `addr` presenting `identity` (or no
/// certificate), sends the HTTP/2 preface and reads: with TLS 1.3 the
/// server's verdict on the client certificate arrives after the client
/// considers the handshake done. Returns the server's leaf certificate, or
/// the TLS error (e.g. the alert the server sent).
pub async fn tls_probe(
    addr: SocketAddr,
    identity: Option<&CertifiedKey>,
) -> Result<CertificateDer<'static>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki().ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(rustls_error)?;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(n) if n > 0 => Ok(stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()),
        Ok(_) => Err(rustls::Error::General("closed without an alert".into())),
        Err(err) => Err(rustls_error(err)),
    }
}

fn rustls_error(err: std::io::Error) -> rustls::Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(err.to_string()))
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

/// CreateNote through the generated stub with `token`.
pub async fn create_as(app: &TestApp, token: &str) -> Result<notes_api::pb::Note, tonic::Status> {
    let request = notes_api::pb::CreateNoteRequest {
        content: "x".into(),
        request_id: String::new(),
    };
    app.raw()
        .await
        .create_note(with_token(request, token))
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
