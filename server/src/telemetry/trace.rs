//! A call's trace context: the caller's W3C `traceparent` (or a new trace
//! id), and with an exporter the call's OpenTelemetry server span,
//! following OpenTelemetry's RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`).

use http::HeaderMap;

use super::call;

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The most list members a `tracestate` may have (W3C's own limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The most bytes of a `tracestate` read (W3C propagators need 512).
const MAX_TRACESTATE_BYTES: usize = 512;

/// Reads W3C trace context from request headers; a `tracestate` over its
/// bounds is not read at all (W3C lets a receiver drop it).
struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?;
        if key.eq_ignore_ascii_case("tracestate") && !tracestate_in_bounds(value.as_bytes()) {
            return None;
        }
        value.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether a `tracestate` value is within [`MAX_TRACESTATE_BYTES`] and
/// [`MAX_TRACESTATE_MEMBERS`].
fn tracestate_in_bounds(value: &[u8]) -> bool {
    value.len() <= MAX_TRACESTATE_BYTES
        && value.iter().filter(|&&b| b == b',').count() < MAX_TRACESTATE_MEMBERS
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
        let trace_id = traceparent_trace_id(headers).unwrap_or_else(call::new_id);
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
        request_id = %call::TraceIdHex(call::new_id()),
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
    fn a_tracestate_over_its_bounds_is_not_read() {
        use opentelemetry::propagation::Extractor;
        let read = |value: String| {
            let mut headers = HeaderMap::new();
            headers.insert("tracestate", value.parse().unwrap());
            HeaderExtractor(&headers)
                .get("tracestate")
                .map(str::to_owned)
        };
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(read(members(32)), Some(members(32)));
        assert_eq!(read(members(33)), None);
        assert_eq!(
            read(format!("k={}", "v".repeat(510))),
            Some(format!("k={}", "v".repeat(510)))
        );
        assert_eq!(read(format!("k={}", "v".repeat(511))), None);
    }

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
    }
}
