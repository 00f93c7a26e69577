//! The host forward's own thread pool: rayon workers that do not fall asleep between the
//! parallel regions of a step.
//!
//! A decode step runs some 5 parallel regions per layer (projections, attention, MLP), each a
//! few tens of µs of work. With a plain rayon pool the idle workers go to sleep after ~30 µs and
//! must be woken (a futex call, and in a VM an inter-processor interrupt) for the next region,
//! which costs as much as the region itself on small models. Here every worker runs one long
//! loop for the pool's lifetime: while any forward is in flight it spins, taking rayon work with
//! [`rayon::yield_now`] (the regions' own tasks, the forward itself), and it parks on a condition
//! variable only after [`IDLE_SPIN`] without a forward. The loop allocates nothing, so a decode
//! step on this pool stays allocation-free.

use rayon::{ThreadPool, ThreadPoolBuilder, Yield};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long workers keep spinning after the last forward ended (so consecutive decode steps,
/// separated by sampling on the caller's thread, find them awake).
const IDLE_SPIN: Duration = Duration::from_millis(5);

#[derive(Default)]
struct State {
    /// Forwards in flight.
    active: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A rayon pool whose workers spin while a forward is in flight (see the module docs).
pub(crate) struct SpinPool {
    pool: ThreadPool,
    state: Arc<State>,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

impl SpinPool {
    pub(crate) fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("hearth-host-{i}"))
            .build()?;
        let state = Arc::new(State::default());
        // `HEARTH_NO_SPIN=1`: plain rayon workers (for A/B measurements)
        if std::env::var_os("HEARTH_NO_SPIN").is_none() {
            let s = state.clone();
            pool.spawn_broadcast(move |_| worker(&s));
        }
        Ok(SpinPool { pool, state })
    }

    pub(crate) fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on a worker of the pool, with every other worker spinning for its tasks.
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        struct Active<'a>(&'a State);
        impl Drop for Active<'_> {
            fn drop(&mut self) {
                self.0.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.state.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(&self.state);
        {
            // pairs with the check under the lock in `worker`: no wake-up is lost
            let _g = self.state.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.state.wake.notify_all();
        }
        self.pool.install(f)
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.state.shutdown.store(true, Ordering::SeqCst);
        let _g = self.state.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.state.wake.notify_all();
        // `pool` drops after this: its workers leave `worker` and then the pool
    }
}

/// Idle polls between two `sched_yield`s of a spinning worker: with more runnable threads
/// than cores (several models, a test harness) the spinners give way; alone, the call returns
/// at once.
const POLLS_PER_YIELD: u32 = 1024;

fn worker(s: &State) {
    let mut last_busy = Instant::now();
    let mut idle_polls = 0u32;
    loop {
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        if s.active.load(Ordering::Acquire) > 0 {
            if rayon::yield_now() == Some(Yield::Executed) {
                idle_polls = 0;
            } else {
                idle_polls += 1;
                if idle_polls.is_multiple_of(POLLS_PER_YIELD) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            last_busy = Instant::now();
            continue;
        }
        // no forward in flight: keep taking work (a job injected between the checks) for a
        // while, then park until the next forward or shutdown
        if rayon::yield_now() == Some(Yield::Executed) || last_busy.elapsed() < IDLE_SPIN {
            std::hint::spin_loop();
            continue;
        }
        let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        while s.active.load(Ordering::SeqCst) == 0 && !s.shutdown.load(Ordering::SeqCst) {
            g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        last_busy = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn runs_parallel_work_on_every_thread_and_shuts_down() {
        for threads in [1, 2, 3] {
            let pool = SpinPool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for round in 0..50u64 {
                let sum: u64 = pool.install(|| (0..10_000u64).into_par_iter().map(|i| i * round).sum());
                assert_eq!(sum, round * 10_000 * 9_999 / 2);
                if round % 10 == 0 {
                    // let the workers park, then wake them with the next forward
                    std::thread::sleep(IDLE_SPIN * 2);
                }
            }
            let seen = pool.install(|| {
                let seen = Mutex::new(std::collections::HashSet::new());
                (0..64).into_par_iter().for_each(|_| {
                    std::thread::sleep(Duration::from_millis(1));
                    seen.lock().unwrap().insert(rayon::current_thread_index());
                });
                seen.into_inner().unwrap().len()
            });
            assert_eq!(seen, threads, "work should spread over all {threads} workers");
        }
    }

    #[test]
    fn concurrent_forwards_and_panics_leave_the_pool_usable() {
        let pool = Arc::new(SpinPool::new(2).unwrap());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(|| panic!("boom"))));
        assert!(r.is_err());
        assert_eq!(pool.state.active.load(Ordering::SeqCst), 0);
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let p = pool.clone();
                std::thread::spawn(move || p.install(|| (0..1000u64).into_par_iter().map(|i| i + k).sum::<u64>()))
            })
            .collect();
        for (k, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), 999 * 1000 / 2 + 1000 * k as u64);
        }
    }
}
