//! Serving: [`run`] takes a bound listener, a shutdown future and the
//! [`App`] that [`crate::startup`] assembled, so the binary and the tests
//! start the server the same way. The tower stack is built here, once.

use std::{future::Future, sync::Arc, time::Duration};

use notes_api::pb::notes_service_server::NotesServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{NotesApi, PageTokens},
    auth::{AuthLayer, Authenticator, jwks},
    store::NoteStore,
    tls::{self, ServerTls},
};

/// Largest request message accepted: a note's content plus headroom.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

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
    /// Timeouts and limits.
    pub limits: Limits,
}

/// Timeouts and limits of the serving loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A TLS handshake that takes longer is dropped.
    pub handshake_timeout: Duration,
    /// How long in-flight calls may finish after shutdown begins.
    pub grace_period: Duration,
    /// Per-call deadline enforced by the server.
    pub request_timeout: Duration,
    /// How often the TLS files are checked for changes (SIGHUP also reloads).
    pub tls_reload_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
            tls_reload_interval: Duration::from_secs(10),
        }
    }
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
    stop: CancellationToken,
) {
    if jwks::load_until_ready(authenticator.verifier(), &stop).await {
        set_health(&health, ServingStatus::Serving).await;
        tracing::info!("token keys loaded; ready");
    }
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
    // Not ready until every issuer's keys are loaded: until then health says
    // NOT_SERVING (load balancers route elsewhere) while loading is retried.
    set_health(&health, ServingStatus::NotServing).await;
    tokio::spawn(become_ready(
        app.authenticator.clone(),
        health.clone(),
        stop.clone(),
    ));
    jwks::spawn_refresh(app.authenticator.verifier(), &stop);

    // Reflection describes the notes API and health, for grpcurl and friends.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(notes_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let notes = NotesServiceServer::new(NotesApi::new(app.store, app.page_tokens))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let local_addr = listener.local_addr().ok();
    app.tls
        .spawn_watch(app.limits.tls_reload_interval, stop.clone());
    let incoming = tls::accept::incoming(
        listener,
        app.tls,
        app.limits.handshake_timeout,
        stop.clone(),
    );

    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new connections, draining calls");
            set_health(&health, ServingStatus::NotServing).await;
            stop.cancel();
        }
    };

    let router = Server::builder()
        .timeout(app.limits.request_timeout)
        // Detect dead peers behind load balancers that drop idle flows silently.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Authentication wraps the router: nothing routes before it decides.
        .layer(AuthLayer::new(app.authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(notes);

    tracing::info!(addr = ?local_addr, "serving notes.v1.NotesService over mutual TLS");
    let serve = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(serve);
    let grace = app.limits.grace_period;
    tokio::select! {
        result = &mut serve => result?,
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period ran out with calls in flight; closing them");
        }
    }
    tracing::info!("server stopped");
    Ok(())
}
