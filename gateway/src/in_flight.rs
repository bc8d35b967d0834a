//! Requests in flight: the gateway-wide cap (`limits.max_requests_in_flight`,
//! 503 past it) and each client's share of it
//! (`limits.max_requests_in_flight_per_client`, 429 past it), so that one
//! client holding slow requests open cannot take every place. A request
//! holds its places until its response has been sent (or dropped).
//!
//! Neither keeps a queue: over a cap the answer is immediate. [`Places`]
//! is the layer's part of a request: the places it took, given back when
//! it is dropped.

use crate::client_ip::Key;
use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// What a request's places are counted against.
pub trait Shares {
    /// The gateway-wide limit.
    fn global(&self) -> &InFlightLimit;
    /// Each client's share.
    fn per_client(&self) -> &ClientInFlight;
    /// The client key of `ip` (keyed like the rate limiter).
    fn key(&self, ip: IpAddr) -> Key;
}

/// The in-flight places a request holds; given back when dropped. Holds
/// its `S` alive, so the request's layers can borrow it from here.
pub struct Places<S: Shares> {
    shares: Arc<S>,
    global: Cell<bool>,
    client: Cell<Option<ClientSlots>>,
}

impl<S: Shares> std::fmt::Debug for Places<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places")
            .field("global", &self.global.get())
            .field("client", &self.client.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Shares> Places<S> {
    /// No places yet, counted against `shares`.
    pub fn new(shares: Arc<S>) -> Self {
        Self {
            shares,
            global: Cell::new(false),
            client: Cell::new(None),
        }
    }

    /// What the places are counted against.
    pub fn shares(&self) -> &S {
        &self.shares
    }

    /// A place under `limits.max_requests_in_flight`.
    pub fn take_global(&self) -> bool {
        let taken = self.shares.global().try_take();
        self.global.set(taken);
        taken
    }

    /// A place under the share of the client at `ip` (none is needed for a
    /// request without a client address).
    pub fn take_client(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            return true;
        };
        let slots = self.shares.per_client().try_take(self.shares.key(ip));
        self.client.set(slots);
        slots.is_some()
    }
}

impl<S: Shares> Drop for Places<S> {
    fn drop(&mut self) {
        if self.global.get() {
            self.shares.global().release();
        }
        if let Some(slots) = self.client.get() {
            self.shares.per_client().release(slots);
        }
    }
}

/// Requests allowed in flight at once: one count taken with one atomic
/// add, no lock and no queue. tokio's semaphore locked its waiter list on
/// every release.
#[derive(Debug)]
pub struct InFlightLimit {
    count: AtomicUsize,
    max: usize,
}

impl InFlightLimit {
    /// A limit of `max` requests.
    pub fn new(max: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place; false when all are taken. Give it back with
    /// [`Self::release`].
    pub fn try_take(&self) -> bool {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back a place taken by [`Self::try_take`].
    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters per row of [`ClientInFlight`] (a power of two).
const COUNTERS: usize = 16_384;

/// Requests in flight per client key, counted in a fixed table (a
/// count-min sketch: two rows of 16,384 counters, 128 KiB however many
/// clients there are). A key's count is the smaller of its two counters,
/// so it is never under-counted; an innocent client is refused only if
/// both its counters are shared with clients at their cap, which for `h`
/// such clients happens with odds of about `(h / 16384)²` (four in a
/// million for a hundred). The hash is keyed with random seeds per
/// process, so collisions cannot be planned from outside; it is two folded
/// multiplications (a few instructions; SipHash cost about 180 a request).
pub struct ClientInFlight {
    rows: [Box<[AtomicU32]>; 2],
    max: u32,
    seeds: [u64; 2],
}

impl std::fmt::Debug for ClientInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInFlight")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// The counters one request holds in a [`ClientInFlight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSlots([u16; 2]);

impl ClientInFlight {
    /// At most `max` requests in flight per key.
    pub fn new(max: usize) -> Self {
        let row = || (0..COUNTERS).map(|_| AtomicU32::new(0)).collect();
        Self {
            rows: [row(), row()],
            max: u32::try_from(max).unwrap_or(u32::MAX),
            seeds: [fastrand::u64(..), fastrand::u64(..)],
        }
    }

    fn slots(&self, key: Key) -> ClientSlots {
        let h = folded_multiply(key.0 ^ self.seeds[0], 0x5851_f42d_4c95_7f2d);
        let h = folded_multiply(h ^ key.1 ^ self.seeds[1], 0x2d35_8dcc_aa6c_78a5);
        let mask = COUNTERS as u64 - 1;
        // Both below COUNTERS (16,384): they fit in 16 bits.
        ClientSlots([(h & mask) as u16, ((h >> 32) & mask) as u16])
    }

    /// Takes a place for `key`; `None` when it already has `max` in flight.
    pub fn try_take(&self, key: Key) -> Option<ClientSlots> {
        let slots = self.slots(key);
        let before = slots
            .0
            .iter()
            .zip(&self.rows)
            .map(|(&i, row)| row[usize::from(i)].fetch_add(1, Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if before >= self.max {
            self.release(slots);
            return None;
        }
        Some(slots)
    }

    /// Gives back a place taken by [`Self::try_take`].
    pub fn release(&self, slots: ClientSlots) {
        for (&i, row) in slots.0.iter().zip(&self.rows) {
            row[usize::from(i)].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The count for `key` (the smaller of its counters).
    pub fn count(&self, key: Key) -> u32 {
        let slots = self.slots(key);
        slots
            .0
            .iter()
            .zip(&self.rows)
            .map(|(&i, row)| row[usize::from(i)].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// The high and low halves of a full 64 × 64 bit product, combined.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_wide_cap_refuses_past_max_until_a_place_is_given_back() {
        let limit = InFlightLimit::new(2);
        assert!(limit.try_take());
        assert!(limit.try_take());
        assert!(!limit.try_take());
        limit.release();
        assert!(limit.try_take());
    }

    #[test]
    fn one_client_at_its_cap_leaves_every_other_client_its_own() {
        let per_client = ClientInFlight::new(3);
        let heavy = Key(0, 0xffff_0000_0000 | 0xc000_0201);
        let held: Vec<ClientSlots> = (0..3)
            .map(|_| per_client.try_take(heavy).expect("under the cap"))
            .collect();
        assert_eq!(per_client.try_take(heavy), None, "a fourth is refused");
        assert_eq!(per_client.count(heavy), 3, "a refusal leaves no trace");
        // Thousands of other clients (IPv4 keys differ in their low word
        // only) each still get their places.
        for n in 2..5_000u64 {
            let other = Key(0, 0xffff_0000_0000 | (0xc000_0200 + n));
            let slots = per_client.try_take(other).expect("another client is not refused");
            per_client.release(slots);
        }
        per_client.release(held[0]);
        assert!(
            per_client.try_take(heavy).is_some(),
            "a place given back can be taken again"
        );
    }

    #[test]
    fn neighbouring_addresses_spread_over_the_counters() {
        let per_client = ClientInFlight::new(1);
        let mut seen = std::collections::HashSet::new();
        let mut both = std::collections::HashSet::new();
        for n in 0..1_000u64 {
            let slots = per_client.slots(Key(0, 0xffff_0000_0000 | (0x0a00_0000 + n)));
            seen.insert(slots.0[0]);
            both.insert(slots.0);
        }
        // 1,000 keys into 16,384 counters: about 30 share one by chance.
        assert!(seen.len() > 900, "{} distinct counters for 1000 keys", seen.len());
        // Two keys sharing both counters: odds of about 1 in 500 for any pair here.
        assert!(both.len() >= 999, "{} distinct counter pairs for 1000 keys", both.len());
    }
}
