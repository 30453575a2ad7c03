//! Against tokens issued by a real Cognito-compatible implementation: the
//! moto server's cognito-idp, driven exactly as the AWS CLI walk-through
//! does (create pool and app client, sign up, admin-confirm, InitiateAuth
//! with USER_PASSWORD_AUTH), verified through the key set it serves. The
//! server is configured through an `--auth-config` file with two issuers:
//! the moto pool (user tokens) and the test issuer (client-credentials tokens).

use notes_api::pb::{CreateNoteRequest, GetNoteRequest, ListNotesRequest};
use notes_server::{auth::Authenticator, config::AuthArgs};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{
    Backend, CLIENT_ID, ISSUER, TestApp, claims, dynamodb_endpoint, issuer, sign, with_token,
};

const USER_SCOPE: &str = "aws.cognito.signin.user.admin";
pub const PASSWORD: &str = "Corr3ct-horse!battery";

/// A user pool and app client on the moto server.
pub struct Pool {
    pub endpoint: String,
    http: reqwest::Client,
    pub pool_id: String,
    pub client_id: String,
}

impl Pool {
    async fn call(http: &reqwest::Client, endpoint: &str, operation: &str, body: Value) -> Value {
        let response = http
            .post(endpoint)
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "x-amz-target",
                format!("AWSCognitoIdentityProviderService.{operation}"),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{operation}: {status} {body}");
        body
    }

    /// `aws cognito-idp create-user-pool` and `create-user-pool-client`.
    pub async fn create() -> Pool {
        let endpoint = dynamodb_endpoint();
        let http = reqwest::Client::new();
        let name = format!("notes-{}", uuid::Uuid::new_v4().simple());
        let pool = Self::call(
            &http,
            &endpoint,
            "CreateUserPool",
            json!({ "PoolName": name }),
        )
        .await;
        let pool_id = pool["UserPool"]["Id"].as_str().unwrap().to_owned();
        let client = Self::call(
            &http,
            &endpoint,
            "CreateUserPoolClient",
            json!({
                "UserPoolId": pool_id,
                "ClientName": "notes-cli",
                "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            }),
        )
        .await;
        let client_id = client["UserPoolClient"]["ClientId"]
            .as_str()
            .unwrap()
            .to_owned();
        Pool {
            endpoint,
            http,
            pool_id,
            client_id,
        }
    }

    fn issuer(&self) -> String {
        format!(
            "https://cognito-idp.us-east-1.amazonaws.com/{}",
            self.pool_id
        )
    }

    fn jwks_url(&self) -> String {
        format!("{}/{}/.well-known/jwks.json", self.endpoint, self.pool_id)
    }

    /// `sign-up` and `admin-confirm-sign-up`; returns the user's `sub`.
    pub async fn register(&self, username: &str) -> String {
        let call = |op, body| Self::call(&self.http, &self.endpoint, op, body);
        let signed_up = call(
            "SignUp",
            json!({
                "ClientId": self.client_id,
                "Username": username,
                "Password": PASSWORD,
                "UserAttributes": [{ "Name": "email", "Value": format!("{username}@example.com") }],
            }),
        )
        .await;
        call(
            "AdminConfirmSignUp",
            json!({ "UserPoolId": self.pool_id, "Username": username }),
        )
        .await;
        signed_up["UserSub"].as_str().unwrap().to_owned()
    }

    /// `register`, then `initiate-auth` with USER_PASSWORD_AUTH; returns
    /// (sub, access token, ID token).
    pub async fn sign_in(&self, username: &str) -> (String, String, String) {
        let sub = self.register(username).await;
        let auth = Self::call(
            &self.http,
            &self.endpoint,
            "InitiateAuth",
            json!({
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": self.client_id,
                "AuthParameters": { "USERNAME": username, "PASSWORD": PASSWORD },
            }),
        )
        .await;
        let result = &auth["AuthenticationResult"];
        (
            sub,
            result["AccessToken"].as_str().unwrap().to_owned(),
            result["IdToken"].as_str().unwrap().to_owned(),
        )
    }
}

/// The server as an operator would configure it: an auth file naming both issuers.
pub fn authenticator(pool: &Pool, dir: &std::path::Path) -> Authenticator {
    let jwks = dir.join("test-issuer-jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&issuer().jwks).unwrap()).unwrap();
    let config = format!(
        r#"
[[issuer]]
issuer = "{pool_issuer}"
jwks_url = "{jwks_url}"
client_ids = ["{pool_client}"]
user_scopes = {{ read = ["{USER_SCOPE}"], write = ["{USER_SCOPE}"] }}
machine_scopes = {{ read = ["notes/read"], write = ["notes/write"] }}

[[issuer]]
issuer = "{ISSUER}"
jwks_file = "{jwks}"
client_ids = ["{CLIENT_ID}"]
user_scopes = {{ read = ["{USER_SCOPE}"], write = ["{USER_SCOPE}"] }}
machine_scopes = {{ read = ["notes/read"], write = ["notes/write"] }}
"#,
        pool_issuer = pool.issuer(),
        jwks_url = pool.jwks_url(),
        pool_client = pool.client_id,
        jwks = jwks.display(),
    );
    let path = dir.join("auth.toml");
    std::fs::write(&path, config).unwrap();
    AuthArgs {
        auth_config: Some(path),
        issuer: None,
        jwks_url: None,
        jwks_file: None,
        client_ids: vec![],
        read_scopes: vec![],
        write_scopes: vec![],
        token_leeway_secs: 60,
    }
    .build()
    .unwrap()
}

fn create(content: &str) -> CreateNoteRequest {
    CreateNoteRequest {
        content: content.into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn users_signed_in_with_user_password_auth_manage_only_their_own_notes() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(Backend::Memory, authenticator(&pool, dir.path())).await;
    let (alice_sub, alice, _) = pool.sign_in("alice").await;
    let (_, bob, _) = pool.sign_in("bob").await;
    let mut raw = app.raw().await;

    let note = raw
        .create_note(with_token(create("from cognito"), &alice))
        .await
        .unwrap()
        .into_inner();
    let bobs_view = raw
        .get_note(with_token(
            GetNoteRequest {
                note_id: note.note_id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    let bobs_list = raw
        .list_notes(with_token(ListNotesRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(note.user_id, alice_sub);
    assert_eq!(bobs_view.code(), Code::NotFound);
    assert!(bobs_list.notes.is_empty());
}

#[tokio::test]
async fn the_pools_id_token_is_refused_where_an_access_token_is_required() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(Backend::Memory, authenticator(&pool, dir.path())).await;
    let (_, _, id_token) = pool.sign_in("carol").await;

    let status = app
        .raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &id_token))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("token_use"), "{status:?}");
}

#[tokio::test]
async fn a_client_credentials_token_of_the_second_issuer_is_a_service_held_to_machine_scopes() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(Backend::Memory, authenticator(&pool, dir.path())).await;
    let machine = |scope: &str| {
        let mut c = claims(CLIENT_ID);
        c["scope"] = json!(scope);
        c.as_object_mut().unwrap().remove("username");
        sign(&c)
    };
    let mut raw = app.raw().await;

    let note = raw
        .create_note(with_token(
            create("from a service"),
            &machine("notes/read notes/write"),
        ))
        .await
        .unwrap()
        .into_inner();
    let with_user_scope = raw
        .create_note(with_token(create("nope"), &machine(USER_SCOPE)))
        .await
        .unwrap_err();

    assert_eq!(note.user_id, CLIENT_ID);
    assert_eq!(with_user_scope.code(), Code::PermissionDenied);
}
