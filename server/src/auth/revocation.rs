//! Token revocation at the resource server: the deployment's revocation
//! list ([`crate::store::Revocation`]), read from the store by every
//! instance every few seconds ([`spawn_poll`]) into an in-memory index that
//! each call consults after its token is verified or found in the cache
//! ([`RevocationList::check`]): a few hash lookups, no I/O.
//!
//! A revoked access token still passes any check of signature and expiry
//! (Cognito says so of its own revocation); this list is what refuses it:
//! one token (`jti`), a sign-in's tokens (`origin_jti`), a subject's or an
//! app client's tokens issued before a time.
//!
//! If the list has not been read for longer than its staleness limit, calls
//! are refused UNAVAILABLE (fail closed, the default for `serve`) or let
//! through (fail open, a setting), and `/readyz` says so either way.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio_util::sync::CancellationToken;

use super::{AuthError, VerifiedToken};
use crate::store::{NoteStore, REVOCATION_READ_OVERLAP, Revocation, Revoked};

/// How the list is kept fresh and what staleness means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationSettings {
    /// How often the list is read.
    pub poll_every: Duration,
    /// Older than this, the list is stale.
    pub max_staleness: Duration,
    /// Whether calls go on while it is stale (refused when not).
    pub fail_open: bool,
}

/// The defaults of `serve`: read every 2 s, stale after 30 s, fail closed.
pub const DEFAULT_REVOCATION_SETTINGS: RevocationSettings = RevocationSettings {
    poll_every: Duration::from_secs(2),
    max_staleness: Duration::from_secs(30),
    fail_open: false,
};

/// Looked up on every call: foldhash (seeded per map), not SipHash; the
/// keys come from verified tokens and the operator.
type Fast = foldhash::fast::RandomState;

/// One issuer's revocations.
#[derive(Debug, Default)]
struct IssuerIndex {
    tokens: HashSet<String, Fast>,
    sessions: HashSet<String, Fast>,
    /// Subject → tokens issued at or before this are revoked.
    subjects: HashMap<String, u64, Fast>,
    /// App client → tokens issued at or before this are revoked.
    clients: HashMap<String, u64, Fast>,
}

impl IssuerIndex {
    fn add(&mut self, what: &Revoked, before: u64) {
        let later = |map: &mut HashMap<String, u64, Fast>, key: &str| {
            let at = map.entry(key.to_owned()).or_insert(before);
            *at = (*at).max(before);
        };
        match what {
            Revoked::Token(jti) => {
                self.tokens.insert(jti.clone());
            }
            Revoked::Session(origin) => {
                self.sessions.insert(origin.clone());
            }
            Revoked::Subject(sub) => later(&mut self.subjects, sub),
            Revoked::Client(client) => later(&mut self.clients, client),
        }
    }

    fn revokes(&self, token: &VerifiedToken) -> bool {
        // Issued at or before the time (a token of the same second as the
        // revocation is refused too); a token without `iat` cannot show it
        // was issued after: refused.
        let issued_before = |before: Option<&u64>| {
            before.is_some_and(|before| token.iat.is_none_or(|iat| iat <= *before))
        };
        token.jti.as_ref().is_some_and(|j| self.tokens.contains(j))
            || token
                .origin_jti
                .as_ref()
                .is_some_and(|o| self.sessions.contains(o))
            || issued_before(self.subjects.get(&token.subject))
            || issued_before(self.clients.get(&token.client_id))
    }
}

/// The revocation list as this instance knows it.
#[derive(Debug)]
pub struct RevocationList {
    by_issuer: RwLock<HashMap<String, IssuerIndex, Fast>>,
    entries: AtomicU64,
    /// Whether any entry is known (the common case, none, takes no lock).
    any: AtomicBool,
    /// Milliseconds after `epoch` of the last successful read; 0: never.
    refreshed_ms: AtomicU64,
    epoch: Instant,
    /// `None`: the list is not read (no store keeps one): always fresh.
    settings: Option<RevocationSettings>,
}

impl Default for RevocationList {
    fn default() -> Self {
        Self::new(None)
    }
}

impl RevocationList {
    /// An empty list; with `settings`, it must be read to be fresh.
    pub fn new(settings: Option<RevocationSettings>) -> Self {
        Self {
            by_issuer: RwLock::default(),
            entries: AtomicU64::new(0),
            any: AtomicBool::new(false),
            refreshed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            settings,
        }
    }

    /// How it is read, if it is.
    pub fn settings(&self) -> Option<RevocationSettings> {
        self.settings
    }

    /// Adds `revocations` (adding one twice changes nothing).
    pub fn apply(&self, revocations: &[Revocation]) {
        if revocations.is_empty() {
            return;
        }
        let mut by_issuer = self.by_issuer.write().unwrap_or_else(|e| e.into_inner());
        for revocation in revocations {
            by_issuer
                .entry(revocation.issuer.clone())
                .or_default()
                .add(&revocation.what, revocation.before);
        }
        let entries: usize = by_issuer
            .values()
            .map(|i| i.tokens.len() + i.sessions.len() + i.subjects.len() + i.clients.len())
            .sum();
        self.entries.store(entries as u64, Ordering::Release);
        self.any.store(entries > 0, Ordering::Release);
        crate::metrics::metrics()
            .token_revocations
            .set(entries as i64);
    }

    /// Marks a successful read now.
    pub fn refreshed(&self) {
        let ms = self.epoch.elapsed().as_millis().max(1) as u64;
        self.refreshed_ms.store(ms, Ordering::Release);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        crate::metrics::metrics()
            .token_revocations_refreshed
            .set(unix as i64);
    }

    /// Whether the list was read within its staleness limit (always, when
    /// it is not read at all).
    pub fn is_fresh(&self) -> bool {
        let Some(settings) = self.settings else {
            return true;
        };
        let refreshed = self.refreshed_ms.load(Ordering::Acquire);
        refreshed != 0
            && (self.epoch.elapsed().as_millis() as u64).saturating_sub(refreshed)
                <= settings.max_staleness.as_millis() as u64
    }

    /// Entries known (kinds and values, per issuer).
    pub fn len(&self) -> u64 {
        self.entries.load(Ordering::Acquire)
    }

    /// Whether no entry is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses a revoked token, and every token while the list is stale
    /// (unless it fails open).
    pub fn check(&self, token: &VerifiedToken) -> Result<(), AuthError> {
        if !self.is_fresh() && self.settings.is_some_and(|s| !s.fail_open) {
            return Err(AuthError::RevocationsStale);
        }
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let by_issuer = self.by_issuer.read().unwrap_or_else(|e| e.into_inner());
        match by_issuer.get(&token.issuer) {
            Some(index) if index.revokes(token) => Err(AuthError::Revoked),
            _ => Ok(()),
        }
    }
}

/// Reads the whole list once (at start-up, before the server takes
/// calls); `false` if the store did not answer.
pub async fn load(store: &dyn NoteStore, list: &RevocationList) -> bool {
    match store.revocations_since(0).await {
        Ok(all) => {
            list.apply(&all);
            list.refreshed();
            true
        }
        Err(err) => {
            tracing::warn!(error = %crate::error::error_chain(&err), "reading the token revocation list failed");
            false
        }
    }
}

/// Reads of the list between two full reads: a writer whose clock is more
/// than [`REVOCATION_READ_OVERLAP`] behind is still read within this many
/// polls (a minute at the default 2 s).
const POLLS_PER_FULL_READ: u32 = 30;

/// This machine's clock, Unix ns.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Reads what is new every `poll_every` until `stop`: the entries recorded
/// since this instance's previous read began, by its own clock, less
/// [`REVOCATION_READ_OVERLAP`] (a writer's clock may be behind, or its write
/// slow to land), and every [`POLLS_PER_FULL_READ`] reads the whole list.
/// The cursor never follows a writer's clock, so a writer whose clock runs
/// ahead cannot make later entries unreadable. Tells `report` after each
/// read whether the list is fresh.
pub fn spawn_poll(
    store: Arc<dyn NoteStore>,
    list: Arc<RevocationList>,
    report: impl Fn(bool) + Send + 'static,
    stop: CancellationToken,
) {
    let Some(settings) = list.settings() else {
        return;
    };
    tokio::spawn(async move {
        let failures = crate::telemetry::LogEvery::new(Duration::from_secs(30));
        // The first read is a poll interval after the initial load, not at once.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.poll_every,
            settings.poll_every,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let overlap = REVOCATION_READ_OVERLAP.as_nanos() as u64;
        // The initial load read everything up to about now.
        let mut last_read = now_ns();
        let mut polls = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            polls = polls.wrapping_add(1);
            let started = now_ns();
            let since = if polls.is_multiple_of(POLLS_PER_FULL_READ) {
                0
            } else {
                last_read.saturating_sub(overlap)
            };
            match store.revocations_since(since).await {
                Ok(found) => {
                    last_read = started;
                    list.apply(&found);
                    list.refreshed();
                    report(true);
                }
                Err(err) => {
                    crate::metrics::metrics().token_revocation_read_errors.inc();
                    report(list.is_fresh());
                    if let Some(suppressed) = failures.check() {
                        tracing::warn!(
                            error = %crate::error::error_chain(&err),
                            suppressed,
                            fresh = list.is_fresh(),
                            "reading the token revocation list failed; the last list read stays in force"
                        );
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::auth::{CallerKind, verify::TokenUse};

    fn token(subject: &str, client: &str, iat: Option<u64>) -> VerifiedToken {
        VerifiedToken {
            issuer: "https://a".into(),
            subject: subject.into(),
            client_id: client.into(),
            username: None,
            kind: CallerKind::User,
            token_use: TokenUse::Access,
            scopes: BTreeSet::new(),
            groups: BTreeSet::new(),
            cnf_x5t_s256: None,
            exp: u64::MAX,
            kid: String::new(),
            jti: Some(format!("jti-{subject}")),
            origin_jti: Some(format!("origin-{subject}")),
            iat,
        }
    }

    fn revocation(issuer: &str, what: Revoked, before: u64) -> Revocation {
        Revocation {
            issuer: issuer.into(),
            what,
            before,
            recorded_ns: 1,
        }
    }

    #[test]
    fn each_kind_refuses_exactly_its_tokens_of_its_issuer() {
        let list = RevocationList::default();
        list.apply(&[
            revocation("https://a", Revoked::Token("jti-t".into()), u64::MAX),
            revocation("https://a", Revoked::Session("origin-s".into()), u64::MAX),
            revocation("https://a", Revoked::Subject("u".into()), 1_000),
            revocation("https://a", Revoked::Client("app".into()), 2_000),
            revocation("https://b", Revoked::Subject("other".into()), u64::MAX),
        ]);
        let refused = |t: &VerifiedToken| list.check(t) == Err(AuthError::Revoked);
        assert!(refused(&token("t", "x", Some(5_000))), "jti");
        assert!(refused(&token("s", "x", Some(5_000))), "origin_jti");
        assert!(refused(&token("u", "x", Some(999))), "sub, issued before");
        assert!(refused(&token("u", "x", Some(1_000))), "sub, that second");
        assert!(!refused(&token("u", "x", Some(1_001))), "sub, after");
        assert!(
            refused(&token("u", "x", None)),
            "no iat: cannot show it is newer"
        );
        assert!(refused(&token("v", "app", Some(2_000))), "client, until");
        assert!(!refused(&token("v", "app", Some(2_001))), "client, after");
        assert!(
            !refused(&token("other", "x", Some(1))),
            "another issuer's subject"
        );
        assert_eq!(list.len(), 4 + 1);
        // Applying again changes nothing; a later `before` wins.
        list.apply(&[revocation("https://a", Revoked::Subject("u".into()), 3_000)]);
        assert!(refused(&token("u", "x", Some(2_000))));
        list.apply(&[revocation("https://a", Revoked::Subject("u".into()), 10)]);
        assert!(
            refused(&token("u", "x", Some(2_000))),
            "an earlier time never narrows it"
        );
        assert_eq!(list.len(), 5);
    }

    #[test]
    fn a_list_that_is_read_is_stale_until_read_and_after_its_limit_unless_it_fails_open() {
        let settings = RevocationSettings {
            poll_every: Duration::from_secs(1),
            max_staleness: Duration::from_millis(50),
            fail_open: false,
        };
        let closed = RevocationList::new(Some(settings));
        let t = token("u", "x", Some(1));
        assert_eq!(closed.check(&t), Err(AuthError::RevocationsStale));
        closed.refreshed();
        assert_eq!(closed.check(&t), Ok(()));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(closed.check(&t), Err(AuthError::RevocationsStale));
        let open = RevocationList::new(Some(RevocationSettings {
            fail_open: true,
            ..settings
        }));
        assert!(!open.is_fresh());
        assert_eq!(open.check(&t), Ok(()));
        assert!(RevocationList::default().is_fresh(), "a list not read");
    }
}
