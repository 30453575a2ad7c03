//! Serving: the [`Server`] that [`crate::startup::build`] assembled serves
//! bound listeners until a shutdown future resolves ([`Server::serve`]), so
//! the binary, the tests and the benchmark start it the same way. The tower
//! stack is built here, once.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
};

use notes_api::pb::notes_service_server::NotesServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    admin::{self, Readiness},
    admission::{
        Admission, CallBounds, Charged, ConnectionShare, InFlightLimitLayer, OwnerShareLayer,
        RateLimitLayer, oversize_layer,
    },
    api::{NotesApi, PageTokens},
    auth::{AuthLayer, Authenticator, Caller, jwks, revocation},
    limits::{Limits, MAX_NOTES_MESSAGE_BYTES, MAX_SMALL_MESSAGE_BYTES},
    metrics::RpcMetricsLayer,
    store::NoteStore,
    tls::{self, ConnInfo, OpenConnections, ServerTls, accept::PeerCap},
};

/// Open connections an identity off the allow-list may hold.
const NOT_ALLOWED_CONNECTIONS: usize = 4;

/// The server, assembled by [`crate::startup::build`] and ready to serve.
pub struct Server {
    store: Arc<dyn NoteStore>,
    authenticator: Arc<Authenticator>,
    tls: Arc<ServerTls>,
    page_tokens: PageTokens,
    limits: Limits,
}

/// Failures of the serving loop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not load the descriptors.
    #[error("cannot build gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Sets the status of the server as a whole ("") and of NotesService.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(<NotesServiceServer<NotesApi> as NamedService>::NAME, status)
        .await;
}

/// Loads the token keys, retrying with backoff, then reports SERVING.
async fn become_ready(
    authenticator: Arc<Authenticator>,
    health: HealthReporter,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    if jwks::load_until_ready(authenticator.verifier(), &stop).await {
        readiness.keys.store(true, Ordering::Release);
        readiness.publish();
        // (A stale revocation list keeps it NOT_SERVING until it is read.)
        if !readiness.revocations_stale.load(Ordering::Acquire) {
            set_health(&health, ServingStatus::Serving).await;
        }
        tracing::info!("token keys loaded; ready");
    }
}

/// Reads the whole token revocation list before the first call is taken
/// (retrying every second, for at most its staleness limit: past it the
/// list is stale, calls are refused and `/readyz` says why), then keeps
/// reading what is new until `stop`.
async fn load_revocations(
    authenticator: &Authenticator,
    store: Arc<dyn NoteStore>,
    health: &HealthReporter,
    readiness: &Arc<Readiness>,
    stop: &CancellationToken,
) {
    let list = authenticator.revocations().clone();
    let Some(settings) = list.settings() else {
        return;
    };
    let give_up = tokio::time::Instant::now() + settings.max_staleness;
    loop {
        if revocation::load(store.as_ref(), &list).await {
            tracing::info!(entries = list.len(), "token revocation list read");
            break;
        }
        if tokio::time::Instant::now() >= give_up {
            readiness.revocations_stale.store(true, Ordering::Release);
            readiness.publish();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let (readiness, health) = (readiness.clone(), health.clone());
    // gRPC health follows too: NOT_SERVING while the list is stale (calls
    // are refused), SERVING again once it is read, if otherwise ready.
    let report = move |fresh: bool| {
        let was_stale = readiness.revocations_stale.swap(!fresh, Ordering::AcqRel);
        readiness.publish();
        if was_stale == fresh {
            let serving = fresh
                && readiness.keys.load(Ordering::Acquire)
                && !readiness.draining.load(Ordering::Acquire);
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            let health = health.clone();
            tokio::spawn(async move { set_health(&health, status).await });
        }
    };
    revocation::spawn_poll(store, list, report, stop.clone());
}

/// Probes the store every few seconds for readiness.
fn spawn_store_probe(
    store: Arc<dyn NoteStore>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let answered = store.ping().await;
                    if let Err(err) = &answered {
                        tracing::warn!(error = %crate::error::error_chain(err), "store probe failed; not ready");
                    }
                    readiness.store.store(answered.is_ok(), Ordering::Release);
                    readiness.publish();
                }
            }
        }
    });
}

impl Server {
    pub(crate) fn new(
        store: Arc<dyn NoteStore>,
        authenticator: Arc<Authenticator>,
        tls: Arc<ServerTls>,
        page_tokens: PageTokens,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            authenticator,
            tls,
            page_tokens,
            limits,
        }
    }

    /// Serves NotesService, health and reflection on `listener` over mutual
    /// TLS, and the admin endpoints (`/metrics`, `/livez`, `/readyz`) on
    /// `admin` if given, until `shutdown` resolves; then drains in-flight
    /// calls for at most the grace period.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let stop = CancellationToken::new();
        let readiness = Arc::new(Readiness::default());
        readiness.publish();
        // The admin endpoints outlive the drain (503 throughout), then stop.
        let _admin_guard = start_admin(admin, &readiness);
        self.spawn_background(&health, &readiness, &stop).await;
        let limits = self.limits.clone();
        let local_addr = listener.local_addr().ok();
        let incoming = self.accept(listener, &stop);
        let signal = drain_on(shutdown, health.clone(), readiness, stop.clone());
        let routes = Self::routes(self.store, self.page_tokens, health_service)?;
        let refusal_log = spawn_refusal_log(&stop);
        let router = tonic::transport::Server::builder()
            .timeout(limits.request_timeout)
            // HTTP/2 bounds per connection (see crate::limits for each reason).
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_local_error_reset_streams(Some(limits.max_local_error_resets))
            .http2_max_pending_accept_reset_streams(Some(limits.max_pending_accept_resets))
            .http2_max_header_list_size(limits.max_header_list_bytes)
            // Detect dead peers behind load balancers that drop idle flows silently.
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            // Long-lived connections re-handshake (new certificates, CRLs).
            .max_connection_age(limits.max_connection_age)
            .max_connection_age_grace(limits.max_connection_age_grace)
            // Counts every call, with the code any later layer answered.
            .layer(RpcMetricsLayer)
            // Shedding comes first: an overloaded server spends nothing on a
            // call it cannot take, not even RSA.
            .layer(InFlightLimitLayer::new(call_bounds(&limits), share_of))
            // Answers from the router for oversized messages get the gRPC code.
            .layer(oversize_layer())
            // Authentication wraps the router: nothing routes before it decides.
            .layer(AuthLayer::new(self.authenticator, refusal_log))
            // The owner's share and the rate limit need the caller the auth
            // layer established.
            .layer(OwnerShareLayer::new(
                limits.max_requests_in_flight_per_owner,
                owner_of,
            ))
            .layer(tower::util::option_layer(
                limits
                    .rate_limit
                    .map(|limit| RateLimitLayer::new(limit, charged)),
            ))
            .add_routes(routes);
        let addr = local_addr.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "serving notes.v1.NotesService over mutual TLS");
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serve);
        let grace = limits.grace_period;
        tokio::select! {
            result = &mut serve => result?,
            _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "grace period ran out with calls in flight; closing them");
            }
        }
        tracing::info!("server stopped");
        Ok(())
    }

    /// The accept loop on `listener`, under the connection caps; with the
    /// TLS watch that reloads the files and closes connections whose
    /// certificate is revoked or expired (every reload interval and on
    /// SIGHUP), until `stop`.
    fn accept(
        &self,
        listener: TcpListener,
        stop: &CancellationToken,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tls::TlsConn>> {
        let limits = &self.limits;
        let admission = Admission::new(limits);
        let open = Arc::new(OpenConnections::default());
        self.tls
            .spawn_watch(limits.tls_reload_interval, open.clone(), stop.clone());
        tls::accept::incoming(
            listener,
            self.tls.clone(),
            admission,
            open,
            identity_caps(limits, self.authenticator.clone()),
            stop.clone(),
        )
    }

    /// The store probe, the first key load (then SERVING) and the key
    /// refresh, until `stop`.
    async fn spawn_background(
        &self,
        health: &HealthReporter,
        readiness: &Arc<Readiness>,
        stop: &CancellationToken,
    ) {
        spawn_store_probe(self.store.clone(), readiness.clone(), stop.clone());
        // Not ready until every issuer's keys are loaded: until then health
        // says NOT_SERVING (load balancers route elsewhere) while loading is
        // retried.
        set_health(health, ServingStatus::NotServing).await;
        load_revocations(
            &self.authenticator,
            self.store.clone(),
            health,
            readiness,
            stop,
        )
        .await;
        tokio::spawn(become_ready(
            self.authenticator.clone(),
            health.clone(),
            readiness.clone(),
            stop.clone(),
        ));
        jwks::spawn_refresh(self.authenticator.verifier(), stop);
    }

    /// The services: notes, health and reflection (v1 and v1alpha, for
    /// grpcurl and friends), each decoding no more than its largest
    /// legitimate request.
    fn routes(
        store: Arc<dyn NoteStore>,
        page_tokens: PageTokens,
        health_service: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
    ) -> Result<tonic::service::Routes, ServeError> {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(notes_api::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()?
            .max_decoding_message_size(MAX_SMALL_MESSAGE_BYTES);
        let reflection_v1alpha = reflection()
            .build_v1alpha()?
            .max_decoding_message_size(MAX_SMALL_MESSAGE_BYTES);
        let notes = NotesServiceServer::new(NotesApi::new(store, page_tokens))
            .max_decoding_message_size(MAX_NOTES_MESSAGE_BYTES);
        Ok(tonic::service::Routes::new(
            health_service.max_decoding_message_size(MAX_SMALL_MESSAGE_BYTES),
        )
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(notes))
    }
}

/// The audit trail's refusal log, its summaries written every interval
/// until `stop` (and once more then).
fn spawn_refusal_log(stop: &CancellationToken) -> Arc<crate::audit::RefusalLog> {
    let log = Arc::new(crate::audit::RefusalLog::default());
    let (flushed, stop) = (log.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::audit::REFUSAL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => flushed.flush(),
            }
        }
        flushed.flush_all();
    });
    log
}

/// Serves the admin endpoints on `admin`, if given, until the returned
/// guard is dropped.
fn start_admin(
    admin: Option<TcpListener>,
    readiness: &Arc<Readiness>,
) -> tokio_util::sync::DropGuard {
    let admin_stop = CancellationToken::new();
    if let Some(listener) = admin {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%addr, "admin endpoints: /metrics /livez /readyz");
        admin::spawn(listener, readiness.clone(), admin_stop.clone());
    }
    admin_stop.drop_guard()
}

/// How many connections each identity may hold: an identity off the
/// allow-list a few, to be told PERMISSION_DENIED, and no more.
fn identity_caps(limits: &Limits, authenticator: Arc<Authenticator>) -> PeerCap {
    let per_identity = limits.max_connections_per_identity;
    Arc::new(move |peer| {
        if authenticator.admits(peer) {
            per_identity
        } else {
            NOT_ALLOWED_CONNECTIONS
        }
    })
}

/// The call bounds of `limits`.
fn call_bounds(limits: &Limits) -> CallBounds {
    CallBounds {
        in_flight: limits.max_requests_in_flight,
        in_flight_per_identity: limits.max_requests_in_flight_per_identity,
        // A reservation is at most a sixteenth of the bound, so a small
        // bound is not undone by reservations.
        reserved_per_identity: limits
            .reserved_in_flight_per_identity
            .min(limits.max_requests_in_flight / 16),
        streams_per_connection: limits.max_tokenless_streams_per_connection,
        streams_per_identity: limits.max_tokenless_streams_per_identity,
        stream_lifetime: limits.stream_lifetime,
        message_timeout: limits.request_message_timeout,
    }
}

/// The token owner of a call, if it has a token.
fn owner_of(extensions: &http::Extensions) -> Option<&str> {
    extensions
        .get::<Caller>()
        .map(|caller| caller.owner.as_str())
}

/// The admission share of a call's connection.
fn share_of(extensions: &http::Extensions) -> Option<Arc<ConnectionShare>> {
    extensions.get::<ConnInfo>().map(|conn| conn.share.clone())
}

/// Who a call is charged to by the rate limit: its token's owner, or its
/// certificate's identity when it needs no token.
fn charged(extensions: &http::Extensions) -> Charged<'_> {
    match extensions.get::<Caller>() {
        Some(caller) => Charged::Owner(&caller.owner),
        None => Charged::Peer(
            extensions
                .get::<ConnInfo>()
                .map(|conn| conn.peer.name().to_owned())
                .unwrap_or_default(),
        ),
    }
}

/// Resolves when `shutdown` does, after turning not ready (load balancers
/// stop sending before the listener closes) and stopping the background
/// tasks and the accept loop.
async fn drain_on(
    shutdown: impl Future<Output = ()>,
    health: HealthReporter,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    shutdown.await;
    readiness.draining.store(true, Ordering::Release);
    readiness.publish();
    tracing::info!("shutting down: refusing new connections, draining calls");
    set_health(&health, ServingStatus::NotServing).await;
    stop.cancel();
}
