//! The bounds on calls: calls in flight across the server, an optional
//! per-caller rate limit, and oversized request messages. None queues: a
//! call over a bound is answered at once.
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
//!   [`oversize_as_resource_exhausted`] rewrites).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::limits::RateLimit;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Refuses calls beyond `max` in flight with UNAVAILABLE.
///
/// A counter, not a semaphore: nothing waits for a slot, so one atomic
/// compare-and-swap takes it and one subtract gives it back. (tokio's semaphore locks its
/// waiter list on every release, which two workers contend for on every
/// call.)
#[derive(Clone)]
pub struct InFlightLimitLayer {
    in_flight: Arc<AtomicUsize>,
    max: usize,
    shed: Arc<AtomicU64>,
}

impl InFlightLimitLayer {
    /// At most `max` calls in flight (health checks not counted).
    pub fn new(max: usize) -> Self {
        Self {
            in_flight: Arc::default(),
            max,
            shed: Arc::default(),
        }
    }

    /// Takes a slot, or `None` when `max` calls hold one.
    fn try_acquire(&self) -> Option<Slot> {
        // Counted only when under the bound, so a refusal never makes a
        // concurrent call see the server fuller than it is.
        self.in_flight
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.in_flight.clone()))
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
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The inner service is called here, not in the future: it is the
        // one polled ready, and nothing is cloned per call.
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            return InFlightFuture::called(self.inner.call(req), None);
        }
        let Some(slot) = self.limit.try_acquire() else {
            self.limit.shed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics()
                .requests_shed
                .with_label_values(&["in_flight"])
                .inc();
            let status = Status::unavailable(format!(
                "server is overloaded: more than {} calls in flight; retry with backoff",
                self.limit.max
            ));
            return InFlightFuture::refused(status);
        };
        let in_flight = InFlight::start();
        InFlightFuture::called(self.inner.call(req), Some((slot, in_flight)))
    }
}

pin_project_lite::pin_project! {
    /// The response of [`InFlightLimit`]: the inner call, holding its slot
    /// until it answers, or the refusal.
    pub struct InFlightFuture<F> {
        // None: refused (or answered).
        #[pin]
        inner: Option<F>,
        // The slot and the gauge's count, let go when the call answers.
        held: Option<(Slot, InFlight)>,
        refusal: Option<Status>,
    }
}

impl<F> InFlightFuture<F> {
    fn called(inner: F, held: Option<(Slot, InFlight)>) -> Self {
        Self {
            inner: Some(inner),
            held,
            refusal: None,
        }
    }

    fn refused(status: Status) -> Self {
        Self {
            inner: None,
            held: None,
            refusal: Some(status),
        }
    }
}

impl<F, E> Future for InFlightFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.inner.as_mut().as_pin_mut() {
            Some(inner) => {
                let response = std::task::ready!(inner.poll(cx));
                drop(this.held.take());
                // Polled again, it answers INTERNAL rather than poll a
                // finished future.
                this.inner.set(None);
                Poll::Ready(response)
            }
            None => Poll::Ready(Ok(this
                .refusal
                .take()
                .unwrap_or_else(|| Status::internal("call polled after it answered"))
                .into_http())),
        }
    }
}

/// One call's place under the in-flight bound, given back when dropped
/// (also when the call's future is dropped).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
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

/// Most callers the rate limit tracks; past it, callers at their full
/// allowance are forgotten, and if all are active, calls are refused
/// (fail closed) rather than the map growing without bound.
const MAX_TRACKED_CALLERS: usize = 100_000;

/// Keyed GCRA limiters (governor): token owners, and certificate
/// identities for calls with no token.
struct Limiters {
    limit: RateLimit,
    owners: governor::DefaultKeyedRateLimiter<String>,
    peers: governor::DefaultKeyedRateLimiter<String>,
}

impl Limiters {
    fn new(limit: RateLimit) -> Self {
        let burst = std::num::NonZeroU32::new(limit.burst).unwrap_or(std::num::NonZeroU32::MIN);
        // The settings allow only positive, finite rates; one too fast for
        // a nanosecond period is no limit to speak of.
        let quota = std::time::Duration::try_from_secs_f64(1.0 / limit.per_second)
            .ok()
            .and_then(governor::Quota::with_period)
            .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            limit,
            owners: governor::RateLimiter::keyed(quota),
            peers: governor::RateLimiter::keyed(quota),
        }
    }

    /// Whether `caller` may make a call now (it is counted).
    fn admits(&self, caller: Charged<'_>) -> bool {
        fn check(limiter: &governor::DefaultKeyedRateLimiter<String>, key: &String) -> bool {
            if limiter.len() >= MAX_TRACKED_CALLERS {
                limiter.retain_recent();
                if limiter.len() >= MAX_TRACKED_CALLERS {
                    return false;
                }
            }
            limiter.check_key(key).is_ok()
        }
        match caller {
            Charged::Owner(owner) => check(&self.owners, owner),
            Charged::Peer(peer) => check(&self.peers, &peer),
        }
    }
}

/// Who a call is charged to.
pub enum Charged<'a> {
    /// A verified token's owner.
    Owner(&'a String),
    /// The certificate identity of a call that needs no token (or nothing
    /// known: an empty name).
    Peer(String),
}

/// Who a request is charged to, read from its extensions (what the auth
/// layer and the connection put there).
pub type ChargeOf = for<'a> fn(&'a http::Extensions) -> Charged<'a>;

/// Refuses a caller's calls beyond its rate with RESOURCE_EXHAUSTED. Sits
/// inside the auth layer: the caller is the token's owner, or the client
/// certificate's identity for calls that need no token ([`ChargeOf`]).
/// Health checks are never limited.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiters: Arc<Limiters>,
    charge_of: ChargeOf,
}

impl RateLimitLayer {
    /// Each caller gets `limit`; `charge_of` says who a call's caller is.
    pub fn new(limit: RateLimit, charge_of: ChargeOf) -> Self {
        Self {
            limiters: Arc::new(Limiters::new(limit)),
            charge_of,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiters: self.limiters.clone(),
            charge_of: self.charge_of,
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiters: Arc<Limiters>,
    charge_of: ChargeOf,
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !req.uri().path().starts_with(HEALTH_PREFIX)
            && !self.limiters.admits((self.charge_of)(req.extensions()))
        {
            crate::metrics::metrics()
                .requests_shed
                .with_label_values(&["rate_limit"])
                .inc();
            let limit = self.limiters.limit;
            let status = Status::resource_exhausted(format!(
                "rate limit exceeded: at most {} calls per second per caller (bursts of {})",
                limit.per_second, limit.burst
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// The message tonic's decoder gives a message over the limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: ";

/// Rewrites tonic's OUT_OF_RANGE for an oversized request message into
/// RESOURCE_EXHAUSTED, keeping the sizes it names: a response mapping
/// ([`oversize_layer`]).
pub fn oversize_as_resource_exhausted(response: Response<Body>) -> Response<Body> {
    let oversize = response.extensions().get::<Status>().and_then(|status| {
        (status.code() == tonic::Code::OutOfRange)
            .then(|| status.message().strip_prefix(TONIC_TOO_LARGE))
            .flatten()
            .map(str::to_owned)
    });
    match oversize {
        Some(sizes) => {
            Status::resource_exhausted(format!("request message too large: {sizes}")).into_http()
        }
        None => response,
    }
}

/// [`oversize_as_resource_exhausted`] as a layer.
pub fn oversize_layer() -> tower::util::MapResponseLayer<fn(Response<Body>) -> Response<Body>> {
    tower::util::MapResponseLayer::new(oversize_as_resource_exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn in_flight(layer: &InFlightLimitLayer) -> usize {
        layer.in_flight.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_slot_is_given_back_when_its_call_answers_or_is_dropped_and_none_is_taken_by_a_refusal()
     {
        let layer = InFlightLimitLayer::new(1);
        let mut stuck = layer.layer(tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        }));
        let held = stuck.call(Request::new(()));
        assert_eq!(in_flight(&layer), 1);

        let refused = stuck.call(Request::new(())).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "14");
        assert_eq!(in_flight(&layer), 1);
        assert_eq!(layer.shed.load(Ordering::Relaxed), 1);

        // A caller that goes away gives its slot back.
        drop(held);
        assert_eq!(in_flight(&layer), 0);

        let mut answers = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let answered = answers.call(Request::new(())).await.unwrap();
        assert!(answered.headers().get("grpc-status").is_none());
        assert_eq!(in_flight(&layer), 0);
    }
}
