//! A bounded cache of verified tokens, so a caller reusing its token does not
//! pay for RSA verification on every call.
//!
//! An entry holds the whole token it was verified from, and a lookup is a hit
//! only when the presented token is byte for byte that token (compared in
//! constant time). The map is keyed by the token's last 32 bytes, which are
//! signature bytes: no hashing of the whole token is needed to find the
//! entry, and a presented token that merely shares them is a miss (then
//! verified in full). At most `capacity` tokens and [`MAX_BYTES`] of token
//! text are held (10,000 tokens at the 8 KiB size limit would be 80 MB). An entry never outlives its token's `exp`, is
//! dropped when its signing key leaves the issuer's set, and holds only what
//! verification established: scopes, bindings and groups are still checked
//! on every call.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use super::verify::VerifiedToken;

/// Bytes of the token's end that key the map.
const KEY_BYTES: usize = 32;

/// A token's map key: its last [`KEY_BYTES`] bytes, zero-padded in front.
fn key(token: &[u8]) -> [u8; KEY_BYTES] {
    let tail = &token[token.len().saturating_sub(KEY_BYTES)..];
    let mut key = [0u8; KEY_BYTES];
    key[KEY_BYTES - tail.len()..].copy_from_slice(tail);
    key
}

struct Entry {
    token: Box<str>,
    verified: Arc<VerifiedToken>,
}

impl Entry {
    fn is(&self, token: &[u8]) -> bool {
        self.token.len() == token.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(self.token.as_bytes(), token)
                .is_ok()
    }
}

/// Bytes of token text the cache holds at most, whatever its capacity:
/// Cognito access tokens are about 1 KB, so 16 MiB is room for 16,000.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Entries {
    /// foldhash (seeded per map), not SipHash: looked up on every call, and
    /// only verified tokens are put in it.
    map: HashMap<[u8; KEY_BYTES], Entry, foldhash::fast::RandomState>,
    /// The sum of the held tokens' lengths.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &[u8; KEY_BYTES]) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.token.len();
        }
    }
}

/// The cache; capacity 0 disables it.
///
/// A read-write lock: every call looks its token up, and lookups (the
/// constant-time compare of about 1 KB included) run side by side; only
/// inserts and removals take it alone.
pub struct TokenCache {
    capacity: usize,
    max_bytes: usize,
    entries: RwLock<Entries>,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens and [`MAX_BYTES`] of them.
    pub fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, MAX_BYTES)
    }

    /// A cache holding at most `capacity` tokens and `max_bytes` of them.
    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        Self {
            capacity,
            max_bytes,
            entries: RwLock::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The verified token for exactly `token` if it has not expired at `now` (seconds).
    /// `token` may be any bytes: only a token verified before, text, hits.
    pub fn get(&self, token: &(impl AsRef<[u8]> + ?Sized), now: u64) -> Option<Arc<VerifiedToken>> {
        if self.capacity == 0 {
            return None;
        }
        let token = token.as_ref();
        let key = key(token);
        match self.read().map.get(&key) {
            Some(entry) if !entry.is(token) => return None,
            Some(entry) if entry.verified.exp > now => return Some(entry.verified.clone()),
            Some(_) => {}
            None => return None,
        }
        // Expired: dropped, unless another call replaced it meanwhile.
        let mut entries = self.write();
        if entries
            .map
            .get(&key)
            .is_some_and(|e| e.is(token) && e.verified.exp <= now)
        {
            entries.remove(&key);
        }
        None
    }

    /// Remembers a verified token; when full (tokens or bytes), expired
    /// entries go first and, if that does not make room, the whole cache is
    /// cleared (bounded memory over perfect hit rates).
    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>, now: u64) {
        if self.capacity == 0 || token.len() > self.max_bytes {
            return;
        }
        let key = key(token.as_bytes());
        let mut entries = self.write();
        entries.remove(&key);
        let full =
            |e: &Entries| e.map.len() >= self.capacity || e.bytes + token.len() > self.max_bytes;
        if full(&entries) {
            entries.map.retain(|_, e| e.verified.exp > now);
            entries.bytes = entries.map.values().map(|e| e.token.len()).sum();
            if full(&entries) {
                *entries = Entries::default();
            }
        }
        entries.bytes += token.len();
        entries.map.insert(
            key,
            Entry {
                token: token.into(),
                verified,
            },
        );
        crate::metrics::metrics()
            .token_cache_entries
            .set(i64::try_from(entries.map.len()).unwrap_or(i64::MAX));
    }

    /// Forgets `token` (its signing key is gone).
    pub fn remove(&self, token: &(impl AsRef<[u8]> + ?Sized)) {
        let token = token.as_ref();
        let mut entries = self.write();
        let key = key(token);
        if entries.map.get(&key).is_some_and(|e| e.is(token)) {
            entries.remove(&key);
        }
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Bytes of token text held.
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{CallerKind, verify::TokenUse};

    fn verified(subject: &str, exp: u64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer: "https://issuer".into(),
            subject: subject.into(),
            client_id: "app".into(),
            username: Some(subject.into()),
            kind: CallerKind::User,
            token_use: TokenUse::Access,
            scopes: Default::default(),
            groups: Default::default(),
            cnf_x5t_s256: None,
            exp,
            kid: "k".into(),
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
        for (i, token) in ["x", "y", "z"].into_iter().enumerate() {
            cache.insert(token, verified(token, 100), i as u64);
            assert!(cache.len() <= 2);
        }
        assert!(cache.get("z", 0).is_some());
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
            assert!(cache.get(&token, 0).is_some(), "the newest is held");
        }
        // Re-inserting a held token does not count it twice.
        let token = format!("19{}", "t".repeat(28));
        cache.insert(&token, verified("a", 100), 0);
        assert_eq!(cache.bytes(), cache.len() * 30);
        // Expired entries make room before anything else goes.
        let cache = TokenCache::with_max_bytes(1000, 100);
        cache.insert(&"o".repeat(60), verified("old", 5), 0);
        cache.insert(&"k".repeat(30), verified("kept", 100), 0);
        cache.insert(&"n".repeat(30), verified("new", 100), 10);
        assert!(cache.get(&"k".repeat(30), 10).is_some());
        assert_eq!(cache.bytes(), 60);
        // A token larger than the whole budget is not cached at all.
        cache.insert(&"x".repeat(101), verified("x", 100), 10);
        assert!(cache.get(&"x".repeat(101), 10).is_none());
    }
}
