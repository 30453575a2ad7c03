//! A user pool's JWKS, fetched over HTTPS, cached and refreshed; and the
//! loading and refreshing of every issuer's key set.
//!
//! - Loaded before the server reports ready ([`load_until_ready`]), then
//!   refreshed in the background ([`spawn_refresh`]).
//! - A token naming an unknown `kid` triggers a refetch, at most once per
//!   `min_refetch_interval` however many such tokens arrive; concurrent misses
//!   wait for the one fetch in flight instead of starting their own.
//! - A failed fetch keeps the cached keys: tokens signed by them keep
//!   verifying while the endpoint is down. A successful fetch replaces the
//!   set, so a key removed by the pool stops verifying.
//! - Fetches have a connect and a total timeout.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use std::time::Instant;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{
    TokenVerifier,
    keys::{KeyError, KeySource, VerifyKey, parse_jwks},
};
use crate::telemetry::call::in_call;

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

use super::keys::KeyMap;

/// A monotonic clock: `Instant::now`, or one a test moves
/// ([`RemoteJwks::with_clock`]).
pub type Monotonic = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The JWKS at one URL.
pub struct RemoteJwks {
    url: String,
    /// The metrics label: the issuer (the URL until told).
    label: String,
    http: reqwest::Client,
    settings: JwksSettings,
    keys: RwLock<Arc<KeyMap>>,
    /// When the last fetch for an unknown `kid` started; the lock itself makes
    /// concurrent misses share one fetch.
    last_miss_fetch: Mutex<Option<Instant>>,
    /// What time it is, for the refetch limit.
    now: Monotonic,
}

impl RemoteJwks {
    /// A source for `url`; nothing is fetched until [`KeySource::refresh`] or a lookup.
    pub fn new(url: impl Into<String>, settings: JwksSettings) -> Result<Self, KeyError> {
        let url = url.into();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("notes-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KeyError::Unavailable {
                url: url.clone(),
                problem: "cannot build an HTTP client".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(Self {
            label: url.clone(),
            url,
            http,
            settings,
            keys: RwLock::new(Arc::default()),
            last_miss_fetch: Mutex::new(None),
            now: Arc::new(Instant::now),
        })
    }

    /// Reads the time for the refetch limit from `now` (tests move it).
    pub fn with_clock(mut self, now: Monotonic) -> Self {
        self.now = now;
        self
    }

    /// Labels this source's metrics with `issuer` instead of its URL.
    pub fn for_issuer(mut self, issuer: &str) -> Self {
        self.label = issuer.to_owned();
        // Published from the start: keys that never load read as infinitely stale.
        crate::metrics::metrics()
            .jwks_last_refresh
            .with_label_values(&[issuer])
            .set(0);
        self
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn current(&self) -> Arc<KeyMap> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn unavailable(&self, problem: impl Into<String>, source: Option<reqwest::Error>) -> KeyError {
        KeyError::Unavailable {
            url: self.url.clone(),
            problem: problem.into(),
            source: source.map(|e| Box::new(e) as _),
        }
    }

    /// One fetch; a failure is counted in the metrics (a success when stored).
    async fn fetch(&self) -> Result<KeyMap, KeyError> {
        use tracing::Instrument;
        // A refetch for an unknown kid runs in the call that met it.
        let span = in_call(|| {
            tracing::info_span!(
                "jwks fetch",
                otel.kind = "client",
                url.full = %self.url,
                issuer = %self.label,
            )
        });
        let fetched = self.fetch_once().instrument(span).await;
        if fetched.is_err() {
            crate::metrics::metrics()
                .jwks_fetches
                .with_label_values(&[&self.label, "error"])
                .inc();
        }
        fetched
    }

    async fn fetch_once(&self) -> Result<KeyMap, KeyError> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| self.unavailable("fetching failed", Some(e)))?;
        if !response.status().is_success() {
            return Err(self.unavailable(format!("HTTP status {}", response.status()), None));
        }
        let too_large = || {
            self.unavailable(
                format!("larger than {} bytes", self.settings.max_bytes),
                None,
            )
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.settings.max_bytes as u64)
        {
            return Err(too_large());
        }
        // Read against a running cap: a body without Content-Length (chunked)
        // is never buffered beyond the limit.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unavailable("reading the body failed", Some(e)))?
        {
            if body.len() + chunk.len() > self.settings.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    fn store(&self, keys: KeyMap) {
        let count = keys.len();
        let metrics = crate::metrics::metrics();
        metrics
            .jwks_fetches
            .with_label_values(&[&self.label, "ok"])
            .inc();
        metrics
            .jwks_keys
            .with_label_values(&[&self.label])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        metrics
            .jwks_last_refresh
            .with_label_values(&[&self.label])
            .set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)),
            );
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        in_call(|| tracing::info!(url = %self.url, keys = count, "JWKS loaded"));
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
        let now = (self.now)();
        if last.is_some_and(|at| {
            now.saturating_duration_since(at) < self.settings.min_refetch_interval
        }) {
            if self.current().is_empty() {
                return Err(self.unavailable("no keys loaded yet", None));
            }
            return Ok(None);
        }
        *last = Some(now);
        match self.fetch().await {
            Ok(keys) => self.store(keys),
            Err(err) => {
                in_call(
                    || tracing::warn!(url = %self.url, error = %crate::error::error_chain(&err), "JWKS refetch for an unknown kid failed"),
                );
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
                tracing::warn!(url = %self.url, error = %crate::error::error_chain(&err), "JWKS refresh failed; keeping cached keys");
                Err(err)
            }
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.settings.refresh_interval)
    }
}

/// Loads every issuer's keys once; the first error, if any.
pub async fn load_all(verifier: &TokenVerifier) -> Result<(), KeyError> {
    for issuer in verifier.issuers() {
        issuer.keys.refresh().await?;
    }
    Ok(())
}

/// Loads every issuer's keys, retrying with backoff (200 ms doubling to
/// 30 s) until all are loaded (`true`) or `stop` is cancelled (`false`).
pub async fn load_until_ready(verifier: &TokenVerifier, stop: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match load_all(verifier).await {
            Ok(()) => return !stop.is_cancelled(),
            Err(err) => tracing::warn!(
                error = %crate::error::error_chain(&err),
                retry_in = ?delay,
                "token keys not loaded; not ready"
            ),
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Refreshes each issuer's keys on its own interval until `stop`. Failures
/// are logged by the source, and its cached keys stay in use.
pub fn spawn_refresh(verifier: &TokenVerifier, stop: &CancellationToken) {
    for issuer in verifier.issuers() {
        let Some(interval) = issuer.keys.refresh_interval() else {
            continue;
        };
        let keys = issuer.keys.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {
                        let _ = keys.refresh().await;
                    }
                }
            }
        });
    }
}
