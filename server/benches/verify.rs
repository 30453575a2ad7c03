//! Token verification cost: the bare RSA-2048 signature check (aws-lc, key
//! parsed once), a full cold verification (every step, cache off) and a
//! token served from the verified-token cache. `cold / rsa` is what
//! verification adds to the RSA math.
//!
//! `cargo bench -p notes-server --bench verify`

use std::{hint::black_box, sync::Arc};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::AlgorithmParameters;
use notes_server::auth::{
    ScopePolicy, TokenPolicy, TokenVerifier,
    keys::StaticKeys,
    signer::{AccessTokenSpec, TokenSigner},
    verify::DEFAULT_MAX_TOKEN_BYTES,
};

const ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Bench";

fn verifier(signer: &TokenSigner, cache_capacity: usize) -> TokenVerifier {
    let policy =
        TokenPolicy::new(ISSUER, ["bench-client".to_owned()]).with_scopes(ScopePolicy::default());
    let keys = StaticKeys::from_jwk_set(&signer.jwks()).unwrap();
    TokenVerifier::with_issuers(
        [(policy, Arc::new(keys) as Arc<_>)],
        DEFAULT_MAX_TOKEN_BYTES,
        cache_capacity,
    )
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (signer, _) = TokenSigner::generate("bench-key").unwrap();
    let token = signer
        .access_token(&AccessTokenSpec {
            issuer: ISSUER.into(),
            subject: "2f1c6a3e-0d7b-4b8e-9f51-5c0a2b7d9e11".into(),
            client_id: "bench-client".into(),
            username: Some("bench-user".into()),
            scopes: vec!["notes/read".into(), "notes/write".into()],
            lifetime: std::time::Duration::from_secs(3600),
        })
        .unwrap();
    let cold = verifier(&signer, 0);
    let cached = verifier(&signer, 1024);
    runtime.block_on(cached.verify(&token)).unwrap();

    let (signed, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let jwk = &signer.jwks().keys[0];
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        panic!("the signer's key is RSA")
    };
    let (n, e) = (
        URL_SAFE_NO_PAD.decode(&rsa.n).unwrap(),
        URL_SAFE_NO_PAD.decode(&rsa.e).unwrap(),
    );
    let rsa = RsaPublicKeyComponents { n: &n, e: &e }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .unwrap();

    let mut group = c.benchmark_group("verify");
    group.bench_function("rsa", |b| {
        b.iter(|| {
            rsa.verify_sig(black_box(signed.as_bytes()), black_box(&signature))
                .unwrap()
        })
    });
    group.bench_function("cold", |b| {
        b.iter(|| runtime.block_on(cold.verify(black_box(&token))).unwrap())
    });
    group.bench_function("cached", |b| {
        b.iter(|| runtime.block_on(cached.verify(black_box(&token))).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
