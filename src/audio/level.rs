//! Allocation-free live input level for the microphone widget.
//!
//! The audio callback writes with [`LevelMeter::update`] (two relaxed atomic stores, no locks,
//! no allocation); the UI thread reads with [`LevelMeter::read`] whenever it paints.

use std::sync::atomic::{AtomicU32, Ordering};

/// The level of the most recent block of input samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Level {
    /// Root-mean-square amplitude, `0.0..=1.0` for full-scale input.
    pub rms: f32,
    /// Largest absolute sample value.
    pub peak: f32,
}

impl Level {
    /// The RMS in dBFS, floored at -100 dB for silence.
    pub fn rms_dbfs(&self) -> f32 {
        amplitude_to_dbfs(self.rms)
    }

    /// The peak in dBFS, floored at -100 dB for silence.
    pub fn peak_dbfs(&self) -> f32 {
        amplitude_to_dbfs(self.peak)
    }
}

fn amplitude_to_dbfs(amplitude: f32) -> f32 {
    if amplitude <= 1e-5 {
        -100.0
    } else {
        20.0 * amplitude.log10()
    }
}

/// Shares the latest block level between the capture callback and the UI.
///
/// Wrap it in an `Arc`: one writer (the audio callback), any number of readers.
#[derive(Debug, Default)]
pub struct LevelMeter {
    rms_bits: AtomicU32,
    peak_bits: AtomicU32,
}

impl LevelMeter {
    /// A meter reading silence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Measures one block of mono samples. Safe to call from a real-time audio callback.
    pub fn update(&self, samples: &[f32]) {
        if samples.is_empty() {
            return;
        }
        let mut sum_sq = 0.0_f32;
        let mut peak = 0.0_f32;
        for &s in samples {
            sum_sq += s * s;
            peak = peak.max(s.abs());
        }
        let rms = (sum_sq / samples.len() as f32).sqrt();
        self.store(Level { rms, peak });
    }

    /// Stores a level directly (used to reset the meter to silence when recording stops).
    pub fn store(&self, level: Level) {
        self.rms_bits.store(level.rms.to_bits(), Ordering::Relaxed);
        self.peak_bits
            .store(level.peak.to_bits(), Ordering::Relaxed);
    }

    /// The latest level. The two values may come from adjacent blocks; a meter does not care.
    pub fn read(&self) -> Level {
        Level {
            rms: f32::from_bits(self.rms_bits.load(Ordering::Relaxed)),
            peak: f32::from_bits(self.peak_bits.load(Ordering::Relaxed)),
        }
    }
}

/// Accumulates the level of a block sample by sample, for callbacks that downmix on the fly
/// and have no slice to hand to [`LevelMeter::update`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LevelAccumulator {
    sum_sq: f32,
    peak: f32,
    count: u32,
}

impl LevelAccumulator {
    /// Adds one sample.
    #[inline]
    pub fn add(&mut self, sample: f32) {
        self.sum_sq += sample * sample;
        self.peak = self.peak.max(sample.abs());
        self.count += 1;
    }

    /// The level of the samples added so far (silence when none were).
    pub fn level(&self) -> Level {
        if self.count == 0 {
            return Level::default();
        }
        Level {
            rms: (self.sum_sq / self.count as f32).sqrt(),
            peak: self.peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_level_matches_theory() {
        let meter = LevelMeter::new();
        let samples: Vec<f32> = (0..48_000)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        meter.update(&samples);
        let level = meter.read();
        assert!((level.rms - 0.5 / 2f32.sqrt()).abs() < 1e-3, "{level:?}");
        assert!((level.peak - 0.5).abs() < 1e-3, "{level:?}");
        assert!((level.peak_dbfs() - (-6.0206)).abs() < 0.01);
    }

    #[test]
    fn silence_reads_floor() {
        let meter = LevelMeter::new();
        meter.update(&[0.0; 64]);
        assert_eq!(meter.read().rms_dbfs(), -100.0);
    }
}
