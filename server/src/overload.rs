//! Overload protection: a bound on calls in flight across the server, and an
//! optional per-caller rate limit. Neither queues: a call over a bound is
//! answered at once.
//!
//! - Over the in-flight bound, a call is refused **UNAVAILABLE**: the server
//!   as a whole is busy, the call did nothing, and any client may retry it
//!   with backoff (the project's client retries the calls that are safe to
//!   repeat, on UNAVAILABLE only). Health checks are never refused, so a
//!   busy instance is not mistaken for a dead one.
//! - Over its rate limit, a caller is refused **RESOURCE_EXHAUSTED**, the
//!   gRPC code for a per-caller quota: retrying at once would not help, and
//!   the client does not retry it.
//! - A request message over its service's decoding limit is refused from its
//!   length prefix, before its body is read, with **RESOURCE_EXHAUSTED**
//!   (the gRPC convention; tonic itself says OUT_OF_RANGE, which
//!   [`OversizeAsResourceExhausted`] rewrites).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::{auth::Caller, limits::RateLimit, tls::ConnInfo};

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Refuses calls beyond `max` in flight with UNAVAILABLE.
#[derive(Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
    shed: Arc<AtomicU64>,
}

impl InFlightLimitLayer {
    /// At most `max` calls in flight (health checks not counted).
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            shed: Arc::default(),
        }
    }

    /// Calls refused so far.
    pub fn shed(&self) -> Arc<AtomicU64> {
        self.shed.clone()
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            limit: self.clone(),
        }
    }
}

/// See [`InFlightLimitLayer`].
#[derive(Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    limit: InFlightLimitLayer,
}

impl<S, B> Service<Request<B>> for InFlightLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(inner.call(req));
        }
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            self.limit.shed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics()
                .requests_shed
                .with_label_values(&["in_flight"])
                .inc();
            let status = Status::unavailable(format!(
                "server is overloaded: more than {} calls in flight; retry with backoff",
                self.limit.max
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let in_flight = InFlight::start();
        Box::pin(async move {
            let response = inner.call(req).await;
            drop((permit, in_flight));
            response
        })
    }
}

/// One call counted in `notes_requests_in_flight`, uncounted when dropped
/// (also when the caller cancels and the call's future is dropped).
struct InFlight;

impl InFlight {
    fn start() -> Self {
        crate::metrics::metrics().requests_in_flight.inc();
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::metrics::metrics().requests_in_flight.dec();
    }
}

/// Most callers whose buckets are kept; full buckets are forgotten first
/// (a full bucket is the same as a new one).
const MAX_TRACKED_CALLERS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by caller.
struct Buckets {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    /// Takes one token from `caller`'s bucket; `false` when it is empty.
    fn take(&self, caller: &str, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(caller) && buckets.len() >= MAX_TRACKED_CALLERS {
            let limit = self.limit;
            buckets.retain(|_, b| refill(b, limit, now) < burst);
            if buckets.len() >= MAX_TRACKED_CALLERS {
                // Every tracked caller is active: refuse a new one rather than
                // grow without bound (fail closed).
                return false;
            }
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens = refill(bucket, self.limit, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(bucket: &Bucket, limit: RateLimit, now: Instant) -> f64 {
    let elapsed = now.duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst))
}

/// Refuses a caller's calls beyond its rate with RESOURCE_EXHAUSTED. Sits
/// inside the auth layer: the caller is the token's owner, or the client
/// certificate's identity for calls that need no token. Health checks are
/// never limited.
#[derive(Clone)]
pub struct RateLimitLayer {
    buckets: Arc<Buckets>,
}

impl RateLimitLayer {
    /// Each caller gets `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            buckets: Arc::new(Buckets {
                limit,
                buckets: Mutex::default(),
            }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            buckets: self.buckets.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    buckets: Arc<Buckets>,
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !req.uri().path().starts_with(HEALTH_PREFIX) {
            let caller = match req.extensions().get::<Caller>() {
                Some(caller) => format!("owner:{}", caller.owner),
                None => match req.extensions().get::<ConnInfo>() {
                    Some(conn) => format!("peer:{}", conn.peer.name()),
                    None => String::new(),
                },
            };
            if !self.buckets.take(&caller, Instant::now()) {
                crate::metrics::metrics()
                    .requests_shed
                    .with_label_values(&["rate_limit"])
                    .inc();
                let limit = self.buckets.limit;
                let status = Status::resource_exhausted(format!(
                    "rate limit exceeded: at most {} calls per second per caller (bursts of {})",
                    limit.per_second, limit.burst
                ));
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(inner.call(req))
    }
}

/// The message tonic's decoder gives a message over the limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: ";

/// Rewrites tonic's OUT_OF_RANGE for an oversized request message into
/// RESOURCE_EXHAUSTED, keeping the sizes it names.
#[derive(Clone, Copy, Default)]
pub struct OversizeAsResourceExhausted;

impl<S> Layer<S> for OversizeAsResourceExhausted {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize { inner }
    }
}

/// See [`OversizeAsResourceExhausted`].
#[derive(Clone)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Oversize<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await?;
            let oversize = response.extensions().get::<Status>().and_then(|status| {
                (status.code() == tonic::Code::OutOfRange)
                    .then(|| status.message().strip_prefix(TONIC_TOO_LARGE))
                    .flatten()
                    .map(str::to_owned)
            });
            Ok(match oversize {
                Some(sizes) => {
                    Status::resource_exhausted(format!("request message too large: {sizes}"))
                        .into_http()
                }
                None => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn buckets(per_second: f64, burst: u32) -> Buckets {
        Buckets {
            limit: RateLimit { per_second, burst },
            buckets: Mutex::default(),
        }
    }

    #[test]
    fn a_caller_gets_its_burst_then_its_rate() {
        let buckets = buckets(10.0, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| buckets.take("a", start)));
        assert!(!buckets.take("a", start));
        assert!(buckets.take("b", start), "callers have their own buckets");
        assert!(buckets.take("a", start + Duration::from_millis(100)));
        assert!(!buckets.take("a", start + Duration::from_millis(100)));
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let buckets = buckets(1000.0, 2);
        let start = Instant::now();
        assert!(buckets.take("a", start));
        let later = start + Duration::from_secs(60);
        assert!(buckets.take("a", later) && buckets.take("a", later));
        assert!(!buckets.take("a", later));
    }
}
