//! DeepSeek-V3's auxiliary-loss-free load balancing of the correction bias.

use crate::{LoadStats, MoeError, Routing};

/// Whether (and how fast) to balance the correction bias online.
///
/// **Off by default**: the update changes the bias, hence which experts are selected, hence the
/// model's outputs; inference should use the checkpoint's `e_score_correction_bias` unchanged
/// unless online balancing was explicitly requested.
///
/// ```
/// use hearth_moe::BiasBalancerConfig;
///
/// let cfg = BiasBalancerConfig::default();
/// assert!(!cfg.enabled);
/// assert!(cfg.build(256)?.is_none());
/// let on = BiasBalancerConfig { enabled: true, ..cfg };
/// assert_eq!(on.build(256)?.unwrap().bias().len(), 256);
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BiasBalancerConfig {
    /// Whether to balance at all (default `false`).
    pub enabled: bool,
    /// Bias update speed γ (default `1e-3`, the value of the DeepSeek-V3 report).
    pub gamma: f32,
}

impl Default for BiasBalancerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            gamma: 1e-3,
        }
    }
}

impl BiasBalancerConfig {
    /// A zero-bias balancer when enabled, `None` otherwise.
    ///
    /// # Errors
    /// [`MoeError::InvalidGamma`] if enabled with a non-finite or non-positive γ.
    ///
    /// ```
    /// let cfg = hearth_moe::BiasBalancerConfig { enabled: true, gamma: -1.0 };
    /// assert!(cfg.build(8).is_err());
    /// ```
    pub fn build(&self, n_experts: usize) -> Result<Option<BiasBalancer>, MoeError> {
        if self.enabled {
            BiasBalancer::new(n_experts, self.gamma).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The auxiliary-loss-free balancer of DeepSeek-V3: after each batch,
/// `bias_i += γ · sign(mean_load − load_i)` — under-loaded experts get a higher bias (more
/// likely to be selected), over-loaded ones a lower one, experts exactly at the mean keep theirs.
///
/// Feed the bias to [`RouterSpec::route`](crate::RouterSpec::route) of a spec with
/// [`correction_bias`](crate::RouterSpec::correction_bias); since the bias only affects
/// selection, the weights stay the unbiased scores. Usable in training loops and for online
/// balancing, which changes outputs (see [`BiasBalancerConfig`]).
///
/// ```
/// use hearth_moe::{BiasBalancer, RouterSpec, ScoringFunc};
///
/// let spec = RouterSpec::new(4, 1, ScoringFunc::Sigmoid).with_correction_bias(true);
/// let mut bal = BiasBalancer::new(4, 0.01)?;
/// let logits = [1.0, 0.0, 0.0, 0.0, /* token 1 */ 1.0, 0.5, 0.0, 0.0];
/// let routing = spec.route(&logits, 2, Some(bal.bias()))?;
/// bal.update_from_routing(&routing)?; // expert 0 got both tokens
/// assert_eq!(bal.bias(), &[-0.01, 0.01, 0.01, 0.01]);
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BiasBalancer {
    bias: Vec<f32>,
    gamma: f32,
    updates: u64,
}

fn check_gamma(gamma: f32) -> Result<(), MoeError> {
    if gamma.is_finite() && gamma > 0.0 {
        Ok(())
    } else {
        Err(MoeError::InvalidGamma(gamma))
    }
}

impl BiasBalancer {
    /// Zero bias for `n_experts` experts, step `gamma`.
    ///
    /// # Errors
    /// [`MoeError::InvalidGamma`] unless `gamma` is finite and `> 0`.
    ///
    /// ```
    /// assert!(hearth_moe::BiasBalancer::new(8, f32::NAN).is_err());
    /// ```
    pub fn new(n_experts: usize, gamma: f32) -> Result<Self, MoeError> {
        Self::with_bias(vec![0.0; n_experts], gamma)
    }

    /// Starts from an existing bias (e.g. the checkpoint's `e_score_correction_bias`).
    ///
    /// # Errors
    /// [`MoeError::InvalidGamma`], or [`MoeError::NonFiniteBias`] for a non-finite entry.
    ///
    /// ```
    /// let b = hearth_moe::BiasBalancer::with_bias(vec![0.5, -0.5], 0.1)?;
    /// assert_eq!(b.bias(), &[0.5, -0.5]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn with_bias(bias: Vec<f32>, gamma: f32) -> Result<Self, MoeError> {
        check_gamma(gamma)?;
        if let Some((expert, &value)) = bias.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(MoeError::NonFiniteBias { expert, value });
        }
        Ok(Self {
            bias,
            gamma,
            updates: 0,
        })
    }

    /// The current bias (`[n_experts]`).
    ///
    /// ```
    /// assert_eq!(hearth_moe::BiasBalancer::new(2, 0.1)?.bias(), &[0.0, 0.0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Consumes the balancer, returning the bias.
    ///
    /// ```
    /// assert_eq!(hearth_moe::BiasBalancer::new(2, 0.1)?.into_bias(), vec![0.0, 0.0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn into_bias(self) -> Vec<f32> {
        self.bias
    }

    /// Number of experts.
    ///
    /// ```
    /// assert_eq!(hearth_moe::BiasBalancer::new(3, 0.1)?.n_experts(), 3);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn n_experts(&self) -> usize {
        self.bias.len()
    }

    /// The step γ.
    ///
    /// ```
    /// assert_eq!(hearth_moe::BiasBalancer::new(3, 0.25)?.gamma(), 0.25);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn gamma(&self) -> f32 {
        self.gamma
    }

    /// Changes γ (e.g. a schedule; DeepSeek-V3 drops it to 0 late in training — stop calling
    /// `update` for that).
    ///
    /// # Errors
    /// [`MoeError::InvalidGamma`] unless finite and `> 0`.
    ///
    /// ```
    /// let mut b = hearth_moe::BiasBalancer::new(3, 0.25)?;
    /// b.set_gamma(0.5)?;
    /// assert_eq!(b.gamma(), 0.5);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn set_gamma(&mut self, gamma: f32) -> Result<(), MoeError> {
        check_gamma(gamma)?;
        self.gamma = gamma;
        Ok(())
    }

    /// Number of updates applied.
    ///
    /// ```
    /// let mut b = hearth_moe::BiasBalancer::new(2, 0.1)?;
    /// b.update(&[1, 0])?;
    /// assert_eq!(b.updates(), 1);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// One update from per-expert loads of a batch. The sign is computed exactly in integers
    /// (`sign(total − n · load_i)`), so an expert exactly at the mean is left unchanged. An empty
    /// batch changes nothing.
    ///
    /// # Errors
    /// [`MoeError::ExpertCountMismatch`] if `loads.len() != n_experts`.
    ///
    /// ```
    /// let mut b = hearth_moe::BiasBalancer::new(3, 0.5)?;
    /// b.update(&[4, 1, 1])?; // mean 2
    /// assert_eq!(b.bias(), &[-0.5, 0.5, 0.5]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn update(&mut self, loads: &[u64]) -> Result<(), MoeError> {
        let n = self.bias.len();
        if loads.len() != n {
            return Err(MoeError::ExpertCountMismatch {
                expected: n,
                actual: loads.len(),
            });
        }
        let total: u128 = loads.iter().map(|&l| u128::from(l)).sum();
        for (b, &l) in self.bias.iter_mut().zip(loads) {
            let scaled = u128::from(l) * n as u128;
            if scaled < total {
                *b += self.gamma;
            } else if scaled > total {
                *b -= self.gamma;
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// [`BiasBalancer::update`] with the loads of one routing call.
    ///
    /// # Errors
    /// [`MoeError::ExpertCountMismatch`] on a routing for another expert count.
    ///
    /// ```
    /// use hearth_moe::{BiasBalancer, Routing};
    ///
    /// let r = Routing::from_topk(2, 1, vec![0, 0], vec![1.0, 1.0])?;
    /// let mut b = BiasBalancer::new(2, 0.5)?;
    /// b.update_from_routing(&r)?;
    /// assert_eq!(b.bias(), &[-0.5, 0.5]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn update_from_routing(&mut self, routing: &Routing) -> Result<(), MoeError> {
        let loads: Vec<u64> = routing.expert_counts().iter().map(|&c| c as u64).collect();
        self.update(&loads)
    }

    /// [`BiasBalancer::update`] with the counts of a [`LoadStats`] (e.g. a window of calls).
    ///
    /// # Errors
    /// [`MoeError::ExpertCountMismatch`] on statistics for another expert count.
    ///
    /// ```
    /// use hearth_moe::{BiasBalancer, LoadStats};
    ///
    /// let mut s = LoadStats::new(2);
    /// s.record_counts(&[1, 3])?;
    /// let mut b = BiasBalancer::new(2, 0.5)?;
    /// b.update_from_stats(&s)?;
    /// assert_eq!(b.bias(), &[0.5, -0.5]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn update_from_stats(&mut self, stats: &LoadStats) -> Result<(), MoeError> {
        self.update(stats.counts())
    }
}
