//! The pool's keys over HTTP: loading before ready, rotation, the unknown-kid
//! refetch limit, concurrent misses, and an endpoint that is down or slow.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures_util::future::join_all;
use jsonwebtoken::{
    Algorithm,
    jwk::{Jwk, JwkSet},
};
use notes_api::pb::ListNotesRequest;
use notes_server::auth::{
    AuthError, TokenVerifier,
    jwks::{self, JwksSettings, RemoteJwks},
    keys::KeySource,
    signer::TokenSigner,
};
use tokio::sync::oneshot;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::{
    TestApp, claims, new_key, pki, serve_http, sign_with, test_policy, with_token,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Slow,
}

struct Jwks {
    keys: Vec<Jwk>,
    mode: Mode,
    fetches: u64,
}

/// A JWKS endpoint on 127.0.0.1 whose keys and health the test controls.
struct JwksServer {
    url: String,
    state: Arc<Mutex<Jwks>>,
    _stop: oneshot::Sender<()>,
}

async fn serve_jwks(State(state): State<Arc<Mutex<Jwks>>>) -> impl IntoResponse {
    let (mode, keys) = {
        let mut s = state.lock().unwrap();
        s.fetches += 1;
        (s.mode, s.keys.clone())
    };
    match mode {
        Mode::Up => Ok(Json(JwkSet { keys })),
        Mode::Down => Err(StatusCode::SERVICE_UNAVAILABLE),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Json(JwkSet { keys }))
        }
    }
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> JwksServer {
        let state = Arc::new(Mutex::new(Jwks {
            keys,
            mode: Mode::Up,
            fetches: 0,
        }));
        let app = Router::new()
            .route("/pool/.well-known/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let (addr, stop) = serve_http(app).await;
        let url = format!("http://{}/pool/.well-known/jwks.json", addr);
        JwksServer {
            url,
            state,
            _stop: stop,
        }
    }

    fn set_keys(&self, keys: Vec<Jwk>) {
        self.state.lock().unwrap().keys = keys;
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    fn fetches(&self) -> u64 {
        self.state.lock().unwrap().fetches
    }

    fn source(&self, settings: JwksSettings) -> Arc<RemoteJwks> {
        Arc::new(RemoteJwks::new(self.url.clone(), settings).unwrap())
    }
}

fn settings() -> JwksSettings {
    JwksSettings {
        refresh_interval: Duration::from_secs(3600),
        min_refetch_interval: Duration::from_secs(60),
        connect_timeout: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
        ..JwksSettings::default()
    }
}

fn verifier(source: Arc<RemoteJwks>) -> TokenVerifier {
    TokenVerifier::new(test_policy(), source)
}

fn token(kid: &str, key: &TokenSigner) -> String {
    sign_with(Algorithm::RS256, kid, &claims("alice"), key)
}

#[tokio::test]
async fn the_server_reports_ready_only_once_the_keys_are_loaded() {
    let (key, jwk) = new_key("k1");
    let jwks = JwksServer::start(vec![jwk]).await;
    jwks.set_mode(Mode::Down);
    let app = TestApp::builder()
        .jwks_url(&jwks.url, settings())
        .spawn()
        .await;
    let mut health = HealthClient::new(app.channel(Some(&pki().client)).await);
    let status = |service: &str| HealthCheckRequest {
        service: service.into(),
    };

    // The loader has tried (and is retrying) while the endpoint is down.
    for _ in 0..3000 {
        if jwks.fetches() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(jwks.fetches() >= 2, "the keys were never fetched");
    let before = health
        .check(status("notes.v1.NotesService"))
        .await
        .unwrap()
        .into_inner();
    jwks.set_mode(Mode::Up);
    let mut after = ServingStatus::NotServing;
    for _ in 0..100 {
        after = health
            .check(status(""))
            .await
            .unwrap()
            .into_inner()
            .status();
        if after == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(before.status(), ServingStatus::NotServing);
    assert_eq!(after, ServingStatus::Serving);
    app.raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token("k1", &key)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_added_by_the_pool_verifies_through_one_unknown_kid_refetch() {
    let (_, jwk1) = new_key("k1");
    let (key2, jwk2) = new_key("k2");
    let jwks = JwksServer::start(vec![jwk1.clone()]).await;
    let verifier = verifier(jwks.source(settings()));
    jwks::load_all(&verifier).await.unwrap();

    jwks.set_keys(vec![jwk1, jwk2]);
    let verified = verifier.verify(&token("k2", &key2)).await.unwrap();

    assert_eq!(verified.subject, "alice");
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn a_key_removed_by_the_pool_stops_verifying_after_the_next_refresh() {
    let (key1, jwk1) = new_key("k1");
    let (_, jwk2) = new_key("k2");
    let jwks = JwksServer::start(vec![jwk1]).await;
    let source = jwks.source(settings());
    let verifier = verifier(source.clone());
    jwks::load_all(&verifier).await.unwrap();
    let old = token("k1", &key1);
    verifier.verify(&old).await.unwrap();

    jwks.set_keys(vec![jwk2]);
    source.refresh().await.unwrap();

    // Even though the token itself was verified (and cached) before.
    assert_eq!(
        verifier.verify(&old).await.unwrap_err(),
        AuthError::UnknownKey
    );
}

#[tokio::test]
async fn many_tokens_with_unknown_kids_cause_at_most_one_fetch_per_interval() {
    let (key, jwk) = new_key("k1");
    let jwks = JwksServer::start(vec![jwk]).await;
    let verifier = verifier(jwks.source(settings()));
    jwks::load_all(&verifier).await.unwrap();

    let tokens: Vec<_> = (0..50)
        .map(|i| token(&format!("forged-{i}"), &key))
        .collect();
    let results = join_all(tokens.iter().map(|t| verifier.verify(t))).await;
    for t in &tokens {
        verifier.verify(t).await.unwrap_err();
    }

    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err() == &AuthError::UnknownKey)
    );
    assert_eq!(
        jwks.fetches(),
        2,
        "one load, then one refetch for all unknown kids"
    );
}

#[tokio::test]
async fn the_refetch_limit_is_per_interval() {
    // The source's clock is the test's: the window is exact, whatever the
    // machine's load.
    let start = std::time::Instant::now();
    let elapsed_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (key, jwk) = new_key("k1");
    let jwks = JwksServer::start(vec![jwk]).await;
    let source = {
        let elapsed_ms = elapsed_ms.clone();
        RemoteJwks::new(
            jwks.url.clone(),
            JwksSettings {
                min_refetch_interval: Duration::from_millis(200),
                ..settings()
            },
        )
        .unwrap()
        .with_clock(Arc::new(move || {
            start + Duration::from_millis(elapsed_ms.load(std::sync::atomic::Ordering::SeqCst))
        }))
    };
    let verifier = verifier(Arc::new(source));
    jwks::load_all(&verifier).await.unwrap();
    let advance = |ms| elapsed_ms.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);

    verifier.verify(&token("x1", &key)).await.unwrap_err(); // fetch 2
    verifier.verify(&token("x2", &key)).await.unwrap_err();
    advance(199);
    verifier.verify(&token("x3", &key)).await.unwrap_err();
    assert_eq!(jwks.fetches(), 2, "refetched within the interval");
    advance(1);
    verifier.verify(&token("x4", &key)).await.unwrap_err(); // fetch 3
    verifier.verify(&token("x5", &key)).await.unwrap_err();

    assert_eq!(jwks.fetches(), 3);
}

#[tokio::test]
async fn concurrent_misses_for_a_new_key_share_one_fetch() {
    let (_, jwk1) = new_key("k1");
    let (key2, jwk2) = new_key("k2");
    let jwks = JwksServer::start(vec![jwk1.clone()]).await;
    let verifier = verifier(jwks.source(settings()));
    jwks::load_all(&verifier).await.unwrap();
    jwks.set_keys(vec![jwk1, jwk2]);

    let tokens: Vec<_> = (0..20)
        .map(|i| sign_with(Algorithm::RS256, "k2", &claims(&format!("user-{i}")), &key2))
        .collect();
    let results = join_all(tokens.iter().map(|t| verifier.verify(t))).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn cached_keys_keep_verifying_while_the_endpoint_is_down() {
    let (key, jwk) = new_key("k1");
    let jwks = JwksServer::start(vec![jwk]).await;
    let source = jwks.source(settings());
    let verifier = TokenVerifier::with_issuers(
        [(test_policy(), source.clone() as Arc<dyn KeySource>)],
        8192,
        0,
    );
    jwks::load_all(&verifier).await.unwrap();

    jwks.set_mode(Mode::Down);
    let refresh = source.refresh().await;

    assert!(refresh.is_err());
    verifier.verify(&token("k1", &key)).await.unwrap();
}

#[tokio::test]
async fn a_slow_endpoint_is_cut_off_by_the_fetch_timeout() {
    let (key, jwk) = new_key("k1");
    let jwks = JwksServer::start(vec![jwk]).await;
    jwks.set_mode(Mode::Slow);
    let verifier = verifier(jwks.source(settings()));

    let err = verifier.verify(&token("k1", &key)).await.unwrap_err();

    // Had the 500 ms timeout not cut the 10 s answer off, the key would have
    // arrived and the token verified. With no keys at all the call is refused
    // as unavailable (retryable), never accepted.
    assert_eq!(err, AuthError::KeysUnavailable);
}

#[tokio::test]
async fn calls_are_refused_unavailable_while_no_keys_could_ever_be_loaded() {
    let (key, jwk) = new_key("k1");
    let jwks = JwksServer::start(vec![jwk]).await;
    jwks.set_mode(Mode::Down);
    let app = TestApp::builder()
        .jwks_url(&jwks.url, settings())
        .spawn()
        .await;

    let status = app
        .raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token("k1", &key)))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("keys are unavailable"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_chunked_jwks_body_is_refused_at_the_cap_without_being_read_whole() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 10 * 1024 * 1024;
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    // 10 MB without Content-Length, 64 KiB every 10 ms.
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let counter = counter.clone();
            async move {
                let chunks = futures_util::stream::unfold(0usize, move |sent| {
                    let counter = counter.clone();
                    async move {
                        if sent >= TOTAL {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        counter.fetch_add(CHUNK, Ordering::Relaxed);
                        Some((Ok::<_, std::io::Error>(bytes_of(CHUNK)), sent + CHUNK))
                    }
                });
                axum::body::Body::from_stream(chunks)
            }
        }),
    );
    let (addr, _stop) = serve_http(app).await;
    let source = RemoteJwks::new(
        format!("http://{addr}/jwks.json"),
        JwksSettings {
            timeout: Duration::from_secs(30),
            ..settings()
        },
    )
    .unwrap();

    let err = source.refresh().await.unwrap_err();
    let read = produced.load(Ordering::Relaxed);

    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(
        read < TOTAL / 4,
        "{read} bytes were produced before the refusal: the body was read whole"
    );
}

fn bytes_of(len: usize) -> Vec<u8> {
    vec![b' '; len]
}

/// A key source that counts its background refreshes.
struct CountingRefreshes {
    inner: Arc<dyn KeySource>,
    interval: Duration,
    refreshes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl KeySource for CountingRefreshes {
    async fn key(
        &self,
        kid: &str,
    ) -> Result<Option<Arc<notes_server::auth::keys::VerifyKey>>, notes_server::auth::keys::KeyError>
    {
        self.inner.key(kid).await
    }

    fn cached_key(&self, kid: &str) -> Option<Arc<notes_server::auth::keys::VerifyKey>> {
        self.inner.cached_key(kid)
    }

    async fn refresh(&self) -> Result<(), notes_server::auth::keys::KeyError> {
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }
}

#[tokio::test]
async fn a_pools_keys_are_refreshed_hourly_by_default_and_on_their_interval_until_stopped() {
    // The default: hourly, and a pool's key source asks for it.
    let hourly = JwksSettings::default().refresh_interval;
    assert_eq!(hourly, Duration::from_secs(3600));
    let remote = RemoteJwks::new("https://127.0.0.1:9/jwks.json", JwksSettings::default()).unwrap();
    assert_eq!(remote.refresh_interval(), Some(hourly));

    // The background refresh runs on each source's interval (short here,
    // so the test does not wait an hour) and stops with the server.
    let source = Arc::new(CountingRefreshes {
        inner: crate::harness::test_keys(),
        interval: Duration::from_millis(20),
        refreshes: Default::default(),
    });
    let verifier = TokenVerifier::new(test_policy(), source.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    jwks::spawn_refresh(&verifier, &stop);
    let count = || source.refreshes.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..1000 {
        if count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(count() >= 3, "{} refreshes", count());
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped_at = count();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(), stopped_at, "refreshed after the stop");
}
