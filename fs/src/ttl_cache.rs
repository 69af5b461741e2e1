//! A small map whose entries expire, for metadata the registry may change behind our back.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries live for `ttl`; `ttl` zero disables caching.
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh value, if there is one.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_fresh(key).map(|(value, _)| value)
    }

    /// A fresh value and how much longer it stays fresh.
    pub fn get_fresh(&self, key: &K) -> Option<(V, Duration)> {
        let entries = self.entries.lock().expect("cache lock");
        let (at, value) = entries.get(key)?;
        let remaining = self
            .ttl
            .checked_sub(at.elapsed())
            .filter(|r| !r.is_zero())?;
        Some((value.clone(), remaining))
    }

    pub fn insert(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("cache lock");
        // Expired entries are dropped as new ones arrive, so the map stays as small as the
        // set of names used within one TTL.
        if entries.len() > 1024 {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Changes a fresh entry in place, keeping its age: what this mount did itself is
    /// known without asking, while changes made elsewhere still show within the TTL.
    pub fn update(&self, key: &K, change: impl FnOnce(&mut V)) {
        let mut entries = self.entries.lock().expect("cache lock");
        if let Some((at, value)) = entries.get_mut(key)
            && at.elapsed() < self.ttl
        {
            change(value);
        }
    }

    pub fn remove(&self, key: &K) {
        self.entries.lock().expect("cache lock").remove(key);
    }
}
