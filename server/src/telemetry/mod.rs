//! Tracing set-up shared by the binary and the tests: tracing-subscriber's
//! own text and JSON formats, written through tracing-appender's bounded,
//! non-blocking writer; [`LogEvery`], which keeps a flood of one event to
//! one log line per interval; and [`escape`], for every string an outsider
//! chose (certificate names, token claims) before it reaches a log line.

use tracing_subscriber::{EnvFilter, fmt};

pub mod call;
pub mod trace;

/// The audit trail's target.
pub const AUDIT_TARGET: &str = "notes::audit";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers; `serve`'s default).
    Json,
    /// Human-readable lines (`dev`'s default).
    Text,
}

/// Characters that break or disguise a log line: controls (CR, LF, ESC,
/// NEL, ...), the Unicode line and paragraph separators, and the invisible
/// formatting characters (bidi overrides, zero-width, BOM).
fn unsafe_in_logs(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// [`escape`] as a `Display`, at most `.1` characters: formats only when a
/// log line is kept, so a call pays nothing for lines the filter drops.
pub struct Escaped<'a>(pub &'a str, pub usize);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Printable ASCII (subjects, client ids, paths, SPIFFE ids: nearly
        // every value) is safe throughout and one byte per character.
        // (No early exit: the compiler then checks many bytes at once.)
        if self
            .0
            .bytes()
            .fold(true, |printable, b| printable & (0x20..0x7f).contains(&b))
        {
            return f.write_str(&self.0[..self.0.len().min(self.1)]);
        }
        // Runs of safe characters go out in one write: per-character writes
        // through the formatter cost about a microsecond per audit line.
        let mut safe_from = 0;
        let mut end = self.0.len();
        for (count, (at, c)) in self.0.char_indices().enumerate() {
            if count == self.1 {
                end = at;
                break;
            }
            if unsafe_in_logs(c) {
                f.write_str(&self.0[safe_from..at])?;
                for e in c.escape_unicode() {
                    std::fmt::Write::write_char(f, e)?;
                }
                safe_from = at + c.len_utf8();
            }
        }
        f.write_str(&self.0[safe_from..end])
    }
}

/// `text` with every character that could break or disguise a log line
/// written as an escape, so an outsider's string can never start a line of
/// its own or hide what follows it.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_in_logs) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if unsafe_in_logs(c) {
                    c.escape_unicode().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect(),
    )
}

/// Keeps the trace exporter and the log writer alive; dropped, it flushes
/// the spans and lines not yet written.
pub struct TelemetryGuard(
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    Option<WorkerGuards>,
);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
        drop(self.1.take());
    }
}

/// The drop counts of the queues [`init_non_blocking`] installed: audit
/// events of allowed calls, and every other line.
static DROPPED: std::sync::OnceLock<[tracing_appender::non_blocking::ErrorCounter; 2]> =
    std::sync::OnceLock::new();

/// The name of the audit event of an allowed call: its lines go to the
/// queue reserved for them ([`init_non_blocking`]).
pub const AUDIT_ALLOWED_EVENT: &str = "audit_allowed";

/// Log lines dropped so far because their queue was full: audit events of
/// allowed calls, and every other line.
pub fn dropped_log_lines() -> [u64; 2] {
    DROPPED.get().map_or([0, 0], |[audit, other]| {
        [audit.dropped_lines() as u64, other.dropped_lines() as u64]
    })
}

/// Log lines the writer's queue holds before it drops: about 30 MB of
/// lines, and a call never waits for stderr.
pub const LOG_QUEUE_LINES: usize = 128_000;

/// Lines of the queue reserved for the audit events of allowed calls
/// (changes, first reads), which no other line can take.
pub const AUDIT_QUEUE_LINES: usize = 32_000;

/// A writer several queues' threads share, a whole line at a time.
struct SharedWriter<W>(std::sync::Arc<std::sync::Mutex<W>>);

impl<W: std::io::Write> std::io::Write for SharedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut writer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        writer.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// Audit events of allowed calls to one queue, every other line to another.
struct Routed {
    audit: tracing_appender::non_blocking::NonBlocking,
    other: tracing_appender::non_blocking::NonBlocking,
}

impl<'a> fmt::MakeWriter<'a> for Routed {
    type Writer = tracing_appender::non_blocking::NonBlocking;

    fn make_writer(&'a self) -> Self::Writer {
        self.other.clone()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        if meta.name() == AUDIT_ALLOWED_EVENT && meta.target() == AUDIT_TARGET {
            self.audit.clone()
        } else {
            self.other.clone()
        }
    }
}

/// The guards of [`init_non_blocking`]'s queues: dropped, they write out
/// what their queues hold.
pub struct WorkerGuards {
    _audit: tracing_appender::non_blocking::WorkerGuard,
    _other: tracing_appender::non_blocking::WorkerGuard,
}

/// [`init_with_writer`] behind tracing-appender's non-blocking writers:
/// lines go to bounded queues that their threads write out, whole lines,
/// to `writer`. The audit events of allowed calls have a queue of their
/// own ([`AUDIT_QUEUE_LINES`]), so a flood of other lines never drops
/// them; every other line shares `queue_lines`. When a queue is full its
/// lines are dropped and counted by class ([`dropped_log_lines`], metric
/// `notes_log_lines_dropped_total{class}`), never blocking a call.
pub fn init_non_blocking<W>(json: bool, otlp: bool, writer: W, queue_lines: usize) -> TelemetryGuard
where
    W: std::io::Write + Send + 'static,
{
    let shared = std::sync::Arc::new(std::sync::Mutex::new(writer));
    let queue = |lines: usize, name: &str| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(lines)
            .thread_name(name)
            .finish(SharedWriter(shared.clone()))
    };
    let (audit, audit_worker) = queue(AUDIT_QUEUE_LINES, "notes-audit-writer");
    let (other, other_worker) = queue(queue_lines, "notes-log-writer");
    let _ = DROPPED.set([audit.error_counter(), other.error_counter()]);
    let mut guard = init_with_writer(json, otlp, Routed { audit, other });
    guard.1 = Some(WorkerGuards {
        _audit: audit_worker,
        _other: other_worker,
    });
    guard
}

/// Installs a global subscriber that writes to stderr through a bounded,
/// non-blocking queue ([`init_non_blocking`]), filtered by `RUST_LOG`
/// (default `info`), as JSON when `json` is set. Every call's span carries
/// an OpenTelemetry trace (continuing the caller's W3C `traceparent`), so
/// its trace id is in every log line of the call; with `otlp`, spans are
/// exported over OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (default
/// `http://localhost:4317`). Calling it twice is harmless.
pub fn init(json: bool, otlp: bool) -> TelemetryGuard {
    init_non_blocking(json, otlp, std::io::stderr(), LOG_QUEUE_LINES)
}

/// [`init`], writing log lines to `writer` (tests capture them).
pub fn init_with_writer<W>(json: bool, otlp: bool, writer: W) -> TelemetryGuard
where
    W: for<'a> fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name("notes-server")
            .build(),
    );
    let mut exporting = false;
    if otlp {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                provider = provider.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(err) => eprintln!("notes-server: OTLP export is off: {err}"),
        }
    }
    let provider = provider.build();
    let tracer = provider.tracer("notes-server");
    // By default the AWS SDK's own warnings (multi-line instance-metadata
    // dumps when no region is set) stay out: the start-up error says it.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,aws_config=error"));
    // At debug or trace, libraries (tonic, h2, the AWS SDK) log inside a
    // call, and only an entered span puts the call on their lines.
    let quiet = filter
        .max_level_hint()
        .is_some_and(|max| max <= tracing::level_filters::LevelFilter::INFO);
    // Colours only for a person at a terminal, never in a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = if json {
        fmt::layer().json().with_writer(writer).boxed()
    } else {
        fmt::layer().with_writer(writer).with_ansi(ansi).boxed()
    };
    // Spans of this crate always, whatever the log level, so traces never
    // depend on it. Without an exporter there is nothing to build spans
    // for: the call's trace id is then taken from its `traceparent` or made
    // ([`exporting_traces`]), at a fraction of the cost.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("notes_server", tracing::Level::INFO);
    let otel = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(spans)
    });
    // (Not `.with(Option<layer>)`: an absent layer is interested in every
    // callsite, which would build every disabled debug event.)
    let logged = tracing_subscriber::registry().with(logs.with_filter(filter));
    let installed = match otel {
        Some(otel) => logged.with(otel).try_init(),
        None => logged.try_init(),
    };
    if installed.is_ok() {
        EXPORTING.store(exporting, std::sync::atomic::Ordering::Release);
        // A spanless call builds its span for its first log line; span
        // directives (`[grpc]=debug`) need the span entered throughout, and
        // so do libraries' debug lines.
        let span_directives = std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains('['));
        call::set_spanless(!exporting && !span_directives && quiet);
    }
    TelemetryGuard(installed.is_ok().then_some(provider), None)
}

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether calls' spans are exported over OTLP (`--otlp`), so each call
/// builds an OpenTelemetry span; otherwise a call only carries a trace id.
pub fn exporting_traces() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Acquire)
}

/// Lets a repeated event through at most once per interval and counts what
/// it held back, so a flood (accept errors, refused connections) costs one
/// log line per interval, not one per event.
#[derive(Debug)]
pub struct LogEvery {
    interval: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogEvery {
    /// At most one line per `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when this event may be logged, with how many were
    /// held back since the last one; `None` when it is to be dropped.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain spiffe://a/b"), "plain spiffe://a/b");
        assert_eq!(escape("a\nINFO fake"), "a\\u{a}INFO fake");
        assert!(!escape("x\u{2028}y\u{202E}z\u{85}").contains(['\u{2028}', '\u{202E}', '\u{85}']));
        assert!(!escape("x\r\n\u{1b}[31m").contains(['\r', '\n', '\u{1b}']));
    }

    #[test]
    fn escaped_matches_escape_and_stops_after_its_character_budget() {
        for text in ["", "plain", "a\nb", "\n", "é\u{202E}ü\r", "trailing\u{1b}"] {
            assert_eq!(
                Escaped(text, usize::MAX).to_string(),
                escape(text),
                "{text:?}"
            );
        }
        assert_eq!(Escaped("éab\ncd", 4).to_string(), "éab\\u{a}");
        assert_eq!(Escaped("éab\ncd", 3).to_string(), "éab");
        assert_eq!(Escaped("éab", 0).to_string(), "");
        assert_eq!(Escaped("éab", 9).to_string(), "éab");
        assert_eq!(Escaped("abc~ d", 4).to_string(), "abc~");
        assert_eq!(Escaped("abc~ d", 9).to_string(), "abc~ d");
        assert_eq!(Escaped("ab\u{7f}c", 9).to_string(), "ab\\u{7f}c");
    }

    #[test]
    fn lets_one_event_through_per_interval_and_counts_the_rest() {
        let log = LogEvery::new(std::time::Duration::from_secs(3600));
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), None);
        assert_eq!(log.check(), None);
        let log = LogEvery::new(std::time::Duration::ZERO);
        assert_eq!(log.check(), Some(0));
        assert_eq!(log.check(), Some(0));
    }
}
