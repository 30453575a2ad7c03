//! A bounded cache of verified tokens, so a caller reusing its token does not
//! pay for RSA verification on every call.
//!
//! Keyed by SHA-256 of the token. An entry never outlives its token's `exp`,
//! is dropped when its signing key leaves the issuer's set, and holds only
//! what verification established: scopes, bindings and groups are still
//! checked on every call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::verify::VerifiedToken;

/// The cache; capacity 0 disables it.
pub struct TokenCache {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Arc<VerifiedToken>>>,
}

/// The cache key of a token.
pub fn token_key(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The verified token for `key` if it has not expired at `now` (seconds).
    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<Arc<VerifiedToken>> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some(token) if token.exp > now => Some(token.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token; when full, expired entries go first and,
    /// if that frees nothing, the whole cache is cleared (bounded memory over
    /// perfect hit rates).
    pub fn insert(&self, key: [u8; 32], token: Arc<VerifiedToken>, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, t| t.exp > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, token);
        crate::metrics::metrics()
            .token_cache_entries
            .set(i64::try_from(entries.len()).unwrap_or(i64::MAX));
    }

    /// Forgets `key` (its signing key is gone).
    pub fn remove(&self, key: &[u8; 32]) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
