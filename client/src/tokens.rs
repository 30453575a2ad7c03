//! Where the client's access token comes from.
//!
//! Every call asks its [`TokenProvider`] for a token, so providers can cache,
//! refresh and rotate without the caller noticing:
//! - [`StaticToken`]: a token you already have.
//! - [`TokenFile`]: a file (e.g. written by a sidecar or `notes login`), re-read when it changes.
//! - [`ClientCredentials`](crate::cognito::ClientCredentials): a Cognito app client's machine token.
//! - [`UserSignIn`](crate::cognito::UserSignIn): a Cognito user's token (USER_PASSWORD_AUTH, then refresh).

use std::{path::PathBuf, sync::Mutex, time::SystemTime};

use async_trait::async_trait;

use crate::Error;

/// Supplies the access token for each call.
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// A token valid now.
    async fn token(&self) -> Result<String, Error>;

    /// The server refused the last token (UNAUTHENTICATED): forget any cached one.
    fn invalidate(&self) {}
}

/// A fixed token.
pub struct StaticToken(String);

impl StaticToken {
    /// Uses `token` for every call.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }
}

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Result<String, Error> {
        Ok(self.0.clone())
    }
}

/// A token kept in a file and re-read whenever the file changes.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(SystemTime, u64, String)>>,
}

impl TokenFile {
    /// Reads the token from `path` (surrounding whitespace ignored).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }
}

#[async_trait]
impl TokenProvider for TokenFile {
    async fn token(&self) -> Result<String, Error> {
        let unreadable = |e: std::io::Error| {
            Error::token_from(format!("cannot read token file {}", self.path.display()), e)
        };
        let meta = tokio::fs::metadata(&self.path).await.map_err(unreadable)?;
        let stamp = (meta.modified().map_err(unreadable)?, meta.len());
        if let Some((modified, len, token)) =
            &*self.cached.lock().unwrap_or_else(|e| e.into_inner())
            && (*modified, *len) == stamp
        {
            return Ok(token.clone());
        }
        let token = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(unreadable)?;
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(Error::token(format!(
                "token file {} is empty",
                self.path.display()
            )));
        }
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((stamp.0, stamp.1, token.clone()));
        Ok(token)
    }

    fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
