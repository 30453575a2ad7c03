//! The bounds on calls, shared fairly: calls in flight across the server
//! and per tenant, token-less streams per connection and per tenant, a
//! deadline on each unary request's message, an optional per-caller rate
//! limit, and oversized request messages. None queues: a call over a bound
//! is answered at once.
//!
//! - **Fair shares of the in-flight bound.** A tenant is a client
//!   certificate's identity. A tenant may hold at most its share of calls
//!   in flight (`--max-requests-in-flight-per-identity`), so no one tenant
//!   holds the whole server; and each tenant keeps a small reservation
//!   ([`crate::limits::RESERVED_IN_FLIGHT_PER_IDENTITY`]) that is admitted
//!   even when the server as a whole is full, so a newcomer is served while
//!   others hold every shared slot. Over a bound a call is refused
//!   **UNAVAILABLE** (retry with backoff; the project's client retries the
//!   calls that are safe to repeat). Health checks are never refused, so a
//!   busy instance is not mistaken for a dead one.
//! - **Token-less streams** (Health/Watch, reflection) need no token, so
//!   they are bounded per connection and per tenant, and live at most
//!   [`crate::limits::STREAM_LIFETIME`] (then end UNAVAILABLE: call again).
//!   Over a bound: **RESOURCE_EXHAUSTED**.
//! - **The request message** of a unary call must arrive within
//!   [`crate::limits::REQUEST_MESSAGE_TIMEOUT`] of its headers, so a call
//!   that sends headers and stalls frees its slot in seconds
//!   (**DEADLINE_EXCEEDED**), not at the 30 s call deadline.
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
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::{ConnectionRefusals, shares::Counts};
use crate::limits::RateLimit;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What a call is, for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A health check: never refused, not counted.
    HealthCheck,
    /// A stream that needs no token: Health/Watch, reflection.
    TokenlessStream,
    /// Anything else: a unary call under the in-flight bound.
    Call,
}

impl Kind {
    fn of(path: &str) -> Self {
        if path == HEALTH_CHECK {
            Kind::HealthCheck
        } else if path.starts_with(HEALTH_PREFIX)
            || path.starts_with("/grpc.reflection.v1.ServerReflection/")
            || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
        {
            Kind::TokenlessStream
        } else {
            Kind::Call
        }
    }

    /// Whether the call's request is one message, under the message deadline.
    fn unary_request(self) -> bool {
        self != Kind::TokenlessStream
    }
}

/// What one tenant (a certificate identity) holds now across all its
/// connections: calls in flight and token-less streams. Every connection
/// of the tenant shares it, found once per connection ([`Tenants`]), so a
/// call takes and gives back its place with one atomic operation each.
#[derive(Debug, Default)]
pub struct TenantHold {
    in_flight: AtomicUsize,
    streams: AtomicUsize,
}

/// The tenants with a connection open, each with its [`TenantHold`]. An
/// entry lives as long as one of the tenant's connections does (the map
/// holds it weakly and drops dead entries as it grows), so it is as large
/// as the identities connected.
#[derive(Debug, Default)]
pub struct Tenants(
    std::sync::Mutex<
        std::collections::HashMap<
            Arc<str>,
            std::sync::Weak<TenantHold>,
            foldhash::fast::RandomState,
        >,
    >,
);

impl Tenants {
    /// The hold of `tenant`, shared with its other open connections.
    pub fn hold_of(&self, tenant: &Arc<str>) -> Arc<TenantHold> {
        let mut tenants = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = tenants.get(tenant).and_then(std::sync::Weak::upgrade) {
            return live;
        }
        // Dead entries go when the map doubles: amortised, and bounded by
        // twice the identities connected.
        if tenants.len() >= 64 && tenants.len().is_power_of_two() {
            tenants.retain(|_, hold| hold.strong_count() > 0);
        }
        let hold = Arc::new(TenantHold::default());
        tenants.insert(tenant.clone(), Arc::downgrade(&hold));
        hold
    }
}

/// What admission keeps about one connection: its tenant (the
/// certificate's identity) and what the tenant holds, the token-less
/// streams this connection holds open, and the refusals it drew (the
/// refusal budget). The connection carries it to every call's extensions.
#[derive(Debug)]
pub struct ConnectionShare {
    /// The tenant: the client certificate's identity.
    pub tenant: Arc<str>,
    hold: Arc<TenantHold>,
    streams: AtomicUsize,
    /// This connection's refusal budget.
    pub refusals: ConnectionRefusals,
}

impl ConnectionShare {
    /// A new connection of `tenant`, sharing the tenant's hold in `tenants`.
    pub fn new(tenant: Arc<str>, tenants: &Tenants) -> Self {
        Self {
            hold: tenants.hold_of(&tenant),
            tenant,
            streams: AtomicUsize::new(0),
            refusals: ConnectionRefusals::default(),
        }
    }
}

/// Which count of a connection's share a [`Place`] is taken from.
#[derive(Debug, Clone, Copy)]
enum Count {
    /// The tenant's calls in flight.
    TenantCalls,
    /// The tenant's token-less streams.
    TenantStreams,
    /// This connection's token-less streams.
    ConnectionStreams,
}

/// One unit of a count of a connection's share (a call in flight, a
/// stream), given back when dropped (also when the call's future is).
struct Place {
    share: Arc<ConnectionShare>,
    count: Count,
}

impl Place {
    /// One unit of `count` if `admit` allows it given what it holds now.
    fn take(
        share: &Arc<ConnectionShare>,
        count: Count,
        admit: impl Fn(usize) -> bool,
    ) -> Option<Self> {
        Self::counter(share, count)
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                admit(n).then_some(n + 1)
            })
            .ok()?;
        Some(Self {
            share: share.clone(),
            count,
        })
    }

    fn counter(share: &ConnectionShare, count: Count) -> &AtomicUsize {
        match count {
            Count::TenantCalls => &share.hold.in_flight,
            Count::TenantStreams => &share.hold.streams,
            Count::ConnectionStreams => &share.streams,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        Self::counter(&self.share, self.count).fetch_sub(1, Ordering::Release);
    }
}

/// The bounds of [`InFlightLimitLayer`].
#[derive(Debug, Clone, Copy)]
pub struct CallBounds {
    /// Calls in flight across the server (beyond the reservations).
    pub in_flight: usize,
    /// Calls in flight of one tenant.
    pub in_flight_per_identity: usize,
    /// Calls of each tenant admitted even when the server is full.
    pub reserved_per_identity: usize,
    /// Token-less streams open on one connection.
    pub streams_per_connection: usize,
    /// Token-less streams open of one tenant.
    pub streams_per_identity: usize,
    /// How long a token-less stream lives.
    pub stream_lifetime: Duration,
    /// How long a unary call's request message may take after its headers.
    pub message_timeout: Duration,
}

/// The connection's share, read from a request's extensions (what the
/// connection put there); `None`: no connection known.
pub type ShareOf = fn(&http::Extensions) -> Option<Arc<ConnectionShare>>;

/// Admits calls under the fair in-flight bounds and token-less streams under
/// theirs ([`CallBounds`]); answers the others at once.
///
/// The server-wide count is a counter, not a semaphore: nothing waits for a
/// slot, so one atomic add takes it and one subtract gives it back.
#[derive(Clone)]
pub struct InFlightLimitLayer {
    bounds: CallBounds,
    share_of: ShareOf,
    in_flight: Arc<AtomicUsize>,
    shed: Arc<AtomicU64>,
}

/// What an admitted call holds until it answers (a token-less stream: until
/// its response ends).
struct Admitted {
    _global: Option<Slot>,
    _tenant: Option<Place>,
    _stream: Option<Place>,
    _gauge: Option<InFlight>,
}

impl InFlightLimitLayer {
    /// Calls and streams under `bounds`; `share_of` finds a call's connection.
    pub fn new(bounds: CallBounds, share_of: ShareOf) -> Self {
        Self {
            bounds,
            share_of,
            in_flight: Arc::default(),
            shed: Arc::default(),
        }
    }

    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.shed.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics()
            .requests_shed
            .with_label_values(&[reason])
            .inc();
        status
    }

    /// Admits a unary call of `share`'s tenant, or refuses it.
    fn admit_call(&self, share: Option<Arc<ConnectionShare>>) -> Result<Admitted, Status> {
        let bounds = self.bounds;
        let global = Slot::take(&self.in_flight);
        let server_full = global.0 > bounds.in_flight;
        let tenant = match share {
            Some(share) => {
                let admitted = Place::take(&share, Count::TenantCalls, |held| {
                    held < bounds.in_flight_per_identity
                        && (!server_full || held < bounds.reserved_per_identity)
                });
                match admitted {
                    Some(place) => Some(place),
                    None if server_full => return Err(self.overloaded()),
                    None => {
                        return Err(self.refuse(
                            "identity_share",
                            Status::unavailable(format!(
                                "this client certificate has {} calls in flight, its share of the server; retry with backoff",
                                bounds.in_flight_per_identity
                            )),
                        ));
                    }
                }
            }
            None if server_full => return Err(self.overloaded()),
            None => None,
        };
        Ok(Admitted {
            _global: Some(global),
            _tenant: tenant,
            _stream: None,
            _gauge: Some(InFlight::start()),
        })
    }

    fn overloaded(&self) -> Status {
        self.refuse(
            "in_flight",
            Status::unavailable(format!(
                "server is overloaded: more than {} calls in flight; retry with backoff",
                self.bounds.in_flight
            )),
        )
    }

    /// Admits a token-less stream on `share`'s connection, or refuses it.
    fn admit_stream(&self, share: Option<Arc<ConnectionShare>>) -> Result<Admitted, Status> {
        let bounds = self.bounds;
        let refused = |what: String| {
            self.refuse(
                "streams",
                Status::resource_exhausted(format!(
                    "{what}; close some (Health/Watch and reflection streams)"
                )),
            )
        };
        let Some(share) = share else {
            return Err(refused("no connection known for this stream".into()));
        };
        let Some(stream) = Place::take(&share, Count::ConnectionStreams, |open| {
            open < bounds.streams_per_connection
        }) else {
            return Err(refused(format!(
                "more than {} token-less streams open on this connection",
                bounds.streams_per_connection
            )));
        };
        let Some(tenant) = Place::take(&share, Count::TenantStreams, |held| {
            held < bounds.streams_per_identity
        }) else {
            return Err(refused(format!(
                "more than {} token-less streams open for this client certificate",
                bounds.streams_per_identity
            )));
        };
        Ok(Admitted {
            _global: None,
            _tenant: Some(tenant),
            _stream: Some(stream),
            _gauge: None,
        })
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

impl<S> Service<Request<Body>> for InFlightLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The inner service is called here, not in the future: it is the
        // one polled ready, and nothing is cloned per call.
        let kind = Kind::of(req.uri().path());
        let admitted = match kind {
            Kind::HealthCheck => None,
            Kind::TokenlessStream => {
                let share = (self.limit.share_of)(req.extensions());
                match self.limit.admit_stream(share) {
                    Ok(admitted) => Some(admitted),
                    Err(status) => return InFlightFuture::refused(status),
                }
            }
            Kind::Call => {
                let share = (self.limit.share_of)(req.extensions());
                match self.limit.admit_call(share) {
                    Ok(admitted) => Some(admitted),
                    Err(status) => return InFlightFuture::refused(status),
                }
            }
        };
        let req = if kind.unary_request() {
            let timeout = self.limit.bounds.message_timeout;
            req.map(|body| Body::new(MessageDeadline::new(body, timeout)))
        } else {
            req
        };
        let lifetime = (kind == Kind::TokenlessStream).then_some(self.limit.bounds.stream_lifetime);
        InFlightFuture {
            inner: Some(self.inner.call(req)),
            held: admitted,
            lifetime,
            refusal: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of [`InFlightLimit`]: the inner call, holding what it
    /// was admitted under until it answers (a token-less stream: until its
    /// response ends), or the refusal.
    pub struct InFlightFuture<F> {
        // None: refused (or answered).
        #[pin]
        inner: Option<F>,
        held: Option<Admitted>,
        lifetime: Option<Duration>,
        refusal: Option<Status>,
    }
}

impl<F> InFlightFuture<F> {
    fn refused(status: Status) -> Self {
        Self {
            inner: None,
            held: None,
            lifetime: None,
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
                let held = this.held.take();
                // Polled again, it answers INTERNAL rather than poll a
                // finished future.
                this.inner.set(None);
                Poll::Ready(match (this.lifetime.take(), response) {
                    // A stream holds its slots until its response ends.
                    (Some(lifetime), Ok(response)) => {
                        Ok(response.map(|body| Body::new(StreamBody::new(body, held, lifetime))))
                    }
                    (_, response) => response,
                })
            }
            None => Poll::Ready(Ok(this
                .refusal
                .take()
                .unwrap_or_else(|| Status::internal("call polled after it answered"))
                .into_http())),
        }
    }
}

/// One call's place under the server-wide bound, given back when dropped
/// (also when the call's future is dropped). Holds the count it was taken
/// at (itself included).
struct Slot(usize, Arc<AtomicUsize>);

impl Slot {
    fn take(in_flight: &Arc<AtomicUsize>) -> Self {
        Slot(
            in_flight.fetch_add(1, Ordering::AcqRel) + 1,
            in_flight.clone(),
        )
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Release);
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

pin_project_lite::pin_project! {
    /// A unary call's request body, which must end within its deadline of
    /// the headers. The timer starts only if the body is not all there at
    /// the first read (most calls send headers and message together).
    struct MessageDeadline {
        #[pin]
        body: Body,
        started: tokio::time::Instant,
        timeout: Duration,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        ended: bool,
    }
}

impl MessageDeadline {
    fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body,
            started: tokio::time::Instant::now(),
            timeout,
            timer: None,
            ended: false,
        }
    }
}

impl http_body::Body for MessageDeadline {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.as_mut().poll_frame(cx) {
            if frame.is_none() {
                *this.ended = true;
            }
            return Poll::Ready(frame);
        }
        if *this.ended {
            return Poll::Pending;
        }
        if this.timer.is_none() {
            let deadline = *this.started + *this.timeout;
            this.timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        if let Some(timer) = this.timer.as_pin_mut() {
            std::task::ready!(timer.poll(cx));
            *this.ended = true;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "request message not received within {:?} of its headers",
                this.timeout
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A token-less stream's response: holds the stream's slots until it
    /// ends, and ends it UNAVAILABLE when its lifetime is up.
    struct StreamBody {
        #[pin]
        body: Body,
        held: Option<Admitted>,
        #[pin]
        expiry: tokio::time::Sleep,
        lifetime: Duration,
    }
}

impl StreamBody {
    fn new(body: Body, held: Option<Admitted>, lifetime: Duration) -> Self {
        Self {
            body,
            held,
            expiry: tokio::time::sleep(lifetime),
            lifetime,
        }
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.project();
        if this.held.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            if frame.is_none() {
                this.held.take();
            }
            return Poll::Ready(frame);
        }
        std::task::ready!(this.expiry.poll(cx));
        this.held.take();
        let status = Status::unavailable(format!(
            "stream ended after its lifetime of {:?}; call again",
            this.lifetime
        ));
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none()
    }
}

/// The token owner of a call, read from its extensions (what the auth
/// layer put there); `None` for calls without a token.
pub type OwnerOf = fn(&http::Extensions) -> Option<&str>;

/// Caps the calls in flight of one token owner, so that one end user
/// behind a gateway's certificate cannot hold the certificate's whole
/// share ([`InFlightLimitLayer`]). Sits inside the auth layer; calls without
/// a token pass. Over it: **UNAVAILABLE**.
#[derive(Clone)]
pub struct OwnerShareLayer {
    cap: usize,
    owner_of: OwnerOf,
    /// By a hash of the owner (seeded per process): no allocation per call;
    /// two owners whose hashes collide share one cap, which only limits.
    counts: Arc<Counts<u64>>,
    hasher: foldhash::fast::RandomState,
}

impl OwnerShareLayer {
    /// At most `cap` calls in flight per owner; `owner_of` finds a call's.
    pub fn new(cap: usize, owner_of: OwnerOf) -> Self {
        Self {
            cap,
            owner_of,
            counts: Arc::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<S> Layer<S> for OwnerShareLayer {
    type Service = OwnerShare<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OwnerShare {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`OwnerShareLayer`].
#[derive(Clone)]
pub struct OwnerShare<S> {
    inner: S,
    layer: OwnerShareLayer,
}

pin_project_lite::pin_project! {
    /// A call holding its owner's place until it answers (no box per call).
    pub struct Holding<F> {
        #[pin]
        inner: Option<F>,
        held: Option<super::shares::Held<u64>>,
        refusal: Option<Status>,
    }
}

impl<F, E> Future for Holding<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => {
                let answered = std::task::ready!(inner.poll(cx));
                this.held.take();
                Poll::Ready(answered)
            }
            None => Poll::Ready(Ok(this
                .refusal
                .take()
                .unwrap_or_else(|| Status::internal("call polled after it answered"))
                .into_http())),
        }
    }
}

impl<S, B> Service<Request<B>> for OwnerShare<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Holding<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(owner) = (self.layer.owner_of)(req.extensions()) else {
            return Holding {
                inner: Some(self.inner.call(req)),
                held: None,
                refusal: None,
            };
        };
        let cap = self.layer.cap;
        let key = std::hash::BuildHasher::hash_one(&self.layer.hasher, owner);
        let Some(held) = self.layer.counts.take(&key, |n| n < cap) else {
            crate::metrics::metrics()
                .requests_shed
                .with_label_values(&["owner_share"])
                .inc();
            return Holding {
                inner: None,
                held: None,
                refusal: Some(Status::unavailable(format!(
                    "this token's owner has {cap} calls in flight, its share; retry with backoff"
                ))),
            };
        };
        Holding {
            inner: Some(self.inner.call(req)),
            held: Some(held),
            refusal: None,
        }
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

    fn bounds(in_flight: usize, per_identity: usize, reserved: usize) -> CallBounds {
        CallBounds {
            in_flight,
            in_flight_per_identity: per_identity,
            reserved_per_identity: reserved,
            streams_per_connection: 2,
            streams_per_identity: 3,
            stream_lifetime: Duration::from_secs(60),
            message_timeout: Duration::from_secs(5),
        }
    }

    /// A request on a connection of `tenant` to `path`.
    fn request(tenant: &Arc<ConnectionShare>, path: &str) -> Request<Body> {
        let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(tenant.clone());
        req
    }

    fn share_of(extensions: &http::Extensions) -> Option<Arc<ConnectionShare>> {
        extensions.get::<Arc<ConnectionShare>>().cloned()
    }

    /// One registry for the whole process's tests: shares of one name
    /// share their tenant's hold, as connections of one identity do.
    fn tenant(name: &str) -> Arc<ConnectionShare> {
        static TENANTS: std::sync::LazyLock<Tenants> = std::sync::LazyLock::new(Tenants::default);
        Arc::new(ConnectionShare::new(
            format!("{name}-{:?}", std::thread::current().id()).into(),
            &TENANTS,
        ))
    }

    fn holds(share: &ConnectionShare) -> (usize, usize) {
        (
            share.hold.in_flight.load(Ordering::Relaxed),
            share.hold.streams.load(Ordering::Relaxed),
        )
    }

    fn stuck(
        layer: &InFlightLimitLayer,
    ) -> InFlightLimit<
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Unpin>,
    > {
        layer.layer(tower::service_fn(|_: Request<Body>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        }))
    }

    fn code(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn a_slot_is_given_back_when_its_call_answers_or_is_dropped_and_none_is_taken_by_a_refusal()
     {
        let layer = InFlightLimitLayer::new(bounds(1, 10, 0), share_of);
        let a = tenant("a");
        let mut stuck = stuck(&layer);
        let held = stuck.call(request(&a, "/notes.v1.NotesService/GetNote"));
        assert_eq!(in_flight(&layer), 1);

        let refused = stuck
            .call(request(&a, "/notes.v1.NotesService/GetNote"))
            .await
            .unwrap();
        assert_eq!(code(&refused), Some("14"));
        assert_eq!(in_flight(&layer), 1);
        assert_eq!(layer.shed.load(Ordering::Relaxed), 1);

        // A caller that goes away gives its slot back.
        drop(held);
        assert_eq!(in_flight(&layer), 0);
        assert_eq!(holds(&a), (0, 0));

        let mut answers = layer.layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let answered = answers
            .call(request(&a, "/notes.v1.NotesService/GetNote"))
            .await
            .unwrap();
        assert_eq!(code(&answered), None);
        assert_eq!(in_flight(&layer), 0);
    }

    #[tokio::test]
    async fn one_tenant_holds_at_most_its_share_and_a_newcomer_gets_its_reservation_when_full() {
        let layer = InFlightLimitLayer::new(bounds(10, 6, 2), share_of);
        let (a, b, c) = (tenant("a"), tenant("b"), tenant("c"));
        let mut svc = stuck(&layer);
        let path = "/notes.v1.NotesService/CreateNote";
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(svc.call(request(&a, path)));
        }
        let over_share = svc.call(request(&a, path)).await.unwrap();
        assert_eq!(code(&over_share), Some("14"), "a is at its share");
        for _ in 0..4 {
            held.push(svc.call(request(&b, path)));
        }
        assert_eq!(in_flight(&layer), 10, "the server is full");
        let b_over = svc.call(request(&b, path)).await.unwrap();
        assert_eq!(
            code(&b_over),
            Some("14"),
            "b holds more than its reservation"
        );
        // c holds nothing: its reservation is admitted although the server is full.
        held.push(svc.call(request(&c, path)));
        held.push(svc.call(request(&c, path)));
        let c_over = svc.call(request(&c, path)).await.unwrap();
        assert_eq!(code(&c_over), Some("14"));
        assert_eq!(holds(&c).0, 2);
        // Health checks are never refused.
        let mut answers = layer.layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let health = answers.call(request(&a, HEALTH_CHECK)).await.unwrap();
        assert_eq!(code(&health), None);
        drop(held);
        assert_eq!(in_flight(&layer), 0);
    }

    #[tokio::test]
    async fn tokenless_streams_are_capped_per_connection_and_per_tenant_until_their_response_ends()
    {
        let layer = InFlightLimitLayer::new(bounds(10, 10, 0), share_of);
        let watch = "/grpc.health.v1.Health/Watch";
        let mut answers = layer.layer(tower::service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let (first, second) = (tenant("a"), tenant("a"));
        let mut open = Vec::new();
        for _ in 0..2 {
            let response = answers.call(request(&first, watch)).await.unwrap();
            assert_eq!(code(&response), None);
            open.push(response);
        }
        let third = answers.call(request(&first, watch)).await.unwrap();
        assert_eq!(code(&third), Some("8"), "per connection");
        open.push(answers.call(request(&second, watch)).await.unwrap());
        let fourth = answers.call(request(&second, watch)).await.unwrap();
        assert_eq!(code(&fourth), Some("8"), "per tenant");
        // A stream's slots are held by its response until it ends.
        assert_eq!(holds(&first).1, 3);
        let mut ended = open.pop().unwrap().into_body();
        assert!(http_body_util::BodyExt::frame(&mut ended).await.is_none());
        assert_eq!(holds(&first).1, 2);
        drop(open);
        assert_eq!(holds(&first).1, 0);
        assert_eq!(first.streams.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_message_that_does_not_arrive_in_time_fails_deadline_exceeded() {
        let (_tx, body) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Status>>(1);
            let stream =
                http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            (tx, Body::new(stream))
        };
        let mut body = std::pin::pin!(MessageDeadline::new(body, Duration::from_millis(200)));
        let started = tokio::time::Instant::now();
        let frame = http_body_util::BodyExt::frame(&mut body).await.unwrap();
        let status = frame.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status
                .message()
                .contains("request message not received within 200ms"),
            "{status:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
