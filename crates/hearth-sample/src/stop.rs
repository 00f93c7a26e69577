//! Stop conditions: EOS ids, max tokens and streaming stop strings.

/// Why generation stopped.
///
/// ```
/// use hearth_sample::StopReason;
/// assert_ne!(StopReason::Eos, StopReason::MaxTokens);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// An end-of-sequence token was generated.
    Eos,
    /// A stop string appeared in the decoded text.
    StopString,
    /// The token budget was used up.
    MaxTokens,
}

/// EOS ids plus a maximum number of generated tokens.
///
/// ```
/// use hearth_sample::{StopCondition, StopReason};
/// let c = StopCondition::new(vec![2, 3], 4);
/// assert_eq!(c.check(7, 1), None);
/// assert_eq!(c.check(3, 2), Some(StopReason::Eos));
/// assert_eq!(c.check(7, 4), Some(StopReason::MaxTokens));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCondition {
    /// Tokens that end the sequence.
    pub eos_token_ids: Vec<u32>,
    /// Maximum number of generated tokens.
    pub max_tokens: usize,
}

impl StopCondition {
    /// Build from EOS ids and a token budget.
    ///
    /// ```
    /// let c = hearth_sample::StopCondition::new(vec![0], 10);
    /// assert_eq!(c.max_tokens, 10);
    /// ```
    pub fn new(eos_token_ids: Vec<u32>, max_tokens: usize) -> Self {
        StopCondition {
            eos_token_ids,
            max_tokens,
        }
    }

    /// Check after a token was generated; `n_generated` counts it. EOS wins over max tokens.
    ///
    /// ```
    /// use hearth_sample::{StopCondition, StopReason};
    /// let c = StopCondition::new(vec![2], 1);
    /// assert_eq!(c.check(2, 1), Some(StopReason::Eos));
    /// ```
    pub fn check(&self, token: u32, n_generated: usize) -> Option<StopReason> {
        if self.eos_token_ids.contains(&token) {
            Some(StopReason::Eos)
        } else if n_generated >= self.max_tokens {
            Some(StopReason::MaxTokens)
        } else {
            None
        }
    }
}

/// Streaming stop-string matcher over decoded text.
///
/// Text is emitted as soon as it cannot be part of a stop string: any suffix that is a
/// prefix of some stop string is held back until later text resolves it. When a stop string
/// completes, the emitted text ends right before it (earliest match wins) and the matcher is
/// finished: later pushes emit nothing. Empty stop strings are ignored.
///
/// ```
/// use hearth_sample::StopStrings;
/// let mut s = StopStrings::new(vec!["</end>".into()]);
/// assert_eq!(s.push("Hello </e"), ("Hello ".to_string(), false));
/// assert_eq!(s.push("nd> junk"), (String::new(), true));
/// assert_eq!(s.finish(), "");
/// ```
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// Build a matcher for `stops`.
    ///
    /// ```
    /// let s = hearth_sample::StopStrings::new(vec!["\n\n".into()]);
    /// assert!(!s.is_stopped());
    /// ```
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopStrings {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Feed newly decoded text; returns `(text safe to emit now, whether a stop string was hit)`.
    ///
    /// ```
    /// use hearth_sample::StopStrings;
    /// let mut s = StopStrings::new(vec!["STOP".into()]);
    /// assert_eq!(s.push("a ST"), ("a ".to_string(), false));
    /// assert_eq!(s.push("ART"), ("START".to_string(), false)); // not a stop after all
    /// ```
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(delta);
        let hit = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(pos) = hit {
            let out = self.held[..pos].to_string();
            self.held.clear();
            self.stopped = true;
            return (out, true);
        }
        let keep = self.held_back_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// End of stream: returns the held-back text (empty after a stop).
    ///
    /// ```
    /// use hearth_sample::StopStrings;
    /// let mut s = StopStrings::new(vec!["###".into()]);
    /// assert_eq!(s.push("x #"), ("x ".to_string(), false));
    /// assert_eq!(s.finish(), "#");
    /// ```
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Whether a stop string has been hit.
    ///
    /// ```
    /// let mut s = hearth_sample::StopStrings::new(vec!["x".into()]);
    /// s.push("abx");
    /// assert!(s.is_stopped());
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string.
    fn held_back_len(&self) -> usize {
        let h = self.held.as_bytes();
        let mut best = 0;
        for s in &self.stops {
            let s = s.as_bytes();
            let max = (s.len() - 1).min(h.len());
            for len in (best + 1..=max).rev() {
                if h[h.len() - len..] == s[..len] {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}
