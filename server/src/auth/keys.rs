//! Where token verification keys come from.
//!
//! The [`Verifier`](super::Verifier) asks a [`KeySource`] for the key a
//! token's `kid` names. [`StaticKeys`] serves a fixed JWKS (a file, or the dev
//! issuer's set); a source that fetches and caches a user pool's JWKS over
//! HTTPS is another implementation of the same trait.

use std::{collections::HashMap, path::Path, sync::Arc};

use async_trait::async_trait;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// A verification key and what it may verify.
pub struct VerifyKey {
    /// The RSA public key.
    pub key: DecodingKey,
    /// The key's own `alg`, when the JWK states one; the token's must match.
    pub alg: Option<Algorithm>,
}

/// Failures to obtain keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key set could not be read.
    #[error("cannot read key set {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key set is not a JWKS document.
    #[error("key set is not a valid JWKS document")]
    Parse(#[source] serde_json::Error),
    /// The key set has no usable RSA signing key.
    #[error("key set has no usable RSA signing key with a kid")]
    Empty,
    /// The key source cannot answer now (network, timeouts).
    #[error("key source unavailable: {0}")]
    Unavailable(String),
}

/// Answers "which key is `kid`?" for one issuer.
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The key named `kid`, or `None` when the issuer has no such key.
    async fn key(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, KeyError>;
}

/// A fixed set of keys.
pub struct StaticKeys {
    keys: HashMap<String, Arc<VerifyKey>>,
}

impl StaticKeys {
    /// Keeps the RSA signing keys of `set` that have a `kid`; other keys
    /// (EC, symmetric, encryption-only, no kid) are skipped, and a set
    /// with none left is an error.
    pub fn from_jwk_set(set: &JwkSet) -> Result<Self, KeyError> {
        let keys: HashMap<_, _> = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(usable_key(jwk)?))))
            .collect();
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// Parses a JWKS document.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(KeyError::Parse)?;
        Self::from_jwk_set(&set)
    }

    /// Reads a JWKS document from a file.
    pub fn from_jwks_file(path: &Path) -> Result<Self, KeyError> {
        let json = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_jwks_json(&json)
    }
}

/// An RSA signature key from a JWK, or `None` if it is anything else.
fn usable_key(jwk: &Jwk) -> Option<VerifyKey> {
    if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return None;
    }
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        // An RSA key declared for anything else (PSS, encryption) is not ours to use.
        Some(_) => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, alg })
}

#[async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, KeyError> {
        Ok(self.keys.get(kid).cloned())
    }
}
