//! GCRA, the generic cell rate algorithm (what `governor` implements), with
//! nginx `limit_req` semantics, and the clock it reads.
//!
//! State per key is one number, the theoretical arrival time (TAT). With
//! emission interval `T = 1/rate` and tolerance `tau = burst * T`, a request
//! at `now` conforms when `max(TAT, now) - now <= tau`; it then moves TAT on
//! by `T`. The backlog `max(TAT, now) - now` is also the delay nginx applies
//! without `nodelay`: requests leave at the rate. At 20 r/s with burst 10,
//! one client sending 100 r/s for 5 s gets exactly 110 through, as nginx.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic nanoseconds. Tests use [`FakeClock`]; governor's
/// clocks cannot be driven by tokio's paused time either, hence our own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since an arbitrary fixed origin.
    fn now(&self) -> u64;
}

/// The real clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// Sets the time since the origin (never backwards: replay feeds it sorted times).
    pub fn set(&self, since_origin: Duration) {
        let to = u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_max(to, Ordering::SeqCst);
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A rate and burst as GCRA parameters, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval `T`: time one request "costs".
    pub interval: u64,
    /// Tolerance `tau = burst * T`.
    pub tolerance: u64,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Conforming.
    Allow {
        /// How long the request would wait to leave at the rate (0 when
        /// it is within the rate; used when `nodelay` is off).
        backlog: u64,
        /// Further requests that would conform right now.
        remaining: u64,
        /// Time until the key is fully replenished.
        reset: u64,
    },
    /// Not conforming.
    Deny {
        /// Time until a request would conform again.
        retry_after: u64,
    },
}

impl Gcra {
    /// `per_second` requests a second with `burst` extra.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let interval = (1e9 / per_second).round().max(1.0) as u64;
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
        }
    }

    /// Decides a request at `now` for a key whose state is `tat`; returns
    /// the verdict and, when allowed, the new state.
    pub fn decide(&self, tat: Option<u64>, now: u64) -> (Verdict, Option<u64>) {
        let start = tat.unwrap_or(now).max(now);
        let backlog = start - now;
        if backlog > self.tolerance {
            return (
                Verdict::Deny {
                    retry_after: backlog - self.tolerance,
                },
                None,
            );
        }
        let new_tat = start.saturating_add(self.interval);
        let remaining = (self.tolerance - backlog) / self.interval;
        let reset = new_tat - now;
        (
            Verdict::Allow {
                backlog,
                remaining,
                reset,
            },
            Some(new_tat),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn run(g: &Gcra, times_ms: impl IntoIterator<Item = u64>) -> (usize, Option<u64>) {
        let mut tat = None;
        let mut allowed = 0;
        for t in times_ms {
            if let (Verdict::Allow { .. }, new) = g.decide(tat, t * MS) {
                allowed += 1;
                tat = new;
            }
        }
        (allowed, tat)
    }

    #[test]
    fn twenty_per_second_burst_ten_admits_110_of_500_in_five_seconds_like_nginx() {
        let g = Gcra::new(20.0, 10);
        assert_eq!(run(&g, (0..500).map(|i| i * 10)).0, 110);
    }

    #[test]
    fn with_burst_zero_a_second_request_10ms_later_is_refused() {
        let g = Gcra::new(20.0, 0);
        let (v, tat) = g.decide(None, 0);
        assert!(matches!(
            v,
            Verdict::Allow {
                backlog: 0,
                remaining: 0,
                ..
            }
        ));
        let (v, _) = g.decide(tat, 10 * MS);
        assert_eq!(v, Verdict::Deny { retry_after: 40 * MS });
    }

    #[test]
    fn backlog_is_the_wait_that_makes_requests_leave_at_the_rate() {
        let g = Gcra::new(20.0, 3);
        let mut tat = None;
        let mut backlogs = Vec::new();
        for _ in 0..5 {
            match g.decide(tat, 0) {
                (Verdict::Allow { backlog, .. }, new) => {
                    backlogs.push(backlog / MS);
                    tat = new;
                }
                (Verdict::Deny { .. }, _) => backlogs.push(u64::MAX),
            }
        }
        assert_eq!(backlogs, [0, 50, 100, 150, u64::MAX]);
    }

    #[test]
    fn remaining_and_reset_describe_the_bucket() {
        let g = Gcra::new(10.0, 4);
        let (v, _) = g.decide(None, 0);
        assert_eq!(
            v,
            Verdict::Allow {
                backlog: 0,
                remaining: 4,
                reset: 100 * MS
            }
        );
    }

    #[test]
    fn a_key_replenishes_at_the_rate() {
        let g = Gcra::new(10.0, 0);
        let (_, tat) = g.decide(None, 0);
        assert!(matches!(g.decide(tat, 99 * MS).0, Verdict::Deny { .. }));
        assert!(matches!(g.decide(tat, 100 * MS).0, Verdict::Allow { .. }));
    }

    #[test]
    fn per_minute_rates_work() {
        let g = Gcra::new(600.0 / 60.0, 0);
        assert_eq!(g.interval, 100 * MS);
    }

    #[test]
    fn the_fake_clock_moves_only_when_told() {
        let c = FakeClock::default();
        assert_eq!(c.now(), 0);
        c.advance(Duration::from_millis(5));
        assert_eq!(c.now(), 5 * MS);
    }
}
