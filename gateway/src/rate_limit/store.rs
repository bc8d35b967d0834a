//! The keyed state of one policy: a sharded map from client key to TAT,
//! with a hard cap on tracked keys.
//!
//! Memory contract: at most `max_keys` entries (each 24 bytes of key and
//! state in a hash table: about 30 to 60 bytes with the table's slack; the
//! benchmark prints the measured figure). [`KeyedStore::cleanup`] drops keys
//! that are fully replenished (dropping them loses nothing: a new entry
//! would start identical) and shrinks tables that became mostly empty, so
//! memory really returns. When a shard is full and a new key arrives, the
//! replenished keys of that shard are dropped first; if none is, the key
//! closest to replenished (smallest TAT) is evicted. A flood of new keys
//! therefore never evicts a heavy hitter (it has the largest TAT), so it
//! cannot hand a flooding client a fresh burst; the evicted key gains at
//! most what it was about to regain anyway.

use super::gcra::{Gcra, Verdict};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

pub use crate::client_ip::Key;

const SHARDS: usize = 64;

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Key, u64>,
    /// The latest time this shard decided at: decisions never go back in
    /// time, even if a clock read on another core comes out earlier.
    latest: u64,
}

/// Keyed GCRA state with a cap.
#[derive(Debug)]
pub struct KeyedStore {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    // Keys are chosen by clients: keep SipHash with a random seed (no HashDoS).
    hasher: RandomState,
}

impl KeyedStore {
    /// A store holding at most `max_keys` keys (rounded up to a multiple of
    /// the shard count).
    pub fn new(max_keys: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            shards,
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides a request for `key` at `now` and records it when allowed.
    pub fn decide(&self, gcra: &Gcra, key: Key, now: u64) -> Verdict {
        self.decide_at(gcra, key, || now)
    }

    /// As [`KeyedStore::decide`], reading the time only once the key's shard
    /// is locked: a thread descheduled between reading the clock and taking
    /// the lock must not judge its request against a state that others have
    /// moved on since (that once refused a request at 2% of the rate).
    pub fn decide_at(&self, gcra: &Gcra, key: Key, now: impl FnOnce() -> u64) -> Verdict {
        let mut shard = self.shard(&key);
        let now = now().max(shard.latest);
        shard.latest = now;
        let tat = shard.map.get(&key).copied();
        let (verdict, new_tat) = gcra.decide(tat, now);
        if let Some(new_tat) = new_tat {
            if tat.is_none() && shard.map.len() >= self.shard_cap {
                make_room(&mut shard.map, now);
            }
            shard.map.insert(key, new_tat);
        }
        verdict
    }

    /// Drops replenished keys and returns memory from shrunken tables;
    /// returns how many keys remain.
    pub fn cleanup(&self, now: u64) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.map.retain(|_, tat| *tat > now);
            if shard.map.capacity() > 64 && shard.map.capacity() > shard.map.len() * 4 {
                shard.map.shrink_to_fit();
            }
            total += shard.map.len();
        }
        total
    }

    /// Whether this store was built for `max_keys`.
    pub fn capacity_for(&self, max_keys: usize) -> bool {
        self.shard_cap == max_keys.div_ceil(SHARDS).max(1)
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the tables (capacity, not just length), for the
    /// memory-per-key figure.
    pub fn table_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Key, u64)>() + 1;
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.capacity() * slot)
            .sum()
    }
}

/// Frees one slot in a full shard (see the module documentation).
fn make_room(map: &mut HashMap<Key, u64>, now: u64) {
    let before = map.len();
    map.retain(|_, tat| *tat > now);
    if map.len() < before {
        return;
    }
    if let Some(victim) = map.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k) {
        map.remove(&victim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_cap_holds_under_a_flood_of_new_keys() {
        let store = KeyedStore::new(1024);
        let g = Gcra::new(1.0, 5);
        for i in 0..100_000u64 {
            store.decide(&g, Key(0, i), 0);
        }
        assert!(store.len() <= 1024, "{}", store.len());
    }

    #[test]
    fn a_flood_of_new_keys_does_not_evict_a_heavy_hitter() {
        let store = KeyedStore::new(SHARDS * 4);
        let g = Gcra::new(1.0, 2);
        let heavy = Key(0, u64::MAX);
        for _ in 0..3 {
            assert!(matches!(store.decide(&g, heavy, 0), Verdict::Allow { .. }));
        }
        assert!(matches!(store.decide(&g, heavy, 0), Verdict::Deny { .. }));
        for i in 0..50_000u64 {
            store.decide(&g, Key(1, i), 10 * MS);
        }
        assert!(
            matches!(store.decide(&g, heavy, 20 * MS), Verdict::Deny { .. }),
            "the flood reset the heavy hitter"
        );
    }

    #[test]
    fn cleanup_drops_replenished_keys_and_returns_memory() {
        let store = KeyedStore::new(1_000_000);
        let g = Gcra::new(10.0, 0);
        for i in 0..100_000u64 {
            store.decide(&g, Key(0, i), 0);
        }
        let full = store.table_bytes();
        assert_eq!(store.cleanup(50 * MS), 100_000, "nothing is replenished yet");
        assert_eq!(store.cleanup(100 * MS), 0);
        assert!(
            store.table_bytes() < full / 10,
            "{} of {full} bytes still held",
            store.table_bytes()
        );
    }
}
