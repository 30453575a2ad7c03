//! Token issuers and their policies.
//!
//! One issuer can be configured with flags (`--issuer`, `--jwks-url` or
//! `--jwks-file`, `--client-ids`, scopes); several, with per-issuer policy
//! and certificate bindings, come from a TOML file (`--auth-config`):
//!
//! ```toml
//! max_token_bytes = 8192        # default
//! cache_capacity = 10000        # verified tokens kept; 0 disables
//!
//! [[issuer]]
//! issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf"
//! # jwks_url defaults to "{issuer}/.well-known/jwks.json"; or jwks_file = "..."
//! client_ids = ["1example23456789"]
//! algorithms = ["RS256"]        # RS384 and RS512 may be added
//! accept_id_tokens = false      # ID tokens are checked with `aud`
//! leeway_secs = 60              # at most 300
//! required_groups = []          # user tokens must be in one of these
//! refresh_interval_secs = 3600
//! min_refetch_interval_secs = 60
//! user_scopes = { read = ["aws.cognito.signin.user.admin"], write = ["aws.cognito.signin.user.admin"] }
//! machine_scopes = { read = ["notes/read"], write = ["notes/write"] }
//!
//! [[binding]]                   # this certificate may only present these clients' tokens
//! identity = "spiffe://example.org/billing"
//! client_ids = ["billing-client-id"]
//! ```

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{ConfigError, config_err, non_blank_set, setting};
use crate::{
    auth::{
        AccessScopes, Bindings, ScopePolicy, TokenPolicy,
        jwks::JwksSettings,
        verify::{DEFAULT_CACHE_CAPACITY, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_BYTES, MAX_LEEWAY},
    },
    tls::Identity,
};

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksLocation {
    /// Fetched over HTTPS (HTTP on loopback only), cached and refreshed.
    Url(String, JwksSettings),
    /// A JWKS document on disk, read once at start-up.
    File(PathBuf),
}

/// One trusted issuer, validated.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The setting it came from, for error messages.
    pub setting: &'static str,
    /// What its tokens must satisfy.
    pub policy: TokenPolicy,
    /// Where its keys come from.
    pub jwks: JwksLocation,
}

/// Token verification and policy settings, validated.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The trusted issuers.
    pub issuers: Vec<IssuerSettings>,
    /// Tokens longer than this are refused before decoding.
    pub max_token_bytes: usize,
    /// Verified tokens kept; 0 disables the cache.
    pub cache_capacity: usize,
    /// Certificate identity to app clients whose tokens it may present.
    pub bindings: Bindings,
    /// More than one issuer: owners are namespaced per issuer.
    pub several_issuers: bool,
}

/// The scope GetNote and ListNotes require unless configured otherwise
/// (the Cognito resource server `notes`, scope `read`).
pub const DEFAULT_READ_SCOPE: &str = "notes/read";
/// The scope CreateNote, UpdateNote and DeleteNote require by default.
pub const DEFAULT_WRITE_SCOPE: &str = "notes/write";

fn default_scopes() -> AccessScopes {
    AccessScopes {
        read: [DEFAULT_READ_SCOPE.to_owned()].into(),
        write: [DEFAULT_WRITE_SCOPE.to_owned()].into(),
    }
}

/// Token settings on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// TOML file with several issuers, per-issuer policy and certificate bindings.
    #[arg(long, env = "NOTES_AUTH_CONFIG", conflicts_with_all = ["issuer", "jwks_url", "jwks_file", "client_ids"])]
    pub auth_config: Option<PathBuf>,
    /// Exact token issuer (`iss`), e.g. https://cognito-idp.REGION.amazonaws.com/POOL_ID.
    #[arg(long, env = "NOTES_ISSUER", required_unless_present = "auth_config")]
    pub issuer: Option<String>,
    /// The issuer's JWKS URL [default: ISSUER/.well-known/jwks.json].
    #[arg(long, env = "NOTES_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// The issuer's JWKS as a file, instead of fetching it.
    #[arg(long, env = "NOTES_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// App client ids whose tokens are accepted (comma-separated).
    #[arg(
        long,
        env = "NOTES_CLIENT_IDS",
        value_delimiter = ',',
        required_unless_present = "auth_config"
    )]
    pub client_ids: Vec<String>,
    /// Scopes required by GetNote and ListNotes (comma-separated; all required; `none`: no scope).
    #[arg(
        long,
        env = "NOTES_READ_SCOPES",
        value_delimiter = ',',
        default_value = DEFAULT_READ_SCOPE
    )]
    pub read_scopes: Vec<String>,
    /// Scopes required by CreateNote, UpdateNote and DeleteNote.
    #[arg(
        long,
        env = "NOTES_WRITE_SCOPES",
        value_delimiter = ',',
        default_value = DEFAULT_WRITE_SCOPE
    )]
    pub write_scopes: Vec<String>,
    /// Clock skew allowed on exp/nbf/iat, in seconds (at most 300).
    #[arg(long, env = "NOTES_TOKEN_LEEWAY_SECS", default_value_t = DEFAULT_LEEWAY.as_secs())]
    pub token_leeway_secs: u64,
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

fn default_cache_capacity() -> usize {
    DEFAULT_CACHE_CAPACITY
}

/// The `--auth-config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Tokens longer than this are refused before decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens kept; 0 disables the cache.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: usize,
    /// The issuers.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerFile>,
    /// Certificate bindings.
    #[serde(default, rename = "binding")]
    pub bindings: Vec<BindingFile>,
}

/// One `[[issuer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// Exact `iss`.
    pub issuer: String,
    /// JWKS URL; default `{issuer}/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// JWKS file instead of a URL.
    pub jwks_file: Option<PathBuf>,
    /// Accepted app clients.
    pub client_ids: Vec<String>,
    /// Accepted algorithms (RS256, RS384, RS512).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Accept ID tokens too.
    #[serde(default)]
    pub accept_id_tokens: bool,
    /// Leeway in seconds.
    pub leeway_secs: Option<u64>,
    /// User tokens must be in one of these groups.
    #[serde(default)]
    pub required_groups: BTreeSet<String>,
    /// Scopes required of user tokens; omitted: the flags' defaults
    /// (`notes/read`, `notes/write`). No scope at all must be written out:
    /// `{ read = [], write = [] }`.
    pub user_scopes: Option<AccessScopes>,
    /// Scopes required of client-credentials (machine) tokens; as `user_scopes`.
    pub machine_scopes: Option<AccessScopes>,
    /// Prefix of this pool's note owners (`PREFIX` + `sub`): required, distinct
    /// and of the form `name:` for every issuer after the first, so two pools
    /// never share an owner. The first issuer may leave it out (owner = `sub`,
    /// as with one pool), and then its tokens' `sub` may not contain `:`.
    pub owner_prefix: Option<String>,
    /// Background JWKS refresh, in seconds.
    pub refresh_interval_secs: Option<u64>,
    /// Least time between refetches for unknown `kid`s, seconds.
    pub min_refetch_interval_secs: Option<u64>,
    /// JWKS fetch timeout, milliseconds.
    pub fetch_timeout_ms: Option<u64>,
}

/// One `[[binding]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingFile {
    /// Certificate identity, typed: `uri:spiffe://...` or `dns:name` (a bare
    /// value with `://` is a URI, otherwise a DNS name).
    pub identity: String,
    /// The app clients whose tokens it may present.
    pub client_ids: Vec<String>,
}

/// A JWKS URL must be HTTPS, except on loopback (local Cognito-compatible servers).
fn check_jwks_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| config_err(setting, format!("{url:?}: {e}")))?;
    let loopback = matches!(
        parsed.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    );
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(config_err(
            setting,
            format!("{url:?} must be an https:// URL"),
        )),
    }
}

fn leeway(setting: &'static str, secs: u64) -> Result<Duration, ConfigError> {
    if secs > MAX_LEEWAY.as_secs() {
        return Err(config_err(
            setting,
            format!("{secs} exceeds the maximum of {}", MAX_LEEWAY.as_secs()),
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn jwks_location(
    setting: &'static str,
    issuer: &str,
    url: Option<&str>,
    file: Option<PathBuf>,
    settings: JwksSettings,
) -> Result<JwksLocation, ConfigError> {
    if let Some(file) = file {
        if url.is_some() {
            return Err(config_err(
                setting,
                format!("issuer {issuer:?} names both a JWKS URL and a JWKS file; give one"),
            ));
        }
        return Ok(JwksLocation::File(file));
    }
    let url = match url {
        Some(url) => url.to_owned(),
        None => format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
    };
    check_jwks_url(setting, &url)?;
    Ok(JwksLocation::Url(url, settings))
}

fn algorithms(setting: &'static str, names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    if names.is_empty() {
        return Ok(vec![Algorithm::RS256]);
    }
    names
        .iter()
        .map(|name| match name.as_str() {
            "RS256" => Ok(Algorithm::RS256),
            "RS384" => Ok(Algorithm::RS384),
            "RS512" => Ok(Algorithm::RS512),
            other => Err(config_err(
                setting,
                format!("algorithm {other:?} is not allowed (RS256, RS384, RS512)"),
            )),
        })
        .collect()
}

impl AuthArgs {
    /// Checks the settings (reading `--auth-config` when given).
    pub fn settings(&self) -> Result<AuthSettings, ConfigError> {
        if let Some(path) = &self.auth_config {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config_err(setting("auth-config"), format!("{}: {e}", path.display()))
            })?;
            let file: AuthFile = toml::from_str(&text).map_err(|e| {
                config_err(setting("auth-config"), format!("{}: {e}", path.display()))
            })?;
            return file.settings();
        }
        let leeway = leeway(setting("token-leeway-secs"), self.token_leeway_secs)?;
        let issuer = self.issuer.as_deref().unwrap_or_default().trim();
        if issuer.is_empty() {
            return Err(config_err(setting("issuer"), "must not be empty"));
        }
        let client_ids = non_blank_set(&self.client_ids);
        if client_ids.is_empty() {
            return Err(config_err(
                setting("client-ids"),
                "must name at least one app client",
            ));
        }
        const JWKS_SETTING: &str = "--jwks-url / --jwks-file";
        let jwks = jwks_location(
            JWKS_SETTING,
            issuer,
            self.jwks_url.as_deref(),
            self.jwks_file.clone(),
            JwksSettings::default(),
        )?;
        let scopes = |setting: &'static str, values: &[String]| {
            let set = non_blank_set(values);
            if set.is_empty() {
                // An empty variable must not turn the check off.
                return Err(config_err(
                    setting,
                    "names no scope; to require none, give exactly 'none'",
                ));
            }
            Ok(if set.len() == 1 && set.contains("none") {
                BTreeSet::new()
            } else {
                set
            })
        };
        let mut policy =
            TokenPolicy::new(issuer, client_ids).with_scopes(ScopePolicy::same_for_all(
                scopes(setting("read-scopes"), &self.read_scopes)?,
                scopes(setting("write-scopes"), &self.write_scopes)?,
            ));
        policy.leeway = leeway;
        Ok(AuthSettings {
            issuers: vec![IssuerSettings {
                setting: JWKS_SETTING,
                policy,
                jwks,
            }],
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            bindings: Bindings::new(),
            several_issuers: false,
        })
    }
}

impl AuthFile {
    /// Checks the file's settings.
    pub fn settings(self) -> Result<AuthSettings, ConfigError> {
        let file_setting: &str = setting("auth-config");
        if self.issuers.is_empty() {
            return Err(config_err(
                file_setting,
                "at least one [[issuer]] is required",
            ));
        }
        let several = self.issuers.len() > 1;
        let mut issuers = Vec::new();
        let mut seen_issuers = BTreeSet::new();
        let mut seen_prefixes = BTreeSet::new();
        for (index, issuer) in self.issuers.into_iter().enumerate() {
            let name = &issuer.issuer;
            if !seen_issuers.insert(name.clone()) {
                return Err(config_err(
                    file_setting,
                    format!("issuer {name:?} is listed twice; merge the two [[issuer]] entries"),
                ));
            }
            if issuer.client_ids.is_empty() {
                return Err(config_err(
                    file_setting,
                    format!("issuer {name:?} lists no client_ids"),
                ));
            }
            let owner_prefix = match issuer.owner_prefix.as_deref() {
                None if index == 0 || !several => String::new(),
                None => {
                    return Err(config_err(
                        file_setting,
                        format!(
                            "issuer {name:?} needs an owner_prefix such as \"pool{}:\": with several \
                             issuers, every one after the first keeps its owners apart",
                            index + 1
                        ),
                    ));
                }
                Some(prefix) => {
                    let body = prefix.strip_suffix(':').unwrap_or_default();
                    if body.is_empty() || body.contains(':') {
                        return Err(config_err(
                            file_setting,
                            format!(
                                "issuer {name:?}: owner_prefix {prefix:?} must be a name followed by one ':', e.g. \"pool2:\""
                            ),
                        ));
                    }
                    if !seen_prefixes.insert(prefix.to_owned()) {
                        return Err(config_err(
                            file_setting,
                            format!("owner_prefix {prefix:?} is used by two issuers"),
                        ));
                    }
                    prefix.to_owned()
                }
            };
            let positive = |key: &str, value: Option<u64>| match value {
                Some(0) => Err(config_err(
                    file_setting,
                    format!("issuer {name:?}: {key} must be at least 1"),
                )),
                other => Ok(other),
            };
            let defaults = JwksSettings::default();
            let settings = JwksSettings {
                refresh_interval: positive("refresh_interval_secs", issuer.refresh_interval_secs)?
                    .map_or(defaults.refresh_interval, Duration::from_secs),
                min_refetch_interval: positive(
                    "min_refetch_interval_secs",
                    issuer.min_refetch_interval_secs,
                )?
                .map_or(defaults.min_refetch_interval, Duration::from_secs),
                timeout: positive("fetch_timeout_ms", issuer.fetch_timeout_ms)?
                    .map_or(defaults.timeout, Duration::from_millis),
                ..defaults
            };
            let jwks = jwks_location(
                file_setting,
                &issuer.issuer,
                issuer.jwks_url.as_deref(),
                issuer.jwks_file,
                settings,
            )?;
            let mut policy = TokenPolicy::new(issuer.issuer, issuer.client_ids);
            policy.algorithms = algorithms(file_setting, &issuer.algorithms)?;
            policy.accept_id_tokens = issuer.accept_id_tokens;
            policy.leeway = leeway(
                file_setting,
                issuer.leeway_secs.unwrap_or(DEFAULT_LEEWAY.as_secs()),
            )?;
            policy.required_groups = issuer.required_groups;
            policy.scopes = ScopePolicy {
                user: issuer.user_scopes.unwrap_or_else(default_scopes),
                machine: issuer.machine_scopes.unwrap_or_else(default_scopes),
            };
            policy.owner_prefix = owner_prefix;
            issuers.push(IssuerSettings {
                setting: file_setting,
                policy,
                jwks,
            });
        }
        let mut bindings = Bindings::new();
        for binding in self.bindings {
            let identity =
                Identity::parse(&binding.identity).map_err(|e| config_err(file_setting, e))?;
            if bindings.contains_key(&identity) {
                return Err(config_err(
                    file_setting,
                    format!(
                        "identity {:?} has two [[binding]] entries",
                        binding.identity
                    ),
                ));
            }
            bindings.insert(identity, binding.client_ids.into_iter().collect());
        }
        Ok(AuthSettings {
            issuers,
            max_token_bytes: self.max_token_bytes,
            cache_capacity: self.cache_capacity,
            bindings,
            several_issuers: several,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> Result<AuthSettings, String> {
        let file: AuthFile = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        file.settings().map_err(|e| e.to_string())
    }

    const ONE: &str = r#"
[[issuer]]
issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_A"
client_ids = ["app"]
"#;

    #[test]
    fn omitted_scope_lists_get_the_flag_defaults() {
        let settings = settings(ONE).unwrap();
        let scopes = &settings.issuers[0].policy.scopes;
        assert_eq!(scopes.user, default_scopes());
        assert_eq!(scopes.machine, default_scopes());
    }

    #[test]
    fn no_scope_at_all_must_be_written_out() {
        let explicit = format!("{ONE}user_scopes = {{ read = [], write = [] }}\n");
        let settings = settings(&explicit).unwrap();
        assert!(settings.issuers[0].policy.scopes.user.read.is_empty());
        let half = format!("{ONE}user_scopes = {{ read = [] }}\n");
        assert!(self::settings(&half).unwrap_err().contains("write"));
    }

    #[test]
    fn zero_intervals_and_timeouts_are_refused_naming_the_key() {
        for key in [
            "refresh_interval_secs",
            "min_refetch_interval_secs",
            "fetch_timeout_ms",
        ] {
            let err = settings(&format!("{ONE}{key} = 0\n")).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn an_issuer_listed_twice_is_refused() {
        let err = settings(&format!("{ONE}{ONE}")).unwrap_err();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn a_jwks_url_and_a_jwks_file_together_are_refused() {
        let both = format!(
            "{ONE}jwks_url = \"https://example.org/jwks.json\"\njwks_file = \"/tmp/jwks.json\"\n"
        );
        let err = settings(&both).unwrap_err();
        assert!(err.contains("both"), "{err}");
    }

    #[test]
    fn every_issuer_after_the_first_needs_its_own_owner_prefix() {
        let second = r#"
[[issuer]]
issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_B"
client_ids = ["other"]
"#;
        let err = settings(&format!("{ONE}{second}")).unwrap_err();
        assert!(err.contains("owner_prefix"), "{err}");
        let prefixed = format!("{ONE}{second}owner_prefix = \"b:\"\n");
        let ok = settings(&prefixed).unwrap();
        assert!(ok.several_issuers);
        assert_eq!(ok.issuers[1].policy.owner_prefix, "b:");
        for bad in ["b", ":", "a:b:", ""] {
            let err = settings(&format!("{ONE}{second}owner_prefix = \"{bad}\"\n")).unwrap_err();
            assert!(err.contains("owner_prefix"), "{bad}: {err}");
        }
        let same = format!("{ONE}owner_prefix = \"b:\"\n{second}owner_prefix = \"b:\"\n");
        assert!(settings(&same).unwrap_err().contains("two issuers"));
    }

    fn flags(read: &[&str]) -> AuthArgs {
        AuthArgs {
            auth_config: None,
            issuer: Some("https://issuer.example".into()),
            jwks_url: None,
            jwks_file: Some("/tmp/jwks.json".into()),
            client_ids: vec!["app".into()],
            read_scopes: read.iter().map(|s| (*s).to_owned()).collect(),
            write_scopes: vec![DEFAULT_WRITE_SCOPE.into()],
            token_leeway_secs: DEFAULT_LEEWAY.as_secs(),
        }
    }

    #[test]
    fn an_empty_scope_flag_is_refused_and_none_must_be_said() {
        for empty in [&[""][..], &[" ", ""]] {
            let err = flags(empty).settings().unwrap_err().to_string();
            assert!(err.contains("NOTES_READ_SCOPES"), "{err}");
        }
        let none = flags(&["none"]).settings().unwrap();
        assert!(none.issuers[0].policy.scopes.user.read.is_empty());
    }

    #[test]
    fn bindings_name_typed_identities_once() {
        let binding = "[[binding]]\nidentity = \"dns:billing.example\"\nclient_ids = [\"app\"]\n";
        let ok = settings(&format!("{ONE}{binding}")).unwrap();
        assert!(
            ok.bindings
                .contains_key(&Identity::Dns("billing.example".into()))
        );
        let err = settings(&format!("{ONE}{binding}{binding}")).unwrap_err();
        assert!(err.contains("two [[binding]]"), "{err}");
    }
}
