//! Where token verification keys come from.
//!
//! The [`TokenVerifier`](super::TokenVerifier) asks a [`KeySource`] for the key a
//! token's `kid` names. [`StaticKeys`] serves a fixed JWKS (a file, or the dev
//! issuer's set); [`RemoteJwks`](super::jwks::RemoteJwks) fetches and caches a
//! user pool's JWKS over HTTPS.

use std::{collections::HashMap, path::Path, sync::Arc};

use async_trait::async_trait;
use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512, RsaPublicKeyComponents,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm,
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// A verification key and what it may verify.
///
/// The RSA public key is parsed once, when the key set is loaded, for each
/// of RS256, RS384 and RS512 (PKCS#1 v1.5, 2,048 to 8,192 bits), so that
/// verifying a token is the RSA operation and nothing else.
pub struct VerifyKey {
    rs256: ParsedPublicKey,
    rs384: ParsedPublicKey,
    rs512: ParsedPublicKey,
    /// The key's own `alg`, when the JWK states one; the token's must match.
    pub alg: Option<Algorithm>,
}

impl VerifyKey {
    /// A key from its big-endian modulus and exponent, or `None` when they
    /// do not form an RSA public key.
    pub fn from_rsa_components(n: &[u8], e: &[u8], alg: Option<Algorithm>) -> Option<Self> {
        // 2,048 to 8,192 bits, as verification will require: a key outside
        // that range is not usable, so it is not loaded.
        let significant = n.iter().skip_while(|b| **b == 0).count();
        if !(256..=1024).contains(&significant) {
            return None;
        }
        let components = RsaPublicKeyComponents { n, e };
        Some(Self {
            rs256: components
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                .ok()?,
            rs384: components
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA384)
                .ok()?,
            rs512: components
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA512)
                .ok()?,
            alg,
        })
    }

    /// Whether `signature` is this key's `alg` signature of `message`; any
    /// algorithm but RS256, RS384 and RS512 never verifies.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let key = match alg {
            Algorithm::RS256 => &self.rs256,
            Algorithm::RS384 => &self.rs384,
            Algorithm::RS512 => &self.rs512,
            _ => return false,
        };
        key.verify_sig(message, signature).is_ok()
    }
}

/// Failures to obtain keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key set could not be read.
    #[error("cannot read key set {path}")]
    Read {
        /// The key-set file that could not be read.
        path: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The key set is not a JWKS document.
    #[error("key set is not a valid JWKS document")]
    Parse(#[source] serde_json::Error),
    /// The key set has no usable RSA signing key.
    #[error("key set has no usable RSA signing key with a kid")]
    Empty,
    /// The key source cannot answer now (network, timeouts, a bad answer).
    #[error("key set {url} is unavailable: {problem}")]
    Unavailable {
        /// Where the keys come from.
        url: String,
        /// What went wrong, e.g. "HTTP status 503".
        problem: String,
        /// The underlying failure, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Answers "which key is `kid`?" for one issuer.
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The key named `kid`, or `None` when the issuer has no such key.
    async fn key(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, KeyError>;

    /// The key named `kid` if it is known now, without fetching anything.
    fn cached_key(&self, kid: &str) -> Option<Arc<VerifyKey>>;

    /// Loads the keys; the server reports itself ready only once every
    /// source has. A fixed set is always loaded.
    async fn refresh(&self) -> Result<(), KeyError> {
        Ok(())
    }

    /// How often [`refresh`](Self::refresh) should run in the background, if at all.
    fn refresh_interval(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Keys by `kid`. Looked up on every call, so hashed with foldhash (seeded
/// per map) rather than SipHash; only the issuer's JWKS puts keys in it.
pub(crate) type KeyMap = HashMap<String, Arc<VerifyKey>, foldhash::fast::RandomState>;

/// A fixed set of keys.
pub struct StaticKeys {
    keys: KeyMap,
}

/// The usable keys of a JWKS document, by `kid`.
pub(crate) fn parse_jwks(json: &[u8]) -> Result<KeyMap, KeyError> {
    let set: JwkSet = serde_json::from_slice(json).map_err(KeyError::Parse)?;
    let keys = usable_keys(&set);
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(keys)
}

fn usable_keys(set: &JwkSet) -> KeyMap {
    set.keys
        .iter()
        .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(usable_key(jwk)?))))
        .collect()
}

impl StaticKeys {
    /// Keeps the RSA signing keys of `set` that have a `kid`; other keys
    /// (EC, symmetric, encryption-only, no kid) are skipped, and a set
    /// with none left is an error.
    pub fn from_jwk_set(set: &JwkSet) -> Result<Self, KeyError> {
        let keys = usable_keys(set);
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// Parses a JWKS document.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            keys: parse_jwks(json)?,
        })
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
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return None;
    };
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
    let n = URL_SAFE_NO_PAD.decode(&rsa.n).ok()?;
    let e = URL_SAFE_NO_PAD.decode(&rsa.e).ok()?;
    VerifyKey::from_rsa_components(&n, &e, alg)
}

#[async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, KeyError> {
        Ok(self.cached_key(kid))
    }

    fn cached_key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.get(kid).cloned()
    }
}
