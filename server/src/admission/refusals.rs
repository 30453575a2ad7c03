//! Token buckets by certificate identity (the refusal budget): the bucket
//! arithmetic is ours, the bounded concurrent map is quick_cache's.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::limits::RateLimit;

/// Most callers whose buckets are kept; the least used are forgotten first
/// (forgetting a bucket refills it: only a caller the cache judged idle).
const MAX_TRACKED_CALLERS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
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
            refill(&bucket, self.limit, now) >= 1.0
        })
    }

    /// Takes one token from `caller`'s bucket; `false` when it is empty.
    pub fn take(&self, caller: &str, now: Instant) -> bool {
        let Ok(bucket) = self.buckets.get_or_insert_with(caller, || {
            Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(Bucket {
                tokens: f64::from(self.limit.burst),
                updated: now,
            })))
        });
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.tokens = refill(&bucket, self.limit, now);
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
        Buckets::new(RateLimit { per_second, burst })
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
