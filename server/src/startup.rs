//! Assembly: [`build`] makes the [`Server`] from [`Settings`], the one way
//! it is made: `serve` (from its flags), `dev` (from its material), `check`
//! (a dry run that builds and stops), the tests' harness and the benchmark
//! all call it, so what is tested is what ships.
//!
//! Every failure here is a [`ConfigError`] naming the setting to fix, so
//! `serve` stops at start-up instead of serving half-configured.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    api::PageTokens,
    auth::{
        Authenticator, TokenVerifier,
        jwks::RemoteJwks,
        keys::{KeySource, StaticKeys},
    },
    config::{
        AuthSettings, ConfigError, DynamoConfig, JwksLocation, Settings, StoreSettings, config_err,
        setting,
    },
    error::error_chain,
    server::Server,
    store::{DynamoStore, MemoryStore, NoteStore, StoreError},
    tls::ServerTls,
};

/// How long `init-table` and `dev --store dynamodb` wait for a new table.
pub const TABLE_READY_WAIT: Duration = Duration::from_secs(120);

/// Builds the server from `settings`: TLS, token verification and policy,
/// page tokens and the store (its table checked). Nothing is bound or
/// fetched yet: [`Server::serve`] does that.
pub async fn build(settings: Settings) -> Result<Server, ConfigError> {
    // Local settings first: a wrong file fails before the network is asked.
    let parts = Parts::of(&settings)?;
    let store = store(&settings).await?;
    Ok(parts.over(store, settings))
}

/// [`build`] over a store the caller made: the seam for a test's store that
/// injects faults, and for the benchmark's request-counting DynamoDB client.
pub fn build_with_store(
    settings: Settings,
    store: Arc<dyn NoteStore>,
) -> Result<Server, ConfigError> {
    Ok(Parts::of(&settings)?.over(store, settings))
}

/// What the server is made of beside its store, built from files.
struct Parts {
    tls: Arc<ServerTls>,
    page_tokens: PageTokens,
    authenticator: Authenticator,
}

impl Parts {
    fn of(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            tls: tls(settings)?,
            page_tokens: page_tokens(&settings.page_token_key_file)?,
            authenticator: authenticator(settings)?,
        })
    }

    fn over(self, store: Arc<dyn NoteStore>, settings: Settings) -> Server {
        log_summary(&settings);
        Server::new(
            store,
            Arc::new(self.authenticator),
            self.tls,
            self.page_tokens,
            settings.limits,
        )
    }
}

/// The server's TLS configuration from its files.
pub fn tls(settings: &Settings) -> Result<Arc<ServerTls>, ConfigError> {
    ServerTls::from_files_with_clock(settings.tls.clone(), settings.clock.clone()).map_err(|e| {
        config_err(
            "--tls-cert / --tls-key / --client-ca / --client-crl",
            error_chain(&e),
        )
    })
}

/// The store of `settings`, its table checked (or created, as dev mode asks).
pub async fn store(settings: &Settings) -> Result<Arc<dyn NoteStore>, ConfigError> {
    Ok(match &settings.store {
        StoreSettings::Memory => Arc::new(MemoryStore::new()),
        StoreSettings::Dynamodb {
            config,
            create_if_missing,
        } => {
            let store = dynamodb_store(config).await?;
            let checked = if *create_if_missing {
                store.init_table(TABLE_READY_WAIT).await
            } else {
                store.check_table().await
            };
            checked.map_err(|e| table_error(config, &e))?;
            Arc::new(store)
        }
    })
}

/// The authenticator of `settings`: reads JWKS files, prepares JWKS fetchers
/// (nothing is fetched until the server starts), with the identity
/// allow-list, the audit policy and the refusal budget.
pub fn authenticator(settings: &Settings) -> Result<Authenticator, ConfigError> {
    let mut authenticator = token_authenticator(settings.auth.clone())?
        .with_allowed_identities(settings.allowed_identities.clone())
        .with_audit_allowed(settings.audit_allowed);
    if let Some(revocations) = settings.revocations {
        authenticator = authenticator.with_revocations(revocations);
    }
    Ok(match settings.refusal_budget {
        Some(budget) => authenticator.with_refusal_budget(budget),
        None => authenticator.without_refusal_budget(),
    })
}

/// Token verification alone: the issuers, their keys and policies.
fn token_authenticator(settings: AuthSettings) -> Result<Authenticator, ConfigError> {
    let mut issuers = Vec::with_capacity(settings.issuers.len());
    for issuer in settings.issuers {
        let keys: Arc<dyn KeySource> = match issuer.jwks {
            JwksLocation::File(path) => Arc::new(
                StaticKeys::from_jwks_file(&path)
                    .map_err(|e| config_err(issuer.setting, error_chain(&e)))?,
            ),
            JwksLocation::Url(url, jwks) => Arc::new(
                RemoteJwks::new(url, jwks)
                    .map_err(|e| config_err(issuer.setting, error_chain(&e)))?
                    .for_issuer(&issuer.policy.issuer),
            ),
        };
        issuers.push((issuer.policy, keys));
    }
    let verifier =
        TokenVerifier::with_issuers(issuers, settings.max_token_bytes, settings.cache_capacity);
    Ok(Authenticator::new(verifier)
        .with_bindings(settings.bindings)
        .with_namespaced_owners(settings.several_issuers))
}

/// The page-token sealer with the key in `path`.
pub fn page_tokens(path: &Path) -> Result<PageTokens, ConfigError> {
    let key = std::fs::read(path).map_err(|e| {
        config_err(
            setting("page-token-key-file"),
            format!("{}: {e}", path.display()),
        )
    })?;
    PageTokens::new(&key).map_err(|e| {
        config_err(
            setting("page-token-key-file"),
            format!("{}: {e}", path.display()),
        )
    })
}

/// A DynamoDB client with the configured timeouts and retry policy; region
/// and credentials from the standard AWS chain unless overridden.
pub async fn dynamodb_client(
    config: &DynamoConfig,
) -> Result<aws_sdk_dynamodb::Client, ConfigError> {
    use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
    if config.table.trim().is_empty() {
        return Err(config_err(setting("table"), "must not be empty"));
    }
    if config.dynamodb_max_attempts == 0 {
        return Err(config_err(
            setting("dynamodb-max-attempts"),
            "must be at least 1",
        ));
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(config.dynamodb_max_attempts)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_secs(1)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(
                    config.dynamodb_attempt_timeout_ms.min(1000),
                ))
                .operation_attempt_timeout(Duration::from_millis(
                    config.dynamodb_attempt_timeout_ms,
                ))
                .operation_timeout(Duration::from_millis(config.dynamodb_timeout_ms))
                .build(),
        );
    if let Some(region) = &config.aws_region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.dynamodb_endpoint {
        check_endpoint(endpoint)?;
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(config_err(
            "--aws-region / NOTES_AWS_REGION (or AWS_REGION)",
            "no AWS region configured: set one of them (the AWS SDK also looked in the \
             AWS profile and, as on EC2, in instance metadata, and found none)",
        ));
    }
    Ok(aws_sdk_dynamodb::Client::new(&shared))
}

/// One line that says what the server is about to do, so an operator sees
/// a setting that is not what they meant (a CRL missing, another table).
fn log_summary(settings: &Settings) {
    let crls: Vec<String> = settings
        .tls
        .crls
        .iter()
        .map(|path| {
            let revoked = std::fs::read(path)
                .ok()
                .and_then(|pem| crate::tls::parse_crls(&pem, &path.display().to_string()).ok())
                .map_or_else(|| "?".to_owned(), |crls| crls.revoked.len().to_string());
            format!("{} ({revoked} revoked)", path.display())
        })
        .collect();
    let store = match &settings.store {
        StoreSettings::Memory => "memory (one instance, lost on exit)".to_owned(),
        StoreSettings::Dynamodb { config, .. } => format!(
            "dynamodb table {:?}{}",
            config.table.trim(),
            config
                .dynamodb_endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ),
    };
    let issuers: Vec<&str> = settings
        .auth
        .issuers
        .iter()
        .map(|i| i.policy.issuer.as_str())
        .collect();
    let limits = &settings.limits;
    tracing::info!(
        issuers = %issuers.join(", "),
        client_ca = %settings.tls.client_ca.display(),
        crls = %if crls.is_empty() { "none".to_owned() } else { crls.join(", ") },
        store = %store,
        max_connections = limits.max_connections,
        max_requests_in_flight = limits.max_requests_in_flight,
        rate_limit = %limits
            .rate_limit
            .as_ref()
            .map_or_else(|| "off".to_owned(), |r| format!("{}/s, burst {}", r.per_second, r.burst)),
        refusal_budget = %settings
            .refusal_budget
            .map_or_else(|| "off".to_owned(), |r| format!("{}/s, burst {}", r.per_second, r.burst)),
        "settings"
    );
}

/// A DynamoDB endpoint is a URL with a scheme and a host.
fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let uri: Option<http::Uri> = endpoint.parse().ok();
    let usable = uri.as_ref().is_some_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some()
            // Credentials in the URL would end up in logs: the SDK takes them
            // from the AWS chain.
            && !uri.authority().is_some_and(|a| a.as_str().contains('@'))
    });
    if usable {
        return Ok(());
    }
    Err(config_err(
        setting("dynamodb-endpoint"),
        format!(
            "{endpoint:?} is not a URL with a scheme and a host (and no credentials): use http://HOST:PORT (DynamoDB Local, \
             moto, LocalStack) or https://HOST"
        ),
    ))
}

/// Why the table check failed, blamed on the setting that is wrong: the
/// endpoint when DynamoDB was unavailable (no answer, throttling, a server
/// error), the table otherwise.
fn table_error(config: &DynamoConfig, err: &StoreError) -> ConfigError {
    let chain = error_chain(err);
    match err {
        StoreError::Unavailable(_) => {
            let endpoint = config.dynamodb_endpoint.as_deref().map_or_else(
                || "the region's DynamoDB endpoint".to_owned(),
                |e| e.to_owned(),
            );
            config_err(
                setting("dynamodb-endpoint"),
                format!(
                    "DynamoDB at {endpoint} is unavailable (no answer in time, throttling or a \
                     server error): {chain}"
                ),
            )
        }
        _ if chain.contains("ResourceNotFound") || chain.contains("not found") => config_err(
            setting("table"),
            format!("{chain} (run `notes-server init-table` to create it)"),
        ),
        _ => config_err(setting("table"), chain),
    }
}

/// The store on the configured table (not checked: see
/// [`DynamoStore::check_table`] and [`DynamoStore::init_table`]).
pub async fn dynamodb_store(config: &DynamoConfig) -> Result<DynamoStore, ConfigError> {
    Ok(DynamoStore::new(
        dynamodb_client(config).await?,
        config.table.trim(),
    ))
}

/// Creates the table if it is missing and waits until it is ACTIVE
/// (`init-table`, `dev --store dynamodb`).
pub async fn init_table(config: &DynamoConfig) -> anyhow::Result<DynamoStore> {
    let store = dynamodb_store(config).await?;
    store
        .init_table(TABLE_READY_WAIT)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    Ok(store)
}
