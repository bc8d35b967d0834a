//! Log lines that any client can cause many times a second (a request
//! refused for overload, a replica failing under load, a retry) are
//! written at most once a second per call site: the metrics count every
//! event, the log says it is happening without becoming a flood.
//!
//! Contract: [`Throttle::allow`] is true for the first call in each
//! second (of the process's monotonic clock), false for the rest.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One call site's throttle; declare it `static`.
#[derive(Debug)]
pub struct Throttle {
    /// The second (since the first use of any throttle) last allowed, plus one.
    last: AtomicU64,
}

impl Throttle {
    /// A throttle that has allowed nothing yet.
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now.
    pub fn allow(&self) -> bool {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let second = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let last = self.last.load(Ordering::Relaxed);
        last != second
            && self
                .last
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_gets_through() {
        let throttle = Throttle::new();
        let allowed = (0..1_000).filter(|_| throttle.allow()).count();
        // The loop may straddle a second boundary.
        assert!((1..=2).contains(&allowed), "{allowed}");
    }
}
