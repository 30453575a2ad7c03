//! The refusal budget's buckets: one per connection ([`ConnectionRefusals`],
//! kept with the connection) and one per certificate identity
//! ([`Buckets`], a ceiling over all of its connections). The bucket
//! arithmetic is ours, the bounded concurrent map is quick_cache's.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::limits::RateLimit;

/// Most callers whose buckets are kept; the least used are forgotten first
/// (forgetting a bucket refills it: only a caller the cache judged idle).
const MAX_TRACKED_CALLERS: usize = 100_000;

/// A token bucket: `tokens` as of `updated`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    /// The tokens the bucket holds at `now`.
    fn level(&self, limit: RateLimit, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst))
    }

    /// Gives a token back, up to the burst.
    fn give_back(&mut self, limit: RateLimit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }

    /// Takes a token if there is one.
    fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.tokens = self.level(limit, now);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One connection's refusal budget: empty until its first charged refusal
/// (a connection that was never refused needs no bucket).
#[derive(Debug, Default)]
pub struct ConnectionRefusals {
    bucket: Mutex<Option<Bucket>>,
    refused: std::sync::atomic::AtomicBool,
}

impl ConnectionRefusals {
    /// Whether this connection has drawn a charged refusal.
    pub fn refused_before(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes a token; `false` when the bucket is empty.
    fn take(&self, limit: RateLimit, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .get_or_insert_with(|| Bucket::full(limit, now))
            .take(limit, now)
    }

    /// Gives a token back (up to the burst).
    fn give_back(&self, limit: RateLimit) {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = bucket.as_mut() {
            bucket.give_back(limit);
        }
    }
}

/// One verification reserved under the budget ([`RefusalBudget::reserve`]).
#[derive(Debug)]
#[must_use = "a reservation is given back or spent"]
pub struct Reservation {
    /// Whether the identity's ceiling was charged too.
    identity: bool,
}

/// The refusal budget: refusals that cost verification work (a token not
/// in the verified-token cache that fails verification), per connection and
/// per certificate identity. Past it, a connection's calls with tokens the
/// cache does not know are refused before any verification; calls with a
/// cached token are never charged nor refused.
///
/// A connection is refused when its own bucket is empty, or when it has
/// drawn refusals before and its identity's ceiling (over all of the
/// identity's connections) is empty. So one connection's garbage never
/// refuses another connection that has not misbehaved, and many
/// misbehaving connections of one identity share one ceiling.
pub struct RefusalBudget {
    per_connection: RateLimit,
    per_identity: Buckets,
}

impl RefusalBudget {
    /// `per_connection` for each connection, and a ceiling of
    /// [`crate::limits::REFUSAL_CEILING_CONNECTIONS`] times it for each
    /// identity.
    pub fn new(per_connection: RateLimit) -> Self {
        let times = crate::limits::REFUSAL_CEILING_CONNECTIONS;
        Self {
            per_connection,
            per_identity: Buckets::new(RateLimit {
                per_second: per_connection.per_second * f64::from(times),
                burst: per_connection.burst.saturating_mul(times),
            }),
        }
    }

    /// The budget of each connection.
    pub fn per_connection(&self) -> RateLimit {
        self.per_connection
    }

    /// Reserves one verification on `conn` of `identity`, before it runs
    /// (so calls verified at once cannot overdraw the budget): a token of
    /// the connection's, and of the identity's ceiling once the connection
    /// has drawn refusals. `None`: refuse the call unverified.
    pub fn reserve(
        &self,
        conn: &ConnectionRefusals,
        identity: &str,
        now: Instant,
    ) -> Option<Reservation> {
        if !conn.take(self.per_connection, now) {
            return None;
        }
        let charge_identity = conn.refused_before();
        if charge_identity && !self.per_identity.take(identity, now) {
            conn.give_back(self.per_connection);
            return None;
        }
        Some(Reservation {
            identity: charge_identity,
        })
    }

    /// The verification passed: what it reserved is given back.
    pub fn release(&self, conn: &ConnectionRefusals, identity: &str, reservation: Reservation) {
        conn.give_back(self.per_connection);
        if reservation.identity {
            self.per_identity.give_back(identity);
        }
    }

    /// The verification failed: what it reserved is spent, the connection
    /// is marked as refused, and the identity's ceiling is charged (if it
    /// was not already).
    pub fn spend(
        &self,
        conn: &ConnectionRefusals,
        identity: &str,
        reservation: Reservation,
        now: Instant,
    ) {
        conn.refused
            .store(true, std::sync::atomic::Ordering::Release);
        if !reservation.identity {
            self.per_identity.take(identity, now);
        }
    }
}

/// Token buckets by caller.
pub struct Buckets {
    limit: RateLimit,
    /// Looked up by `&str`, no allocation but for a new caller; the
    /// callers are certificate identities, which only the CA makes.
    buckets: quick_cache::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl Buckets {
    /// A bucket of `limit` for each caller.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: quick_cache::sync::Cache::new(MAX_TRACKED_CALLERS),
        }
    }

    /// The limit of every bucket.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Gives a token back to `caller`'s bucket (up to the burst).
    pub fn give_back(&self, caller: &str) {
        if let Some(bucket) = self.buckets.get(caller) {
            let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
            bucket.give_back(self.limit);
        }
    }

    /// Takes one token from `caller`'s bucket; `false` when it is empty.
    pub fn take(&self, caller: &str, now: Instant) -> bool {
        let Ok(bucket) = self.buckets.get_or_insert_with(caller, || {
            Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(Bucket::full(self.limit, now))))
        });
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(self.limit, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_caller_gets_its_burst_then_its_rate() {
        let buckets = Buckets::new(limit(10.0, 3));
        let start = Instant::now();
        assert!((0..3).all(|_| buckets.take("a", start)));
        assert!(!buckets.take("a", start));
        assert!(buckets.take("b", start), "callers have their own buckets");
        assert!(buckets.take("a", start + Duration::from_millis(100)));
        assert!(!buckets.take("a", start + Duration::from_millis(100)));
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let buckets = Buckets::new(limit(1000.0, 2));
        let start = Instant::now();
        assert!(buckets.take("a", start));
        let later = start + Duration::from_secs(60);
        assert!(buckets.take("a", later) && buckets.take("a", later));
        assert!(!buckets.take("a", later));
    }

    #[test]
    fn one_connections_refusals_never_refuse_a_connection_that_has_none() {
        let budget = RefusalBudget::new(limit(0.001, 2));
        let now = Instant::now();
        let refuse = |conn: &ConnectionRefusals, id: &str| match budget.reserve(conn, id, now) {
            Some(r) => {
                budget.spend(conn, id, r, now);
                true
            }
            None => false,
        };
        let (noisy, quiet) = (ConnectionRefusals::default(), ConnectionRefusals::default());
        let verified = (0..100).filter(|_| refuse(&noisy, "spiffe://a")).count();
        assert_eq!(verified, 2, "its burst, then refused unverified");
        assert!(budget.reserve(&noisy, "spiffe://a", now).is_none());
        let r = budget
            .reserve(&quiet, "spiffe://a", now)
            .expect("another connection");
        budget.release(&quiet, "spiffe://a", r);
        // Many misbehaving connections of one identity share its ceiling
        // (10 connections x burst 2 = 20): past it, a connection that has
        // been refused is refused unverified, one that has not is not.
        let others: Vec<_> = (0..12).map(|_| ConnectionRefusals::default()).collect();
        let verified: usize = others
            .iter()
            .map(|c| (0..2).filter(|_| refuse(c, "spiffe://b")).count())
            .sum();
        assert!(verified <= 22, "{verified} verifications");
        let late = ConnectionRefusals::default();
        assert!(refuse(&late, "spiffe://b"), "its first is verified");
        assert!(
            budget.reserve(&late, "spiffe://b", now).is_none(),
            "ceiling reached"
        );
        let innocent = ConnectionRefusals::default();
        let r = budget
            .reserve(&innocent, "spiffe://b", now)
            .expect("never refused");
        budget.release(&innocent, "spiffe://b", r);
    }

    #[test]
    fn concurrent_verifications_cannot_overdraw_a_connection_and_passes_cost_nothing() {
        let budget = RefusalBudget::new(limit(0.001, 3));
        let now = Instant::now();
        let conn = ConnectionRefusals::default();
        // Three in flight at once take the whole burst; a fourth waits for none.
        let held: Vec<_> = (0..3)
            .map(|_| budget.reserve(&conn, "id", now).unwrap())
            .collect();
        assert!(budget.reserve(&conn, "id", now).is_none());
        // They pass: all given back, and the connection is not marked.
        for r in held {
            budget.release(&conn, "id", r);
        }
        assert!(!conn.refused_before());
        for _ in 0..10 {
            let r = budget.reserve(&conn, "id", now).unwrap();
            budget.release(&conn, "id", r);
        }
    }
}
