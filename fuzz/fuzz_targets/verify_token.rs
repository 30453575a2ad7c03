//! Fuzzes token verification end to end: the `authorization` header parser,
//! the JWT decoder and every claim check, through `Authenticator::authorize`.
//!
//! The first input byte picks the mode:
//! - even: the rest is the raw `authorization` value, exactly as a caller sends it;
//! - odd: the rest is a JWT payload that is *validly signed* with the issuer's
//!   key, so the fuzzer explores the claim checks behind the signature.
//!
//! Invariant: nothing panics, and a token is only ever accepted when its
//! signature is ours and its claims satisfy the policy.

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use notes_server::{
    auth::{
        Authenticator, ScopePolicy, TokenPolicy, TokenVerifier, keys::StaticKeys, signer::TokenSigner,
    },
    tls::{ConnInfo, PeerIdentity},
};

const ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Fuzz";
const CLIENT: &str = "fuzz-client";
const KID: &str = "fuzz-key";

struct World {
    runtime: tokio::runtime::Runtime,
    auth: Authenticator,
    key: EncodingKey,
    conn: ConnInfo,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (signer, pem) = TokenSigner::generate(KID).unwrap();
        let keys = StaticKeys::from_jwk_set(&signer.jwks()).unwrap();
        let policy = TokenPolicy::new(ISSUER, [CLIENT.to_owned()]).with_scopes(
            ScopePolicy::same_for_all(["notes/read".to_owned()].into(), ["notes/write".to_owned()].into()),
        );
        World {
            runtime: tokio::runtime::Builder::new_current_thread().build().unwrap(),
            auth: Authenticator::new(TokenVerifier::new(policy, Arc::new(keys))),
            key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            conn: ConnInfo::new(
                "127.0.0.1:1".parse().unwrap(),
                Arc::new(PeerIdentity {
                    uris: vec!["spiffe://fuzz/caller".into()],
                    dns_names: vec![],
                    subject: "CN=fuzz".into(),
                    x5t_s256: "fuzz-thumbprint".into(),
                    issuer_and_serial: (Vec::new(), vec![1]),
                    not_after: i64::MAX,
                }),
            ),
        }
    })
}

fn signed(payload: &[u8], key: &EncodingKey) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{KID}"}}"#));
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let world = world();
    let value = if mode % 2 == 0 {
        match http::HeaderValue::from_bytes(rest) {
            Ok(value) => value,
            Err(_) => return,
        }
    } else {
        http::HeaderValue::from_str(&format!("Bearer {}", signed(rest, &world.key))).unwrap()
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let decision = world.runtime.block_on(world.auth.authorize(
        "/notes.v1.NotesService/ListNotes",
        &headers,
        Some(&world.conn),
    ));
    if let Ok(Some(caller)) = decision {
        assert_eq!(caller.issuer, ISSUER);
        assert_eq!(caller.client_id, CLIENT);
        assert!(!caller.subject.is_empty());
        assert!(caller.scopes.contains("notes/read"));
    }
});
