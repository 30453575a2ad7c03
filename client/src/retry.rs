//! Retrying calls that are safe to repeat.

use std::time::Duration;

/// Retries UNAVAILABLE answers and failed connections with exponential
/// backoff and full jitter.
///
/// Only calls that the method table ([`notes_api::methods`]) marks safe to
/// repeat are retried: GetNote and ListNotes always, and the writes
/// (CreateNote, UpdateNote, DeleteNote) only when they carry a
/// `request_id`, so that a retry answers the first outcome instead of
/// applying twice or reporting a conflict the caller did not cause. The
/// client sends one unless the caller explicitly passes none.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The pause before retry number `retry` (1-based): uniform in
    /// `[0, min(max_backoff, initial_backoff * 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let mut random = [0u8; 4];
        // Without randomness, back off the full ceiling rather than not at all.
        if aws_lc_rs::rand::fill(&mut random).is_err() {
            return ceiling;
        }
        ceiling.mul_f64(f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_means_one_attempt() {
        assert_eq!(RetryPolicy::none().max_attempts, 1);
        assert_eq!(RetryPolicy::default().max_attempts, 4);
    }

    #[test]
    fn backoff_stays_under_a_doubling_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        for _ in 0..100 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(2) <= Duration::from_millis(200));
            assert!(policy.backoff(5) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let policy = RetryPolicy::default();
        let samples: std::collections::BTreeSet<_> = (0..20).map(|_| policy.backoff(3)).collect();
        assert!(samples.len() > 1);
    }
}
