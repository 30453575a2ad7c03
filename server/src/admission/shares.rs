//! Counts of what each key (an address, a certificate identity, a token's
//! owner) holds now, each unit held by a guard that gives it back when
//! dropped. A key is forgotten when it holds nothing, so the map is as
//! large as the keys holding something, which the caps bound.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

type Map<K> = HashMap<K, usize, foldhash::fast::RandomState>;

/// What each key holds.
pub struct Counts<K: Hash + Eq>(Mutex<Map<K>>);

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Self(Mutex::new(Map::default()))
    }
}

impl<K: Hash + Eq + Clone> Counts<K> {
    /// One more unit for `key` if `admit` allows it, given what `key`
    /// holds now; `None` when it does not.
    pub fn take(self: &Arc<Self>, key: &K, admit: impl FnOnce(usize) -> bool) -> Option<Held<K>> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.get(key).copied().unwrap_or(0);
        if !admit(held) {
            return None;
        }
        *counts.entry(key.clone()).or_default() += 1;
        Some(Held {
            counts: self.clone(),
            key: key.clone(),
        })
    }

    /// What `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

/// One unit a key holds, given back when dropped.
pub struct Held<K: Hash + Eq> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_what_it_took_until_dropped_and_is_then_forgotten() {
        let counts = Arc::new(Counts::<&str>::default());
        let a: Vec<_> = (0..3).map(|_| counts.take(&"a", |n| n < 3)).collect();
        assert!(a.iter().all(Option::is_some));
        assert!(counts.take(&"a", |n| n < 3).is_none());
        assert!(counts.take(&"b", |n| n < 3).is_some());
        assert_eq!(counts.held(&"a"), 3);
        drop(a);
        assert_eq!(counts.held(&"a"), 0);
        assert!(counts.0.lock().unwrap().is_empty());
    }
}
