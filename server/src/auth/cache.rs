//! A bounded cache of verified tokens, so a caller reusing its token does not
//! pay for RSA verification on every call: quick_cache's concurrent cache,
//! with this service's rules around it.
//!
//! An entry holds the whole token it was verified from, and a lookup is a hit
//! only when the presented token is byte for byte that token (compared in
//! constant time). The cache is keyed by the token's last 32 bytes, which are
//! signature bytes: no hashing of the whole token is needed to find the
//! entry, and a presented token that merely shares them is a miss (then
//! verified in full). An entry weighs its token's length, but at least
//! [`MAX_BYTES`] / capacity, so at most `capacity` tokens and [`MAX_BYTES`]
//! of token text are held (10,000 tokens at the 8 KiB size limit would be
//! 80 MB). An entry never serves past its token's `exp` (it is dropped when
//! looked up then, and evicted like any other meanwhile), is dropped when
//! its signing key leaves the issuer's set, and holds only what verification
//! established: scopes, bindings and groups are still checked on every call.

use std::sync::Arc;

/// What the cache holds for a token: anything that knows when it expires
/// (the verifier's `VerifiedToken`; the cache needs nothing else of it).
pub trait Expiring: Send + Sync + 'static {
    /// `exp`, seconds since the epoch.
    fn exp(&self) -> u64;
}

/// Bytes of the token's end that key the map.
const KEY_BYTES: usize = 32;

/// A token's map key: its last [`KEY_BYTES`] bytes, zero-padded in front.
fn key(token: &[u8]) -> [u8; KEY_BYTES] {
    let tail = &token[token.len().saturating_sub(KEY_BYTES)..];
    let mut key = [0u8; KEY_BYTES];
    key[KEY_BYTES - tail.len()..].copy_from_slice(tail);
    key
}

/// A verified token and the text it was verified from.
pub struct Entry<V> {
    token: Box<str>,
    verified: Arc<V>,
}

impl<V> Entry<V> {
    fn is(&self, token: &[u8]) -> bool {
        self.token.len() == token.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(self.token.as_bytes(), token)
                .is_ok()
    }
}

/// Bytes of token text the cache holds at most, whatever its capacity:
/// Cognito access tokens are about 1 KB, so 16 MiB is room for 16,000.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// An entry's weight: its token's bytes, but at least `floor`.
#[derive(Clone)]
pub struct TokenWeight {
    floor: u64,
}

impl<V> quick_cache::Weighter<[u8; KEY_BYTES], Arc<Entry<V>>> for TokenWeight {
    fn weight(&self, _: &[u8; KEY_BYTES], entry: &Arc<Entry<V>>) -> u64 {
        (entry.token.len() as u64).max(self.floor)
    }
}

/// The cache; capacity 0 disables it.
pub struct TokenCache<V> {
    max_bytes: usize,
    entries: Option<quick_cache::sync::Cache<[u8; KEY_BYTES], Arc<Entry<V>>, TokenWeight>>,
}

impl<V: Expiring> TokenCache<V> {
    /// A cache holding at most `capacity` tokens and [`MAX_BYTES`] of them.
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, MAX_BYTES)
    }

    /// A cache holding at most `capacity` tokens and `max_bytes` of them.
    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        let entries = (capacity > 0).then(|| {
            let floor = (max_bytes / capacity).max(1) as u64;
            quick_cache::sync::Cache::with_weighter(
                capacity,
                max_bytes as u64,
                TokenWeight { floor },
            )
        });
        Self { max_bytes, entries }
    }

    /// The verified token for exactly `token` if it has not expired at `now` (seconds).
    /// `token` may be any bytes: only a token verified before, text, hits.
    pub fn get(&self, token: &(impl AsRef<[u8]> + ?Sized), now: u64) -> Option<Arc<V>> {
        let entries = self.entries.as_ref()?;
        let token = token.as_ref();
        let key = key(token);
        let entry = entries.get(&key)?;
        if !entry.is(token) {
            return None;
        }
        if entry.verified.exp() > now {
            return Some(entry.verified.clone());
        }
        // Expired: dropped, unless another call replaced it meanwhile.
        entries.remove_if(&key, |e| Arc::ptr_eq(e, &entry));
        None
    }

    /// Remembers a verified token (the cache evicts what it must to hold it).
    pub fn insert(&self, token: &str, verified: Arc<V>, _now: u64) {
        let Some(entries) = &self.entries else {
            return;
        };
        if token.len() > self.max_bytes {
            return;
        }
        entries.insert(
            key(token.as_bytes()),
            Arc::new(Entry {
                token: token.into(),
                verified,
            }),
        );
        crate::metrics::metrics()
            .token_cache_entries
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
    }

    /// Forgets `token` (its signing key is gone).
    pub fn remove(&self, token: &(impl AsRef<[u8]> + ?Sized)) {
        let Some(entries) = &self.entries else {
            return;
        };
        let token = token.as_ref();
        entries.remove_if(&key(token), |e| e.is(token));
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    /// Bytes of token text held.
    pub fn bytes(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| {
            let mut bytes = 0;
            for (_, entry) in e.iter() {
                bytes += entry.token.len();
            }
            bytes
        })
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Verified {
        subject: String,
        exp: u64,
    }

    impl Expiring for Verified {
        fn exp(&self) -> u64 {
            self.exp
        }
    }

    fn verified(subject: &str, exp: u64) -> Arc<Verified> {
        Arc::new(Verified {
            subject: subject.into(),
            exp,
        })
    }

    const TAIL: &str = "0123456789abcdefghijklmnopqrstuv";

    #[test]
    fn only_the_very_same_token_hits() {
        let cache = TokenCache::new(10);
        let token = format!("header.alice.{TAIL}");
        cache.insert(&token, verified("alice", 100), 0);
        assert_eq!(cache.get(&token, 0).unwrap().subject, "alice");
        // Same signature tail, other claims: a miss, never alice's entry.
        assert!(cache.get(&format!("header.mallory.{TAIL}"), 0).is_none());
        assert!(cache.get(&format!("header.alic.{TAIL}"), 0).is_none());
        // Removing the other token leaves alice's entry alone.
        cache.remove(&format!("header.mallory.{TAIL}"));
        assert!(cache.get(&token, 0).is_some());
        cache.remove(&token);
        assert!(cache.get(&token, 0).is_none());
    }

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let cache = TokenCache::new(2);
        cache.insert("a", verified("a", 100), 0);
        assert!(cache.get("a", 99).is_some());
        assert!(cache.get("a", 100).is_none(), "expired at exp");
        for (i, token) in ["x", "y", "z", "w", "v"].into_iter().enumerate() {
            cache.insert(token, verified(token, 100), i as u64);
            assert!(cache.len() <= 2, "{}", cache.len());
        }
        let off = TokenCache::new(0);
        off.insert("a", verified("a", 100), 0);
        assert!(off.get("a", 0).is_none() && off.is_empty());
    }

    #[test]
    fn the_bytes_held_are_bounded_whatever_the_capacity() {
        let cache = TokenCache::with_max_bytes(1000, 100);
        for i in 0..20 {
            let token = format!("{i:02}{}", "t".repeat(28));
            cache.insert(&token, verified("a", 100), 0);
            assert!(cache.bytes() <= 100, "{}", cache.bytes());
            assert_eq!(cache.bytes(), cache.len() * 30);
        }
        // A token larger than the whole budget is not cached at all.
        cache.insert(&"x".repeat(101), verified("x", 100), 10);
        assert!(cache.get(&"x".repeat(101), 10).is_none());
        assert!(cache.bytes() <= 100);
    }
}
