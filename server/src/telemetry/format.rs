//! The log line formats, with a fast path for the audit trail.
//!
//! Audit lines (every refusal and every change, and with `--audit-allowed
//! all` every allowed call) are formatted on the request path. tracing-subscriber's formats are general: `Full` writes
//! each part through ANSI styles (even with colours off) and each field
//! through a generic visitor, and `Json` parses every span's fields back
//! from JSON, twice per line, to write them out again. For `notes::audit`
//! events these formats write the same line directly; every other event,
//! and every line for a terminal (colours), goes to tracing-subscriber's
//! format unchanged. Unit tests hold the two outputs together.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::call::TraceIdHex;

/// The audit trail's target.
pub const AUDIT_TARGET: &str = "notes::audit";

/// `Full`, with audit events written directly when colours are off. The
/// line is byte for byte what `Full` writes without colours (a unit test
/// holds them together).
pub struct TextFormat {
    full: format::Format<format::Full, SystemTime>,
}

impl TextFormat {
    /// The text format, with colours when `ansi`.
    pub fn new(ansi: bool) -> Self {
        Self {
            full: format::Format::default().with_ansi(ansi),
        }
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != AUDIT_TARGET || writer.has_ansi_escapes() || !Plain::all(event) {
            return self.full.format_event(ctx, writer, event);
        }
        timestamp(&mut writer)?;
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        } else if let Some((method, trace_id)) = spanless_call(event) {
            // The span `call_span` would have built, as `Full` writes it.
            write!(
                writer,
                "grpc{{rpc.method={method:?} trace_id={}}}: ",
                TraceIdHex(trace_id)
            )?;
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The method and trace id of the spanless call `event` is logged in
/// ([`super::call`]), unless it names its own parent (`Full` then writes
/// no span).
fn spanless_call(event: &Event<'_>) -> Option<(&'static str, u128)> {
    if !event.is_contextual() {
        return None;
    }
    super::call::current()
}

/// Now, as tracing-subscriber's `SystemTime` writes it (RFC 3339 UTC with
/// microseconds, `2026-11-26T03:04:05.123456Z`), with the date and time of
/// day formatted once per second per thread: `SystemTime` formats every
/// part of every line through `write!`.
fn timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => write_timestamp(writer, since),
        // Before 1970: the general way.
        Err(_) => SystemTime.format_time(writer),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of a second since the epoch, for years up to 9999.
type SecondPrefix = [u8; 20];

/// [`timestamp`] of `since` the epoch.
fn write_timestamp(writer: &mut impl fmt::Write, since: std::time::Duration) -> fmt::Result {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<Option<(u64, SecondPrefix)>> = const { Cell::new(None) };
    }
    let secs = since.as_secs();
    let prefix = LAST.with(|last| match last.get() {
        Some((at, prefix)) if at == secs => Some(prefix),
        _ => {
            let prefix = second_prefix(secs);
            if let Some(prefix) = prefix {
                last.set(Some((secs, prefix)));
            }
            prefix
        }
    });
    let mut micros = since.subsec_micros();
    let mut tail = *b"000000Z";
    for digit in tail[..6].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    match prefix {
        Some(prefix) => {
            // Both are ASCII digits and punctuation.
            writer.write_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?)?;
        }
        None => {
            let (year, month, day) = civil_date(secs / 86_400);
            let second = secs % 86_400;
            write!(
                writer,
                "+{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                second / 3600,
                second / 60 % 60,
                second % 60
            )?;
        }
    }
    writer.write_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?)
}

/// [`SecondPrefix`] of `secs`, or `None` past the year 9999.
fn second_prefix(secs: u64) -> Option<SecondPrefix> {
    let (year, month, day) = civil_date(secs / 86_400);
    if year > 9999 {
        return None;
    }
    let second = secs % 86_400;
    let mut prefix = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in prefix[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, second / 3600);
    put(14, 2, second / 60 % 60);
    put(17, 2, second % 60);
    Some(prefix)
}

/// The proleptic Gregorian (year, month, day) of a day since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Whether an event's fields are all plain: no message (which `Full`
/// writes through its ANSI escaping), no error (written with its sources),
/// no raw (`r#`) or `log.` names. Only those take the fast path; a cheap
/// visit, nothing is formatted.
struct Plain(bool);

impl Plain {
    fn all(event: &Event<'_>) -> bool {
        let mut plain = Plain(true);
        event.record(&mut plain);
        plain.0
    }
}

impl Visit for Plain {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        let name = field.name();
        self.0 &= name != "message" && !name.starts_with("r#") && !name.starts_with("log.");
    }

    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        self.0 = false;
    }
}

/// Writes plain fields ([`Plain`]) as `Full` does: `name=value` separated
/// by spaces, `str` values quoted (`Debug`).
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_char('=')
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| {
                // What `Debug` writes for printable ASCII with nothing to
                // escape, without its character-by-character walk.
                if value
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
                {
                    self.writer.write_char('"')?;
                    self.writer.write_str(value)?;
                    self.writer.write_char('"')
                } else {
                    write!(self.writer, "{value:?}")
                }
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

/// tracing-subscriber's `Json` format, with audit events written directly:
/// the same keys, values and order, byte for byte.
pub struct JsonFormat {
    json: format::Format<format::Json, SystemTime>,
}

impl JsonFormat {
    /// The JSON format.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for JsonFormat {
    fn default() -> Self {
        Self {
            json: format::Format::default().json(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != AUDIT_TARGET {
            return self.json.format_event(ctx, writer, event);
        }
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        // A span's fields are kept as the JSON object `Json` wrote them
        // (keys sorted); anything else goes the general way.
        let well_formed = |span: Option<&tracing_subscriber::registry::SpanRef<'_, S>>| {
            span.is_none_or(|span| {
                span.scope()
                    .all(|span| object_fields::<N>(&span.extensions()).is_some())
            })
        };
        if !well_formed(current.as_ref()) || !well_formed(ctx.lookup_current().as_ref()) {
            return self.json.format_event(ctx, writer, event);
        }
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = JsonFields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("},\"target\":")?;
        json_str(&mut writer, meta.target())?;
        // (`Json` writes the current span even for an event that names no
        // parent, so this one does not ask.)
        if current.is_none()
            && let Some((method, trace_id)) = super::call::current()
        {
            // The span `call_span` would have built, as `Json` writes it.
            let span = |writer: &mut Writer<'_>| {
                writer.write_str("{\"rpc.method\":")?;
                json_str(writer, method)?;
                write!(
                    writer,
                    ",\"trace_id\":\"{}\",\"name\":\"grpc\"}}",
                    TraceIdHex(trace_id)
                )
            };
            writer.write_str(",\"span\":")?;
            span(&mut writer)?;
            writer.write_str(",\"spans\":[")?;
            span(&mut writer)?;
            writer.write_char(']')?;
        }
        if let Some(current) = current {
            writer.write_str(",\"span\":")?;
            json_span::<S, N>(&mut writer, &current)?;
            writer.write_str(",\"spans\":[")?;
            if let Some(leaf) = ctx.lookup_current() {
                for (i, span) in leaf.scope().from_root().enumerate() {
                    if i > 0 {
                        writer.write_char(',')?;
                    }
                    json_span::<S, N>(&mut writer, &span)?;
                }
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// A span as `Json` writes it: its fields, then its name.
fn json_span<S, N>(
    writer: &mut Writer<'_>,
    span: &tracing_subscriber::registry::SpanRef<'_, S>,
) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let ext = span.extensions();
    let inner = object_fields::<N>(&ext).ok_or(fmt::Error)?;
    writer.write_char('{')?;
    writer.write_str(inner)?;
    if !inner.is_empty() {
        writer.write_char(',')?;
    }
    writer.write_str("\"name\":")?;
    json_str(writer, span.metadata().name())?;
    writer.write_char('}')
}

/// The inside of a span's fields as `Json` stored them (`{...}`), if they
/// are there and so shaped.
fn object_fields<'a, N: 'static>(
    ext: &'a tracing_subscriber::registry::Extensions<'_>,
) -> Option<&'a str> {
    ext.get::<FormattedFields<N>>()?
        .fields
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// Writes `text` as a JSON string, escaped as serde_json escapes it.
fn json_str(writer: &mut Writer<'_>, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    JsonEscaped(writer).write_str(text)?;
    writer.write_char('"')
}

/// Escapes what is written through it as serde_json does inside a string:
/// `"`, `\\` and the control characters, nothing else.
struct JsonEscaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for JsonEscaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut from = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..0x20 => "",
                _ => continue,
            };
            self.0.write_str(&text[from..at])?;
            from = at + 1;
            if escape.is_empty() {
                self.0.write_str("\\u00")?;
                self.0.write_char(HEX[usize::from(byte >> 4)].into())?;
                self.0.write_char(HEX[usize::from(byte & 0xf)].into())?;
            } else {
                self.0.write_str(escape)?;
            }
        }
        self.0.write_str(&text[from..])
    }
}

/// Writes an event's fields as `Json` does: in order, `str` and `Debug`
/// values as strings, numbers and booleans as themselves.
struct JsonFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                if !std::mem::take(&mut self.first) {
                    self.writer.write_char(',')?;
                }
                json_str(self.writer, field.name())?;
                self.writer.write_char(':')?;
                value(self.writer)
            })();
        }
    }

    fn number(&mut self, field: &Field, value: impl serde::Serialize) {
        self.entry(field, |writer| {
            writer.write_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?)
        });
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |writer| json_str(writer, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |writer| {
            writer.write_char('"')?;
            write!(JsonEscaped(writer), "{value:?}")?;
            writer.write_char('"')
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Output {
        Text,
        FastText,
        Json,
        FastJson,
    }

    /// The lines `emit` writes in `output`, timestamps cut.
    fn lines(output: Output, emit: impl Fn()) -> Vec<String> {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || sink.clone());
        let subscriber = tracing_subscriber::registry();
        match output {
            Output::Text => tracing::subscriber::with_default(subscriber.with(layer), &emit),
            Output::FastText => {
                let layer = layer.event_format(TextFormat::new(false));
                tracing::subscriber::with_default(subscriber.with(layer), &emit);
            }
            Output::Json => {
                tracing::subscriber::with_default(subscriber.with(layer.json()), &emit);
            }
            Output::FastJson => {
                let layer = layer
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(JsonFormat::new());
                tracing::subscriber::with_default(subscriber.with(layer), &emit);
            }
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let json = matches!(output, Output::Json | Output::FastJson);
        text.lines()
            .map(|line| {
                if json {
                    // {"timestamp":"2026-...Z",...
                    let (_, rest) = line.split_at(line.find("Z\"").unwrap() + 2);
                    rest.to_owned()
                } else {
                    line.split_once(' ').unwrap().1.to_owned()
                }
            })
            .collect()
    }

    /// Audit events as the server writes them, in a call's span (with a
    /// field recorded later, as `trace_id` is when exporting), outside any
    /// span, with strings that need escaping, and an event that is not
    /// audit.
    fn emit() {
        let span = tracing::info_span!(
            "grpc",
            rpc.method = "GetNote",
            trace_id = tracing::field::Empty,
            otel.kind = "server"
        );
        span.record("trace_id", tracing::field::display("4bf9"));
        let _in = span.enter();
        let inner = tracing::info_span!("inner");
        let _inner = inner.enter();
        tracing::info!(
            target: "notes::audit",
            method = %"/notes.v1.NotesService/GetNote",
            subject = %"alice\u{1}\u{7f}é",
            kind = ?Some(1),
            decision = "allow",
            reason = "quote\"and\\\n\r\t\u{8}\u{c}",
            apostrophe = "it's ~ {ok}",
            quote = "\"",
            backslash = "\\",
            accent = "é",
        );
        tracing::warn!(target: "notes::audit", decision = "deny", n = 3u64, i = -3i64,
            b = true, f = 1.5f64, big = 1e300f64, "with a message");
        tracing::info!(target: "notes::other", answer = 42, "not audit");
        // What only the general formats write right: a message with
        // terminal escapes, an error with its sources, a raw name.
        tracing::info!(target: "notes::audit", decision = "x", "esc \u{1b}[31m red \u{7}");
        let inner_error = std::io::Error::other("inner");
        let error = std::io::Error::other(Wrapped(inner_error));
        tracing::info!(
            target: "notes::audit",
            error = &error as &(dyn std::error::Error + 'static),
            r#type = "raw"
        );
        // An explicit parent other than the current span.
        tracing::info!(target: "notes::audit", parent: &span, decision = "parent");
        tracing::info!(target: "notes::audit", parent: None, decision = "root");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    const TRACE_ID: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

    /// What a call logs: its audit line, a store failure, a child span's
    /// event, and an audit line that names no parent.
    fn call_lines() {
        let audit = || {
            tracing::info!(
                target: "notes::audit",
                method = %"/notes.v1.NotesService/GetNote",
                subject = %"alice",
                kind = ?Some(1),
                decision = "allow",
                reason = "ok",
            )
        };
        audit();
        super::super::call::in_call(|| tracing::warn!(error = "boom", "note store failed"));
        let child = super::super::call::in_call(|| {
            tracing::info_span!("dynamodb", db.operation = "GetItem")
        });
        child.in_scope(|| tracing::info!(target: "aws", "retrying"));
        audit();
        tracing::info!(target: "notes::audit", parent: None, decision = "root");
    }

    /// [`call_lines`] in a call with its span built up front.
    fn in_span() {
        super::super::call::call_span("GetNote", TRACE_ID).in_scope(call_lines);
    }

    /// [`call_lines`] in a spanless call.
    fn spanless() {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(super::super::call::scope("GetNote", TRACE_ID, async {
                call_lines()
            }));
    }

    #[test]
    fn a_spanless_call_logs_as_a_call_with_its_span() {
        for (fast, stock) in [
            (Output::FastText, Output::Text),
            (Output::FastJson, Output::Json),
        ] {
            let lines = lines(fast, spanless);
            assert_eq!(lines, self::lines(stock, in_span));
            assert_eq!(lines, self::lines(fast, in_span));
            assert_eq!(lines.len(), 5);
            for line in &lines[..4] {
                assert!(line.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{line}");
            }
        }
        // An event naming no parent: `Full` writes no span, `Json` the current one.
        assert!(!lines(Output::FastText, spanless)[4].contains("4bf9"));
        assert!(lines(Output::FastJson, spanless)[4].contains("4bf9"));
        // Outside a call, nothing is added.
        let outside = || call_lines();
        assert!(!lines(Output::FastText, outside).concat().contains("grpc"));
    }

    #[test]
    fn timestamps_are_written_as_system_time_writes_them() {
        let at = |secs: u64, micros: u32| {
            let mut text = String::new();
            write_timestamp(
                &mut text,
                std::time::Duration::new(secs, micros * 1000 + 999),
            )
            .unwrap();
            text
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 500_000), "2000-02-29T00:00:00.500000Z");
        assert_eq!(at(951_868_799, 7), "2000-02-29T23:59:59.000007Z");
        assert_eq!(at(1_764_115_199, 999_999), "2025-11-25T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 1), "2100-03-01T00:00:00.000001Z");
        // The same second again comes from the cache.
        assert_eq!(at(4_107_542_400, 20), "2100-03-01T00:00:00.000020Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        assert_eq!(at(253_402_300_800, 0), "+10000-01-01T00:00:00.000000Z");
        // Now, against tracing-subscriber's own (the same second, unless
        // one ticked over between the two).
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            timestamp(&mut Writer::new(&mut ours)).unwrap();
            SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("the seconds never matched");
    }

    #[test]
    fn audit_lines_are_written_as_full_writes_them() {
        let fast = lines(Output::FastText, emit);
        assert_eq!(fast, lines(Output::Text, emit));
        assert_eq!(fast.len(), 7);
        assert!(
            fast[0].starts_with(
                " INFO grpc{rpc.method=\"GetNote\" otel.kind=\"server\" trace_id=4bf9}:inner: \
                 notes::audit: method=/notes.v1.NotesService/GetNote subject=alice"
            ),
            "{}",
            fast[0]
        );
        let outside = || tracing::error!(target: "notes::audit", n = 1u8);
        assert_eq!(
            lines(Output::FastText, outside),
            lines(Output::Text, outside)
        );
    }

    #[test]
    fn audit_lines_are_written_as_json_writes_them() {
        let fast = lines(Output::FastJson, emit);
        assert_eq!(fast, lines(Output::Json, emit));
        assert_eq!(fast.len(), 7);
        let outside = || tracing::error!(target: "notes::audit", n = 1u8, s = "x");
        assert_eq!(
            lines(Output::FastJson, outside),
            lines(Output::Json, outside)
        );
        // And they are JSON.
        for line in &fast {
            let line = format!("{{\"timestamp\":\"Z\"{line}");
            serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
    }
}
