//! The audit trail, in one place: which calls get an audit event
//! ([`AuditAllowed`]), what each connection remembers to tell a token's
//! first read from the next ([`ConnectionMemory`]), and the events
//! themselves ([`allowed`], [`refused`]), written to [`AUDIT_TARGET`]
//! inside the call's span (so each line carries the call's method and
//! trace id).
//!
//! Every value that came from a caller (the path, the token's subject and
//! client, the certificate's names) reaches the line escaped and bounded
//! ([`crate::telemetry::Escaped`]).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Display,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::telemetry::{Escaped, call::in_call};

pub use crate::telemetry::AUDIT_TARGET;

/// Characters of a request path an audit line keeps.
const MAX_LOGGED_PATH: usize = 200;

/// Which allowed calls get an audit event; refusals always get one.
///
/// The default, [`AuditAllowed::Changes`], writes every change to notes,
/// every call to a method the service does not have, and a token's first
/// allowed read on a connection: every token's use over every client
/// certificate is on record with its subject, client and certificate, a
/// stolen token replayed over another certificate included. Each connection
/// remembers only the token it last audited a read with: further reads with
/// that token there are counted (`notes_auth_decisions_total`), not
/// written, and a read with another token is audited again (a gateway
/// alternating its users' tokens over one connection gets a line per
/// switch). At load one line per read was most of the log (about 9 MB a
/// second at 46,000 reads a second) and about a twentieth of the server's
/// CPU per GetNote. A connection lives at most `--max-connection-age-secs`
/// plus its grace, so a long-lived caller's reads are on record again at
/// least that often. A line the full log queue drops is counted
/// (`notes_log_lines_dropped_total`) but still counts as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditAllowed {
    /// Every allowed call (`true` is accepted for it).
    #[value(alias = "true")]
    All,
    /// Calls that change notes or name an unknown method, and each token's
    /// first allowed read on each connection.
    #[default]
    Changes,
    /// No allowed call; refusals only (`false` is accepted for it).
    #[value(alias = "false")]
    None,
}

impl AuditAllowed {
    /// Whether an allowed call gets an audit event: `read` says whether it
    /// only reads, `first_read` whether it is its token's first allowed
    /// read on its connection (asked only for reads under `Changes`).
    pub fn covers(self, read: bool, first_read: impl FnOnce() -> bool) -> bool {
        match self {
            AuditAllowed::All => true,
            AuditAllowed::Changes => !read || first_read(),
            AuditAllowed::None => false,
        }
    }
}

/// Bytes of a token that mark it: the end of its signature.
const MARK_BYTES: usize = 32;

/// A token, as a connection remembers it: the last bytes of its signature,
/// which tell one verified token from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenMark([u8; MARK_BYTES]);

impl TokenMark {
    /// The mark of `token`.
    pub fn of(token: &[u8]) -> Self {
        let tail = &token[token.len().saturating_sub(MARK_BYTES)..];
        let mut mark = [0u8; MARK_BYTES];
        mark[MARK_BYTES - tail.len()..].copy_from_slice(tail);
        Self(mark)
    }
}

/// What one connection remembers for the audit trail: the token it last
/// audited a read with, so the next reads with that very token on this
/// connection need no line of their own.
#[derive(Debug, Default)]
pub struct ConnectionMemory(Mutex<Option<TokenMark>>);

impl ConnectionMemory {
    /// Whether `token` is not the one remembered; remembers it.
    pub fn is_new(&self, token: TokenMark) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(token) {
            return false;
        }
        *last = Some(token);
        true
    }
}

/// The caller-chosen request path as an audit line shows it.
pub fn logged_path(path: &str) -> Escaped<'_> {
    Escaped(path, MAX_LOGGED_PATH)
}

/// The audit event of an allowed call.
pub fn allowed(
    path: &str,
    subject: &str,
    client_id: &str,
    kind: &dyn std::fmt::Debug,
    peer: &dyn Display,
) {
    in_call(|| {
        tracing::info!(
            name: crate::telemetry::AUDIT_ALLOWED_EVENT,
            target: AUDIT_TARGET,
            method = %logged_path(path),
            subject = %Escaped(subject, usize::MAX),
            client_id = %Escaped(client_id, usize::MAX),
            kind = ?kind,
            peer = %peer,
            decision = "allow",
            reason = "ok",
        )
    });
}

/// The audit event of a refused call, with its reason code.
fn refused_line(path: &str, peer: &dyn Display, reason: &'static str) {
    in_call(|| {
        tracing::info!(
            target: AUDIT_TARGET,
            method = %logged_path(path),
            peer = %peer,
            decision = "deny",
            reason = reason,
        )
    });
}

/// Refusal lines each certificate identity gets per interval; the rest
/// are summarised in one line per identity per interval.
pub const REFUSAL_LINES_PER_INTERVAL: u64 = 20;
/// The interval of [`REFUSAL_LINES_PER_INTERVAL`].
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);
/// Identities whose refusals are tracked at once; beyond, refusals of new
/// identities are summarised together (an empty peer).
const MAX_TRACKED_IDENTITIES: usize = 10_000;

/// One identity's refusals in the current interval.
#[derive(Debug)]
struct Window {
    started: Instant,
    written: u64,
    summarised: BTreeMap<&'static str, u64>,
}

/// The audit trail's refusals, bounded: each certificate identity gets
/// [`REFUSAL_LINES_PER_INTERVAL`] lines per [`REFUSAL_INTERVAL`], and the
/// refusals beyond are counted by reason and written as one summary line
/// when the interval ends ([`RefusalLog::flush`], every interval).
#[derive(Debug, Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<String, Window>>,
}

impl RefusalLog {
    /// Audits a refused call: its own line, or a count in its identity's
    /// summary. `peer` is the certificate identity ("" for none).
    pub fn refused(&self, path: &str, peer: &str, shown: &dyn Display, reason: &'static str) {
        let now = Instant::now();
        let write = {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            let key = if windows.len() >= MAX_TRACKED_IDENTITIES && !windows.contains_key(peer) {
                ""
            } else {
                peer
            };
            let window = match windows.get_mut(key) {
                Some(window) => window,
                None => windows.entry(key.to_owned()).or_insert(Window {
                    started: now,
                    written: 0,
                    summarised: BTreeMap::new(),
                }),
            };
            if window.written < REFUSAL_LINES_PER_INTERVAL {
                window.written += 1;
                true
            } else {
                *window.summarised.entry(reason).or_default() += 1;
                false
            }
        };
        if write {
            refused_line(path, shown, reason);
        }
    }

    /// Writes the summary of every interval that has ended and forgets it.
    pub fn flush(&self) {
        self.flush_at(Instant::now());
    }

    /// Writes every summary, ended or not (the server is stopping).
    pub fn flush_all(&self) {
        self.flush_at(Instant::now() + REFUSAL_INTERVAL);
    }

    fn flush_at(&self, now: Instant) -> usize {
        let ended: Vec<(String, Window)> = {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<String> = windows
                .iter()
                .filter(|(_, w)| now.saturating_duration_since(w.started) >= REFUSAL_INTERVAL)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| windows.remove_entry(&k))
                .collect()
        };
        let mut summaries = 0;
        for (peer, window) in ended {
            if window.summarised.is_empty() {
                continue;
            }
            summaries += 1;
            let refused: u64 = window.summarised.values().sum();
            let reasons = window
                .summarised
                .iter()
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect::<Vec<_>>()
                .join(",");
            tracing::warn!(
                target: AUDIT_TARGET,
                peer = %Escaped(&peer, usize::MAX),
                decision = "deny",
                reason = "summary",
                refused,
                reasons = %reasons,
                interval_secs = REFUSAL_INTERVAL.as_secs(),
                "refusals beyond {REFUSAL_LINES_PER_INTERVAL} lines per interval, summarised"
            );
        }
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_beyond_the_lines_of_an_interval_are_summarised_per_identity() {
        let log = RefusalLog::default();
        for _ in 0..REFUSAL_LINES_PER_INTERVAL + 5 {
            log.refused("/x", "spiffe://a", &"a", "missing_token");
        }
        log.refused("/x", "spiffe://a", &"a", "bad_signature");
        log.refused("/x", "spiffe://b", &"b", "missing_token");
        {
            let windows = log.windows.lock().unwrap();
            let a = &windows["spiffe://a"];
            assert_eq!(a.written, REFUSAL_LINES_PER_INTERVAL);
            assert_eq!(a.summarised["missing_token"], 5);
            assert_eq!(a.summarised["bad_signature"], 1);
            assert_eq!(windows["spiffe://b"].written, 1);
        }
        let now = Instant::now();
        assert_eq!(log.flush_at(now), 0, "no interval has ended");
        assert_eq!(
            log.flush_at(now + REFUSAL_INTERVAL),
            1,
            "a's summary; b had none"
        );
        assert!(log.windows.lock().unwrap().is_empty());
    }

    #[test]
    fn a_connection_remembers_the_last_token_it_audited() {
        let memory = ConnectionMemory::default();
        let (a, b) = (
            TokenMark::of(b"header.a.sig-a"),
            TokenMark::of(b"header.b.sig-b"),
        );
        assert!(memory.is_new(a));
        assert!(!memory.is_new(a));
        assert!(memory.is_new(b));
        assert!(memory.is_new(a), "only the last one is remembered");
    }

    #[test]
    fn reads_are_audited_once_per_token_under_changes() {
        assert!(AuditAllowed::Changes.covers(false, || false));
        assert!(AuditAllowed::Changes.covers(true, || true));
        assert!(!AuditAllowed::Changes.covers(true, || false));
        assert!(AuditAllowed::All.covers(true, || false));
        assert!(!AuditAllowed::None.covers(false, || true));
    }
}
