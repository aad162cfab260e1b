//! The barrier the step workers meet at between steps.
//!
//! A step takes tens of microseconds, so waiting spins briefly before yielding: a sleeping
//! barrier (std's `Barrier`, a futex) costs about as much as the step itself to wake. Yielding
//! after the spin keeps progress when there are more workers than free cores.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Spins before each yield; a few microseconds.
const SPINS: u32 = 1 << 12;

pub(super) struct SpinBarrier {
    count: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    failed: AtomicBool,
}

/// Whether the other workers are still running.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Met {
    All,
    /// A worker panicked: the others stop instead of waiting for it forever.
    Abandoned,
}

impl SpinBarrier {
    pub fn new(count: usize) -> Self {
        Self {
            count,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Returns once all `count` workers have called `wait`; every write a worker made before its
    /// call is then visible to all of them.
    pub fn wait(&self) -> Met {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.count {
            // Nobody arrives for the next generation before seeing this one end, so the reset
            // cannot race with an arrival.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.store(generation + 1, Ordering::Release);
            return Met::All;
        }
        let mut spins = 0;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.failed.load(Ordering::Relaxed) {
                return Met::Abandoned;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Met::All
    }

    /// A guard that abandons the barrier if its worker unwinds.
    pub fn guard(&self) -> FailOnPanic<'_> {
        FailOnPanic(self)
    }
}

pub(super) struct FailOnPanic<'a>(&'a SpinBarrier);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_before_the_barrier_are_seen_after_it() {
        const WORKERS: usize = 3;
        const ROUNDS: usize = 200;
        let barrier = SpinBarrier::new(WORKERS);
        let slots: Vec<AtomicUsize> = (0..WORKERS).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|scope| {
            for w in 0..WORKERS {
                let (barrier, slots) = (&barrier, &slots);
                scope.spawn(move || {
                    for round in 1..=ROUNDS {
                        slots[w].store(round, Ordering::Relaxed);
                        assert_eq!(barrier.wait(), Met::All);
                        // Everyone has written this round and nobody the next one.
                        for slot in slots {
                            assert_eq!(slot.load(Ordering::Relaxed), round);
                        }
                        assert_eq!(barrier.wait(), Met::All);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_worker_releases_the_others() {
        let barrier = SpinBarrier::new(2);
        let result = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| barrier.wait());
            let failing = scope.spawn(|| {
                let _guard = barrier.guard();
                panic!("worker failed");
            });
            assert!(failing.join().is_err());
            waiter.join().unwrap()
        });
        assert_eq!(result, Met::Abandoned);
    }
}
