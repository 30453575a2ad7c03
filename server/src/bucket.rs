//! Token buckets by caller, bounded in how many callers they track: the
//! per-caller rate limit and the per-certificate refusal budget.

use std::{collections::HashMap, sync::RwLock, time::Instant};

use crate::limits::RateLimit;

/// Most callers whose buckets are kept; full buckets are forgotten first
/// (a full bucket is the same as a new one).
const MAX_TRACKED_CALLERS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by caller.
pub struct Buckets {
    limit: RateLimit,
    /// foldhash (seeded per map), not SipHash: looked up on every call; the
    /// callers are certificate identities and token subjects, which only
    /// the CA and the issuers make. A read lock for [`Buckets::has_token`],
    /// which every call asks and which changes nothing.
    buckets: RwLock<HashMap<String, Bucket, foldhash::fast::RandomState>>,
}

impl Buckets {
    /// A bucket of `limit` for each caller.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: RwLock::default(),
        }
    }

    /// The limit of every bucket.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whether `caller`'s bucket holds a token now (nothing is taken).
    pub fn has_token(&self, caller: &str, now: Instant) -> bool {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        buckets
            .get(caller)
            .is_none_or(|bucket| refill(bucket, self.limit, now) >= 1.0)
    }

    /// Takes one token from `caller`'s bucket; `false` when it is empty.
    pub fn take(&self, caller: &str, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.write().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(caller) && buckets.len() >= MAX_TRACKED_CALLERS {
            let limit = self.limit;
            buckets.retain(|_, b| refill(b, limit, now) < burst);
            if buckets.len() >= MAX_TRACKED_CALLERS {
                // Every tracked caller is active: refuse a new one rather than
                // grow without bound (fail closed).
                return false;
            }
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens = refill(bucket, self.limit, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(bucket: &Bucket, limit: RateLimit, now: Instant) -> f64 {
    let elapsed = now.duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn buckets(per_second: f64, burst: u32) -> Buckets {
        Buckets {
            limit: RateLimit { per_second, burst },
            buckets: RwLock::default(),
        }
    }

    #[test]
    fn a_caller_gets_its_burst_then_its_rate() {
        let buckets = buckets(10.0, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| buckets.take("a", start)));
        assert!(!buckets.take("a", start));
        assert!(buckets.take("b", start), "callers have their own buckets");
        assert!(buckets.take("a", start + Duration::from_millis(100)));
        assert!(!buckets.take("a", start + Duration::from_millis(100)));
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let buckets = buckets(1000.0, 2);
        let start = Instant::now();
        assert!(buckets.take("a", start));
        let later = start + Duration::from_secs(60);
        assert!(buckets.take("a", later) && buckets.take("a", later));
        assert!(!buckets.take("a", later));
    }
}
