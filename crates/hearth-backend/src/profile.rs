//! Opt-in timing of the device forward, op by op.
//!
//! With `HEARTH_PROFILE=1` in the environment, [`scope`] synchronises the device before and after
//! the closure it wraps and adds the elapsed wall time to a per-name total, so the totals are
//! what each op costs when it runs alone: host-side launch work plus device execution. Without
//! the variable, [`scope`] is one relaxed atomic load and a direct call (no synchronisation).
//! [`report`] returns the totals; [`reset`] clears them.
//!
//! ```
//! # #[cfg(feature = "cpu")] {
//! use burn::tensor::Tensor;
//! let dev = Default::default();
//! let y = hearth_backend::profile::scope::<hearth_backend::Cpu, _>(&dev, "ones", || {
//!     Tensor::<hearth_backend::Cpu, 1>::ones([4], &dev)
//! });
//! assert_eq!(y.dims(), [4]);
//! // without HEARTH_PROFILE nothing is recorded
//! if !hearth_backend::profile::enabled() {
//!     assert!(hearth_backend::profile::report().is_empty());
//! }
//! # }
//! ```

use burn::tensor::backend::Backend;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// 0 = not read yet, 1 = off, 2 = on.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Per-name totals: (name, calls, time).
static TOTALS: Mutex<Vec<(&'static str, u64, Duration)>> = Mutex::new(Vec::new());

/// Whether `HEARTH_PROFILE` is set to something other than `0` or empty (read once).
///
/// ```
/// let _ = hearth_backend::profile::enabled();
/// ```
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("HEARTH_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns the scopes on or off for the rest of the run, whatever `HEARTH_PROFILE` says: e.g. off
/// to time a step without the scopes' synchronisations, then on again for the per-op totals.
///
/// ```
/// let was = hearth_backend::profile::enabled();
/// hearth_backend::profile::set_enabled(false);
/// assert!(!hearth_backend::profile::enabled());
/// hearth_backend::profile::set_enabled(was);
/// ```
pub fn set_enabled(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Runs `f`; when profiling, between two device synchronisations, adding the time to `name`'s
/// total. A failed synchronisation is not fatal (the time is still recorded).
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// let x = hearth_backend::profile::scope::<hearth_backend::Cpu, _>(&Default::default(), "two", || 2);
/// assert_eq!(x, 2);
/// # }
/// ```
pub fn scope<B: Backend, T>(device: &B::Device, name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let _ = B::sync(device);
    let t0 = Instant::now();
    let out = f();
    let _ = B::sync(device);
    record(name, t0.elapsed());
    out
}

/// Adds `elapsed` to `name`'s total (one call).
///
/// ```
/// hearth_backend::profile::record("example", std::time::Duration::from_micros(3));
/// assert!(hearth_backend::profile::report().iter().any(|(n, c, _)| *n == "example" && *c >= 1));
/// ```
pub fn record(name: &'static str, elapsed: Duration) {
    let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    match t.iter_mut().find(|(n, _, _)| *n == name) {
        Some(e) => {
            e.1 += 1;
            e.2 += elapsed;
        }
        None => t.push((name, 1, elapsed)),
    }
}

/// The totals recorded so far, in first-seen order: `(name, calls, total time)`.
///
/// ```
/// let _ = hearth_backend::profile::report();
/// ```
pub fn report() -> Vec<(&'static str, u64, Duration)> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Clears the totals.
///
/// ```
/// hearth_backend::profile::reset();
/// ```
pub fn reset() {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
