//! The RPC metrics layer: counts every call with go-grpc-middleware's
//! metrics and times it, outermost in the stack, so calls refused by any
//! later layer are counted with their code. It also starts each call's
//! trace ([`crate::telemetry::trace`]), so every log line of the call
//! carries its `trace_id`.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service, util::Either};
use tracing::Instrument;

use super::{CODE_NAMES, Rpc, metrics};
use crate::telemetry::{
    call,
    trace::{Traced, traced},
};

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

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
        let traced = traced(&rpc.path, rpc.service, rpc.method, req.headers());
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
