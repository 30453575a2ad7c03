//! Prometheus metrics: the RPC metrics every gRPC dashboard knows (the names
//! and labels of grpc-ecosystem/go-grpc-middleware's Prometheus provider)
//! and the service's own (`notes_*`). Label values come from fixed sets only
//! (methods of the proto, gRPC codes, reason codes, configured issuers and
//! files), never a subject, a token or a note id.
//!
//! Cheap on the request path: the RPC layer finds each call's precomputed
//! counters by its path, once; counters are atomics.
//!
//! - this file: the registry and its metrics.
//! - [`rpc`]: the RPC metrics layer, which also opens each call's trace
//!   ([`crate::telemetry::trace`]).

mod rpc;

pub use rpc::{RpcMetrics, RpcMetricsLayer};

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// gRPC code names as go-grpc-middleware writes them, by code number.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The RPCs the server serves, with their gRPC type; anything else is
/// counted as `unknown`.
const RPCS: [(&str, &str, &str); 10] = [
    ("notes.v1.NotesService", "CreateNote", "unary"),
    ("notes.v1.NotesService", "GetNote", "unary"),
    ("notes.v1.NotesService", "ListNotes", "unary"),
    ("notes.v1.NotesService", "UpdateNote", "unary"),
    ("notes.v1.NotesService", "DeleteNote", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
    ("unknown", "unknown", "unary"),
];

/// The precomputed counters of one RPC.
struct Rpc {
    path: String,
    service: &'static str,
    method: &'static str,
    unary: bool,
    started: IntCounter,
    received: IntCounter,
    sent: IntCounter,
    handled: Vec<IntCounter>,
    seconds: Histogram,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    rpcs: Vec<Rpc>,
    /// Auth decisions by result, reason code and caller kind.
    pub auth_decisions: IntCounterVec,
    /// Verified tokens served from the cache.
    pub token_cache_hits: IntCounter,
    /// Tokens verified afresh.
    pub token_cache_misses: IntCounter,
    /// Verified tokens held in the cache.
    pub token_cache_entries: IntGauge,
    /// Calls in flight (health checks not counted).
    pub requests_in_flight: IntGauge,
    /// JWKS fetches by issuer and outcome.
    pub jwks_fetches: IntCounterVec,
    /// Keys held per issuer.
    pub jwks_keys: IntGaugeVec,
    /// When each issuer's keys were last fetched, Unix seconds.
    pub jwks_last_refresh: IntGaugeVec,
    /// TLS handshakes by outcome.
    pub tls_handshakes: IntCounterVec,
    /// Open connections.
    pub connections_open: IntGauge,
    /// Connections closed at once by the cap that was full.
    pub connections_refused: IntCounterVec,
    /// Calls refused by the in-flight bound or the rate limit.
    pub requests_shed: IntCounterVec,
    /// The server certificate's notAfter, Unix seconds.
    pub server_certificate_not_after: IntGauge,
    /// The earliest client CA notAfter, Unix seconds.
    pub client_ca_not_after: IntGauge,
    /// Each CRL file's nextUpdate, Unix seconds.
    pub crl_next_update: IntGaugeVec,
    /// DynamoDB calls by operation and outcome.
    pub dynamodb_requests: IntCounterVec,
    /// DynamoDB call latency by operation.
    pub dynamodb_seconds: HistogramVec,
    /// DynamoDB throttling answers by operation.
    pub dynamodb_throttles: IntCounterVec,
    /// 1 when ready (see `/readyz`), else 0.
    pub ready: IntGauge,
    /// Log lines (audit events included) dropped because the queue was full.
    log_lines_dropped: IntCounterVec,
    /// Entries of the token revocation list this instance holds.
    pub token_revocations: IntGauge,
    /// When the token revocation list was last read, Unix seconds.
    pub token_revocations_refreshed: IntGauge,
    /// Failed reads of the token revocation list.
    pub token_revocation_read_errors: IntCounter,
}

const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let rpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        // The process's CPU, memory, open descriptors and start time
        // (`process_*`, the Prometheus clients' standard collector), and
        // which build this is.
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        gauge_vec(
            "notes_build_info",
            "1, labelled with the version of this build (the workspace's, as --version says).",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        let started = counter_vec(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &rpc_labels,
        );
        let received = counter_vec(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            &rpc_labels,
        );
        let sent = counter_vec(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            &rpc_labels,
        );
        let handled = counter_vec(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        );
        let seconds = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &rpc_labels,
            )
            .expect("valid metric"),
        );
        let rpcs = RPCS
            .iter()
            .map(|(service, method, kind)| {
                let labels = [*kind, *service, *method];
                Rpc {
                    path: format!("/{service}/{method}"),
                    service,
                    method,
                    unary: *kind == "unary",
                    started: started.with_label_values(&labels),
                    received: received.with_label_values(&labels),
                    sent: sent.with_label_values(&labels),
                    handled: CODE_NAMES
                        .iter()
                        .map(|code| handled.with_label_values(&[kind, service, method, code]))
                        .collect(),
                    seconds: seconds.with_label_values(&labels),
                }
            })
            .collect();
        Self {
            rpcs,
            auth_decisions: counter_vec(
                "notes_auth_decisions_total",
                "Authentication and authorization decisions by result, reason code, issuer and caller kind.",
                &["result", "reason", "issuer", "caller_kind"],
            ),
            token_cache_hits: counter(
                "notes_token_cache_hits_total",
                "Tokens whose verification came from the cache.",
            ),
            token_cache_misses: counter(
                "notes_token_cache_misses_total",
                "Tokens verified afresh (signature checked).",
            ),
            token_cache_entries: gauge(
                "notes_token_cache_entries",
                "Verified tokens held in the cache.",
            ),
            requests_in_flight: gauge(
                "notes_requests_in_flight",
                "Calls in flight across the server (health checks not counted).",
            ),
            jwks_fetches: counter_vec(
                "notes_jwks_fetches_total",
                "JWKS fetches by issuer and outcome.",
                &["issuer", "outcome"],
            ),
            jwks_keys: gauge_vec(
                "notes_jwks_keys",
                "Verification keys held per issuer.",
                &["issuer"],
            ),
            jwks_last_refresh: gauge_vec(
                "notes_jwks_last_refresh_timestamp_seconds",
                "When the issuer's keys were last fetched successfully (Unix seconds); age = time() - this.",
                &["issuer"],
            ),
            tls_handshakes: counter_vec(
                "notes_tls_handshakes_total",
                "TLS handshakes by outcome.",
                &["outcome"],
            ),
            connections_open: gauge("notes_connections_open", "Open mutual-TLS connections."),
            connections_refused: counter_vec(
                "notes_connections_refused_total",
                "Connections closed at once because a cap was full, by cap.",
                &["cap"],
            ),
            requests_shed: counter_vec(
                "notes_requests_shed_total",
                "Calls refused by the in-flight bound or the per-caller rate limit.",
                &["reason"],
            ),
            server_certificate_not_after: gauge(
                "notes_server_certificate_not_after_timestamp_seconds",
                "The server certificate's notAfter (Unix seconds).",
            ),
            client_ca_not_after: gauge(
                "notes_client_ca_not_after_timestamp_seconds",
                "The earliest notAfter of the client CA bundle (Unix seconds).",
            ),
            crl_next_update: gauge_vec(
                "notes_crl_next_update_timestamp_seconds",
                "Each client CRL file's nextUpdate (Unix seconds).",
                &["file"],
            ),
            dynamodb_requests: counter_vec(
                "notes_dynamodb_requests_total",
                "DynamoDB calls by operation and outcome.",
                &["operation", "outcome"],
            ),
            dynamodb_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "notes_dynamodb_request_duration_seconds",
                        "DynamoDB call latency (retries included) by operation.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["operation"],
                )
                .expect("valid metric"),
            ),
            dynamodb_throttles: counter_vec(
                "notes_dynamodb_throttles_total",
                "DynamoDB calls that ended throttled, by operation.",
                &["operation"],
            ),
            ready: gauge(
                "notes_ready",
                "1 when the server is ready to serve, else 0.",
            ),
            log_lines_dropped: counter_vec(
                "notes_log_lines_dropped_total",
                "Log lines dropped because their queue was full, by class: audit (audit events of allowed calls, which have a queue of their own) or other.",
                &["class"],
            ),
            token_revocations: gauge(
                "notes_token_revocations",
                "Entries of the token revocation list this instance holds.",
            ),
            token_revocations_refreshed: gauge(
                "notes_token_revocations_last_refresh_timestamp_seconds",
                "When this instance last read the token revocation list (Unix seconds).",
            ),
            token_revocation_read_errors: counter(
                "notes_token_revocation_read_errors_total",
                "Reads of the token revocation list that failed (the last list read stays in force).",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for (class, dropped) in ["audit", "other"]
            .into_iter()
            .zip(crate::telemetry::dropped_log_lines())
        {
            let counter = self.log_lines_dropped.with_label_values(&[class]);
            let counted = counter.get();
            if dropped > counted {
                counter.inc_by(dropped - counted);
            }
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    fn rpc(&self, path: &str) -> &Rpc {
        self.rpcs
            .iter()
            .find(|rpc| rpc.path == path)
            .unwrap_or_else(|| self.rpcs.last().expect("the unknown entry"))
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Header names read on every call, parsed once.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_and_the_build_are_exposed() {
        let text = metrics().render();
        for series in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(series), "{series}missing:\n{text}");
        }
        let build = format!(
            "notes_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
    }

    #[test]
    fn code_names_follow_grpc_go() {
        assert_eq!(CODE_NAMES[0], "OK");
        assert_eq!(CODE_NAMES[tonic::Code::NotFound as usize], "NotFound");
        assert_eq!(
            CODE_NAMES[tonic::Code::Unauthenticated as usize],
            "Unauthenticated"
        );
        assert_eq!(CODE_NAMES[tonic::Code::Cancelled as usize], "Canceled");
    }

    #[test]
    fn every_notes_method_has_precomputed_counters() {
        for method in notes_api::methods::ALL {
            assert_eq!(metrics().rpc(method.path).path, method.path);
        }
        assert_eq!(metrics().rpc("/x.Y/Z").path, "/unknown/unknown");
    }

    #[test]
    fn the_exposition_names_the_go_grpc_middleware_metrics() {
        metrics()
            .rpc("/notes.v1.NotesService/GetNote")
            .started
            .inc();
        let text = metrics().render();
        assert!(
            text.contains("grpc_server_started_total{grpc_method=\"GetNote\""),
            "{text}"
        );
        assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    }
}
