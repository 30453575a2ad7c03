//! Typed settings of `notes-server serve`, `dev` and `init-table`.
//!
//! Every setting is a flag with a `NOTES_*` environment fallback (flags win);
//! anything invalid fails start-up with a [`ConfigError`] naming the setting.
//! This module only parses and validates, into [`Settings`];
//! [`crate::startup`] assembles the server from them.
//!
//! - [`auth`]: issuers, their JWKS and claim policies, certificate bindings
//!   (flags for one issuer, or a TOML file for several).
//! - [`limits`]: timeouts and bounds (connections, handshakes, streams,
//!   headers, calls in flight, rate limit).

pub mod auth;
pub mod limits;

use std::{collections::BTreeSet, fmt, net::SocketAddr, path::PathBuf};

use crate::{
    audit::AuditAllowed,
    limits::{Limits, RateLimit},
    tls::{Identity, TlsFiles},
};

pub use auth::{AuthArgs, AuthSettings, IssuerSettings, JwksLocation};
pub use limits::LimitArgs;

/// A start-up configuration error, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {setting}: {problem}")]
pub struct ConfigError {
    /// The flag and environment variable, e.g. `--table / NOTES_TABLE`.
    pub setting: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

/// `--flag / NOTES_VARIABLE` of the setting whose long flag is `flag`, read
/// from clap's own metadata (`serve`'s and `dev`'s arguments), so a message
/// names exactly what the programs read; a flag they do not have is named
/// as given (a unit test finds every name this file's callers use).
pub fn setting(flag: &str) -> &'static str {
    use clap::Args as _;
    static NAMES: std::sync::LazyLock<std::collections::HashMap<String, &'static str>> =
        std::sync::LazyLock::new(|| {
            let commands = [
                ServeConfig::augment_args(clap::Command::new("serve")),
                DevConfig::augment_args(clap::Command::new("dev")),
            ];
            commands
                .iter()
                .flat_map(|command| command.get_arguments())
                .filter_map(|arg| {
                    let long = arg.get_long()?;
                    let name = match arg.get_env() {
                        Some(env) => format!("--{long} / {}", env.to_string_lossy()),
                        None => format!("--{long}"),
                    };
                    Some((long.to_owned(), &*Box::leak(name.into_boxed_str())))
                })
                .collect()
        });
    NAMES
        .get(flag)
        .copied()
        .unwrap_or_else(|| Box::leak(format!("--{flag}").into_boxed_str()))
}

pub(crate) fn config_err(setting: &'static str, problem: impl fmt::Display) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.to_string(),
    }
}

/// Everything the server is assembled from, validated and typed: what
/// `serve`'s flags ([`ServeConfig::settings`]), dev mode's material
/// ([`crate::dev::settings`]) and the tests' harness each make, and the one
/// input of [`crate::startup::build`]. Secure defaults are the defaults:
/// [`Settings::new`] leaves the refusal budget on.
#[derive(Clone)]
pub struct Settings {
    /// The server's certificate and key, the client CAs and their CRLs.
    pub tls: TlsFiles,
    /// Token issuers, policies and certificate bindings.
    pub auth: AuthSettings,
    /// Client-certificate identities that may call; empty: any.
    pub allowed_identities: BTreeSet<Identity>,
    /// Which allowed calls get an audit event.
    pub audit_allowed: AuditAllowed,
    /// The page-token key's file.
    pub page_token_key_file: PathBuf,
    /// Where notes live.
    pub store: StoreSettings,
    /// Timeouts and bounds.
    pub limits: Limits,
    /// Refusals that cost verification each connection may draw (each
    /// identity ten times that) before its uncached tokens are refused
    /// unverified; `None` turns the budget off.
    pub refusal_budget: Option<RateLimit>,
    /// How the token revocation list is read and enforced; `None`: not at all.
    pub revocations: Option<crate::auth::revocation::RevocationSettings>,
    /// The wall clock of certificate expiry checks (the system's; tests
    /// move one of their own).
    pub clock: crate::clock::Clock,
}

impl Settings {
    /// Settings with every default: the limits of [`crate::limits`], the
    /// refusal budget on, allowed calls audited as `changes`, notes in memory.
    pub fn new(tls: TlsFiles, auth: AuthSettings, page_token_key_file: PathBuf) -> Self {
        Self {
            tls,
            auth,
            allowed_identities: BTreeSet::new(),
            audit_allowed: AuditAllowed::default(),
            page_token_key_file,
            store: StoreSettings::Memory,
            limits: Limits::default(),
            refusal_budget: Some(crate::limits::REFUSALS_PER_CONNECTION),
            revocations: Some(crate::auth::revocation::DEFAULT_REVOCATION_SETTINGS),
            clock: crate::clock::system_clock(),
        }
    }
}

/// Where notes live, with what it takes to reach them.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// In process memory: one instance, lost on exit.
    Memory,
    /// A DynamoDB table, checked at start-up (created first when
    /// `create_if_missing`, as dev mode does).
    Dynamodb {
        /// The table and how to reach it.
        config: DynamoConfig,
        /// Create the table if it is missing.
        create_if_missing: bool,
    },
}

/// Settings of `notes-server serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "NOTES_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Which allowed calls get an audit event (refusals always get one):
    /// `changes` audits calls that change notes or name an unknown method
    /// and each token's first allowed read on each connection, not the
    /// reads after it (counted in notes_auth_decisions_total); `all` (or
    /// `true`) every allowed call; `none` (or `false`) refusals only.
    #[arg(long, env = "NOTES_AUDIT_ALLOWED", value_enum, default_value_t = AuditAllowed::Changes)]
    pub audit_allowed: AuditAllowed,
    /// Export traces over OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT
    /// (default http://localhost:4317).
    #[arg(long, env = "NOTES_OTLP")]
    pub otlp: bool,
    /// Plain-HTTP address of /metrics, /livez and /readyz (no notes, no
    /// tokens; keep it off the public network).
    #[arg(long, env = "NOTES_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
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
    #[arg(long = "client-crl", env = "NOTES_CLIENT_CRL", value_delimiter = ',')]
    pub client_crls: Vec<PathBuf>,
    /// Only these client-certificate identities may call (comma-separated `uri:…` or `dns:…`; a bare value with `://` is a URI); empty: any.
    #[arg(long, env = "NOTES_ALLOWED_CLIENT_IDENTITIES", value_delimiter = ',')]
    pub allowed_client_identities: Vec<String>,
    /// Token issuers, policies and certificate bindings.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// File holding the page-token key: at least 32 random bytes, the same on every instance.
    #[arg(long, env = "NOTES_PAGE_TOKEN_KEY_FILE")]
    pub page_token_key_file: PathBuf,
    /// Where notes live: `dynamodb` (production) or `memory` (one instance, lost on exit).
    #[arg(long, env = "NOTES_STORE", value_enum, default_value_t = StoreKind::Dynamodb)]
    pub store: StoreKind,
    /// DynamoDB settings.
    #[command(flatten)]
    pub dynamodb: DynamoConfig,
    /// Timeouts and bounds.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Seconds between reads of the token revocation list (in the store).
    #[arg(long, env = "NOTES_REVOCATION_POLL_SECS", default_value_t = 2)]
    pub revocation_poll_secs: u64,
    /// Seconds after which an unread revocation list is stale: calls are refused UNAVAILABLE (unless --revocation-fail-open) and /readyz says so.
    #[arg(
        long,
        env = "NOTES_REVOCATION_MAX_STALENESS_SECS",
        default_value_t = 30
    )]
    pub revocation_max_staleness_secs: u64,
    /// Let calls through while the revocation list is stale (revoked tokens may then pass).
    #[arg(long, env = "NOTES_REVOCATION_FAIL_OPEN")]
    pub revocation_fail_open: bool,
}

impl ServeConfig {
    /// How the token revocation list is read, checked.
    fn revocations(&self) -> Result<crate::auth::revocation::RevocationSettings, ConfigError> {
        if !(1..=3600).contains(&self.revocation_poll_secs) {
            return Err(config_err(
                setting("revocation-poll-secs"),
                "must be 1 to 3600",
            ));
        }
        if self.revocation_max_staleness_secs < 2 * self.revocation_poll_secs
            || self.revocation_max_staleness_secs > 24 * 3600
        {
            return Err(config_err(
                setting("revocation-max-staleness-secs"),
                "must be at least twice --revocation-poll-secs and at most a day",
            ));
        }
        Ok(crate::auth::revocation::RevocationSettings {
            poll_every: std::time::Duration::from_secs(self.revocation_poll_secs),
            max_staleness: std::time::Duration::from_secs(self.revocation_max_staleness_secs),
            fail_open: self.revocation_fail_open,
        })
    }

    /// Checks every setting and returns them typed; each failure names its
    /// setting.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let auth = self.auth.settings()?;
        let limits = self.limits.limits()?;
        let allowed_identities = non_blank_set(&self.allowed_client_identities)
            .iter()
            .map(|identity| Identity::parse(identity))
            .collect::<Result<_, _>>()
            .map_err(|e| config_err(setting("allowed-client-identities"), e))?;
        let tls = TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.client_ca.clone(),
            crls: self.client_crls.clone(),
        };
        Ok(Settings {
            allowed_identities,
            audit_allowed: self.audit_allowed,
            store: match self.store {
                StoreKind::Memory => StoreSettings::Memory,
                StoreKind::Dynamodb => StoreSettings::Dynamodb {
                    config: self.dynamodb.clone(),
                    create_if_missing: false,
                },
            },
            limits,
            revocations: Some(self.revocations()?),
            ..Settings::new(tls, auth, self.page_token_key_file.clone())
        })
    }
}

/// What `notes-server revoke-tokens` revokes, and where the list is.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "origin_jti", "subject", "client_id"])))]
pub struct RevokeTokensArgs {
    /// The issuer (`iss`) whose tokens are revoked, as `serve --issuer` names it.
    #[arg(long, env = "NOTES_ISSUER")]
    pub issuer: String,
    /// One token, by its `jti`.
    #[arg(long)]
    pub jti: Option<String>,
    /// Every token of one sign-in, by `origin_jti` (revoke the refresh token in Cognito too).
    #[arg(long)]
    pub origin_jti: Option<String>,
    /// Every token of one subject (`sub`) issued at or before --before.
    #[arg(long)]
    pub subject: Option<String>,
    /// Every token of one app client (`client_id`) issued at or before --before (rotate its secret in Cognito first).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Unix seconds: tokens issued at or before it are revoked [default: a minute from now, the clock leeway].
    #[arg(long)]
    pub before: Option<u64>,
    /// Where the list is (the notes table).
    #[command(flatten)]
    pub dynamodb: DynamoConfig,
}

impl RevokeTokensArgs {
    /// The revocation to record at `now_ns` (Unix ns).
    pub fn revocation(&self, now_ns: u64) -> Result<crate::store::Revocation, ConfigError> {
        use crate::store::Revoked;
        let issuer = self.issuer.trim();
        if !issuer.starts_with("https://") || issuer.ends_with('/') {
            return Err(config_err(
                "--issuer / NOTES_ISSUER",
                "must be the issuer exactly as its tokens' `iss` says it (https://..., no trailing /)",
            ));
        }
        let nonblank = |flag: &'static str, value: &str| {
            let value = value.trim();
            if value.is_empty() {
                Err(config_err(flag, "must not be empty"))
            } else {
                Ok(value.to_owned())
            }
        };
        let now = now_ns / 1_000_000_000;
        // By default a minute ahead of this clock, the leeway a token's
        // `iat` is allowed: a clock a little behind the issuer's still
        // covers every token issued until now.
        let before = self
            .before
            .unwrap_or(now + crate::auth::verify::DEFAULT_LEEWAY.as_secs());
        let (what, before) = match (&self.jti, &self.origin_jti, &self.subject, &self.client_id) {
            (Some(jti), ..) => (Revoked::Token(nonblank("--jti", jti)?), u64::MAX),
            (_, Some(origin), ..) => (
                Revoked::Session(nonblank("--origin-jti", origin)?),
                u64::MAX,
            ),
            (_, _, Some(subject), _) => (Revoked::Subject(nonblank("--subject", subject)?), before),
            (_, _, _, Some(client)) => (Revoked::Client(nonblank("--client-id", client)?), before),
            _ => {
                return Err(config_err(
                    "--jti / --origin-jti / --subject / --client-id",
                    "name what to revoke",
                ));
            }
        };
        Ok(crate::store::Revocation {
            issuer: issuer.to_owned(),
            what,
            before,
            recorded_ns: now_ns,
        })
    }
}

/// Settings of `notes-server dev`. They read `NOTES_DEV_*` variables, not
/// `serve`'s, so a shell set up for production cannot point dev mode at it.
#[derive(Debug, Clone, clap::Args)]
pub struct DevConfig {
    /// Folder for the generated dev material.
    #[arg(long = "dev-dir", env = "NOTES_DEV_DIR", default_value = ".notes-dev")]
    pub dir: PathBuf,
    /// Address to listen on; loopback only unless --unsafe-listen-beyond-loopback.
    #[arg(
        long = "dev-listen",
        env = "NOTES_DEV_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,
    /// Listen on a non-loopback address although anyone holding the dev
    /// signing key (a file in --dev-dir) can mint tokens for any user.
    #[arg(long)]
    pub unsafe_listen_beyond_loopback: bool,
    /// Where notes live; `dynamodb` creates the table if it is missing.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// DynamoDB table of dev mode, with `--store dynamodb`.
    #[arg(
        long = "dev-table",
        env = "NOTES_DEV_TABLE",
        default_value = "notes-dev"
    )]
    pub table: String,
    /// DynamoDB endpoint URL, for DynamoDB Local, moto or LocalStack.
    #[arg(long = "dev-dynamodb-endpoint", env = "NOTES_DEV_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// AWS region (default: the AWS chain, e.g. AWS_REGION).
    #[arg(long = "dev-aws-region", env = "NOTES_DEV_AWS_REGION")]
    pub aws_region: Option<String>,
}

impl DevConfig {
    /// Refuses a listen address beyond loopback unless the unsafe flag says so.
    pub fn check_listen(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && !self.unsafe_listen_beyond_loopback {
            return Err(config_err(
                setting("dev-listen"),
                format!(
                    "{} is not a loopback address: dev mode's tokens are signed by a key on disk, \
                     so it listens on 127.0.0.1 or ::1 unless given --unsafe-listen-beyond-loopback",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// Dev mode's DynamoDB settings, with `serve`'s timeouts and retries.
    pub fn dynamodb(&self) -> DynamoConfig {
        DynamoConfig {
            table: self.table.clone(),
            dynamodb_endpoint: self.dynamodb_endpoint.clone(),
            aws_region: self.aws_region.clone(),
            dynamodb_timeout_ms: 3000,
            dynamodb_attempt_timeout_ms: 1000,
            dynamodb_max_attempts: 3,
        }
    }
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

/// A comma-separated list setting as a set: entries trimmed, blanks dropped.
pub(crate) fn non_blank_set(values: &[String]) -> BTreeSet<String> {
    values
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    /// Every `setting("...")` in the settings code names a flag `serve` or
    /// `dev` has, so no message names a flag that does not exist.
    #[test]
    fn every_setting_named_in_a_message_is_a_flag() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("auth.rs"),
            include_str!("limits.rs"),
            include_str!("../startup.rs"),
        ];
        let mut named = 0;
        for source in sources {
            for call in source.split("setting(\"").skip(1) {
                let flag = call.split('"').next().unwrap();
                if flag.is_empty() || flag.contains('.') {
                    continue;
                }
                named += 1;
                let name = super::setting(flag);
                assert!(name.contains(" / NOTES_"), "--{flag}: {name}");
            }
        }
        assert!(named > 20, "{named}");
        assert_eq!(super::setting("table"), "--table / NOTES_TABLE");
        assert_eq!(
            super::setting("client-crl"),
            "--client-crl / NOTES_CLIENT_CRL"
        );
    }
}
