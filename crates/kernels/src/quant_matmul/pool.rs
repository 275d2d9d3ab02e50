//! A small work-sharing pool for short, frequent kernels (a decode step runs ~200 matvecs of
//! 10–100 µs each): the caller always works, helpers join while they are awake, and the caller
//! never waits for a helper that has not started.
//!
//! Why not rayon or candle's `barrier_pool` (2-core dev VM shared with other builds; one decode
//! step of SmolLM2-135M matmuls, 66 MB of Q4_1, `quant_matmul_bench sweep`): a caller outside
//! rayon's pool sleeps on a condvar until the job is done, so every call pays thread wake-ups
//! (6.2–6.6 ms per step, vs 5.4–5.8 ms here, with the bench at real-time priority); candle's
//! barrier pool waits for *every* worker to run each call, so when another process holds a core
//! each call waits a scheduler slice (190–290 ms per step under a concurrent build, vs 4.8 ms on
//! one thread). Here the worst case is the single-thread time plus one claimed chunk.
//!
//! Protocol (all on sequentially consistent atomics):
//! - the caller publishes a job (its address in `slot`, then a new `epoch`), wakes parked helpers,
//!   and claims chunks of `[0, num_items)` from the job's cursor like everyone else;
//! - a helper first increments `active`, then reads `slot`: a null slot means the job is closed
//!   and the helper leaves without touching it; otherwise it claims chunks until none are left,
//!   then decrements `active`;
//! - when the cursor is exhausted the caller nulls `slot` and waits for `active == 0`. A helper that
//!   read a non-null slot incremented `active` before the caller nulled it (SC order), so the
//!   caller waits for it; a later helper sees null. The job (on the caller's stack) therefore
//!   outlives every use.
//!
//! Helpers spin on `epoch` for [`SPIN`] after their last job, then park on a condvar. One job at a
//! time: a concurrent (or nested) caller runs its work inline.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle helper spins before parking: long enough to bridge the gaps between the
/// matmuls of one decode step, short enough not to burn a core between requests.
const SPIN: Duration = Duration::from_micros(200);

struct Job<'a> {
    f: &'a (dyn Fn(Range<usize>) + Sync),
    num_items: usize,
    chunk: usize,
    cursor: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Claims and runs chunks until none are left.
    fn run(&self) {
        loop {
            let start = self.cursor.fetch_add(self.chunk, SeqCst);
            if start >= self.num_items {
                return;
            }
            (self.f)(start..self.num_items.min(start + self.chunk));
        }
    }
}

struct Shared {
    /// The open job, or null. Points into the publishing caller's stack frame.
    slot: AtomicPtr<Job<'static>>,
    epoch: AtomicU64,
    /// Helpers that may be using the job in `slot`.
    active: AtomicUsize,
    /// Parked helpers; changed only under `park_lock`.
    num_parked: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
}

pub(crate) struct Pool {
    shared: Arc<Shared>,
    num_helpers: usize,
    /// Held by the caller whose job is open.
    busy: Mutex<()>,
}

/// The process-wide pool: `rayon::current_num_threads() − 1` helpers (the caller is the last
/// thread), so `RAYON_NUM_THREADS` bounds both pools. Helpers start on first use.
pub(crate) fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads().saturating_sub(1)))
}

impl Pool {
    fn new(num_helpers: usize) -> Self {
        let shared = Arc::new(Shared {
            slot: AtomicPtr::new(ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            num_parked: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut started = 0;
        for helper_idx in 0..num_helpers {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("hearth-qmm-{helper_idx}"))
                .spawn(move || helper_loop(&shared));
            // A helper that cannot start only costs parallelism.
            if spawned.is_ok() {
                started += 1;
            }
        }
        Self { shared, num_helpers: started, busy: Mutex::new(()) }
    }

    /// Runs `f` over `[0, num_items)` in chunks of `chunk` items on the caller and any awake
    /// helpers; returns when every chunk has run. Panics (after all helpers are done) if `f`
    /// panicked on any thread.
    pub(crate) fn run(&self, num_items: usize, chunk: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let chunk = chunk.max(1);
        if self.num_helpers == 0 || num_items <= chunk {
            return f(0..num_items);
        }
        let guard = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return f(0..num_items), // another job is open
        };
        let job = Job { f, num_items, chunk, cursor: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
        let shared = &*self.shared;
        // Closes the job and waits for helpers inside it, also if `f` panics on this thread.
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.slot.store(ptr::null_mut(), SeqCst);
                let mut spins = 0u32;
                while self.0.active.load(SeqCst) != 0 {
                    // A helper inside the job may have been descheduled: after a short spin, let
                    // it have this core.
                    spins = spins.saturating_add(1);
                    if spins < 1024 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        // Created before publishing, so no path leaves this frame with the job published.
        let close = Close(shared);
        shared.slot.store(&job as *const Job<'_> as *mut Job<'static>, SeqCst);
        shared.epoch.fetch_add(1, SeqCst);
        if shared.num_parked.load(SeqCst) > 0 {
            let _lock = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        job.run();
        drop(close);
        drop(guard);
        if job.panicked.load(SeqCst) {
            panic!("a quantized-matmul helper thread panicked");
        }
    }
}

fn helper_loop(shared: &Shared) {
    let mut seen_epoch = shared.epoch.load(SeqCst);
    loop {
        // Wait for a new epoch: spin, then park.
        let spin_start = Instant::now();
        let mut spins = 0u32;
        while shared.epoch.load(SeqCst) == seen_epoch {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || spin_start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut lock = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.num_parked.fetch_add(1, SeqCst);
            while shared.epoch.load(SeqCst) == seen_epoch {
                lock = shared.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
            }
            shared.num_parked.fetch_sub(1, SeqCst);
        }
        seen_epoch = shared.epoch.load(SeqCst);
        shared.active.fetch_add(1, SeqCst);
        let job = shared.slot.load(SeqCst);
        if !job.is_null() {
            // SAFETY: `active` was incremented before this load saw a non-null slot, so the
            // publishing caller, which nulls the slot and then waits for `active == 0` before its
            // stack frame (holding the job) ends, is still waiting (see the module doc).
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| job.run())).is_err() {
                job.panicked.store(true, SeqCst);
            }
        }
        shared.active.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    fn counts_after_run(pool: &Pool, num_items: usize, chunk: usize) -> Vec<usize> {
        let counts: Vec<AtomicUsize> = (0..num_items).map(|_| AtomicUsize::new(0)).collect();
        pool.run(num_items, chunk, &|range: Range<usize>| {
            for idx in range {
                counts[idx].fetch_add(1, Relaxed);
            }
        });
        counts.iter().map(|c| c.load(Relaxed)).collect()
    }

    #[test]
    fn every_item_runs_exactly_once_for_any_size_and_chunk() {
        let pool = Pool::new(3);
        for (num_items, chunk) in [(0, 1), (1, 1), (5, 2), (96, 6), (1000, 7), (17, 100)] {
            for _ in 0..50 {
                let counts = counts_after_run(&pool, num_items, chunk);
                assert!(counts.iter().all(|&c| c == 1), "{num_items} items, chunk {chunk}: {counts:?}");
            }
        }
    }

    #[test]
    fn concurrent_and_nested_callers_each_get_complete_results() {
        let pool = Pool::new(2);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        assert!(counts_after_run(&pool, 64, 3).iter().all(|&c| c == 1));
                    }
                });
            }
        });
        // A job started from inside a job runs inline.
        let inner_ok = AtomicUsize::new(0);
        pool.run(8, 1, &|_| {
            if counts_after_run(&pool, 10, 2).iter().all(|&c| c == 1) {
                inner_ok.fetch_add(1, Relaxed);
            }
        });
        assert_eq!(inner_ok.load(Relaxed), 8);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = Pool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(100, 1, &|range: Range<usize>| assert!(range.start != 42, "item 42 fails"));
        }));
        assert!(result.is_err());
        assert!(counts_after_run(&pool, 100, 3).iter().all(|&c| c == 1));
    }
}
