//! One runtime's connections to an upstream's replicas: the idle ones kept
//! for reuse, and, per replica, how many are open and how many requests
//! wait for one.
//!
//! Contract: [`RuntimePool::reserve`] hands out a pooled connection, or a
//! place for a new one ([`OpenPlace`], counted open until it is dropped:
//! by the task driving the connection when it closes, or at once if the
//! connection cannot be made), or a place in the queue ([`QueuePlace`],
//! counted waiting until dropped), or nothing when the queue is full. The
//! counts live in the places, so a request cancelled at any await (a
//! client gone, a stream reset, shutdown) gives its place back: they can
//! neither leak nor wedge a replica's pool.

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A runtime's connections, in an allocation of its own: a worker's
/// requests lock it and count references to it, no other worker does.
#[derive(Debug)]
#[repr(align(64))]
pub struct RuntimePool {
    replicas: Mutex<Vec<Replica>>,
    keepalive_timeout: Duration,
    max_idle: usize,
    /// This runtime's share of `max_connections` per replica.
    max_open: usize,
    /// This runtime's share of `max_queue` per replica.
    max_queue: usize,
}

#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    /// Oldest first; checkout takes the newest, a full pool drops the oldest.
    idle: VecDeque<Idle>,
    /// Connections open from this runtime, idle or busy.
    open: usize,
    /// Requests waiting for one of them.
    waiting: usize,
    /// Wakes one waiter when a connection comes back or closes.
    freed: Arc<Notify>,
}

impl Replica {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            idle: VecDeque::new(),
            open: 0,
            waiting: 0,
            freed: Arc::default(),
        }
    }

    /// Wakes a waiter, if any, for a connection that came free.
    fn wake_one(&self) {
        if self.waiting > 0 {
            self.freed.notify_one();
        }
    }
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Still open and idle for less than `keepalive_timeout`.
    fn is_live(&self, keepalive_timeout: Duration) -> bool {
        self.since.elapsed() < keepalive_timeout && !self.sender.is_closed()
    }
}

/// What a request gets from its runtime's pool.
#[derive(Debug)]
pub enum Reserve {
    /// A pooled connection.
    Idle(SendRequest<Body>),
    /// Room for a new connection.
    Connect(OpenPlace),
    /// Every connection is busy: a place in the queue.
    Wait(QueuePlace),
    /// Busy, and the queue is full.
    Full,
}

/// A connection counted open to a replica; dropping it frees the place and
/// wakes a waiter.
#[derive(Debug)]
pub struct OpenPlace {
    pool: Arc<RuntimePool>,
    addr: SocketAddr,
}

impl Drop for OpenPlace {
    fn drop(&mut self) {
        self.pool.with_replica(self.addr, |r| {
            debug_assert!(r.open > 0, "an open place given back twice");
            r.open = r.open.saturating_sub(1);
            r.wake_one();
        });
    }
}

/// A request counted waiting for a connection to a replica; dropping it
/// leaves the queue.
#[derive(Debug)]
pub struct QueuePlace {
    pool: Arc<RuntimePool>,
    addr: SocketAddr,
    freed: Arc<Notify>,
}

impl QueuePlace {
    /// Waits until a connection comes free or `until` passes (false then).
    pub async fn woken_before(&self, until: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(until, self.freed.notified()).await.is_ok()
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.pool.with_replica(self.addr, |r| {
            debug_assert!(r.waiting > 0, "a queue place given back twice");
            r.waiting = r.waiting.saturating_sub(1);
        });
    }
}

impl RuntimePool {
    /// A pool keeping at most `max_idle` idle connections per replica for
    /// `keepalive_timeout`, with `max_open` open and `max_queue` waiting
    /// per replica at most.
    pub fn new(keepalive_timeout: Duration, max_idle: usize, max_open: usize, max_queue: usize) -> Self {
        Self {
            replicas: Mutex::new(Vec::new()),
            keepalive_timeout,
            max_idle,
            max_open,
            max_queue,
        }
    }

    /// How long an idle connection is kept.
    pub fn keepalive_timeout(&self) -> Duration {
        self.keepalive_timeout
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Replica>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_replica(&self, addr: SocketAddr, f: impl FnOnce(&mut Replica)) {
        if let Some(r) = self.lock().iter_mut().find(|r| r.addr == addr) {
            f(r);
        }
    }

    /// The newest live idle connection to `addr` (expired ones dropped), or
    /// a place for a new one, or a place in the queue for one.
    pub fn reserve(self: &Arc<Self>, addr: SocketAddr) -> Reserve {
        let mut replicas = self.lock();
        let index = match replicas.iter().position(|r| r.addr == addr) {
            Some(i) => i,
            None => {
                replicas.push(Replica::new(addr));
                replicas.len() - 1
            }
        };
        let replica = &mut replicas[index];
        while let Some(idle) = replica.idle.pop_back() {
            if idle.is_live(self.keepalive_timeout) {
                return Reserve::Idle(idle.sender);
            }
        }
        let pool = self.clone();
        if replica.open < self.max_open {
            replica.open += 1;
            return Reserve::Connect(OpenPlace { pool, addr });
        }
        if replica.waiting >= self.max_queue {
            return Reserve::Full;
        }
        replica.waiting += 1;
        let freed = replica.freed.clone();
        Reserve::Wait(QueuePlace { pool, addr, freed })
    }

    /// Drops expired and closed idle connections, and replicas with
    /// nothing left to track.
    pub fn sweep(&self) {
        let mut replicas = self.lock();
        for replica in replicas.iter_mut() {
            replica.idle.retain(|i| i.is_live(self.keepalive_timeout));
        }
        replicas.retain(|r| !r.idle.is_empty() || r.open > 0 || r.waiting > 0);
    }

    /// Back into the pool, unless closed or the pool is full (the oldest goes).
    pub fn put(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        // The replica is tracked for as long as a connection to it is open.
        self.with_replica(addr, |replica| {
            if replica.idle.len() >= self.max_idle {
                replica.idle.pop_front();
            }
            replica.idle.push_back(idle);
            replica.wake_one();
        });
    }

    /// `(open, waiting)` for `addr` (tests and diagnostics).
    pub fn counts(&self, addr: SocketAddr) -> (usize, usize) {
        self.lock()
            .iter()
            .find(|r| r.addr == addr)
            .map_or((0, 0), |r| (r.open, r.waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().expect("addr")
    }

    #[tokio::test]
    async fn places_are_counted_while_held_and_given_back_when_dropped() {
        let pool = Arc::new(RuntimePool::new(Duration::from_secs(5), 4, 1, 1));
        let Reserve::Connect(open) = pool.reserve(addr()) else {
            panic!("room for one")
        };
        let Reserve::Wait(queued) = pool.reserve(addr()) else {
            panic!("a place in the queue")
        };
        assert!(matches!(pool.reserve(addr()), Reserve::Full));
        assert_eq!(pool.counts(addr()), (1, 1));
        drop(queued);
        drop(open);
        assert_eq!(pool.counts(addr()), (0, 0));
        assert!(matches!(pool.reserve(addr()), Reserve::Connect(_)));
    }

    #[tokio::test]
    async fn a_wait_cancelled_midway_leaves_the_queue() {
        let pool = Arc::new(RuntimePool::new(Duration::from_secs(5), 4, 1, 1));
        let Reserve::Connect(_open) = pool.reserve(addr()) else {
            panic!("room for one")
        };
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                if let Reserve::Wait(place) = pool.reserve(addr()) {
                    place
                        .woken_before(tokio::time::Instant::now() + Duration::from_secs(60))
                        .await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.counts(addr()), (1, 1));
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(pool.counts(addr()), (1, 0), "the cancelled wait gave its place back");
    }

    #[tokio::test]
    async fn a_freed_place_wakes_a_waiter() {
        let pool = Arc::new(RuntimePool::new(Duration::from_secs(5), 4, 1, 1));
        let Reserve::Connect(open) = pool.reserve(addr()) else {
            panic!("room for one")
        };
        let Reserve::Wait(queued) = pool.reserve(addr()) else {
            panic!("queued")
        };
        drop(open);
        assert!(
            queued
                .woken_before(tokio::time::Instant::now() + Duration::from_secs(5))
                .await
        );
    }
}
