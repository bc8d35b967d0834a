//! Which worker the current thread is: set once by each worker thread as
//! it starts (`workers`), read by whatever keeps per-worker state (the
//! sharded metrics, the per-worker stack copies and upstream pools). A
//! leaf: it knows nothing of how workers are spawned.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running on this thread; `None` elsewhere (the
/// control runtime: admin, reloads, health checks).
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Makes this thread worker `index` (called once, by the worker thread).
pub fn set(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

/// This thread's slot among `slots` copies of per-worker state: one per
/// worker, the last for every other thread.
pub fn slot(slots: usize) -> usize {
    let other = slots.saturating_sub(1);
    current().map_or(other, |w| w.min(other))
}

/// Makes this thread count as worker `index` (unit tests of per-worker state).
#[cfg(test)]
pub fn set_current_for_tests(index: Option<usize>) {
    WORKER.with(|w| w.set(index));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_has_its_own_slot_and_every_other_thread_the_last() {
        std::thread::spawn(|| {
            assert_eq!(current(), None);
            assert_eq!(slot(3), 2, "a thread that is no worker");
            set(0);
            assert_eq!((current(), slot(3)), (Some(0), 0));
            set(7);
            assert_eq!(slot(3), 2, "more workers than slots share the last");
        })
        .join()
        .expect("thread");
    }
}
