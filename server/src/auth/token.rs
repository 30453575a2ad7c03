//! Verifying Cognito tokens, for one or several user pools (issuers).
//!
//! The order is deliberate: cheap structural checks first (size, segments,
//! header, issuer, algorithm, key id), then the signature, and only then the
//! claims, so an unsigned or forged token never has its claims acted upon.
//! The `iss` read before the signature check only selects which pool's keys
//! and policy apply; it is verified again with the signature.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{
    AuthError, CallerKind, ScopePolicy,
    cache::{TokenCache, token_key},
    keys::{KeyError, KeySource},
};

/// The largest leeway the policy accepts for `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Default limit on a token's length, checked before any decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default number of verified tokens kept.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// What a token from one issuer must satisfy.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Exact `iss`, e.g. `https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf`.
    pub issuer: String,
    /// Accepted signature algorithms: RS256 by default; RS384 and RS512 may be
    /// added. Anything else is refused whatever this says.
    pub algorithms: Vec<Algorithm>,
    /// App clients whose tokens are accepted (`client_id`, or `aud` of ID tokens).
    pub client_ids: HashSet<String>,
    /// Accept ID tokens (`token_use` = `id`, checked with `aud`) besides access tokens.
    pub accept_id_tokens: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`; capped at [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Scopes per method group, for user and for machine tokens.
    pub scopes: ScopePolicy,
    /// When not empty, user tokens must be in at least one of these `cognito:groups`.
    pub required_groups: BTreeSet<String>,
}

impl TokenPolicy {
    /// A policy for `issuer` accepting access tokens of `client_ids`, RS256,
    /// 60 s leeway, no scope required.
    pub fn new(issuer: impl Into<String>, client_ids: impl IntoIterator<Item = String>) -> Self {
        Self {
            issuer: issuer.into(),
            algorithms: vec![Algorithm::RS256],
            client_ids: client_ids.into_iter().collect(),
            accept_id_tokens: false,
            leeway: Duration::from_secs(60),
            scopes: ScopePolicy::default(),
            required_groups: BTreeSet::new(),
        }
    }

    /// The same policy with these scopes.
    pub fn with_scopes(mut self, scopes: ScopePolicy) -> Self {
        self.scopes = scopes;
        self
    }
}

/// What kind of token a verified token was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// `token_use` = `access`.
    Access,
    /// `token_use` = `id`.
    Id,
}

/// The facts a verified token establishes.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `client_id` (access tokens) or `aud` (ID tokens).
    pub client_id: String,
    /// `username` / `cognito:username`; absent for client-credentials tokens.
    pub username: Option<String>,
    /// A signed-in user, or a service with client credentials.
    pub kind: CallerKind,
    /// Access or ID token.
    pub token_use: TokenUse,
    /// `scope`, split on spaces.
    pub scopes: BTreeSet<String>,
    /// `cognito:groups`.
    pub groups: BTreeSet<String>,
    /// `cnf.x5t#S256`: the client certificate this token is bound to (RFC 8705).
    pub cnf_x5t_s256: Option<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
    /// The `kid` that signed it.
    pub kid: String,
}

#[derive(Debug, Deserialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

/// The claims we act upon. A claim of the wrong type fails
/// deserialisation and so the whole token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    token_use: Option<String>,
    client_id: Option<String>,
    aud: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    #[serde(rename = "cognito:username")]
    cognito_username: Option<String>,
    #[serde(rename = "cognito:groups", default)]
    groups: Vec<String>,
    iat: Option<f64>,
    cnf: Option<Confirmation>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: Option<serde_json::Value>,
}

struct Issuer {
    policy: TokenPolicy,
    keys: Arc<dyn KeySource>,
}

/// Verifies tokens of the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, Issuer>,
    max_token_bytes: usize,
    cache: TokenCache,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Verifier {
    /// A verifier for one issuer, with default limits.
    pub fn new(policy: TokenPolicy, keys: Arc<dyn KeySource>) -> Self {
        Self::with_issuers(
            [(policy, keys)],
            DEFAULT_MAX_TOKEN_BYTES,
            DEFAULT_CACHE_CAPACITY,
        )
    }

    /// A verifier for several issuers; `cache_capacity` 0 disables the cache.
    pub fn with_issuers(
        issuers: impl IntoIterator<Item = (TokenPolicy, Arc<dyn KeySource>)>,
        max_token_bytes: usize,
        cache_capacity: usize,
    ) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|(mut policy, keys)| {
                policy.leeway = policy.leeway.min(MAX_LEEWAY);
                // Only RSA PKCS#1 v1.5 signatures are ever accepted.
                policy.algorithms.retain(|alg| {
                    matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
                });
                (policy.issuer.clone(), Issuer { policy, keys })
            })
            .collect();
        Self {
            issuers,
            max_token_bytes,
            cache: TokenCache::new(cache_capacity),
        }
    }

    /// The policy of `issuer`.
    pub fn policy(&self, issuer: &str) -> Option<&TokenPolicy> {
        self.issuers.get(issuer).map(|i| &i.policy)
    }

    /// Loads every issuer's keys; the first error, if any.
    pub async fn load_keys(&self) -> Result<(), KeyError> {
        for issuer in self.issuers.values() {
            issuer.keys.refresh().await?;
        }
        Ok(())
    }

    /// Refreshes each issuer's keys on its own interval until `stop`.
    pub fn spawn_refresh(&self, stop: CancellationToken) {
        for issuer in self.issuers.values() {
            let Some(interval) = issuer.keys.refresh_interval() else {
                continue;
            };
            let keys = issuer.keys.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {
                            // Failures are logged by the source; cached keys stay.
                            let _ = keys.refresh().await;
                        }
                    }
                }
            });
        }
    }

    /// Verifies `token`, from the cache when it was verified before.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge(self.max_token_bytes));
        }
        let cache_key = token_key(token);
        if let Some(cached) = self.cache.get(&cache_key, now()) {
            // A token whose key has left the issuer's set is verified afresh (and fails).
            let key_known = self
                .issuers
                .get(&cached.issuer)
                .is_some_and(|i| i.keys.cached_key(&cached.kid).is_some());
            if key_known {
                return Ok(cached);
            }
            self.cache.remove(&cache_key);
        }
        let verified = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(cache_key, verified.clone(), now());
        Ok(verified)
    }

    /// Full verification, skipping the cache; [`verify`](Self::verify) checked the size.
    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let mut segments = token.split('.');
        let (Some(_), Some(payload), Some(_), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        // Unknown algorithms, including "none", fail to decode here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.jku.is_some() {
            return Err(AuthError::UntrustedHeader("jku"));
        }
        if header.x5u.is_some() {
            return Err(AuthError::UntrustedHeader("x5u"));
        }
        if header.jwk.is_some() {
            return Err(AuthError::UntrustedHeader("jwk"));
        }
        if header.x5c.is_some() {
            return Err(AuthError::UntrustedHeader("x5c"));
        }

        // Select the pool by its (still unverified) `iss`.
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Malformed)?;
        let iss = serde_json::from_slice::<IssuerOnly>(&payload)
            .map_err(|_| AuthError::MalformedClaims)?
            .iss;
        let iss = match iss {
            Some(serde_json::Value::String(iss)) => iss,
            Some(_) => return Err(AuthError::MalformedClaims),
            None => return Err(AuthError::MissingClaim("iss")),
        };
        let issuer = self.issuers.get(&iss).ok_or(AuthError::WrongIssuer)?;
        let policy = &issuer.policy;

        if !policy.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(AuthError::MissingKeyId)?;
        let key = match issuer.keys.key(&kid).await {
            Ok(Some(key)) => key,
            Ok(None) => return Err(AuthError::UnknownKey),
            Err(KeyError::Unavailable(_)) => return Err(AuthError::KeysUnavailable),
            Err(_) => return Err(AuthError::UnknownKey),
        };
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(AuthError::KeyAlgorithmMismatch);
        }

        let mut validation = Validation::new(header.alg);
        validation.leeway = policy.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Access tokens carry no `aud`; ID tokens' `aud` is checked below
        // against the same allow-list as `client_id`.
        validation.validate_aud = false;
        validation.set_issuer(&[&policy.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| map_decode_error(e.into_kind()))?
            .claims;

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        if claims
            .iat
            .is_some_and(|iat| iat > now + policy.leeway.as_secs_f64())
        {
            return Err(AuthError::IssuedInFuture);
        }
        let subject = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?;
        let (token_use, client_id, username) = match claims.token_use.as_deref() {
            Some("access") => (
                TokenUse::Access,
                claims
                    .client_id
                    .ok_or(AuthError::MissingClaim("client_id"))?,
                claims.username,
            ),
            Some("id") if policy.accept_id_tokens => (
                TokenUse::Id,
                claims.aud.ok_or(AuthError::MissingClaim("aud"))?,
                claims.cognito_username,
            ),
            Some(other) => return Err(AuthError::WrongTokenUse(truncate(other))),
            None => return Err(AuthError::MissingClaim("token_use")),
        };
        if !policy.client_ids.contains(&client_id) {
            return Err(AuthError::ClientNotAllowed);
        }
        let kind = match &username {
            Some(_) => CallerKind::User,
            // Client credentials: Cognito sets `sub` to the app client id.
            None if token_use == TokenUse::Access && subject == client_id => CallerKind::Service,
            None => return Err(AuthError::UnknownTokenKind),
        };
        Ok(VerifiedToken {
            issuer: iss,
            subject,
            client_id,
            username,
            kind,
            token_use,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
            groups: claims.groups.into_iter().collect(),
            cnf_x5t_s256: claims.cnf.and_then(|c| c.x5t_s256),
            exp: claims.exp.ok_or(AuthError::MissingClaim("exp"))?,
            kid,
        })
    }
}

/// Keeps caller-supplied text short in messages and logs.
fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

fn map_decode_error(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm => AuthError::KeyAlgorithmMismatch,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            _ => "sub",
        }),
        // serde's message quotes claim values: keep them out of the answer.
        ErrorKind::Json(_) => AuthError::MalformedClaims,
        _ => AuthError::Malformed,
    }
}
