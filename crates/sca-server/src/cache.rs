//! The embedding cache: least-recently-used, bounded in bytes, keyed by the image's sha256.

use std::collections::HashMap;
use std::sync::Arc;

/// An LRU map from a key to a shared value with a byte size; inserting past the budget evicts
/// the least recently used entries. Sizes are what the caller says they are.
///
/// ```
/// use sca_server::cache::Lru;
/// let mut c = Lru::new(10);
/// c.insert("a".to_string(), 1u8, 4);
/// c.insert("b".to_string(), 2u8, 4);
/// assert_eq!(c.get("a").as_deref(), Some(&1)); // "a" is now the most recent
/// c.insert("c".to_string(), 3u8, 4); // over budget: "b" goes
/// assert!(c.get("b").is_none());
/// assert_eq!(c.len(), 2);
/// ```
pub struct Lru<V> {
    budget: usize,
    used: usize,
    tick: u64,
    map: HashMap<String, Entry<V>>,
}

struct Entry<V> {
    value: Arc<V>,
    bytes: usize,
    last_use: u64,
}

impl<V> Lru<V> {
    /// A cache holding at most `budget` bytes (0 disables it).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            tick: 0,
            map: HashMap::new(),
        }
    }

    /// The value for `key`, marking it most recently used.
    pub fn get(&mut self, key: &str) -> Option<Arc<V>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|e| {
            e.last_use = tick;
            e.value.clone()
        })
    }

    /// Inserts (or replaces) `key`; returns the shared value. An entry larger than the whole
    /// budget is not kept.
    pub fn insert(&mut self, key: String, value: V, bytes: usize) -> Arc<V> {
        let value = Arc::new(value);
        if let Some(old) = self.map.remove(&key) {
            self.used -= old.bytes;
        }
        if bytes > self.budget {
            return value;
        }
        while self.used + bytes > self.budget {
            // O(n) eviction: the cache holds tens to hundreds of entries.
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.used -= e.bytes;
            }
        }
        self.tick += 1;
        self.used += bytes;
        self.map.insert(
            key,
            Entry {
                value: value.clone(),
                bytes,
                last_use: self.tick,
            },
        );
        value
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.used
    }
}
