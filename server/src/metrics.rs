//! Prometheus metrics: the RPC metrics every gRPC dashboard knows (the names
//! and labels of grpc-ecosystem/go-grpc-middleware's Prometheus provider)
//! and the service's own (`notes_*`). Label values come from fixed sets only
//! (methods of the proto, gRPC codes, reason codes, configured issuers and
//! files), never a subject, a token or a note id.
//!
//! Cheap on the request path: the RPC layer finds each call's precomputed
//! counters by its path, once; counters are atomics.
//!
//! The same layer opens each call's server span, following OpenTelemetry's
//! RPC conventions (`rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`) and continuing the caller's W3C `traceparent`;
//! every log line of the call carries its `trace_id`.

use std::{
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tonic::{Status, body::Body};
use tower::{Layer, Service, util::Either};
use tracing::Instrument;

use crate::telemetry::call;

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
    log_lines_dropped: IntCounter,
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
            log_lines_dropped: counter(
                "notes_log_lines_dropped_total",
                "Log lines, audit events included, dropped because the log queue was full.",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let dropped = crate::telemetry::dropped_log_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
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
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The gRPC code of a response, when its headers carry one (trailers-only).
fn header_code(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map(|code| code.min(CODE_NAMES.len() - 1))
}

/// Records one call's outcome once; ends its span when dropped.
struct Outcome {
    rpc: &'static Rpc,
    started: Instant,
    done: bool,
    span: tracing::Span,
}

impl Outcome {
    fn record(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        self.span.record("rpc.grpc.status_code", code);
        if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
            self.span.record("otel.status_code", "error");
        }
        self.rpc.handled[code.min(CODE_NAMES.len() - 1)].inc();
        self.rpc
            .seconds
            .observe(self.started.elapsed().as_secs_f64());
        if code == 0 && self.rpc.unary {
            self.rpc.sent.inc();
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // The response body was dropped before its status: the caller left.
        self.record(1);
    }
}

/// A response body that records the call's code from its trailers.
struct Recorded {
    inner: Body,
    outcome: Outcome,
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(header_code) {
                    self.outcome.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.outcome.record(status.code() as usize),
            Poll::Ready(None) => self.outcome.record(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace id of a W3C `traceparent` header (version 00), if it is a
/// valid one: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
/// lowercase, neither id all zeros.
fn traceparent_trace_id(headers: &HeaderMap) -> Option<u128> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if parts.next().is_some()
        || version != "00"
        || !hex(trace_id, 32)
        || !hex(parent_id, 16)
        || !hex(flags, 2)
        || parent_id.bytes().all(|b| b == b'0')
    {
        return None;
    }
    u128::from_str_radix(trace_id, 16)
        .ok()
        .filter(|id| *id != 0)
}

/// A new random trace id (not a secret: unique, not unpredictable).
fn new_trace_id() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }
    // splitmix64, twice.
    let next = |state: &Cell<u64>| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    STATE.with(|state| (u128::from(next(state)) << 64 | u128::from(next(state))).max(1))
}

/// How a call is traced.
enum Traced {
    /// With its span, entered whenever the call runs.
    Span(tracing::Span),
    /// Without a span, with this trace id ([`crate::telemetry::call`]).
    Spanless(u128),
}

/// How a call is traced. Exporting traces (`--otlp`): an OpenTelemetry
/// span, a child of the caller's `traceparent` if any, with the RPC
/// attributes. Otherwise only what logs need, the method and the trace id
/// (the caller's, or a new one): spanless, or for a terminal (colours) in
/// a span of its own.
fn traced(rpc: &Rpc, headers: &HeaderMap) -> Traced {
    if !crate::telemetry::exporting_traces() {
        let trace_id = traceparent_trace_id(headers).unwrap_or_else(new_trace_id);
        if call::spanless() {
            // Where the filter drops the span, lines carry no call, as before.
            if !tracing::span_enabled!(target: call::SPAN_TARGET, tracing::Level::INFO) {
                return Traced::Span(tracing::Span::none());
            }
            return Traced::Spanless(trace_id);
        }
        return Traced::Span(call::call_span(rpc.method, trace_id));
    }
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "grpc",
        otel.name = %rpc.path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = rpc.service,
        rpc.method = rpc.method,
        rpc.grpc.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    Traced::Span(span)
}

/// Counts every call with go-grpc-middleware's metrics. Outermost in the
/// stack, so calls refused by any later layer are counted with their code.
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for RpcMetrics<S>
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
        let rpc = metrics().rpc(req.uri().path());
        rpc.started.inc();
        if rpc.unary || rpc.path.ends_with("/Watch") {
            rpc.received.inc();
        }
        let traced = traced(rpc, req.headers());
        let mut outcome = Outcome {
            rpc,
            started: Instant::now(),
            done: false,
            span: match &traced {
                Traced::Span(span) => span.clone(),
                Traced::Spanless(_) => tracing::Span::none(),
            },
        };
        // The inner service is called here, the one polled ready, so it is
        // not cloned per call. What the inner layers do before their futures
        // run logs nothing; the rest runs inside the call's span or scope.
        let call = match traced {
            Traced::Span(span) => {
                Either::Left(span.in_scope(|| self.inner.call(req)).instrument(span))
            }
            Traced::Spanless(trace_id) => {
                Either::Right(call::scope(rpc.method, trace_id, self.inner.call(req)))
            }
        };
        Box::pin(async move {
            let response = match call {
                Either::Left(call) => call.await?,
                Either::Right(call) => call.await?,
            };
            if let Some(code) = header_code(response.headers()) {
                outcome.record(code);
            }
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                Body::new(Recorded {
                    inner: body,
                    outcome,
                }),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_gives_its_trace_id_and_nothing_else_does() {
        let id = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", value.parse().unwrap());
            traceparent_trace_id(&headers)
        };
        assert_eq!(
            id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(0x4bf92f3577b34da6a3ce929d0e0e4736)
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(id(bad), None, "{bad}");
        }
        assert_eq!(traceparent_trace_id(&HeaderMap::new()), None);
        assert_ne!(new_trace_id(), new_trace_id());
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
