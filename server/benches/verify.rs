//! Token verification cost: a full verification (RSA-2048 signature and
//! claims) against a token served from the verified-token cache.
//!
//! `cargo bench -p notes-server --bench verify`

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
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

    let mut group = c.benchmark_group("verify");
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
