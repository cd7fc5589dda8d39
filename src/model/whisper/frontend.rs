//! Waveform → Whisper's log-mel input: 30 s windows, 80 or 128 mel bins, 100 frames a second.
//!
//! The maths is transformers' `WhisperFeatureExtractor` (the torch path it takes when torch is
//! installed, which is OpenAI's `log_mel_spectrogram`): pad or cut to 30 s, a centred STFT with
//! reflect padding and a periodic Hann window of 400, the last frame dropped, power spectrum,
//! Slaney mel filters over 0–8 kHz, `log10(max(x, 1e-10))`, floored at the window's maximum
//! less 8, then `(x + 4) / 4`.
//!
//! candle-transformers' `whisper::audio::pcm_to_mel` (whisper.cpp's framing) is not used: its
//! frames are not centred (half a window later than the reference's), its maximum runs over the
//! zero padding it appends, and it needs the mel filters from a file; its features differ from
//! the reference's, so the parity below could not hold.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the model expects, in Hz.
pub const SAMPLE_RATE_HZ: usize = 16_000;
/// Samples in one window: 30 s.
pub const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE_HZ;
/// Mel frames in one window.
pub const WINDOW_FRAMES: usize = WINDOW_SAMPLES / HOP;
/// Seconds per timestamp token step (`<|0.02|>`).
pub const TIME_PRECISION_S: f64 = 0.02;
const N_FFT: usize = 400;
const HOP: usize = 160;

fn hz_to_mel(f: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 27.0 / 6.4f64.ln();
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() * logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Slaney-normalised triangular mel filters over 0–8 kHz, `n_mels × (N_FFT/2 + 1)`, row-major
/// (transformers' `mel_filter_bank(…, norm="slaney", mel_scale="slaney")`, transposed).
pub fn mel_filters(n_mels: usize) -> Vec<f64> {
    let n_freqs = N_FFT / 2 + 1;
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(8000.0));
    let filter_freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let nyquist = (SAMPLE_RATE_HZ / 2) as f64;
    let mut out = vec![0.0; n_mels * n_freqs];
    for m in 0..n_mels {
        let (lo, mid, hi) = (filter_freqs[m], filter_freqs[m + 1], filter_freqs[m + 2]);
        let enorm = 2.0 / (hi - lo);
        for k in 0..n_freqs {
            let f = nyquist * k as f64 / (n_freqs - 1) as f64;
            let down = (f - lo) / (mid - lo);
            let up = (hi - f) / (hi - mid);
            out[m * n_freqs + k] = down.min(up).max(0.0) * enorm;
        }
    }
    out
}

/// The log-mel frontend for one mel count, with its FFT plan and filters.
pub struct LogMel {
    n_mels: usize,
    filters: Vec<f32>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel")
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

impl LogMel {
    /// A frontend with `n_mels` bins (80, or 128 for large-v3 and turbo).
    pub fn new(n_mels: usize) -> Self {
        let filters = mel_filters(n_mels).into_iter().map(|v| v as f32).collect();
        let window = (0..N_FFT)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            filters,
            window,
            fft,
        }
    }

    /// Mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Features of one clip (at most 30 s; longer clips are cut), `n_mels × WINDOW_FRAMES`,
    /// row-major, as the encoder takes them.
    pub fn features(&self, samples: &[f32]) -> Vec<f32> {
        let half = N_FFT / 2;
        let n = samples.len().min(WINDOW_SAMPLES);
        let mut x = vec![0.0f32; WINDOW_SAMPLES];
        x[..n].copy_from_slice(&samples[..n]);
        // torch.stft(center=True): reflect padding by half a window on both sides.
        let mut padded = vec![0.0f32; WINDOW_SAMPLES + N_FFT];
        padded[half..half + WINDOW_SAMPLES].copy_from_slice(&x);
        for i in 0..half {
            padded[half - 1 - i] = x[i + 1];
            padded[half + WINDOW_SAMPLES + i] = x[WINDOW_SAMPLES - 2 - i];
        }
        let n_freqs = N_FFT / 2 + 1;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut power = vec![0.0f32; n_freqs];
        let mut out = vec![0.0f32; self.n_mels * WINDOW_FRAMES];
        for t in 0..WINDOW_FRAMES {
            let frame = &padded[t * HOP..t * HOP + N_FFT];
            for ((dst, &s), &w) in input.iter_mut().zip(frame).zip(&self.window) {
                *dst = s * w;
            }
            if self.fft.process(&mut input, &mut spectrum).is_err() {
                // The buffers come from the plan itself, so their lengths always match.
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for m in 0..self.n_mels {
                let row = &self.filters[m * n_freqs..(m + 1) * n_freqs];
                let energy: f32 = row.iter().zip(&power).map(|(a, b)| a * b).sum();
                out[m * WINDOW_FRAMES + t] = energy.max(1e-10).log10();
            }
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut out {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_filters_are_triangles_with_slaney_area() {
        let f = mel_filters(80);
        let n_freqs = N_FFT / 2 + 1;
        assert_eq!(f.len(), 80 * n_freqs);
        for m in 0..80 {
            let row = &f[m * n_freqs..(m + 1) * n_freqs];
            assert!(row.iter().all(|v| *v >= 0.0));
            assert!(row.iter().any(|v| *v > 0.0), "empty filter {m}");
        }
        // Slaney normalisation: the area in Hz of every triangle is 1.
        let bin_hz = 8000.0 / (n_freqs - 1) as f64;
        let area: f64 = f[40 * n_freqs..41 * n_freqs].iter().sum::<f64>() * bin_hz;
        assert!((area - 1.0).abs() < 0.1, "{area}");
    }

    #[test]
    fn a_tone_lights_its_mel_bin_and_silence_is_the_floor() {
        let frontend = LogMel::new(80);
        let tone: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let feats = frontend.features(&tone);
        assert_eq!(feats.len(), 80 * WINDOW_FRAMES);
        let frame = 50;
        let column: Vec<f32> = (0..80).map(|m| feats[m * WINDOW_FRAMES + frame]).collect();
        let peak = column
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        let expected = (hz_to_mel(1000.0) / hz_to_mel(8000.0) * 81.0) as usize;
        assert!(
            peak.is_some_and(|p| p.abs_diff(expected) <= 2),
            "{peak:?} {expected}"
        );
        // The silence after the tone sits on the floor, the window's maximum less 8 (in log10),
        // which (x + 4) / 4 maps to exactly 2 below the maximum.
        let max = feats.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = feats.iter().copied().fold(f32::INFINITY, f32::min);
        assert!((max - min - 2.0).abs() < 1e-5, "{max} {min}");
        assert!((feats[WINDOW_FRAMES - 1] - min).abs() < 1e-6);
    }
}
