//! Upstreams: a set of replicas (endpoints) with their health, and picking.
//!
//! An endpoint is available when active health checks (if any) say healthy
//! and passive health has not ejected it. Passive health follows nginx's
//! `max_fails`/`fail_timeout`: `max_fails` failures within `fail_timeout`
//! eject the endpoint for `fail_timeout`; a success clears the count.

use crate::config::{Balance, UpstreamSettings};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One replica.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as an `authority` for upstream URIs.
    pub authority: http::uri::Authority,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    /// End of a passive ejection (`instant_code`), 0 when not ejected: read
    /// on every pick, so a plain load rather than a lock.
    ejected_until: AtomicU64,
    /// Whether `passive` holds failures (spares successes the lock).
    failing: AtomicBool,
    passive: Mutex<Passive>,
    active: Mutex<Streak>,
}

#[derive(Debug, Default)]
struct Passive {
    failures: u32,
    window_start: Option<Instant>,
}

/// `t` as a non-zero number of nanoseconds since the first call.
fn instant_code(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(epoch).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[derive(Debug, Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

/// Holds one unit of an endpoint's in-flight count until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint counted.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    /// A new endpoint, healthy until proven otherwise.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        let authority = addr.to_string().parse().expect("a socket address is a valid authority");
        Arc::new(Self {
            addr,
            authority,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            passive: Mutex::new(Passive::default()),
            active: Mutex::new(Streak::default()),
        })
    }

    /// Requests currently sent to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard drops.
    pub fn start(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Whether active checks pass (always, without active checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive health has it ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && instant_code(now) < until
    }

    /// Whether requests may go here now.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    /// A failed connect, reset or timeout. Returns true when this failure
    /// ejects the endpoint.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        let now = Instant::now();
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        if p.window_start
            .is_none_or(|start| now.duration_since(start) > fail_timeout)
        {
            p.window_start = Some(now);
            p.failures = 0;
        }
        p.failures += 1;
        self.failing.store(true, Ordering::Relaxed);
        if p.failures >= max_fails && !self.is_ejected(now) {
            self.ejected_until
                .store(instant_code(now + fail_timeout), Ordering::Relaxed);
            p.failures = 0;
            p.window_start = None;
            return true;
        }
        false
    }

    /// A successful exchange: clears the failure count.
    pub fn record_success(&self) {
        if !self.failing.load(Ordering::Relaxed) {
            return;
        }
        self.failing.store(false, Ordering::Relaxed);
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        if p.failures != 0 {
            p.failures = 0;
            p.window_start = None;
        }
    }

    /// An active probe's result; returns `Some(new state)` when it flips.
    pub fn record_probe(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        let mut s = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            s.successes += 1;
            s.failures = 0;
        } else {
            s.failures += 1;
            s.successes = 0;
        }
        let was = self.is_healthy();
        let now = if was {
            s.failures < unhealthy_after
        } else {
            s.successes >= healthy_after
        };
        if now != was {
            self.healthy.store(now, Ordering::Relaxed);
            if now {
                // Back from the dead: forget passive ejection too.
                let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
                *p = Passive::default();
                self.failing.store(false, Ordering::Relaxed);
                self.ejected_until.store(0, Ordering::Relaxed);
            }
            Some(now)
        } else {
            None
        }
    }
}

/// A named group of replicas and how to choose among them.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the configuration.
    pub name: String,
    /// Its settings.
    pub settings: UpstreamSettings,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
}

impl Upstream {
    /// An upstream with an initial endpoint set.
    pub fn new(name: &str, settings: UpstreamSettings, addrs: &[SocketAddr]) -> Self {
        let upstream = Self {
            name: name.to_string(),
            settings,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        };
        upstream.set_endpoints(addrs);
        upstream
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set, keeping the state (health, in-flight) of
    /// addresses that stay. Returns whether the set changed.
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) -> bool {
        let current = self.endpoints.load();
        let mut sorted: Vec<SocketAddr> = addrs.to_vec();
        sorted.sort();
        sorted.dedup();
        if sorted.len() == current.len() && sorted.iter().zip(current.iter()).all(|(a, e)| *a == e.addr) {
            return false;
        }
        let next: Vec<Arc<Endpoint>> = sorted
            .iter()
            .map(|a| {
                current
                    .iter()
                    .find(|e| e.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(*a))
            })
            .collect();
        self.endpoints.store(Arc::new(next));
        true
    }

    /// How many endpoints there are (available or not).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.load().len()
    }

    /// Endpoints available now.
    pub fn available_count(&self) -> usize {
        let now = Instant::now();
        self.endpoints.load().iter().filter(|e| e.is_available(now)).count()
    }

    /// Picks an available endpoint not in `exclude`, by the configured
    /// algorithm; `None` when there is none.
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let now = Instant::now();
        let endpoints = self.endpoints.load();
        let ok = |e: &&Arc<Endpoint>| !exclude.contains(&e.addr) && e.is_available(now);
        let candidates = endpoints.iter().filter(ok).count();
        if candidates == 0 {
            return None;
        }
        let nth = |k: usize| endpoints.iter().filter(ok).nth(k).cloned();
        match self.settings.balance {
            Balance::RoundRobin => nth(self.next.fetch_add(1, Ordering::Relaxed) % candidates),
            Balance::LeastRequests if candidates == 1 => nth(0),
            Balance::LeastRequests => {
                let a = fastrand::usize(..candidates);
                let mut b = fastrand::usize(..candidates - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a)?, nth(b)?);
                Some(if b.in_flight() < a.in_flight() { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 10_000 + i))).collect()
    }

    fn upstream(balance: Balance, n: u16) -> Upstream {
        let settings = UpstreamSettings {
            balance,
            ..UpstreamSettings::default()
        };
        Upstream::new("u", settings, &addrs(n))
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let u = upstream(Balance::RoundRobin, 3);
        let picks: Vec<u16> = (0..6).map(|_| u.pick(&[]).expect("some").addr.port()).collect();
        assert_eq!(picks, [10_000, 10_001, 10_002, 10_000, 10_001, 10_002]);
    }

    #[test]
    fn least_requests_prefers_the_idle_replica() {
        let u = upstream(Balance::LeastRequests, 2);
        let busy = u.endpoints()[0].clone();
        let _guards: Vec<InFlight> = (0..5).map(|_| busy.clone().start()).collect();
        for _ in 0..20 {
            assert_eq!(u.pick(&[]).expect("some").addr.port(), 10_001);
        }
    }

    #[test]
    fn excluded_and_ejected_replicas_are_skipped() {
        let u = upstream(Balance::RoundRobin, 3);
        let e0 = u.endpoints()[0].clone();
        assert!(!e0.record_failure(2, Duration::from_secs(10)));
        assert!(
            e0.record_failure(2, Duration::from_secs(10)),
            "the second failure ejects"
        );
        for _ in 0..6 {
            let port = u
                .pick(&[SocketAddr::from(([127, 0, 0, 1], 10_001))])
                .expect("some")
                .addr
                .port();
            assert_eq!(port, 10_002);
        }
        assert_eq!(u.available_count(), 2);
    }

    #[test]
    fn ejection_ends_after_fail_timeout() {
        let e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(e.record_failure(1, Duration::from_millis(30)));
        assert!(!e.is_available(Instant::now()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(e.is_available(Instant::now()));
    }

    #[test]
    fn probes_flip_health_after_the_thresholds() {
        let e = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(e.record_probe(false, 2, 2), None);
        assert_eq!(e.record_probe(false, 2, 2), Some(false));
        assert_eq!(e.record_probe(true, 2, 2), None);
        assert_eq!(e.record_probe(true, 2, 2), Some(true));
    }

    #[test]
    fn a_new_endpoint_set_keeps_the_state_of_survivors() {
        let u = upstream(Balance::RoundRobin, 2);
        let survivor = u.endpoints()[1].clone();
        let _g = survivor.clone().start();
        assert!(u.set_endpoints(&[survivor.addr, SocketAddr::from(([127, 0, 0, 1], 9))]));
        let kept = u
            .endpoints()
            .iter()
            .find(|e| e.addr == survivor.addr)
            .cloned()
            .expect("kept");
        assert_eq!(kept.in_flight(), 1);
        assert!(
            !u.set_endpoints(&[SocketAddr::from(([127, 0, 0, 1], 9)), survivor.addr]),
            "same set"
        );
        assert_eq!(u.pick(&[]).map(|_| ()), Some(()));
    }
}
