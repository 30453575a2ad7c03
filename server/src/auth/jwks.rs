//! A user pool's JWKS, fetched over HTTPS and cached.
//!
//! - Loaded before the server reports ready, then refreshed in the background.
//! - A token naming an unknown `kid` triggers a refetch, at most once per
//!   `min_refetch_interval` however many such tokens arrive; concurrent misses
//!   wait for the one fetch in flight instead of starting their own.
//! - A failed fetch keeps the cached keys: tokens signed by them keep
//!   verifying while the endpoint is down. A successful fetch replaces the
//!   set, so a key removed by the pool stops verifying.
//! - Fetches have a connect and a total timeout.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::Mutex, time::Instant};

use super::keys::{KeyError, KeySource, VerifyKey, parse_jwks};

/// Fetch and cache settings.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Background refresh period.
    pub refresh_interval: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub min_refetch_interval: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Largest JWKS document accepted.
    pub max_bytes: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(3600),
            min_refetch_interval: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
        }
    }
}

type KeyMap = HashMap<String, Arc<VerifyKey>>;

/// The JWKS at one URL.
pub struct RemoteJwks {
    url: String,
    http: reqwest::Client,
    settings: JwksSettings,
    keys: RwLock<Arc<KeyMap>>,
    /// When the last fetch for an unknown `kid` started; the lock itself makes
    /// concurrent misses share one fetch.
    last_miss_fetch: Mutex<Option<Instant>>,
}

impl RemoteJwks {
    /// A source for `url`; nothing is fetched until [`KeySource::refresh`] or a lookup.
    pub fn new(url: impl Into<String>, settings: JwksSettings) -> Result<Self, KeyError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("notes-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KeyError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(Self {
            url: url.into(),
            http,
            settings,
            keys: RwLock::new(Arc::default()),
            last_miss_fetch: Mutex::new(None),
        })
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn current(&self) -> Arc<KeyMap> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn fetch(&self) -> Result<KeyMap, KeyError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            KeyError::Unavailable(format!("{what} {}: {e}", self.url))
        };
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| unavailable("fetching", &e))?;
        if !response.status().is_success() {
            return Err(unavailable("fetching", &response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.settings.max_bytes as u64)
        {
            return Err(unavailable("oversized JWKS at", &"content-length"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable("reading", &e))?;
        if body.len() > self.settings.max_bytes {
            return Err(unavailable("oversized JWKS at", &body.len()));
        }
        parse_jwks(&body)
    }

    fn store(&self, keys: KeyMap) {
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        tracing::info!(url = %self.url, keys = count, "JWKS loaded");
    }
}

#[async_trait]
impl KeySource for RemoteJwks {
    async fn key(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, KeyError> {
        if let Some(key) = self.cached_key(kid) {
            return Ok(Some(key));
        }
        let mut last = self.last_miss_fetch.lock().await;
        // Another miss may have fetched while we waited for the lock.
        if let Some(key) = self.cached_key(kid) {
            return Ok(Some(key));
        }
        if last.is_some_and(|at| at.elapsed() < self.settings.min_refetch_interval) {
            if self.current().is_empty() {
                return Err(KeyError::Unavailable(format!(
                    "no keys loaded from {} yet",
                    self.url
                )));
            }
            return Ok(None);
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => self.store(keys),
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "JWKS refetch for an unknown kid failed");
                if self.current().is_empty() {
                    return Err(err);
                }
            }
        }
        Ok(self.cached_key(kid))
    }

    fn cached_key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.current().get(kid).cloned()
    }

    async fn refresh(&self) -> Result<(), KeyError> {
        match self.fetch().await {
            Ok(keys) => {
                self.store(keys);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "JWKS refresh failed; keeping cached keys");
                Err(err)
            }
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.settings.refresh_interval)
    }
}
