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

use std::{fmt::Display, sync::Mutex};

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
pub fn refused(path: &str, peer: &dyn Display, reason: &'static str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
