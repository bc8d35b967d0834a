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
//!
//! A store built `shared` also keeps what the sync with other gateway nodes
//! needs (see `rate_limit::cluster`), beside the TATs rather than in them
//! (a store that is not shared pays nothing): per shard, the keys seen since
//! the last sync with the requests admitted for each, at most a shard's cap
//! of them, so a sync costs in proportion to the active keys, never to the
//! keys tracked or the requests served. [`KeyedStore::take_active`] hands
//! them over; [`KeyedStore::fold`] moves a key's state on to the cluster's.

use super::gcra::{Gcra, Verdict};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

pub use crate::client_ip::Key;

const SHARDS: usize = 64;

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Key, u64>,
    /// Shared stores: the keys seen since the last sync, with the requests
    /// admitted for each since then. A listed key is never dropped by
    /// cleanup or eviction before the sync takes it.
    active: HashMap<Key, u32>,
    /// The latest time this shard decided at: decisions never go back in
    /// time, even if a clock read on another core comes out earlier.
    latest: u64,
}

/// Keyed GCRA state with a cap.
#[derive(Debug)]
pub struct KeyedStore {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    shared: bool,
    // Keys are chosen by clients: keep SipHash with a random seed (no HashDoS).
    hasher: RandomState,
}

impl KeyedStore {
    /// A store holding at most `max_keys` keys (rounded up to a multiple of
    /// the shard count); `shared` keeps what a sync needs.
    pub fn new(max_keys: usize, shared: bool) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            shards,
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
            shared,
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
        let mut guard = self.shard(&key);
        let shard = &mut *guard;
        let now = now().max(shard.latest);
        shard.latest = now;
        let tat = shard.map.get(&key).copied();
        let (verdict, new_tat) = gcra.decide(tat, now);
        if let Some(new_tat) = new_tat {
            if tat.is_none() && shard.map.len() >= self.shard_cap {
                make_room(&mut shard.map, &shard.active, now);
            }
            shard.map.insert(key, new_tat);
        }
        // A refused request of an untracked key changes nothing.
        if self.shared && (tat.is_some() || new_tat.is_some()) {
            let listed = shard.active.len() < self.shard_cap || shard.active.contains_key(&key);
            if listed {
                *shard.active.entry(key).or_default() += u32::from(new_tat.is_some());
            }
        }
        verdict
    }

    /// The keys seen since the last call, each with the requests admitted
    /// for it since then and its TAT: what a sync publishes. Empty for a
    /// store that is not shared.
    pub fn take_active(&self) -> Vec<(Key, u32, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut guard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut *guard;
            out.extend(
                shard
                    .active
                    .drain()
                    .filter_map(|(key, admitted)| shard.map.get(&key).map(|tat| (key, admitted, *tat))),
            );
            if shard.active.capacity() > 64 {
                shard.active.shrink_to(64);
            }
        }
        out
    }

    /// Moves `key` on to the cluster's state: `tat` is the TAT the shared
    /// store holds (on this clock), which counts every node's requests up
    /// to the sync; the requests this node admitted since the sync began
    /// (`interval` each) come on top. A key whose state is already later
    /// keeps it; an untracked one is tracked when not yet replenished.
    pub fn fold(&self, key: Key, tat: u64, interval: u64) {
        let mut guard = self.shard(&key);
        let shard = &mut *guard;
        let now = shard.latest;
        let since = shard.active.get(&key).copied().unwrap_or(0);
        let cluster = tat.saturating_add(interval.saturating_mul(u64::from(since)));
        match shard.map.get_mut(&key) {
            Some(local) => *local = (*local).max(cluster),
            None if tat > now => {
                if shard.map.len() >= self.shard_cap {
                    make_room(&mut shard.map, &shard.active, now);
                }
                shard.map.insert(key, cluster);
            }
            None => {}
        }
    }

    /// Drops replenished keys and returns memory from shrunken tables;
    /// returns how many keys remain.
    pub fn cleanup(&self, now: u64) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut *guard;
            // A listed key stays until the sync takes it.
            shard.map.retain(|k, tat| *tat > now || shard.active.contains_key(k));
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
fn make_room(map: &mut HashMap<Key, u64>, active: &HashMap<Key, u32>, now: u64) {
    let before = map.len();
    map.retain(|k, tat| *tat > now || active.contains_key(k));
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
        let store = KeyedStore::new(1024, false);
        let g = Gcra::new(1.0, 5);
        for i in 0..100_000u64 {
            store.decide(&g, Key(0, i), 0);
        }
        assert!(store.len() <= 1024, "{}", store.len());
    }

    #[test]
    fn a_flood_of_new_keys_does_not_evict_a_heavy_hitter() {
        let store = KeyedStore::new(SHARDS * 4, false);
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
        let store = KeyedStore::new(1_000_000, false);
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

    #[test]
    fn a_shared_store_lists_each_seen_key_once_with_what_it_admitted() {
        let store = KeyedStore::new(1024, true);
        let g = Gcra::new(10.0, 1);
        let (a, b) = (Key(0, 1), Key(0, 2));
        for _ in 0..3 {
            store.decide(&g, a, 0);
        }
        store.decide(&g, b, 0);
        let mut taken = store.take_active();
        taken.sort_by_key(|(k, _, _)| k.1);
        assert_eq!(taken, [(a, 2, 200 * MS), (b, 1, 100 * MS)], "a: 2 admitted, 1 refused");
        assert!(store.take_active().is_empty(), "nothing seen since");
        store.decide(&g, a, 0);
        assert_eq!(
            store.take_active(),
            [(a, 0, 200 * MS)],
            "a refusal lists the key, admitting nothing"
        );
    }

    #[test]
    fn a_store_that_is_not_shared_lists_nothing() {
        let store = KeyedStore::new(1024, false);
        store.decide(&Gcra::new(10.0, 1), Key(0, 1), 0);
        assert!(store.take_active().is_empty());
    }

    #[test]
    fn fold_moves_a_key_on_to_the_cluster_state_plus_what_it_admitted_since() {
        let store = KeyedStore::new(1024, true);
        let g = Gcra::new(10.0, 2);
        let key = Key(0, 1);
        store.decide(&g, key, 0);
        store.take_active();
        // Admitted once more after the sync began: on top of the cluster's.
        store.decide(&g, key, 0);
        store.fold(key, 250 * MS, g.interval);
        // TAT 350 ms: backlog 350 > tolerance 200 until 150 ms.
        assert!(matches!(store.decide(&g, key, 149 * MS), Verdict::Deny { .. }));
        assert!(matches!(store.decide(&g, key, 150 * MS), Verdict::Allow { .. }));
        // A cluster state behind the local one changes nothing.
        store.fold(key, 0, g.interval);
        assert!(matches!(store.decide(&g, key, 151 * MS), Verdict::Deny { .. }));
    }

    #[test]
    fn fold_tracks_a_key_this_node_has_not_seen_only_while_it_is_not_replenished() {
        let store = KeyedStore::new(1024, true);
        let g = Gcra::new(10.0, 0);
        store.decide(&g, Key(0, 9), 50 * MS);
        store.fold(Key(0, 1), 40 * MS, g.interval);
        assert!(
            matches!(store.decide(&g, Key(0, 1), 50 * MS), Verdict::Allow { .. }),
            "replenished: not tracked"
        );
        store.fold(Key(0, 2), 200 * MS, g.interval);
        assert!(matches!(store.decide(&g, Key(0, 2), 60 * MS), Verdict::Deny { .. }));
    }

    #[test]
    fn cleanup_keeps_listed_keys_until_a_sync_takes_them() {
        let store = KeyedStore::new(1024, true);
        store.decide(&Gcra::new(10.0, 0), Key(0, 1), 0);
        assert_eq!(store.cleanup(500 * MS), 1, "replenished but not yet synced");
        assert_eq!(store.take_active(), [(Key(0, 1), 1, 100 * MS)]);
        assert_eq!(store.cleanup(500 * MS), 0);
    }
}
