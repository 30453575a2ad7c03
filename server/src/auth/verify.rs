//! Verifying Cognito tokens, for one or several user pools (issuers).
//!
//! [`TokenVerifier::verify`] runs these steps in order, each a function of
//! its own below:
//!
//! 1. size: longer than the limit is refused before any decoding;
//! 2. segments: exactly `header.payload.signature`;
//! 3. header: a known algorithm, no key-carrying parameters (`jku`, `x5u`,
//!    `jwk`, `x5c`);
//! 4. claims, parsed once: the (still unverified) `iss` picks the pool whose
//!    keys and policy apply;
//! 5. key lookup: an algorithm the pool allows, a `kid`, the pool's key of
//!    that name, whose own `alg` must match;
//! 6. signature: RSA PKCS#1 v1.5 with the key parsed when its set was loaded;
//! 7. validity: `exp`, `nbf` (with the leeway) and `iss` again;
//! 8. claims: `iat`, `sub`, `token_use`, `client_id`/`aud`;
//! 9. caller kind: a user (has `username`) or a machine (client credentials).
//!
//! Cheap structural checks come first, then the signature, and only then the
//! claims are acted upon, so an unsigned or forged token never is. A cold
//! verification decodes each segment once and costs little beyond the RSA
//! operation (`cargo bench -p notes-server --bench verify` compares them).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{
    AuthError, CallerKind, ScopePolicy,
    cache::TokenCache,
    keys::{KeyError, KeySource, VerifyKey},
};

/// Clock skew allowed on `exp`, `nbf` and `iat` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
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
            leeway: DEFAULT_LEEWAY,
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
    /// `jti`: this token's own id.
    pub jti: Option<String>,
    /// `origin_jti`: the id of the sign-in (refresh token) it came from.
    pub origin_jti: Option<String>,
    /// `iat`, seconds since the epoch (fractions dropped).
    pub iat: Option<u64>,
}

impl super::cache::Expiring for VerifiedToken {
    fn exp(&self) -> u64 {
        self.exp
    }
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
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
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
    jti: Option<String>,
    origin_jti: Option<String>,
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
    /// Looked up on every call: foldhash (seeded per map), not SipHash;
    /// only configuration puts issuers in it.
    issuers: HashMap<String, Issuer, foldhash::fast::RandomState>,
    max_token_bytes: usize,
    cache: TokenCache<VerifiedToken>,
    clock: Clock,
}

pub use crate::clock::{Clock, system_clock};

/// Step 1: the size limit, before any decoding.
fn check_size(token: &str, max_bytes: usize) -> Result<(), AuthError> {
    if token.len() > max_bytes {
        return Err(AuthError::TooLarge(max_bytes));
    }
    Ok(())
}

/// A token's three segments, still encoded.
#[derive(Debug, PartialEq)]
struct Segments<'a> {
    /// `header.payload`, what the signature covers.
    signed: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// Step 2: exactly three dot-separated segments.
fn segments(token: &str) -> Result<Segments<'_>, AuthError> {
    let (signed, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    match signed.split_once('.') {
        Some((_, payload)) if !payload.contains('.') => Ok(Segments {
            signed,
            payload,
            signature,
        }),
        _ => Err(AuthError::Malformed),
    }
}

/// The header fields we act upon, and the key-carrying ones we refuse.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    jku: Option<serde::de::IgnoredAny>,
    x5u: Option<serde::de::IgnoredAny>,
    jwk: Option<serde::de::IgnoredAny>,
    x5c: Option<serde::de::IgnoredAny>,
}

/// A token's header, as far as verification goes.
#[derive(Debug, PartialEq)]
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

/// Step 3: a decodable header with a known algorithm (`none` is not one) and
/// no key carried or referenced by the token itself.
fn read_header(token: &str) -> Result<TokenHeader, AuthError> {
    let (encoded, _) = token.split_once('.').ok_or(AuthError::Malformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AuthError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
    let untrusted = [
        ("jku", header.jku.is_some()),
        ("x5u", header.x5u.is_some()),
        ("jwk", header.jwk.is_some()),
        ("x5c", header.x5c.is_some()),
    ];
    if let Some((name, _)) = untrusted.iter().find(|(_, present)| *present) {
        return Err(AuthError::UntrustedHeader(name));
    }
    Ok(TokenHeader {
        alg: header.alg.parse().map_err(|_| AuthError::Malformed)?,
        kid: header.kid,
    })
}

/// Step 4: the claims of a payload segment, decoded once; until the
/// signature verifies, only `iss` is looked at, to pick the issuer.
fn read_claims(payload: &str) -> Result<Claims, AuthError> {
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    // serde's message quotes claim values: keep them out of the answer.
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|_| AuthError::MalformedClaims)?;
    if claims.iss.is_none() {
        return Err(AuthError::MissingClaim("iss"));
    }
    Ok(claims)
}

/// Step 5: an algorithm the issuer allows, and the issuer's key named by the
/// header's `kid`, usable with that algorithm.
async fn lookup_key(issuer: &Issuer, header: &TokenHeader) -> Result<Arc<VerifyKey>, AuthError> {
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

/// The largest RSA signature: 8,192 bits.
const MAX_SIGNATURE_BYTES: usize = 1024;

/// Step 6: the signature over `header.payload`, with `alg` and `key`.
fn check_signature(
    segments: &Segments<'_>,
    alg: Algorithm,
    key: &VerifyKey,
) -> Result<(), AuthError> {
    let mut signature = [0u8; MAX_SIGNATURE_BYTES];
    let len = URL_SAFE_NO_PAD
        .decode_slice(segments.signature, &mut signature)
        .map_err(|_| AuthError::Malformed)?;
    if key.verifies(alg, segments.signed.as_bytes(), &signature[..len]) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// Step 7: `exp` present and not passed, `nbf` (if any) reached, each with
/// the policy's leeway, at `now` (seconds); `iss` is the policy's. Returns `exp`.
fn check_validity(claims: &Claims, policy: &TokenPolicy, now: u64) -> Result<u64, AuthError> {
    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if claims.iss.as_deref() != Some(policy.issuer.as_str()) {
        return Err(AuthError::WrongIssuer);
    }
    let leeway = policy.leeway.as_secs();
    if exp.saturating_add(leeway) < now {
        return Err(AuthError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(leeway))
    {
        return Err(AuthError::NotYetValid);
    }
    Ok(exp)
}

/// What step 8 establishes.
struct CheckedClaims {
    subject: String,
    token_use: TokenUse,
    client_id: String,
    username: Option<String>,
}

/// Step 8: `iat` not in the future, a `sub`, an accepted `token_use` and an
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

/// Step 9: a user token names its user; a client-credentials token has no
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
            clock: system_clock(),
        }
    }

    /// Reads the time from `clock` instead of the system clock (for tests
    /// of expiry that do not wait for it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now_secs(&self) -> u64 {
        (self.clock)().as_secs()
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
        match self.cached(token.as_bytes()) {
            Some(cached) => Ok(cached),
            None => self.verify_afresh(token).await,
        }
    }

    /// The verified token `token` is, if it was verified before, has not
    /// expired, and its key is still in its issuer's set. `token` may be any
    /// bytes: those of a token verified before are text, so a caller can
    /// leave checking them for a miss.
    pub fn cached(&self, token: &[u8]) -> Option<Arc<VerifiedToken>> {
        let cached = self.cache.get(token, self.now_secs())?;
        // A token whose key has left the issuer's set is verified afresh (and fails).
        let key_known = self
            .issuers
            .get(&cached.issuer)
            .is_some_and(|i| i.keys.cached_key(&cached.kid).is_some());
        if key_known {
            crate::metrics::metrics().token_cache_hits.inc();
            return Some(cached);
        }
        self.cache.remove(token);
        None
    }

    /// Verifies `token` in full, whether or not it is cached, and caches it.
    pub async fn verify_afresh(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        check_size(token, self.max_token_bytes)?;
        crate::metrics::metrics().token_cache_misses.inc();
        let verified = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(token, verified.clone(), self.now_secs());
        Ok(verified)
    }

    /// Steps 2 to 9, skipping the cache; [`verify`](Self::verify) checked the size.
    async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let segments = segments(token)?;
        let header = read_header(token)?;
        let mut claims = read_claims(segments.payload)?;
        let issuer = claims
            .iss
            .as_deref()
            .and_then(|iss| self.issuers.get(iss))
            .ok_or(AuthError::WrongIssuer)?;
        let key = lookup_key(issuer, &header).await?;
        check_signature(&segments, header.alg, &key)?;
        let now = (self.clock)();
        let exp = check_validity(&claims, &issuer.policy, now.as_secs())?;
        let checked = check_claims(&mut claims, &issuer.policy, now.as_secs_f64())?;
        let kind = caller_kind(&checked)?;
        let iat = claims
            .iat
            .filter(|iat| iat.is_finite() && *iat >= 0.0)
            .map(|iat| iat as u64);
        Ok(VerifiedToken {
            jti: claims.jti.take(),
            origin_jti: claims.origin_jti.take(),
            iat,
            issuer: issuer.policy.issuer.clone(),
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
            exp,
            kid: header.kid.unwrap_or_default(),
        })
    }
}

/// Keeps caller-supplied text short in messages and logs.
fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
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
        assert_eq!(
            segments("a.b.c"),
            Ok(Segments {
                signed: "a.b",
                payload: "b",
                signature: "c"
            })
        );
        for bad in ["", "a", "a.b", "a.b.c.d", "..."] {
            assert_eq!(segments(bad), Err(AuthError::Malformed), "{bad}");
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
            read_claims(&b64(r#"{"iss":"https://issuer"}"#)).map(|c| c.iss),
            Ok(Some("https://issuer".to_owned()))
        );
        assert_eq!(
            read_claims(&b64(r#"{"iss":7}"#)).err(),
            Some(AuthError::MalformedClaims)
        );
        assert_eq!(
            read_claims(&b64("{}")).err(),
            Some(AuthError::MissingClaim("iss"))
        );
        assert_eq!(read_claims("!").err(), Some(AuthError::Malformed));
    }

    #[test]
    fn validity_allows_the_leeway_and_not_a_second_more() {
        let policy = policy();
        let at = |exp: u64, nbf: Option<u64>| {
            let mut claims = claims(serde_json::json!({"iss": "https://issuer", "exp": exp}));
            claims.nbf = nbf;
            check_validity(&claims, &policy, 10_000)
        };
        // 60 s leeway: 59 s and 60 s past `exp` pass, 61 s does not.
        assert_eq!(at(10_000 - 59, None), Ok(10_000 - 59));
        assert_eq!(at(10_000 - 60, None), Ok(10_000 - 60));
        assert_eq!(at(10_000 - 61, None), Err(AuthError::Expired));
        assert_eq!(at(20_000, Some(10_060)), Ok(20_000));
        assert_eq!(at(20_000, Some(10_061)), Err(AuthError::NotYetValid));
        let no_exp = claims(serde_json::json!({"iss": "https://issuer"}));
        assert_eq!(
            check_validity(&no_exp, &policy, 0),
            Err(AuthError::MissingClaim("exp"))
        );
        let other = claims(serde_json::json!({"iss": "https://other", "exp": 20_000}));
        assert_eq!(
            check_validity(&other, &policy, 0),
            Err(AuthError::WrongIssuer)
        );
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
        // `iat` at exactly now + leeway (60 s) is still accepted.
        let at_the_edge = check_claims(
            &mut claims(serde_json::json!({
                "sub": "u", "token_use": "access", "client_id": "app", "username": "u",
                "iat": 1060.0
            })),
            &policy,
            1000.0,
        );
        assert!(at_the_edge.is_ok(), "{:?}", at_the_edge.err());
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

    proptest::proptest! {
        /// `exp`, `nbf` and the issuer each refuse exactly the tokens
        /// outside their rule, with the policy's leeway, for any times.
        #[test]
        fn validity_refuses_exactly_what_is_outside_its_window(
            exp in proptest::option::of(0u64..4_000),
            nbf in proptest::option::of(0u64..4_000),
            now in 0u64..4_000,
            leeway in 0u64..=300,
            same_issuer in proptest::prelude::any::<bool>(),
        ) {
            let mut policy = policy();
            policy.leeway = Duration::from_secs(leeway);
            let claims = Claims {
                iss: Some(if same_issuer { "https://issuer" } else { "https://other" }.into()),
                exp,
                nbf,
                ..claims(serde_json::json!({}))
            };
            let got = check_validity(&claims, &policy, now);
            let expected = match exp {
                None => Err(AuthError::MissingClaim("exp")),
                Some(_) if !same_issuer => Err(AuthError::WrongIssuer),
                Some(exp) if exp + leeway < now => Err(AuthError::Expired),
                Some(_) if nbf.is_some_and(|nbf| nbf > now + leeway) => Err(AuthError::NotYetValid),
                Some(exp) => Ok(exp),
            };
            proptest::prop_assert_eq!(got, expected);
        }

        /// `iat`, `token_use` and the app client (`client_id` of access
        /// tokens, `aud` of ID tokens where accepted) each refuse exactly
        /// the tokens outside their rule.
        #[test]
        fn claims_refuse_exactly_what_is_outside_their_rule(
            iat in proptest::option::of(0u32..4_000),
            now in 0u32..4_000,
            leeway in 0u64..=300,
            token_use in proptest::option::of(proptest::prop_oneof!["access", "id", "refresh", ""]),
            client in proptest::prop_oneof!["app", "other-app"],
            accept_id in proptest::prelude::any::<bool>(),
        ) {
            let mut policy = policy();
            policy.leeway = Duration::from_secs(leeway);
            policy.accept_id_tokens = accept_id;
            let mut claims = Claims {
                sub: Some("alice".into()),
                iat: iat.map(f64::from),
                token_use: token_use.clone(),
                client_id: Some(client.clone()),
                aud: Some(client.clone()),
                ..claims(serde_json::json!({}))
            };
            let got = check_claims(&mut claims, &policy, f64::from(now)).map(|c| c.client_id);
            let expected = if iat.is_some_and(|iat| u64::from(iat) > u64::from(now) + leeway) {
                Err(AuthError::IssuedInFuture)
            } else {
                match token_use.as_deref() {
                    None => Err(AuthError::MissingClaim("token_use")),
                    Some("access") | Some("id") if token_use.as_deref() == Some("id") && !accept_id => {
                        Err(AuthError::WrongTokenUse("id".into()))
                    }
                    Some("access") | Some("id") if client != "app" => Err(AuthError::ClientNotAllowed),
                    Some("access") | Some("id") => Ok(client.clone()),
                    Some(other) => Err(AuthError::WrongTokenUse(other.into())),
                }
            };
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
