//! Verifying Cognito tokens, for one or several user pools (issuers).
//!
//! [`TokenVerifier::verify`] runs these steps in order, each a function of
//! its own below:
//!
//! 1. size: longer than the limit is refused before any decoding;
//! 2. segments: exactly `header.payload.signature`;
//! 3. header: a known algorithm, no key-carrying parameters (`jku`, `x5u`,
//!    `jwk`, `x5c`);
//! 4. issuer selection: the (still unverified) `iss` picks the pool whose keys
//!    and policy apply; it is verified again with the signature;
//! 5. key lookup: an algorithm the pool allows, a `kid`, the pool's key of
//!    that name, whose own `alg` must match;
//! 6. signature, `exp`, `nbf` and `iss` (jsonwebtoken);
//! 7. claims: `iat`, `sub`, `token_use`, `client_id`/`aud`;
//! 8. caller kind: a user (has `username`) or a machine (client credentials).
//!
//! Cheap structural checks come first, then the signature, and only then the
//! claims, so an unsigned or forged token never has its claims acted upon.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{
    AuthError, CallerKind, ScopePolicy,
    cache::{TokenCache, token_key},
    keys::{KeyError, KeySource, VerifyKey},
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
    /// Scopes per access level, for user and for machine tokens.
    pub scopes: ScopePolicy,
    /// When not empty, user tokens must be in at least one of these `cognito:groups`.
    pub required_groups: BTreeSet<String>,
    /// Put before `sub` to make the owner (empty: owner = `sub`).
    pub owner_prefix: String,
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
            owner_prefix: String::new(),
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
    /// A signed-in user, or a machine with client credentials.
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

/// One trusted pool: its policy and where its keys come from.
pub struct Issuer {
    /// What its tokens must satisfy.
    pub policy: TokenPolicy,
    /// Its verification keys.
    pub keys: Arc<dyn KeySource>,
}

/// Verifies tokens of the configured issuers.
pub struct TokenVerifier {
    issuers: HashMap<String, Issuer>,
    max_token_bytes: usize,
    cache: TokenCache,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Step 1: the size limit, before any decoding.
fn check_size(token: &str, max_bytes: usize) -> Result<(), AuthError> {
    if token.len() > max_bytes {
        return Err(AuthError::TooLarge(max_bytes));
    }
    Ok(())
}

/// Step 2: exactly three dot-separated segments; returns the payload.
fn payload_segment(token: &str) -> Result<&str, AuthError> {
    let mut segments = token.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(_), Some(payload), Some(_), None) => Ok(payload),
        _ => Err(AuthError::Malformed),
    }
}

/// Step 3: a decodable header with a known algorithm (`none` is not one) and
/// no key carried or referenced by the token itself.
fn read_header(token: &str) -> Result<Header, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    let untrusted = [
        ("jku", header.jku.is_some()),
        ("x5u", header.x5u.is_some()),
        ("jwk", header.jwk.is_some()),
        ("x5c", header.x5c.is_some()),
    ];
    if let Some((name, _)) = untrusted.iter().find(|(_, present)| *present) {
        return Err(AuthError::UntrustedHeader(name));
    }
    Ok(header)
}

/// Step 4a: the unverified `iss` of a payload segment.
fn unverified_issuer(payload: &str) -> Result<String, AuthError> {
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice::<IssuerOnly>(&payload)
        .map_err(|_| AuthError::MalformedClaims)?
        .iss
    {
        Some(serde_json::Value::String(iss)) => Ok(iss),
        Some(_) => Err(AuthError::MalformedClaims),
        None => Err(AuthError::MissingClaim("iss")),
    }
}

/// Step 5: an algorithm the issuer allows, and the issuer's key named by the
/// header's `kid`, usable with that algorithm.
async fn lookup_key(issuer: &Issuer, header: &Header) -> Result<Arc<VerifyKey>, AuthError> {
    let alg = header.alg;
    if !issuer.policy.algorithms.contains(&alg) {
        return Err(AuthError::AlgorithmNotAllowed(format!("{alg:?}")));
    }
    let kid = header.kid.as_deref().ok_or(AuthError::MissingKeyId)?;
    let key = match issuer.keys.key(kid).await {
        Ok(Some(key)) => key,
        Ok(None) => return Err(AuthError::UnknownKey),
        Err(KeyError::Unavailable { .. }) => return Err(AuthError::KeysUnavailable),
        Err(_) => return Err(AuthError::UnknownKey),
    };
    if key.alg.is_some_and(|key_alg| key_alg != alg) {
        return Err(AuthError::KeyAlgorithmMismatch);
    }
    Ok(key)
}

/// Step 6: the signature, then `exp`, `nbf` and `iss`; the claims are
/// deserialised only from a token whose signature verified.
fn check_signature(
    token: &str,
    alg: Algorithm,
    key: &VerifyKey,
    policy: &TokenPolicy,
) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(alg);
    validation.leeway = policy.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // Access tokens carry no `aud`; ID tokens' `aud` is checked in
    // `check_claims` against the same allow-list as `client_id`.
    validation.validate_aud = false;
    validation.set_issuer(&[&policy.issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| map_decode_error(e.into_kind()))
}

/// What step 7 establishes.
struct CheckedClaims {
    subject: String,
    token_use: TokenUse,
    client_id: String,
    username: Option<String>,
}

/// Step 7: `iat` not in the future, a `sub`, an accepted `token_use` and an
/// allowed app client.
fn check_claims(
    claims: &mut Claims,
    policy: &TokenPolicy,
    now: f64,
) -> Result<CheckedClaims, AuthError> {
    if claims
        .iat
        .is_some_and(|iat| iat > now + policy.leeway.as_secs_f64())
    {
        return Err(AuthError::IssuedInFuture);
    }
    let subject = claims
        .sub
        .take()
        .filter(|sub| !sub.is_empty())
        .ok_or(AuthError::MissingClaim("sub"))?;
    let (token_use, client_id, username) = match claims.token_use.as_deref() {
        Some("access") => (
            TokenUse::Access,
            claims
                .client_id
                .take()
                .ok_or(AuthError::MissingClaim("client_id"))?,
            claims.username.take(),
        ),
        Some("id") if policy.accept_id_tokens => (
            TokenUse::Id,
            claims.aud.take().ok_or(AuthError::MissingClaim("aud"))?,
            claims.cognito_username.take(),
        ),
        Some(other) => return Err(AuthError::WrongTokenUse(truncate(other))),
        None => return Err(AuthError::MissingClaim("token_use")),
    };
    if !policy.client_ids.contains(&client_id) {
        return Err(AuthError::ClientNotAllowed);
    }
    Ok(CheckedClaims {
        subject,
        token_use,
        client_id,
        username,
    })
}

/// Step 8: a user token names its user; a client-credentials token has no
/// user and Cognito sets its `sub` to the app client id.
fn caller_kind(checked: &CheckedClaims) -> Result<CallerKind, AuthError> {
    match &checked.username {
        Some(_) => Ok(CallerKind::User),
        None if checked.token_use == TokenUse::Access && checked.subject == checked.client_id => {
            Ok(CallerKind::Machine)
        }
        None => Err(AuthError::UnknownTokenKind),
    }
}

impl TokenVerifier {
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

    /// Every configured issuer (for loading and refreshing their keys).
    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        self.issuers.values()
    }

    /// Verifies `token`, from the cache when it was verified before.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        check_size(token, self.max_token_bytes)?;
        let cache_key = token_key(token);
        if let Some(cached) = self.cache.get(&cache_key, now_secs()) {
            // A token whose key has left the issuer's set is verified afresh (and fails).
            let key_known = self
                .issuers
                .get(&cached.issuer)
                .is_some_and(|i| i.keys.cached_key(&cached.kid).is_some());
            if key_known {
                crate::metrics::metrics().token_cache_hits.inc();
                return Ok(cached);
            }
            self.cache.remove(&cache_key);
        }
        crate::metrics::metrics().token_cache_misses.inc();
        let verified = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(cache_key, verified.clone(), now_secs());
        Ok(verified)
    }

    /// Steps 2 to 8, skipping the cache; [`verify`](Self::verify) checked the size.
    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let payload = payload_segment(token)?;
        let header = read_header(token)?;
        let iss = unverified_issuer(payload)?;
        let issuer = self.issuers.get(&iss).ok_or(AuthError::WrongIssuer)?;
        let key = lookup_key(issuer, &header).await?;
        let mut claims = check_signature(token, header.alg, &key, &issuer.policy)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let checked = check_claims(&mut claims, &issuer.policy, now)?;
        let kind = caller_kind(&checked)?;
        Ok(VerifiedToken {
            issuer: iss,
            subject: checked.subject,
            client_id: checked.client_id,
            username: checked.username,
            kind,
            token_use: checked.token_use,
            scopes: claims
                .scope
                .unwrap_or_default()
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
            groups: claims.groups.into_iter().collect(),
            cnf_x5t_s256: claims.cnf.and_then(|c| c.x5t_s256),
            exp: claims.exp.ok_or(AuthError::MissingClaim("exp"))?,
            kid: header.kid.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn claims(json: serde_json::Value) -> Claims {
        serde_json::from_value(json).unwrap()
    }

    fn policy() -> TokenPolicy {
        TokenPolicy::new("https://issuer", ["app".to_owned()])
    }

    #[test]
    fn size_is_checked_before_anything_else() {
        assert_eq!(check_size("abc", 3), Ok(()));
        assert_eq!(check_size("abcd", 3), Err(AuthError::TooLarge(3)));
    }

    #[test]
    fn a_token_has_exactly_three_segments() {
        assert_eq!(payload_segment("a.b.c"), Ok("b"));
        for bad in ["", "a", "a.b", "a.b.c.d"] {
            assert_eq!(payload_segment(bad), Err(AuthError::Malformed), "{bad}");
        }
    }

    #[test]
    fn headers_carrying_keys_are_refused() {
        let token = |header: &str| format!("{}.e30.sig", b64(header));
        assert_eq!(
            read_header(&token(r#"{"alg":"RS256","kid":"k"}"#)).map(|h| h.kid),
            Ok(Some("k".to_owned()))
        );
        assert_eq!(
            read_header(&token(r#"{"alg":"RS256","kid":"k","jku":"https://x"}"#)).unwrap_err(),
            AuthError::UntrustedHeader("jku")
        );
        assert_eq!(
            read_header(&token(r#"{"alg":"none","kid":"k"}"#)).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn the_issuer_must_be_a_string() {
        assert_eq!(
            unverified_issuer(&b64(r#"{"iss":"https://issuer"}"#)),
            Ok("https://issuer".to_owned())
        );
        assert_eq!(
            unverified_issuer(&b64(r#"{"iss":7}"#)),
            Err(AuthError::MalformedClaims)
        );
        assert_eq!(
            unverified_issuer(&b64("{}")),
            Err(AuthError::MissingClaim("iss"))
        );
        assert_eq!(unverified_issuer("!"), Err(AuthError::Malformed));
    }

    #[test]
    fn claims_need_a_subject_an_access_use_and_an_allowed_client() {
        let policy = policy();
        let ok = check_claims(
            &mut claims(serde_json::json!({
                "sub": "u", "token_use": "access", "client_id": "app", "username": "u"
            })),
            &policy,
            0.0,
        )
        .unwrap();
        assert_eq!(ok.subject, "u");
        let refused =
            |json: serde_json::Value| check_claims(&mut claims(json), &policy, 0.0).err().unwrap();
        assert_eq!(
            refused(serde_json::json!({"token_use": "access", "client_id": "app"})),
            AuthError::MissingClaim("sub")
        );
        assert_eq!(
            refused(serde_json::json!({"sub": "u", "token_use": "id", "aud": "app"})),
            AuthError::WrongTokenUse("id".into())
        );
        assert_eq!(
            refused(serde_json::json!({"sub": "u", "token_use": "access", "client_id": "other"})),
            AuthError::ClientNotAllowed
        );
        assert_eq!(
            refused(serde_json::json!({
                "sub": "u", "token_use": "access", "client_id": "app", "iat": 1000.0
            })),
            AuthError::IssuedInFuture
        );
    }

    #[test]
    fn machines_are_tokens_whose_subject_is_their_client() {
        let checked = |subject: &str, username: Option<&str>| CheckedClaims {
            subject: subject.into(),
            token_use: TokenUse::Access,
            client_id: "app".into(),
            username: username.map(Into::into),
        };
        assert_eq!(caller_kind(&checked("u", Some("u"))), Ok(CallerKind::User));
        assert_eq!(caller_kind(&checked("app", None)), Ok(CallerKind::Machine));
        assert_eq!(
            caller_kind(&checked("u", None)),
            Err(AuthError::UnknownTokenKind)
        );
    }
}
