//! Signs Cognito-shaped access tokens with an RSA key.
//!
//! Dev mode uses it to hand the developer a ready token, and the tests and
//! benchmarks sign every token with it; it is the same shape
//! a Cognito user pool issues (`iss`, `sub`, `client_id`, `token_use`, `scope`,
//! `exp`, `iat`, `jti`), signed RS256 with a `kid` that the matching JWKS names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::Serialize;

/// An RSA signing key with its key id.
pub struct TokenSigner {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

/// Errors making keys or tokens.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// RSA key generation failed.
    #[error("cannot generate an RSA key")]
    Generate(#[source] rcgen::Error),
    /// The key or token could not be encoded.
    #[error("cannot use the signing key")]
    Key(#[source] jsonwebtoken::errors::Error),
}

/// The claims of an access token to issue.
#[derive(Debug, Clone)]
pub struct AccessTokenSpec {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// `username` (user tokens only).
    pub username: Option<String>,
    /// Space-joined into `scope`.
    pub scopes: Vec<String>,
    /// `exp - iat`.
    pub lifetime: Duration,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    token_use: &'static str,
    scope: String,
    auth_time: u64,
    iat: u64,
    exp: u64,
    jti: String,
}

impl TokenSigner {
    /// A new 2048-bit RSA key; returns the signer and the key as PKCS#8 PEM.
    pub fn generate(kid: impl Into<String>) -> Result<(Self, String), SignerError> {
        let pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(SignerError::Generate)?;
        let pem = pair.serialize_pem();
        Ok((Self::from_pem(kid, pem.as_bytes())?, pem))
    }

    /// A signer from an RSA private key in PEM (PKCS#1 or PKCS#8).
    pub fn from_pem(kid: impl Into<String>, pem: &[u8]) -> Result<Self, SignerError> {
        let kid = kid.into();
        let key = EncodingKey::from_rsa_pem(pem).map_err(SignerError::Key)?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).map_err(SignerError::Key)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
        Ok(Self { kid, key, jwk })
    }

    /// The key id put in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS that verifies this signer's tokens.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// Signs arbitrary claims with RS256 and this key's `kid`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, SignerError> {
        let header = Header {
            kid: Some(self.kid.clone()),
            ..Header::new(Algorithm::RS256)
        };
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under `header` as given (any RSA algorithm, any or no
    /// `kid`): tests use it to make tokens the verifier must refuse.
    pub fn sign_with_header(
        &self,
        header: &Header,
        claims: &impl Serialize,
    ) -> Result<String, SignerError> {
        jsonwebtoken::encode(header, claims, &self.key).map_err(SignerError::Key)
    }

    /// Issues a Cognito-shaped access token.
    pub fn access_token(&self, spec: &AccessTokenSpec) -> Result<String, SignerError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.sign(&AccessClaims {
            iss: &spec.issuer,
            sub: &spec.subject,
            client_id: &spec.client_id,
            username: spec.username.as_deref(),
            token_use: "access",
            scope: spec.scopes.join(" "),
            auth_time: now,
            iat: now,
            exp: now + spec.lifetime.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
        })
    }
}
