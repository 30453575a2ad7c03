//! The notes-client library as another service uses it: token providers
//! (file, Cognito client credentials against a local token endpoint, Cognito
//! user sign-in against moto), retries without duplicates, `list_all`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Form, Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{TryStreamExt, future::join_all};
use notes_client::{
    ClientCredentials, Error, NotesClient, RetryPolicy, TokenFile, TokenProvider, UserSignIn,
};
use serde_json::json;
use tokio::sync::oneshot;

use crate::harness::{
    Backend, CLIENT_ID, Proxy, TestApp, claims,
    cognito::{PASSWORD, Pool, auth_settings},
    dynamodb_endpoint, serve_http, sign, token_for,
};

#[tokio::test]
async fn list_all_streams_every_note_across_pages_newest_first() {
    let app = TestApp::spawn().await;
    let client = app.client_as("alice").await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(client.create(&format!("n{i}"), None).await.unwrap().note_id);
    }

    let listed: Vec<String> = client
        .list_all(3)
        .map_ok(|note| note.note_id)
        .try_collect()
        .await
        .unwrap();

    created.reverse();
    assert_eq!(listed, created);
}

#[tokio::test]
async fn the_token_file_provider_picks_up_a_new_token() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, token_for("alice")).unwrap();
    let client = NotesClient::builder(app.endpoint(), app.tls())
        .token_provider(Arc::new(TokenFile::new(&path)))
        .connect()
        .await
        .unwrap();

    let as_alice = client.create("first", None).await.unwrap();
    std::fs::write(&path, token_for("bob-the-second")).unwrap();
    let as_bob = client.create("second", None).await.unwrap();

    assert_eq!(as_alice.user_id, "alice");
    assert_eq!(as_bob.user_id, "bob-the-second");
}

/// Creates keep being retried through an outage of the store and all land
/// once it is back. (No write reaches DynamoDB unanswered here, so this does
/// not test duplicates: `retries.rs` loses replies and counts attempts.)
#[tokio::test]
async fn creates_are_retried_through_a_dynamodb_outage_until_it_ends() {
    let proxy = Proxy::start(&dynamodb_endpoint()).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;
    let client = NotesClient::builder(app.endpoint(), app.tls())
        .token(token_for("alice"))
        .retry(RetryPolicy {
            max_attempts: 30,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        })
        .connect()
        .await
        .unwrap();

    proxy.set_up(false);
    let creates = tokio::spawn({
        let client = client.clone();
        async move {
            join_all((0..5).map(|i| {
                let client = client.clone();
                async move { client.create(&format!("note {i}"), None).await }
            }))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set_up(true);
    let results = creates.await.unwrap();

    let created: Vec<_> = results.into_iter().map(|r| r.unwrap().note_id).collect();
    let mut listed: Vec<_> = client
        .list(0, "")
        .await
        .unwrap()
        .notes
        .into_iter()
        .map(|n| n.note_id)
        .collect();
    let mut expected = created.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "every create landed exactly once");
}

/// A local OAuth 2.0 token endpoint, as a Cognito pool domain's `/oauth2/token`.
struct TokenEndpoint {
    url: String,
    fetches: Arc<AtomicUsize>,
    mode: Arc<Mutex<TokenMode>>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone, Copy)]
enum TokenMode {
    /// Issue tokens valid for this many seconds, after a short pause.
    Issue(u64),
    /// Answer 400 invalid_client.
    Refuse,
}

#[derive(Clone)]
struct EndpointState {
    fetches: Arc<AtomicUsize>,
    mode: Arc<Mutex<TokenMode>>,
}

async fn issue(
    State(state): State<EndpointState>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:s3cret")));
    let authorized =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    let mode = *state.mode.lock().unwrap();
    match mode {
        TokenMode::Issue(expires_in)
            if authorized
                && form.get("grant_type").map(String::as_str) == Some("client_credentials") =>
        {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut c = claims(CLIENT_ID);
            c.as_object_mut().unwrap().remove("username");
            c["scope"] = json!(form.get("scope").cloned().unwrap_or_default());
            let body = json!({ "access_token": sign(&c), "expires_in": expires_in, "token_type": "Bearer" });
            (StatusCode::OK, Json(body))
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_client" })),
        ),
    }
}

impl TokenEndpoint {
    async fn start(mode: TokenMode) -> TokenEndpoint {
        let fetches = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(mode));
        let state = EndpointState {
            fetches: fetches.clone(),
            mode: mode.clone(),
        };
        let app = Router::new()
            .route("/oauth2/token", post(issue))
            .with_state(state);
        let (addr, stop) = serve_http(app).await;
        let url = format!("http://{}/oauth2/token", addr);
        TokenEndpoint {
            url,
            fetches,
            mode,
            _stop: stop,
        }
    }

    fn provider(&self) -> ClientCredentials {
        ClientCredentials::new(&self.url, CLIENT_ID, "s3cret")
            .unwrap()
            .scopes(["notes/read", "notes/write"])
    }
}

#[tokio::test]
async fn a_service_calls_with_a_client_credentials_token() {
    let endpoint = TokenEndpoint::start(TokenMode::Issue(3600)).await;
    let app = TestApp::spawn().await;
    let client = NotesClient::builder(app.endpoint(), app.tls())
        .token_provider(Arc::new(endpoint.provider()))
        .connect()
        .await
        .unwrap();

    let note = client.create("from a service", None).await.unwrap();
    client.get(&note.note_id).await.unwrap();

    assert_eq!(note.user_id, CLIENT_ID);
    assert_eq!(
        endpoint.fetches.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
}

#[tokio::test]
async fn concurrent_calls_share_one_client_credentials_fetch() {
    let endpoint = TokenEndpoint::start(TokenMode::Issue(3600)).await;
    let provider = endpoint.provider();

    let tokens = join_all((0..20).map(|_| provider.token())).await;

    assert!(tokens.iter().all(Result::is_ok));
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_credentials_token_is_refreshed_before_it_expires() {
    let endpoint = TokenEndpoint::start(TokenMode::Issue(2)).await;
    let provider = endpoint.provider();

    let first = provider.token().await.unwrap();
    let again = provider.token().await.unwrap();
    // Two-second tokens are refreshed at half their life.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    provider.token().await.unwrap();

    assert_eq!(first, again);
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refusing_token_endpoint_is_reported_with_its_error_code() {
    let endpoint = TokenEndpoint::start(TokenMode::Refuse).await;
    let app = TestApp::spawn().await;
    let client = NotesClient::builder(app.endpoint(), app.tls())
        .token_provider(Arc::new(endpoint.provider()))
        .connect()
        .await
        .unwrap();

    let err = client.list(0, "").await.unwrap_err();

    assert!(
        matches!(&err, Error::Token { message: m, .. } if m.contains("400") && m.contains("invalid_client")),
        "{err}"
    );
    *endpoint.mode.lock().unwrap() = TokenMode::Issue(3600);
    client.list(0, "").await.unwrap();
}

#[tokio::test]
async fn a_user_signs_in_through_cognito_and_refreshes() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::builder()
        .auth(auth_settings(&pool, dir.path()))
        .spawn()
        .await;
    let sub = pool.register("dana").await;
    let sign_in = UserSignIn::new(&pool.endpoint, &pool.client_id, "dana", PASSWORD).unwrap();
    let refreshed = {
        let tokens = sign_in.sign_in().await.unwrap();
        sign_in
            .refresh(&tokens.refresh_token.unwrap())
            .await
            .unwrap()
    };
    let client = NotesClient::builder(app.endpoint(), app.tls())
        .token_provider(Arc::new(sign_in))
        .connect()
        .await
        .unwrap();

    let note = client.create("signed in", None).await.unwrap();
    let with_refreshed = NotesClient::builder(app.endpoint(), app.tls())
        .token(refreshed.access_token)
        .connect()
        .await
        .unwrap()
        .get(&note.note_id)
        .await
        .unwrap();

    assert_eq!(note.user_id, sub);
    assert_eq!(with_refreshed, note);
}

#[tokio::test]
async fn a_wrong_password_is_reported_as_cognito_refused_it() {
    let pool = Pool::create().await;
    pool.register("erin").await;
    let sign_in =
        UserSignIn::new(&pool.endpoint, &pool.client_id, "erin", "wrong-password").unwrap();

    let err = sign_in.token().await.unwrap_err();

    assert!(
        matches!(&err, Error::Token { message: m, .. } if m.contains("NotAuthorizedException")),
        "{err}"
    );
}

#[tokio::test]
async fn an_http_endpoint_is_refused_before_any_token_is_sent() {
    let app = TestApp::spawn().await;
    let http = format!("http://localhost:{}", app.addr.port());

    for endpoint in [http.as_str(), "localhost:50051"] {
        let err = NotesClient::builder(endpoint, app.tls())
            .token(token_for("alice"))
            .connect_lazy()
            .err()
            .unwrap_or_else(|| panic!("{endpoint} was accepted"));
        assert!(
            matches!(&err, Error::Config { message, .. } if message.contains("https://HOST:PORT")),
            "{endpoint}: {err}"
        );
    }
}

#[tokio::test]
async fn token_and_cognito_endpoints_must_be_https_beyond_loopback() {
    let refused =
        ClientCredentials::new("http://auth.example.com/oauth2/token", CLIENT_ID, "s3cret")
            .err()
            .expect("http token endpoint accepted");
    let refused_cognito = UserSignIn::new("http://cognito.example.com/", CLIENT_ID, "u", "p")
        .err()
        .expect("http Cognito endpoint accepted");
    let loopback = ClientCredentials::new("http://127.0.0.1:9/oauth2/token", CLIENT_ID, "s3cret");

    assert!(refused.to_string().contains("https://"), "{refused}");
    assert!(
        refused_cognito.to_string().contains("https://"),
        "{refused_cognito}"
    );
    assert!(loopback.is_ok());
}

#[tokio::test]
async fn a_token_endpoint_redirect_is_not_followed() {
    let followed = Arc::new(AtomicUsize::new(0));
    let counter = followed.clone();
    let app = Router::new()
        .route(
            "/oauth2/token",
            post(|| async { (StatusCode::TEMPORARY_REDIRECT, [("location", "/elsewhere")]) }),
        )
        .route(
            "/elsewhere",
            post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::OK }
            }),
        );
    let (addr, _stop) = serve_http(app).await;
    let provider =
        ClientCredentials::new(format!("http://{addr}/oauth2/token"), CLIENT_ID, "s3cret").unwrap();

    let err = provider.token().await.unwrap_err();

    assert!(err.to_string().contains("307"), "{err}");
    assert_eq!(followed.load(Ordering::SeqCst), 0, "the secret was re-sent");
}

#[tokio::test]
async fn an_absurd_expires_in_neither_panics_nor_keeps_the_token_forever() {
    let endpoint = TokenEndpoint::start(TokenMode::Issue(u64::MAX)).await;
    let provider = endpoint.provider();

    let token = provider.token().await;

    assert!(token.is_ok(), "{token:?}");
}

#[test]
fn user_tokens_do_not_print_their_tokens() {
    let tokens = notes_client::cognito::UserTokens {
        access_token: "eyJaccess.secret.sig".into(),
        id_token: Some("eyJid.secret.sig".into()),
        refresh_token: Some("refresh-secret".into()),
        expires_in: 3600,
    };

    let printed = format!("{tokens:?}");

    assert!(!printed.contains("secret"), "{printed}");
    assert!(printed.contains("3600"), "{printed}");
}
