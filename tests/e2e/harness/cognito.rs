//! A user pool on the moto server's cognito-idp, driven exactly as the AWS
//! CLI walk-through does (create pool and app client, sign up, admin-confirm,
//! InitiateAuth with USER_PASSWORD_AUTH), and the `--auth-config` file an
//! operator would write for it.

use notes_server::config::{AuthArgs, AuthSettings};
use serde_json::{Value, json};

use super::{CLIENT_ID, ISSUER, dynamodb_endpoint, issuer};

/// The owner prefix of the second issuer (the test issuer, for services).
pub const SERVICES_PREFIX: &str = "services:";

pub const USER_SCOPE: &str = "aws.cognito.signin.user.admin";
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

    pub fn issuer(&self) -> String {
        format!(
            "https://cognito-idp.us-east-1.amazonaws.com/{}",
            self.pool_id
        )
    }

    pub fn jwks_url(&self) -> String {
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

/// The server's token settings as an operator would write them: an auth
/// file naming both issuers.
pub fn auth_settings(pool: &Pool, dir: &std::path::Path) -> AuthSettings {
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
owner_prefix = "{SERVICES_PREFIX}"
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
    auth_from_file(dir, &config)
}

/// The token settings of `serve --auth-config FILE`, FILE holding `config`
/// (written into `dir`).
pub fn auth_from_file(dir: &std::path::Path, config: &str) -> AuthSettings {
    let path = dir.join("auth.toml");
    std::fs::write(&path, config).unwrap();
    let args = AuthArgs {
        auth_config: Some(path),
        issuer: None,
        jwks_url: None,
        jwks_file: None,
        client_ids: vec![],
        read_scopes: vec![],
        write_scopes: vec![],
        token_leeway_secs: 60,
    };
    args.settings().unwrap()
}
