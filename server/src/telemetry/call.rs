//! Which call a log line belongs to, without a span per call.
//!
//! Every log line of a call names it: `grpc{rpc.method=... trace_id=...}`,
//! as the fields of the call's `grpc` span. Building, entering and closing
//! a `tracing` span for every call took about a tenth of the server's
//! GetNote throughput in `notes-bench` (0.74-0.79 of the bare server with
//! it, 0.81-0.87 without, four runs each), and without an exporter nothing
//! but log lines ever reads it.
//!
//! So a call that exports no span ([`spanless`]: no `--otlp`) carries its
//! method and trace id in a task-local instead ([`scope`]); whatever is
//! logged during the call (its audit event included) goes through
//! [`in_call`], which builds the call's span on first use (once per call)
//! and logs inside it. A read the audit policy does not write (the common
//! case) builds no span at all. With an exporter every call gets its span
//! up front, as OpenTelemetry needs. The end-to-end trace-id test reads
//! both audit events (allow, deny).

use std::{
    cell::OnceCell,
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
};

/// What a call's log lines say about it.
struct Call {
    method: &'static str,
    trace_id: u128,
    /// The call's span, once something needed it.
    span: OnceCell<tracing::Span>,
}

tokio::task_local! {
    static CALL: Call;
}

static SPANLESS: AtomicBool = AtomicBool::new(false);

/// Whether calls go without a span until a log line needs one (set when
/// the subscriber is installed: no exporter, no colours, and no `RUST_LOG`
/// directive that selects by span, which needs the span entered throughout).
pub fn spanless() -> bool {
    SPANLESS.load(Ordering::Acquire)
}

pub(super) fn set_spanless(spanless: bool) {
    SPANLESS.store(spanless, Ordering::Release);
}

/// Runs `call` as the call to `method` with `trace_id`, spanless.
pub fn scope<F: Future>(
    method: &'static str,
    trace_id: u128,
    call: F,
) -> impl Future<Output = F::Output> {
    CALL.scope(
        Call {
            method,
            trace_id,
            span: OnceCell::new(),
        },
        call,
    )
}

/// The target of a call's span (where it was always built, so `RUST_LOG`
/// directives naming it keep working).
pub const SPAN_TARGET: &str = "notes_server::metrics";

/// A call's span as it is without an exporter: its method, trace id (the
/// caller's, or new) and a request id of the server's own, which no caller
/// can choose.
pub fn call_span(method: &'static str, trace_id: u128) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        "grpc",
        rpc.method = method,
        trace_id = %TraceIdHex(trace_id),
        request_id = %TraceIdHex(new_id()),
    )
}

/// A new random id for a trace or a request (not a secret: unique, not
/// unpredictable).
pub fn new_id() -> u128 {
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

/// Runs `log` (an event, or the creation of a child span) inside the
/// current call's span: the span already current if there is one, else the
/// spanless call's span, built now if nothing built it before.
pub fn in_call<R>(log: impl FnOnce() -> R) -> R {
    if tracing::Span::current().is_none()
        && let Ok(span) = CALL.try_with(|call| {
            call.span
                .get_or_init(|| call_span(call.method, call.trace_id))
                .clone()
        })
    {
        return span.in_scope(log);
    }
    log()
}

/// A trace id as 32 lowercase hex digits, formatted only when logged.
pub struct TraceIdHex(pub u128);

impl std::fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:032x}` goes through the general padding code; this is one write.
        let mut hex = [0u8; 32];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(self.0 >> (124 - 4 * i)) as usize & 0xf];
        }
        f.write_str(std::str::from_utf8(&hex).map_err(|_| std::fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_differ() {
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn trace_ids_are_32_lowercase_hex_digits() {
        assert_eq!(
            TraceIdHex(0xab).to_string(),
            "000000000000000000000000000000ab"
        );
        let id = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
        assert_eq!(TraceIdHex(id).to_string(), format!("{id:032x}"));
        assert_eq!(TraceIdHex(u128::MAX).to_string(), "f".repeat(32));
    }
}
