//! The test issuer: an RSA key signing Cognito-shaped tokens through the
//! server's own [`TokenSigner`], and the policy that trusts it.

use std::{
    sync::{Arc, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, Header, jwk::JwkSet};
use notes_server::auth::{ScopePolicy, TokenPolicy, keys::StaticKeys, signer::TokenSigner};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TestPool";
pub const CLIENT_ID: &str = "test-app-client";
pub const KID: &str = "test-key-1";
pub const READ: &str = "notes/read";
pub const WRITE: &str = "notes/write";

/// The token issuer: its signer, public key (PEM) and JWKS.
pub struct TestIssuer {
    pub signer: TokenSigner,
    pub public_pem: String,
    pub jwks: JwkSet,
}

/// A fresh RSA signing key named `kid`, with its public JWK (RS256).
pub fn new_key(kid: &str) -> (TokenSigner, jsonwebtoken::jwk::Jwk) {
    let (signer, _) = TokenSigner::generate(kid).unwrap();
    let jwk = signer.jwks().keys.remove(0);
    (signer, jwk)
}

pub fn issuer() -> &'static TestIssuer {
    static ISSUER_KEYS: OnceLock<TestIssuer> = OnceLock::new();
    ISSUER_KEYS.get_or_init(|| {
        let (signer, private_pem) = TokenSigner::generate(KID).unwrap();
        let public_pem = rcgen::KeyPair::from_pem(&private_pem)
            .unwrap()
            .public_key_pem();
        TestIssuer {
            jwks: signer.jwks(),
            signer,
            public_pem,
        }
    })
}

/// Signs `claims` with `alg`, `signer`'s key and the header `kid`.
pub fn sign_with(alg: Algorithm, kid: &str, claims: &Value, signer: &TokenSigner) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(alg)
    };
    signer.sign_with_header(&header, claims).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid access token for `subject` with both scopes.
pub fn claims(subject: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "sub": subject,
        "client_id": CLIENT_ID,
        "username": subject,
        "token_use": "access",
        "scope": format!("{READ} {WRITE}"),
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

/// Signs `claims` RS256 with the issuer's key and `kid`.
pub fn sign(claims: &Value) -> String {
    issuer().signer.sign(claims).unwrap()
}

/// A valid token for `subject`.
pub fn token_for(subject: &str) -> String {
    sign(&claims(subject))
}

/// The test issuer's policy: its client, both scopes for users and machines.
pub fn test_policy() -> TokenPolicy {
    TokenPolicy::new(ISSUER, [CLIENT_ID.to_owned()]).with_scopes(ScopePolicy::same_for_all(
        [READ.to_owned()].into(),
        [WRITE.to_owned()].into(),
    ))
}

/// The test issuer's keys, as a fixed JWKS.
pub fn test_keys() -> Arc<StaticKeys> {
    Arc::new(StaticKeys::from_jwk_set(&issuer().jwks).unwrap())
}
