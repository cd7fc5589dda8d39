//! What a decode costs, learned from the answers: `seconds ≈ fixed + per_audio_s × clip seconds`.
//!
//! A weighted least-squares line through the recent `(clip seconds, wall seconds)` pairs, older
//! ones fading by [`FORGET`] per answer, so the estimate follows the machine's load. A forward
//! on the CPU has a large fixed part (every weight is read once per forward, and small matrix
//! products run far below peak), so a line fits better than a ratio. With too little spread in
//! the clip lengths to place a line, the estimate scales the mean cost by length (which over-
//! rather than under-estimates longer clips).

/// Weight of the older answers after each new one.
const FORGET: f64 = 0.8;

/// Spread of clip lengths (weighted variance, s²) below which no line is fitted.
const MIN_VARIANCE: f64 = 0.05;

/// The running estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeCost {
    weight: f64,
    sum_x: f64,
    sum_y: f64,
    sum_xx: f64,
    sum_xy: f64,
    prior: (f64, f64),
}

impl DecodeCost {
    /// An estimate that says `fixed_s + per_audio_s × clip` until the first answer.
    pub fn new(fixed_s: f64, per_audio_s: f64) -> Self {
        Self {
            weight: 0.0,
            sum_x: 0.0,
            sum_y: 0.0,
            sum_xx: 0.0,
            sum_xy: 0.0,
            prior: (fixed_s.max(0.0), per_audio_s.max(0.0)),
        }
    }

    /// One answer: a clip of `clip_s` seconds took `took_s` seconds from sent to answered.
    pub fn observe(&mut self, clip_s: f64, took_s: f64) {
        if !(clip_s.is_finite() && took_s.is_finite()) || clip_s < 0.0 || took_s < 0.0 {
            return;
        }
        self.weight = self.weight * FORGET + 1.0;
        self.sum_x = self.sum_x * FORGET + clip_s;
        self.sum_y = self.sum_y * FORGET + took_s;
        self.sum_xx = self.sum_xx * FORGET + clip_s * clip_s;
        self.sum_xy = self.sum_xy * FORGET + clip_s * took_s;
    }

    /// The line `(fixed seconds, seconds per second of audio)`, both ≥ 0.
    pub fn line(&self) -> (f64, f64) {
        if self.weight <= 0.0 {
            return self.prior;
        }
        let mean_x = self.sum_x / self.weight;
        let mean_y = self.sum_y / self.weight;
        let var_x = self.sum_xx / self.weight - mean_x * mean_x;
        if var_x >= MIN_VARIANCE {
            let cov = self.sum_xy / self.weight - mean_x * mean_y;
            let slope = cov / var_x;
            let fixed = mean_y - slope * mean_x;
            if slope >= 0.0 && fixed >= 0.0 {
                return (fixed, slope);
            }
            if slope >= 0.0 {
                // A negative intercept: the line through the origin.
                return (0.0, self.sum_xy / self.sum_xx.max(f64::MIN_POSITIVE));
            }
        }
        // One length (or a falling line, i.e. noise): the mean cost, scaled by length.
        if mean_x > 0.0 {
            (0.0, mean_y / mean_x)
        } else {
            (mean_y, self.prior.1)
        }
    }

    /// Seconds a clip of `clip_s` seconds is expected to take.
    pub fn seconds(&self, clip_s: f64) -> f64 {
        let (fixed, per_s) = self.line();
        fixed + per_s * clip_s.max(0.0)
    }

    /// The longest clip expected to take at most `budget_s`; 0 when not even the fixed part fits,
    /// infinite when audio costs nothing.
    pub fn longest_within(&self, budget_s: f64) -> f64 {
        let (fixed, per_s) = self.line();
        if budget_s < fixed {
            return 0.0;
        }
        if per_s <= 0.0 {
            return f64::INFINITY;
        }
        (budget_s - fixed) / per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_line_and_follows_a_change_of_load() {
        let mut cost = DecodeCost::new(0.1, 0.1);
        assert!((cost.seconds(2.0) - 0.3).abs() < 1e-12);
        for clip in [1.0, 3.0, 2.0, 5.0, 1.5, 4.0] {
            cost.observe(clip, 0.3 + 0.05 * clip);
        }
        let (fixed, per_s) = cost.line();
        assert!((fixed - 0.3).abs() < 1e-9 && (per_s - 0.05).abs() < 1e-9);
        assert!((cost.longest_within(0.5) - 4.0).abs() < 1e-6);
        assert_eq!(cost.longest_within(0.2), 0.0);
        // The machine gets three times slower: within a dozen answers the estimate follows.
        for i in 0..12 {
            let clip = 1.0 + f64::from(i % 4);
            cost.observe(clip, 3.0 * (0.3 + 0.05 * clip));
        }
        let estimate = cost.seconds(3.0);
        assert!((estimate - 1.35).abs() < 0.1, "{estimate}");
    }

    #[test]
    fn one_length_scales_the_mean_and_bad_numbers_are_ignored() {
        let mut cost = DecodeCost::new(0.0, 0.0);
        cost.observe(2.0, 0.4);
        cost.observe(2.0, 0.6);
        cost.observe(f64::NAN, 1.0);
        cost.observe(1.0, -1.0);
        let (fixed, per_s) = cost.line();
        assert_eq!(fixed, 0.0);
        // Weighted mean 0.4·0.8 + 0.6 over 1.8, for 2 s.
        assert!((per_s - (0.4 * 0.8 + 0.6) / 1.8 / 2.0).abs() < 1e-12);
        assert_eq!(DecodeCost::new(0.0, 0.0).longest_within(1.0), f64::INFINITY);
    }
}
