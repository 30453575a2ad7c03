//! Typed configuration for `notes-server serve`.
//!
//! Every setting is a flag with a `NOTES_*` environment fallback (flags win);
//! anything invalid fails start-up with a message naming the setting.
//! Secrets live in [`Secret`], which never prints.
//!
//! - [`auth`]: issuers, their JWKS and claim policies, certificate bindings
//!   (flags for one issuer, or a TOML file for several).

pub mod auth;

use std::{collections::BTreeSet, fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

pub use auth::AuthArgs;

use crate::{
    App,
    api::{PageTokens, page_token::MIN_KEY_LEN},
    server::Limits,
    store::{DynamoStore, MemoryStore, NoteStore},
    tls::{ServerTls, TlsFiles},
};

/// A value that must not reach logs or error messages.
#[derive(Clone)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A start-up configuration error, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {setting}: {problem}")]
pub struct ConfigError {
    /// The flag and environment variable.
    pub setting: &'static str,
    /// What is wrong.
    pub problem: String,
}

pub(crate) fn config_err(setting: &'static str, problem: impl fmt::Display) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.to_string(),
    }
}

/// Settings of `notes-server serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "NOTES_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Server certificate chain (PEM, leaf first).
    #[arg(long, env = "NOTES_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, env = "NOTES_TLS_KEY")]
    pub tls_key: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long, env = "NOTES_CLIENT_CA")]
    pub client_ca: PathBuf,
    /// CRLs (PEM) of the client CA; revoked client certificates fail the handshake.
    #[arg(long = "client-crl", env = "NOTES_CLIENT_CRLS", value_delimiter = ',')]
    pub client_crls: Vec<PathBuf>,
    /// Only these client-certificate identities (URI SAN, else DNS SAN) may call; empty: any.
    #[arg(long, env = "NOTES_ALLOWED_CLIENT_IDENTITIES", value_delimiter = ',')]
    pub allowed_client_identities: Vec<String>,
    /// Seconds between checks of the TLS files for changes (SIGHUP reloads at once).
    #[arg(long, env = "NOTES_TLS_RELOAD_INTERVAL_SECS", default_value_t = 10)]
    pub tls_reload_interval_secs: u64,
    /// Token issuers, policies and certificate bindings.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// File holding the page-token key: at least 32 random bytes, the same on every instance.
    #[arg(long, env = "NOTES_PAGE_TOKEN_KEY_FILE")]
    pub page_token_key_file: PathBuf,
    /// Seconds allowed for a TLS handshake.
    #[arg(long, env = "NOTES_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Seconds in-flight calls get to finish on shutdown.
    #[arg(long, env = "NOTES_GRACE_PERIOD_SECS", default_value_t = 20)]
    pub grace_period_secs: u64,
    /// Where notes live: `dynamodb` (production) or `memory` (one instance, lost on exit).
    #[arg(long, env = "NOTES_STORE", value_enum, default_value_t = StoreKind::Dynamodb)]
    pub store: StoreKind,
    /// DynamoDB settings.
    #[command(flatten)]
    pub dynamodb: DynamoConfig,
}

/// The note store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// DynamoDB (`--table`, credentials and region from the standard AWS chain).
    Dynamodb,
    /// In process memory: a single instance, notes lost on exit.
    Memory,
}

/// DynamoDB connection settings. Region and credentials come from the
/// standard AWS chain (environment, profile, web identity, ECS/EC2 roles).
#[derive(Debug, Clone, clap::Args)]
pub struct DynamoConfig {
    /// Table name.
    #[arg(long, env = "NOTES_TABLE", default_value = "notes")]
    pub table: String,
    /// Endpoint URL override, for DynamoDB Local, moto or LocalStack.
    #[arg(long, env = "NOTES_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// Region override (default: the AWS chain, e.g. AWS_REGION).
    #[arg(long, env = "NOTES_AWS_REGION")]
    pub aws_region: Option<String>,
    /// Deadline of one DynamoDB operation including retries, in milliseconds.
    #[arg(long, env = "NOTES_DYNAMODB_TIMEOUT_MS", default_value_t = 3000)]
    pub dynamodb_timeout_ms: u64,
    /// Deadline of one attempt, in milliseconds.
    #[arg(
        long,
        env = "NOTES_DYNAMODB_ATTEMPT_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub dynamodb_attempt_timeout_ms: u64,
    /// Attempts per operation (1 = no retry); retries back off with jitter.
    #[arg(long, env = "NOTES_DYNAMODB_MAX_ATTEMPTS", default_value_t = 3)]
    pub dynamodb_max_attempts: u32,
}

impl DynamoConfig {
    /// A DynamoDB client with these timeouts and retry policy.
    pub async fn client(&self) -> Result<aws_sdk_dynamodb::Client, ConfigError> {
        use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
        if self.table.trim().is_empty() {
            return Err(config_err("--table / NOTES_TABLE", "must not be empty"));
        }
        if self.dynamodb_max_attempts == 0 {
            return Err(config_err(
                "--dynamodb-max-attempts / NOTES_DYNAMODB_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.dynamodb_max_attempts)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_secs(1)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(
                        self.dynamodb_attempt_timeout_ms.min(1000),
                    ))
                    .operation_attempt_timeout(Duration::from_millis(
                        self.dynamodb_attempt_timeout_ms,
                    ))
                    .operation_timeout(Duration::from_millis(self.dynamodb_timeout_ms))
                    .build(),
            );
        if let Some(region) = &self.aws_region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.dynamodb_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(config_err(
                "--aws-region / NOTES_AWS_REGION (or AWS_REGION)",
                "no AWS region configured",
            ));
        }
        Ok(aws_sdk_dynamodb::Client::new(&shared))
    }

    /// The store on the configured table.
    pub async fn store(&self) -> Result<DynamoStore, ConfigError> {
        Ok(DynamoStore::new(self.client().await?, self.table.trim()))
    }
}

/// The list as a set, dropping blanks.
pub(crate) fn scope_set(scopes: &[String]) -> BTreeSet<String> {
    scopes
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads a page-token key file and checks its length.
pub fn read_page_token_key(path: &std::path::Path) -> Result<Secret<Vec<u8>>, ConfigError> {
    const SETTING: &str = "--page-token-key-file / NOTES_PAGE_TOKEN_KEY_FILE";
    let key =
        std::fs::read(path).map_err(|e| config_err(SETTING, format!("{}: {e}", path.display())))?;
    if key.len() < MIN_KEY_LEN {
        return Err(config_err(
            SETTING,
            format!(
                "{} holds {} bytes; at least {MIN_KEY_LEN} are required",
                path.display(),
                key.len()
            ),
        ));
    }
    Ok(Secret::new(key))
}

impl ServeConfig {
    /// Checks every setting, checks the table, and assembles the server.
    pub async fn build(&self) -> Result<App, ConfigError> {
        let authenticator = self.auth.build()?;
        let tls = ServerTls::from_files(TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.client_ca.clone(),
            crls: self.client_crls.clone(),
        })
        .map_err(|e| {
            config_err(
                "--tls-cert / --tls-key / --client-ca / --client-crl",
                error_chain(&e),
            )
        })?;
        if self.tls_reload_interval_secs == 0 {
            return Err(config_err(
                "--tls-reload-interval-secs / NOTES_TLS_RELOAD_INTERVAL_SECS",
                "must be at least 1",
            ));
        }
        let authenticator =
            authenticator.with_allowed_identities(scope_set(&self.allowed_client_identities));
        let page_key = read_page_token_key(&self.page_token_key_file)?;

        let store: Arc<dyn NoteStore> = match self.store {
            StoreKind::Memory => Arc::new(MemoryStore::new()),
            StoreKind::Dynamodb => {
                let store = self.dynamodb.store().await?;
                store.check_table().await.map_err(|e| {
                    config_err(
                        "--table / NOTES_TABLE",
                        format!(
                            "{} (run `notes-server init-table` to create it)",
                            error_chain(&e)
                        ),
                    )
                })?;
                Arc::new(store)
            }
        };
        Ok(App {
            store,
            authenticator: Arc::new(authenticator),
            tls,
            page_tokens: PageTokens::new(page_key.expose()),
            limits: Limits {
                handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
                tls_reload_interval: Duration::from_secs(self.tls_reload_interval_secs),
                grace_period: Duration::from_secs(self.grace_period_secs),
                ..Limits::default()
            },
        })
    }
}

/// `err` and its sources joined with `: `.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
