//! Serving: [`run`] takes a bound listener, a shutdown future and the
//! [`App`] that [`crate::startup`] assembled, so the binary and the tests
//! start the server the same way. The tower stack is built here, once.

use std::{future::Future, sync::Arc};

use notes_api::pb::notes_service_server::NotesServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};

use std::sync::atomic::Ordering;

use crate::{
    admin::{self, Readiness},
    api::{NotesApi, PageTokens},
    auth::{AuthLayer, Authenticator, jwks},
    limits::{Limits, MAX_NOTES_MESSAGE_BYTES, MAX_SMALL_MESSAGE_BYTES},
    metrics::RpcMetricsLayer,
    overload::{InFlightLimitLayer, OversizeAsResourceExhausted, RateLimitLayer},
    store::NoteStore,
    tls::{self, Admission, ServerTls},
};

/// Open connections an identity off the allow-list may hold.
const NOT_ALLOWED_CONNECTIONS: usize = 4;

/// Everything the server needs, assembled by the caller.
pub struct App {
    /// Where notes live.
    pub store: Arc<dyn NoteStore>,
    /// Token verification and the per-call policy.
    pub authenticator: Arc<Authenticator>,
    /// The rustls configuration (mutual TLS), reloadable.
    pub tls: Arc<ServerTls>,
    /// Seals and opens ListNotes page tokens.
    pub page_tokens: PageTokens,
    /// Timeouts and bounds.
    pub limits: Limits,
    /// Where the admin endpoints (`/metrics`, `/livez`, `/readyz`) listen, if anywhere.
    pub admin: Option<TcpListener>,
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
        set_health(&health, ServingStatus::Serving).await;
        tracing::info!("token keys loaded; ready");
    }
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

/// Serves NotesService, health and reflection on `listener` over mutual TLS
/// until `shutdown` resolves, then drains in-flight calls for at most the
/// grace period.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    app: App,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let stop = CancellationToken::new();
    let readiness = Arc::new(Readiness::default());
    readiness.publish();
    let admin_stop = CancellationToken::new();
    // The admin endpoints outlive the drain (503 throughout), then stop.
    let _admin_guard = admin_stop.clone().drop_guard();
    if let Some(listener) = app.admin {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%addr, "admin endpoints: /metrics /livez /readyz");
        admin::spawn(listener, readiness.clone(), admin_stop.clone());
    }
    spawn_store_probe(app.store.clone(), readiness.clone(), stop.clone());
    // Not ready until every issuer's keys are loaded: until then health says
    // NOT_SERVING (load balancers route elsewhere) while loading is retried.
    set_health(&health, ServingStatus::NotServing).await;
    tokio::spawn(become_ready(
        app.authenticator.clone(),
        health.clone(),
        readiness.clone(),
        stop.clone(),
    ));
    jwks::spawn_refresh(app.authenticator.verifier(), &stop);

    // Reflection describes the notes API and health, for grpcurl and friends.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(notes_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Each service decodes no more than its largest legitimate request.
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(MAX_SMALL_MESSAGE_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(MAX_SMALL_MESSAGE_BYTES);
    let health_service = health_service.max_decoding_message_size(MAX_SMALL_MESSAGE_BYTES);
    let notes = NotesServiceServer::new(NotesApi::new(app.store, app.page_tokens))
        .max_decoding_message_size(MAX_NOTES_MESSAGE_BYTES);
    let limits = app.limits;

    let local_addr = listener.local_addr().ok();
    let authenticator = app.authenticator.clone();
    let admission = Admission::with_peers(
        limits.max_connections,
        limits.max_handshakes,
        limits.max_handshakes_per_ip,
        limits.handshake_timeout,
        // An identity off the allow-list may hold a few connections, to be
        // told PERMISSION_DENIED, and no more.
        Arc::new(move |peer| {
            if authenticator.admits(peer) {
                limits.max_connections_per_identity
            } else {
                NOT_ALLOWED_CONNECTIONS
            }
        }),
    );
    // Reloads the TLS files and closes connections whose certificate is
    // revoked or expired, every reload interval and on SIGHUP.
    app.tls.spawn_watch(
        limits.tls_reload_interval,
        admission.open.clone(),
        stop.clone(),
    );
    let incoming = tls::accept::incoming(listener, app.tls, admission, stop.clone());

    let signal = {
        let stop = stop.clone();
        let readiness = readiness.clone();
        async move {
            shutdown.await;
            // Not ready first: load balancers stop sending before the listener closes.
            readiness.draining.store(true, Ordering::Release);
            readiness.publish();
            tracing::info!("shutting down: refusing new connections, draining calls");
            set_health(&health, ServingStatus::NotServing).await;
            stop.cancel();
        }
    };

    let router = Server::builder()
        .timeout(limits.request_timeout)
        // Counts every call, with the code any later layer answered.
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
        .layer(RpcMetricsLayer)
        // Shedding comes first: an overloaded server spends nothing on a call
        // it cannot take, not even RSA.
        .layer(InFlightLimitLayer::new(limits.max_requests_in_flight))
        // Answers from the router for oversized messages get the gRPC code.
        .layer(OversizeAsResourceExhausted)
        // Authentication wraps the router: nothing routes before it decides.
        .layer(AuthLayer::new(app.authenticator))
        // The rate limit needs the caller the auth layer established.
        .layer(tower::util::option_layer(
            limits.rate_limit.map(RateLimitLayer::new),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(notes);

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
