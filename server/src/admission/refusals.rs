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
pub struct ConnectionRefusals(Mutex<Option<Bucket>>);

impl ConnectionRefusals {
    /// Whether this connection has drawn a charged refusal.
    pub fn refused_before(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Whether the bucket holds a token now (nothing is taken).
    pub fn has_token(&self, limit: RateLimit, now: Instant) -> bool {
        let bucket = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .as_ref()
            .is_none_or(|bucket| bucket.level(limit, now) >= 1.0)
    }

    /// Takes a token; `false` when the bucket is empty.
    pub fn take(&self, limit: RateLimit, now: Instant) -> bool {
        let mut bucket = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .get_or_insert_with(|| Bucket::full(limit, now))
            .take(limit, now)
    }
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

    /// Whether a call on `conn` of `identity` may cost verification now.
    pub fn admits(&self, conn: &ConnectionRefusals, identity: &str, now: Instant) -> bool {
        conn.has_token(self.per_connection, now)
            && (!conn.refused_before() || self.per_identity.has_token(identity, now))
    }

    /// Charges a refusal that cost verification to `conn` and `identity`.
    pub fn charge(&self, conn: &ConnectionRefusals, identity: &str, now: Instant) {
        conn.take(self.per_connection, now);
        self.per_identity.take(identity, now);
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

    /// Whether `caller`'s bucket holds a token now (nothing is taken).
    pub fn has_token(&self, caller: &str, now: Instant) -> bool {
        self.buckets.get(caller).is_none_or(|bucket| {
            let bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
            bucket.level(self.limit, now) >= 1.0
        })
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
        let (noisy, quiet) = (ConnectionRefusals::default(), ConnectionRefusals::default());
        for _ in 0..100 {
            budget.charge(&noisy, "spiffe://a", now);
        }
        assert!(!budget.admits(&noisy, "spiffe://a", now));
        assert!(budget.admits(&quiet, "spiffe://a", now));
        // Many misbehaving connections of one identity share its ceiling:
        // 10 connections x burst 2 = 20 charges empty it.
        let others: Vec<_> = (0..10).map(|_| ConnectionRefusals::default()).collect();
        for conn in &others {
            budget.charge(conn, "spiffe://b", now);
        }
        assert!(others.iter().all(|c| budget.admits(c, "spiffe://b", now)));
        for conn in &others {
            budget.charge(conn, "spiffe://b", now);
        }
        let late = ConnectionRefusals::default();
        budget.charge(&late, "spiffe://b", now);
        assert!(!budget.admits(&late, "spiffe://b", now), "ceiling reached");
        assert!(budget.admits(&ConnectionRefusals::default(), "spiffe://b", now));
    }

    #[test]
    fn a_connection_has_no_bucket_until_it_is_charged() {
        let limit = limit(1.0, 2);
        let conn = ConnectionRefusals::default();
        let start = Instant::now();
        assert!(!conn.refused_before() && conn.has_token(limit, start));
        assert!(conn.take(limit, start) && conn.refused_before());
        assert!(conn.take(limit, start));
        assert!(!conn.has_token(limit, start) && !conn.take(limit, start));
        assert!(conn.has_token(limit, start + Duration::from_secs(1)));
    }
}
