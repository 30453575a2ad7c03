//! A call's trace context: the caller's W3C `traceparent` (or a new trace
//! id), and with an exporter the call's OpenTelemetry server span,
//! following OpenTelemetry's RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`).

use http::HeaderMap;

use super::call;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

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
pub enum Traced {
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
pub fn traced(
    path: &str,
    service: &'static str,
    method: &'static str,
    headers: &HeaderMap,
) -> Traced {
    if !crate::telemetry::exporting_traces() {
        let trace_id = traceparent_trace_id(headers).unwrap_or_else(new_trace_id);
        if call::spanless() {
            // Where the filter drops the span, lines carry no call, as before.
            if !tracing::span_enabled!(target: call::SPAN_TARGET, tracing::Level::INFO) {
                return Traced::Span(tracing::Span::none());
            }
            return Traced::Spanless(trace_id);
        }
        return Traced::Span(call::call_span(method, trace_id));
    }
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
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
}
