//! Assembly: builds the [`App`] that [`crate::run`] serves from validated
//! settings ([`crate::config`]) or from dev material ([`crate::dev`]).
//!
//! Every failure here is a [`ConfigError`] naming the setting to fix, so
//! `serve` stops at start-up instead of serving half-configured.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    App, Limits,
    api::PageTokens,
    auth::{
        Authenticator, ScopePolicy, TokenPolicy, TokenVerifier,
        jwks::RemoteJwks,
        keys::{KeySource, StaticKeys},
    },
    config::{
        AuthSettings, ConfigError, DynamoConfig, JwksLocation, ServeConfig, StoreKind, config_err,
        non_blank_set,
    },
    dev::{DEV_CLIENT_ID, DEV_ISSUER, DEV_READ_SCOPE, DEV_WRITE_SCOPE, DevMaterial},
    error::error_chain,
    store::{DynamoStore, MemoryStore, NoteStore, StoreError},
    tls::{Identity, ServerTls, TlsFiles},
};

/// How long `init-table` and `dev --store dynamodb` wait for a new table.
pub const TABLE_READY_WAIT: Duration = Duration::from_secs(120);

const PAGE_TOKEN_KEY_SETTING: &str = "--page-token-key-file / NOTES_PAGE_TOKEN_KEY_FILE";

/// Checks every setting of `serve`, checks the table, and assembles the server.
pub async fn serve_app(config: &ServeConfig) -> Result<App, ConfigError> {
    let settings = config.auth.settings()?;
    let issuers: Vec<String> = settings
        .issuers
        .iter()
        .map(|i| i.policy.issuer.clone())
        .collect();
    let authenticator = authenticator(settings)?;
    let tls = ServerTls::from_files(TlsFiles {
        cert: config.tls_cert.clone(),
        key: config.tls_key.clone(),
        client_ca: config.client_ca.clone(),
        crls: config.client_crls.clone(),
    })
    .map_err(|e| {
        config_err(
            "--tls-cert / --tls-key / --client-ca / --client-crl",
            error_chain(&e),
        )
    })?;
    let limits = config.limits.limits()?;
    let allowed = non_blank_set(&config.allowed_client_identities)
        .iter()
        .map(|identity| Identity::parse(identity))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            config_err(
                "--allowed-client-identities / NOTES_ALLOWED_CLIENT_IDENTITIES",
                e,
            )
        })?;
    let authenticator = authenticator
        .with_allowed_identities(allowed)
        .with_audit_allowed(config.audit_allowed)
        .with_refusal_budget(crate::limits::REFUSALS_PER_IDENTITY);
    let page_tokens = page_tokens(&config.page_token_key_file)?;

    let store: Arc<dyn NoteStore> = match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Dynamodb => {
            let store = dynamodb_store(&config.dynamodb).await?;
            store
                .check_table()
                .await
                .map_err(|e| table_error(&config.dynamodb, &e))?;
            Arc::new(store)
        }
    };
    log_summary(config, &issuers, &limits);
    Ok(App {
        store,
        authenticator: Arc::new(authenticator),
        tls,
        page_tokens,
        limits,
        admin: None,
    })
}

/// The server on dev defaults (dev PKI and issuer, its own page-token key)
/// over `store`.
pub fn dev_app(material: &DevMaterial, store: Arc<dyn NoteStore>) -> anyhow::Result<App> {
    let tls = ServerTls::from_files(TlsFiles {
        cert: material.path("server.pem"),
        key: material.path("server.key"),
        client_ca: material.path("ca.pem"),
        crls: vec![],
    })?;
    let keys = StaticKeys::from_jwk_set(&material.signer()?.jwks())?;
    let scopes = ScopePolicy::same_for_all(
        [DEV_READ_SCOPE.to_owned()].into(),
        [DEV_WRITE_SCOPE.to_owned()].into(),
    );
    let verifier = TokenVerifier::new(
        TokenPolicy::new(DEV_ISSUER, [DEV_CLIENT_ID.to_owned()]).with_scopes(scopes),
        Arc::new(keys),
    );
    Ok(App {
        store,
        authenticator: Arc::new(
            Authenticator::new(verifier).with_refusal_budget(crate::limits::REFUSALS_PER_IDENTITY),
        ),
        tls,
        page_tokens: page_tokens(&material.path("page-token.key"))?,
        limits: Limits::default(),
        admin: None,
    })
}

/// The authenticator of `settings`: reads JWKS files, prepares JWKS fetchers
/// (nothing is fetched until the server starts).
pub fn authenticator(settings: AuthSettings) -> Result<Authenticator, ConfigError> {
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
    let key = std::fs::read(path)
        .map_err(|e| config_err(PAGE_TOKEN_KEY_SETTING, format!("{}: {e}", path.display())))?;
    PageTokens::new(&key)
        .map_err(|e| config_err(PAGE_TOKEN_KEY_SETTING, format!("{}: {e}", path.display())))
}

/// A DynamoDB client with the configured timeouts and retry policy; region
/// and credentials from the standard AWS chain unless overridden.
pub async fn dynamodb_client(
    config: &DynamoConfig,
) -> Result<aws_sdk_dynamodb::Client, ConfigError> {
    use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
    if config.table.trim().is_empty() {
        return Err(config_err("--table / NOTES_TABLE", "must not be empty"));
    }
    if config.dynamodb_max_attempts == 0 {
        return Err(config_err(
            "--dynamodb-max-attempts / NOTES_DYNAMODB_MAX_ATTEMPTS",
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

/// One line that says what `serve` is about to do, so an operator sees a
/// setting that is not what they meant (a CRL missing, another table).
fn log_summary(config: &ServeConfig, issuers: &[String], limits: &Limits) {
    let crls: Vec<String> = config
        .client_crls
        .iter()
        .map(|path| {
            let revoked = std::fs::read(path)
                .ok()
                .and_then(|pem| crate::tls::parse_crls(&pem, &path.display().to_string()).ok())
                .map_or_else(|| "?".to_owned(), |crls| crls.revoked.len().to_string());
            format!("{} ({revoked} revoked)", path.display())
        })
        .collect();
    let store = match config.store {
        StoreKind::Memory => "memory (one instance, lost on exit)".to_owned(),
        StoreKind::Dynamodb => format!(
            "dynamodb table {:?}{}",
            config.dynamodb.table.trim(),
            config
                .dynamodb
                .dynamodb_endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ),
    };
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        issuers = %issuers.join(", "),
        client_ca = %config.client_ca.display(),
        crls = %if crls.is_empty() { "none".to_owned() } else { crls.join(", ") },
        store = %store,
        max_connections = limits.max_connections,
        max_requests_in_flight = limits.max_requests_in_flight,
        rate_limit = %limits
            .rate_limit
            .as_ref()
            .map_or_else(|| "off".to_owned(), |r| format!("{}/s, burst {}", r.per_second, r.burst)),
        "serve: settings"
    );
}

const ENDPOINT_SETTING: &str = "--dynamodb-endpoint / NOTES_DYNAMODB_ENDPOINT";

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
        ENDPOINT_SETTING,
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
                ENDPOINT_SETTING,
                format!(
                    "DynamoDB at {endpoint} is unavailable (no answer in time, throttling or a \
                     server error): {chain}"
                ),
            )
        }
        _ if chain.contains("ResourceNotFound") || chain.contains("not found") => config_err(
            "--table / NOTES_TABLE",
            format!("{chain} (run `notes-server init-table` to create it)"),
        ),
        _ => config_err("--table / NOTES_TABLE", chain),
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
