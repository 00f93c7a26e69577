//! Per-layer expert load statistics and their table rendering.

use std::collections::VecDeque;
use std::fmt::Write as _;

use crate::{MoeError, Routing};

/// Unit of [`LoadStats::entropy`].
///
/// ```
/// use hearth_moe::EntropyUnit;
///
/// assert_ne!(EntropyUnit::Nats, EntropyUnit::Bits);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntropyUnit {
    /// Natural logarithm; a uniform load over `n` experts has entropy `ln n`.
    Nats,
    /// Base-2 logarithm; a uniform load over `n` experts has entropy `log2 n`.
    Bits,
}

/// Token-to-expert assignment counts of one MoE layer, either since creation / the last
/// [`LoadStats::reset`] or over a sliding window of the last `N` recorded routing calls.
///
/// A token routed to `k` experts counts once for each of them, so after routing `T` tokens
/// [`LoadStats::total`] is `T * k`.
///
/// ```
/// use hearth_moe::{EntropyUnit, LoadStats};
///
/// let mut s = LoadStats::windowed(4, 2)?;
/// s.record_counts(&[4, 0, 0, 0])?;
/// s.record_counts(&[1, 1, 1, 1])?;
/// s.record_counts(&[1, 1, 1, 1])?; // the first call leaves the window
/// assert_eq!(s.counts(), &[2, 2, 2, 2]);
/// assert_eq!(s.max_mean_ratio(), Some(1.0));
/// assert!((s.entropy(EntropyUnit::Bits).unwrap() - 2.0).abs() < 1e-12);
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LoadStats {
    n_experts: usize,
    window: Option<usize>,
    history: VecDeque<Vec<u64>>,
    /// The last entry that left the window, reused for the next call.
    spare: Option<Vec<u64>>,
    totals: Vec<u64>,
    calls: u64,
}

/// Equal when they describe the same calls (the reused buffer does not count).
impl PartialEq for LoadStats {
    fn eq(&self, o: &Self) -> bool {
        (self.n_experts, self.window, &self.history, &self.totals, self.calls)
            == (o.n_experts, o.window, &o.history, &o.totals, o.calls)
    }
}

impl LoadStats {
    /// Cumulative statistics (since creation or the last [`LoadStats::reset`]).
    ///
    /// ```
    /// let s = hearth_moe::LoadStats::new(8);
    /// assert_eq!((s.n_experts(), s.total(), s.window()), (8, 0, None));
    /// ```
    pub fn new(n_experts: usize) -> Self {
        Self {
            n_experts,
            window: None,
            history: VecDeque::new(),
            spare: None,
            totals: vec![0; n_experts],
            calls: 0,
        }
    }

    /// Statistics over the last `window` recorded calls.
    ///
    /// # Errors
    /// [`MoeError::ZeroWindow`] if `window == 0`.
    ///
    /// ```
    /// assert!(hearth_moe::LoadStats::windowed(8, 0).is_err());
    /// assert_eq!(hearth_moe::LoadStats::windowed(8, 16)?.window(), Some(16));
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn windowed(n_experts: usize, window: usize) -> Result<Self, MoeError> {
        if window == 0 {
            return Err(MoeError::ZeroWindow);
        }
        Ok(Self {
            window: Some(window),
            history: VecDeque::with_capacity(window + 1),
            spare: None,
            ..Self::new(n_experts)
        })
    }

    /// Number of experts.
    ///
    /// ```
    /// assert_eq!(hearth_moe::LoadStats::new(3).n_experts(), 3);
    /// ```
    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    /// The sliding-window length in calls, or `None` for cumulative statistics.
    ///
    /// ```
    /// assert_eq!(hearth_moe::LoadStats::new(3).window(), None);
    /// ```
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Records one routing call.
    ///
    /// # Errors
    /// [`MoeError::ExpertCountMismatch`] if the routing is for another number of experts.
    ///
    /// ```
    /// use hearth_moe::{LoadStats, RouterSpec};
    ///
    /// let r = RouterSpec::mixtral(2, 1)?.route(&[1.0, 0.0, 1.0, 0.0], 2, None)?;
    /// let mut s = LoadStats::new(2);
    /// s.record(&r)?;
    /// assert_eq!(s.counts(), &[2, 0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn record(&mut self, routing: &Routing) -> Result<(), MoeError> {
        self.check(routing.n_experts())?;
        let counts: Vec<u64> = routing.expert_counts().iter().map(|&c| c as u64).collect();
        self.push(&counts);
        Ok(())
    }

    /// Records one call given as per-expert assignment counts.
    ///
    /// # Errors
    /// [`MoeError::ExpertCountMismatch`] if `counts.len() != n_experts`.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(2);
    /// s.record_counts(&[3, 1])?;
    /// assert_eq!(s.total(), 4);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn record_counts(&mut self, counts: &[u64]) -> Result<(), MoeError> {
        self.check(counts.len())?;
        self.push(counts);
        Ok(())
    }

    fn check(&self, n: usize) -> Result<(), MoeError> {
        if n == self.n_experts {
            Ok(())
        } else {
            Err(MoeError::ExpertCountMismatch {
                expected: self.n_experts,
                actual: n,
            })
        }
    }

    /// Adds one call's counts (allocation-free once a windowed history is full: the entry
    /// that leaves the window is reused for the next one).
    fn push(&mut self, counts: &[u64]) {
        for (t, c) in self.totals.iter_mut().zip(counts) {
            *t += c;
        }
        self.calls += 1;
        if let Some(window) = self.window {
            let mut entry = self.spare.take().unwrap_or_default();
            entry.clear();
            entry.extend_from_slice(counts);
            self.history.push_back(entry);
            if self.history.len() > window
                && let Some(old) = self.history.pop_front()
            {
                for (t, c) in self.totals.iter_mut().zip(&old) {
                    *t -= c;
                }
                self.calls -= 1;
                self.spare = Some(old);
            }
        }
    }

    /// Forgets everything recorded so far.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(2);
    /// s.record_counts(&[3, 1])?;
    /// s.reset();
    /// assert_eq!((s.total(), s.calls()), (0, 0));
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn reset(&mut self) {
        self.totals.iter_mut().for_each(|t| *t = 0);
        self.history.clear();
        self.calls = 0;
    }

    /// Assignments per expert over the covered calls.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(2);
    /// s.record_counts(&[3, 1])?;
    /// s.record_counts(&[1, 1])?;
    /// assert_eq!(s.counts(), &[4, 2]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn counts(&self) -> &[u64] {
        &self.totals
    }

    /// Number of routing calls currently covered (at most the window).
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::windowed(2, 1)?;
    /// s.record_counts(&[1, 0])?;
    /// s.record_counts(&[1, 0])?;
    /// assert_eq!(s.calls(), 1);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Total assignments (tokens × k) over the covered calls.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(2);
    /// s.record_counts(&[3, 1])?;
    /// assert_eq!(s.total(), 4);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn total(&self) -> u64 {
        self.totals.iter().sum()
    }

    /// Fraction of the assignments that went to each expert (all zeros when empty).
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(2);
    /// s.record_counts(&[3, 1])?;
    /// assert_eq!(s.share(), vec![0.75, 0.25]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn share(&self) -> Vec<f64> {
        let total = self.total();
        if total == 0 {
            return vec![0.0; self.n_experts];
        }
        self.totals.iter().map(|&c| c as f64 / total as f64).collect()
    }

    /// Shannon entropy of [`LoadStats::share`] (`0 ln 0 = 0`) in the given unit; `None` when
    /// nothing was recorded. Ranges from 0 (one expert gets everything) to `ln n` nats /
    /// `log2 n` bits (perfectly uniform).
    ///
    /// ```
    /// use hearth_moe::{EntropyUnit, LoadStats};
    ///
    /// let mut s = LoadStats::new(4);
    /// assert_eq!(s.entropy(EntropyUnit::Nats), None);
    /// s.record_counts(&[5, 5, 0, 0])?;
    /// assert!((s.entropy(EntropyUnit::Bits).unwrap() - 1.0).abs() < 1e-12);
    /// assert!((s.entropy(EntropyUnit::Nats).unwrap() - 2f64.ln()).abs() < 1e-12);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn entropy(&self, unit: EntropyUnit) -> Option<f64> {
        if self.total() == 0 {
            return None;
        }
        let nats: f64 = self.share().iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum();
        Some(match unit {
            EntropyUnit::Nats => nats,
            EntropyUnit::Bits => nats / std::f64::consts::LN_2,
        })
    }

    /// Entropy divided by its maximum `ln n`: 1 for a uniform load (and for a single expert),
    /// `None` when nothing was recorded.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(4);
    /// s.record_counts(&[2, 2, 2, 2])?;
    /// assert!((s.normalized_entropy().unwrap() - 1.0).abs() < 1e-12);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn normalized_entropy(&self) -> Option<f64> {
        let h = self.entropy(EntropyUnit::Nats)?;
        if self.n_experts <= 1 {
            return Some(1.0);
        }
        Some(h / (self.n_experts as f64).ln())
    }

    /// Load of the busiest expert divided by the mean load (1 = perfectly balanced, `n` = all
    /// on one expert); `None` when nothing was recorded.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(4);
    /// s.record_counts(&[6, 2, 0, 0])?;
    /// assert_eq!(s.max_mean_ratio(), Some(3.0));
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn max_mean_ratio(&self) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let max = self.totals.iter().copied().max().unwrap_or(0);
        Some(max as f64 * self.n_experts as f64 / total as f64)
    }

    /// Number of experts with at least one assignment.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(4);
    /// s.record_counts(&[6, 2, 0, 0])?;
    /// assert_eq!(s.active_experts(), 2);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn active_experts(&self) -> usize {
        self.totals.iter().filter(|&&c| c > 0).count()
    }

    /// The busiest expert and its count (lowest index among ties); `None` when empty.
    ///
    /// ```
    /// let mut s = hearth_moe::LoadStats::new(3);
    /// s.record_counts(&[1, 5, 5])?;
    /// assert_eq!(s.hottest(), Some((1, 5)));
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn hottest(&self) -> Option<(usize, u64)> {
        if self.total() == 0 {
            return None;
        }
        let mut best = (0, self.totals[0]);
        for (e, &c) in self.totals.iter().enumerate() {
            if c > best.1 {
                best = (e, c);
            }
        }
        Some(best)
    }
}

/// Renders one row per layer (index = position in `layers`) with summary columns, for
/// `hearth generate --moe-stats`:
///
/// `layer`, `experts`, `calls`, `assign` (token-expert assignments), `active` (experts with
/// load), `max/mean`, `H(bits)` (entropy), `H/Hmax`, `hottest` (expert and its share).
/// Layers with no data show `-`.
///
/// ```
/// use hearth_moe::{LoadStats, format_table};
///
/// let mut a = LoadStats::new(4);
/// a.record_counts(&[2, 2, 2, 2])?;
/// let b = LoadStats::new(4);
/// let table = format_table(&[a, b]);
/// assert!(table.lines().next().unwrap().contains("max/mean"));
/// assert_eq!(table.lines().count(), 3);
/// assert!(table.lines().nth(1).unwrap().contains("1.000"));
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
pub fn format_table(layers: &[LoadStats]) -> String {
    let header = [
        "layer", "experts", "calls", "assign", "active", "max/mean", "H(bits)", "H/Hmax", "hottest",
    ];
    let mut rows: Vec<[String; 9]> = Vec::with_capacity(layers.len());
    for (i, s) in layers.iter().enumerate() {
        let opt = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"));
        let total = s.total();
        let hottest = s.hottest().map_or_else(
            || "-".to_string(),
            |(e, c)| format!("{e} ({:.1}%)", 100.0 * c as f64 / total as f64),
        );
        rows.push([
            i.to_string(),
            s.n_experts().to_string(),
            s.calls().to_string(),
            total.to_string(),
            format!("{}/{}", s.active_experts(), s.n_experts()),
            opt(s.max_mean_ratio(), 3),
            opt(s.entropy(EntropyUnit::Bits), 3),
            opt(s.normalized_entropy(), 3),
            hottest,
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells.zip(&widths).map(|(c, &w)| format!("{c:>w$}")).collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
