//! The admin listener: plain HTTP on its own address (loopback by default),
//! never behind the data plane's mutual TLS or tokens, and serving no notes
//! and no tokens: `/metrics` (Prometheus text), `/livez` (the process is up)
//! and `/readyz` (200 only when every issuer's keys are loaded and the store
//! answered recently; 503 with what is not ready otherwise, and from the
//! moment a drain starts, before the gRPC listener closes).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::metrics;

/// What readiness depends on; each part is set by the part of the server
/// that knows.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Every issuer's keys are loaded.
    pub keys: AtomicBool,
    /// The store answered its last probe.
    pub store: AtomicBool,
    /// A drain has started.
    pub draining: AtomicBool,
    /// The token revocation list was not read within its limit.
    pub revocations_stale: AtomicBool,
}

impl Readiness {
    /// `Ok` when ready, else what is not.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            missing.push("draining: the server is shutting down");
        }
        if !self.keys.load(Ordering::Acquire) {
            missing.push("token keys: not every issuer's keys are loaded");
        }
        if !self.store.load(Ordering::Acquire) {
            missing.push("store: its last probe failed (the log says why)");
        }
        if self.revocations_stale.load(Ordering::Acquire) {
            missing.push(
                "token revocations: the list was not read within its limit (the log says why)",
            );
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("\n"))
        }
    }

    /// Updates the `notes_ready` gauge.
    pub fn publish(&self) {
        metrics().ready.set(i64::from(self.check().is_ok()));
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        metrics().render(),
    )
}

/// Serves the admin endpoints on `listener` until `stop` (which the server
/// cancels only after its drain, so `/readyz` answers 503 throughout).
pub fn spawn(listener: TcpListener, readiness: Arc<Readiness>, stop: CancellationToken) {
    let ready = readiness.clone();
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready.check() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready:\n{why}\n"),
                        ),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "admin listener failed");
        }
    });
}
