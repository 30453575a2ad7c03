//! Tokens from Amazon Cognito.
//!
//! - [`ClientCredentials`]: a machine token for an app client with a secret
//!   (`POST {domain}/oauth2/token`, `grant_type=client_credentials`).
//! - [`UserSignIn`]: a user's token (`InitiateAuth` with USER_PASSWORD_AUTH,
//!   then REFRESH_TOKEN_AUTH), for interactive tools.
//!
//! Both cache the token and refresh it shortly before it expires, one
//! refresh at a time however many calls are waiting. Endpoints are plain
//! URLs, so tests and local Cognito-compatible servers can stand in.

use std::time::Duration;

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{sync::Mutex, time::Instant};

use crate::{Error, tokens::TokenProvider};

/// Refresh this long before expiry (or at half the lifetime, if shorter).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The longest a token is kept before it is fetched again, whatever its
/// `expires_in` says (an absurd value must not overflow the clock).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn refresh_at(expires_in: u64) -> Instant {
    let lifetime = Duration::from_secs(expires_in).min(MAX_LIFETIME);
    let now = Instant::now();
    now.checked_add(lifetime - REFRESH_MARGIN.min(lifetime / 2))
        .unwrap_or(now)
}

/// An HTTP client for token endpoints: no redirects (a redirect would send
/// the client secret or the password to another address), bounded timeouts.
fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::config_from("cannot build an HTTP client", e))
}

/// A token or Cognito endpoint must be https://, except on loopback (local
/// test servers): secrets and passwords are sent to it.
fn check_endpoint(what: &str, url: &str) -> Result<(), Error> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::config_from(format!("{what} {url:?} is not a URL"), e))?;
    let loopback = matches!(
        parsed.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    );
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(Error::config(format!(
            "{what} {url:?} must be an https:// URL (http:// only on loopback)"
        ))),
    }
}

struct Cached {
    token: String,
    refresh_at: Instant,
}

/// A Cognito app client's machine token (OAuth 2.0 client credentials).
pub struct ClientCredentials {
    token_url: String,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
    http: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
}

impl ClientCredentials {
    /// Tokens from `token_url` (the pool domain's `https://…/oauth2/token`).
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Result<Self, Error> {
        let token_url = token_url.into();
        check_endpoint("token endpoint", &token_url)?;
        Ok(Self {
            token_url,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scopes: Vec::new(),
            http: http_client()?,
            cached: Mutex::new(None),
        })
    }

    /// Asks for these scopes (default: all the app client may have).
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    async fn fetch(&self) -> Result<Cached, Error> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.join(" ")));
        }
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&form)
            .send()
            .await
            .map_err(|e| Error::token_from(format!("token endpoint {}", self.token_url), e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::token_from(format!("token endpoint {}", self.token_url), e))?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<OAuthError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| "no error code".into());
            return Err(Error::token(format!(
                "token endpoint answered {status}: {reason}"
            )));
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::token_from("token endpoint sent an unreadable answer", e))?;
        Ok(Cached {
            token: token.access_token,
            refresh_at: refresh_at(token.expires_in),
        })
    }
}

#[async_trait]
impl TokenProvider for ClientCredentials {
    async fn token(&self) -> Result<String, Error> {
        // Held across the fetch: concurrent callers wait for the one refresh.
        let mut cached = self.cached.lock().await;
        if let Some(c) = &*cached
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    fn invalidate(&self) {
        if let Ok(mut cached) = self.cached.try_lock() {
            *cached = None;
        }
    }
}

/// Tokens a user pool issued to a signed-in user. Its `Debug` shows no token.
#[derive(Clone)]
pub struct UserTokens {
    /// The access token (what the service accepts).
    pub access_token: String,
    /// The ID token.
    pub id_token: Option<String>,
    /// The refresh token, when the pool issued one.
    pub refresh_token: Option<String>,
    /// Seconds the access token is valid.
    pub expires_in: u64,
}

impl std::fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokens")
            .field("access_token", &"[redacted]")
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

struct Session {
    access: String,
    refresh: Option<String>,
    refresh_at: Instant,
}

/// A Cognito user signed in with USER_PASSWORD_AUTH, refreshed with
/// REFRESH_TOKEN_AUTH.
pub struct UserSignIn {
    endpoint: String,
    client_id: String,
    client_secret: Option<String>,
    username: String,
    password: String,
    http: reqwest::Client,
    session: Mutex<Option<Session>>,
}

impl UserSignIn {
    /// Signs `username` in through the Cognito API at `endpoint`
    /// (`https://cognito-idp.<region>.amazonaws.com/`).
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        check_endpoint("Cognito endpoint", &endpoint)?;
        Ok(Self {
            endpoint,
            client_id: client_id.into(),
            client_secret: None,
            username: username.into(),
            password: password.into(),
            http: http_client()?,
            session: Mutex::new(None),
        })
    }

    /// For app clients with a secret: sends the SECRET_HASH Cognito requires.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    fn secret_hash(&self) -> Option<String> {
        let secret = self.client_secret.as_ref()?;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let message = format!("{}{}", self.username, self.client_id);
        Some(STANDARD.encode(aws_lc_rs::hmac::sign(&key, message.as_bytes()).as_ref()))
    }

    async fn initiate_auth(&self, flow: &str, mut parameters: Value) -> Result<UserTokens, Error> {
        if let Some(hash) = self.secret_hash() {
            parameters["SECRET_HASH"] = json!(hash);
        }
        let response = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "AWSCognitoIdentityProviderService.InitiateAuth")
            .json(&json!({ "AuthFlow": flow, "ClientId": self.client_id, "AuthParameters": parameters }))
            .send()
            .await
            .map_err(|e| Error::token_from(format!("Cognito at {}", self.endpoint), e))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| Error::token_from("Cognito sent an unreadable answer", e))?;
        if !status.is_success() {
            let kind = body["__type"].as_str().unwrap_or("error");
            let message = body["message"].as_str().unwrap_or("no message");
            return Err(Error::token(format!(
                "Cognito refused sign-in ({kind}): {message}"
            )));
        }
        if let Some(challenge) = body["ChallengeName"].as_str() {
            return Err(Error::token(format!(
                "Cognito asks for the {challenge} challenge, which this client does not answer"
            )));
        }
        let result = &body["AuthenticationResult"];
        let text = |key: &str| result[key].as_str().map(str::to_owned);
        Ok(UserTokens {
            access_token: text("AccessToken")
                .ok_or_else(|| Error::token("Cognito's answer has no AccessToken"))?,
            id_token: text("IdToken"),
            refresh_token: text("RefreshToken"),
            expires_in: result["ExpiresIn"].as_u64().unwrap_or(3600),
        })
    }

    /// Signs in with the password (USER_PASSWORD_AUTH).
    pub async fn sign_in(&self) -> Result<UserTokens, Error> {
        self.initiate_auth(
            "USER_PASSWORD_AUTH",
            json!({ "USERNAME": self.username, "PASSWORD": self.password }),
        )
        .await
    }

    /// New tokens from a refresh token (REFRESH_TOKEN_AUTH).
    pub async fn refresh(&self, refresh_token: &str) -> Result<UserTokens, Error> {
        self.initiate_auth(
            "REFRESH_TOKEN_AUTH",
            json!({ "REFRESH_TOKEN": refresh_token }),
        )
        .await
    }
}

#[async_trait]
impl TokenProvider for UserSignIn {
    async fn token(&self) -> Result<String, Error> {
        let mut session = self.session.lock().await;
        if let Some(s) = &*session
            && Instant::now() < s.refresh_at
        {
            return Ok(s.access.clone());
        }
        let previous_refresh = session.as_ref().and_then(|s| s.refresh.clone());
        let tokens = match &previous_refresh {
            // A refresh token that no longer works means signing in again.
            Some(refresh) => match self.refresh(refresh).await {
                Ok(tokens) => tokens,
                Err(_) => self.sign_in().await?,
            },
            None => self.sign_in().await?,
        };
        let access = tokens.access_token.clone();
        *session = Some(Session {
            access: tokens.access_token,
            // Cognito does not return a new refresh token on refresh: keep the old one.
            refresh: tokens.refresh_token.or(previous_refresh),
            refresh_at: refresh_at(tokens.expires_in),
        });
        Ok(access)
    }

    fn invalidate(&self) {
        if let Ok(mut session) = self.session.try_lock()
            && let Some(s) = session.as_mut()
        {
            s.refresh_at = Instant::now();
        }
    }
}
