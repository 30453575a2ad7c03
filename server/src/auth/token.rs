//! Verifying a Cognito access token.
//!
//! The order is deliberate: cheap structural checks first (size, header,
//! algorithm, key id), then the signature, and only then the claims, so an
//! unsigned or forged token never has its claims acted upon.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{
    AuthError,
    keys::{KeyError, KeySource},
};

/// The largest leeway the policy accepts for `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// What a token must satisfy, for one issuer.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Exact `iss`, e.g. `https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf`.
    pub issuer: String,
    /// App clients whose tokens are accepted (`client_id`).
    pub client_ids: HashSet<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`; capped at [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Tokens longer than this are refused before decoding.
    pub max_token_bytes: usize,
}

impl TokenPolicy {
    /// A policy for `issuer` accepting `client_ids`, with a 60 s leeway and an 8 KiB size limit.
    pub fn new(issuer: impl Into<String>, client_ids: impl IntoIterator<Item = String>) -> Self {
        Self {
            issuer: issuer.into(),
            client_ids: client_ids.into_iter().collect(),
            leeway: Duration::from_secs(60),
            max_token_bytes: 8 * 1024,
        }
    }
}

/// The facts a verified token establishes.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// `username`, absent for client-credentials tokens.
    pub username: Option<String>,
    /// `scope`, split on spaces.
    pub scopes: BTreeSet<String>,
}

/// The claims of a Cognito access token that we act upon. A claim of the
/// wrong type fails deserialisation and so the whole token.
#[derive(Debug, Deserialize)]
struct AccessClaims {
    sub: String,
    token_use: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    iat: Option<f64>,
}

/// Verifies tokens of one issuer against its keys and a [`TokenPolicy`].
pub struct Verifier {
    policy: TokenPolicy,
    keys: Arc<dyn KeySource>,
    validation: Validation,
}

impl Verifier {
    /// A verifier for `policy`, with keys from `keys`.
    pub fn new(mut policy: TokenPolicy, keys: Arc<dyn KeySource>) -> Self {
        policy.leeway = policy.leeway.min(MAX_LEEWAY);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = policy.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Cognito access tokens carry no `aud`; the app client is `client_id`.
        validation.validate_aud = false;
        validation.set_issuer(&[&policy.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Self {
            policy,
            keys,
            validation,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// Verifies `token`: size, header, key, signature, then claims.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        if token.len() > self.policy.max_token_bytes {
            return Err(AuthError::TooLarge(self.policy.max_token_bytes));
        }
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed);
        }
        // Unknown algorithms, including "none", fail to decode here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        if header.jku.is_some() {
            return Err(AuthError::UntrustedHeader("jku"));
        }
        if header.x5u.is_some() {
            return Err(AuthError::UntrustedHeader("x5u"));
        }
        if header.jwk.is_some() {
            return Err(AuthError::UntrustedHeader("jwk"));
        }
        let kid = header.kid.as_deref().ok_or(AuthError::MissingKeyId)?;
        let key = match self.keys.key(kid).await {
            Ok(Some(key)) => key,
            Ok(None) => return Err(AuthError::UnknownKey),
            Err(KeyError::Unavailable(_)) => return Err(AuthError::KeysUnavailable),
            Err(_) => return Err(AuthError::UnknownKey),
        };
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(AuthError::KeyAlgorithmMismatch);
        }

        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &self.validation)
            .map_err(|e| map_decode_error(e.into_kind()))?;
        let claims = data.claims;

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        if claims
            .iat
            .is_some_and(|iat| iat > now + self.policy.leeway.as_secs_f64())
        {
            return Err(AuthError::IssuedInFuture);
        }
        match claims.token_use.as_deref() {
            Some("access") => {}
            Some(other) => return Err(AuthError::WrongTokenUse(truncate(other))),
            None => return Err(AuthError::MissingClaim("token_use")),
        }
        let client_id = claims
            .client_id
            .ok_or(AuthError::MissingClaim("client_id"))?;
        if !self.policy.client_ids.contains(&client_id) {
            return Err(AuthError::ClientNotAllowed);
        }
        if claims.sub.is_empty() {
            return Err(AuthError::MissingClaim("sub"));
        }
        let scopes = claims
            .scope
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(VerifiedToken {
            subject: claims.sub,
            client_id,
            username: claims.username,
            scopes,
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
