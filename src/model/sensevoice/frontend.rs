//! Waveform → model features: Kaldi fbank (80 log-mel), LFR stacking and CMVN.
//!
//! Plain functions over slices, so they run and test without a device. The maths follows
//! `torchaudio.compliance.kaldi.fbank` as called by FunASR's `WavFrontend` (dither 0), then
//! `apply_lfr` and `apply_cmvn` from `funasr/frontends/wav_frontend.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the frontend expects, in Hz.
pub const SAMPLE_RATE_HZ: u32 = 16_000;
/// Samples per 25 ms analysis window at 16 kHz.
const WINDOW_SAMPLES: usize = 400;
/// Samples per 10 ms hop at 16 kHz.
const HOP_SAMPLES: usize = 160;
/// Frames one parallel task of the fbank computes (1.28 s of audio).
const FRAMES_PER_TASK: usize = 128;
const PREEMPHASIS: f64 = 0.97;
const LOW_FREQ_HZ: f64 = 20.0;
/// torch's float32 epsilon, the floor of the mel energies before the log.
const ENERGY_FLOOR: f64 = f32::EPSILON as f64;

/// Errors reading `am.mvn`.
#[derive(Debug, thiserror::Error)]
pub enum CmvnError {
    /// The file could not be read.
    #[error("cannot read the CMVN file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a Kaldi nnet CMVN with `<AddShift>` and `<Rescale>` blocks.
    #[error("the CMVN file {path} is not a valid am.mvn: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Largest `am.mvn` accepted (the release's is 11 kB).
pub const MAX_CMVN_BYTES: u64 = 4 << 20;

/// Global mean/variance normalisation from `am.mvn`: `feat = (feat + shift) * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmvn {
    /// Additive shift per feature dimension (the negated means).
    pub shift: Vec<f32>,
    /// Multiplicative scale per dimension (inverse standard deviations).
    pub scale: Vec<f32>,
}

impl Cmvn {
    /// Reads `am.mvn` (at most [`MAX_CMVN_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self, CmvnError> {
        let io = |source| CmvnError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = crate::model::bounded::read_bounded(path, MAX_CMVN_BYTES).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| CmvnError::Parse {
            path: path.to_owned(),
            message: "not UTF-8 text".to_owned(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses the Kaldi nnet text exactly as FunASR's `load_cmvn`: the tokens `[3:-1]` of the
    /// `<LearnRateCoef>` line following `<AddShift>` (shift) and `<Rescale>` (scale).
    pub fn parse(text: &str, path: &Path) -> Result<Self, CmvnError> {
        let err = |message: String| CmvnError::Parse {
            path: path.to_owned(),
            message,
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut shift = None;
        let mut scale = None;
        for (i, line) in lines.iter().enumerate() {
            let first = line.split_whitespace().next();
            let slot = match first {
                Some("<AddShift>") => &mut shift,
                Some("<Rescale>") => &mut scale,
                _ => continue,
            };
            let Some(next) = lines.get(i + 1) else {
                continue;
            };
            let items: Vec<&str> = next.split_whitespace().collect();
            if items.first() != Some(&"<LearnRateCoef>") || items.len() < 4 {
                continue;
            }
            let values = items[3..items.len() - 1]
                .iter()
                .map(|s| {
                    s.parse::<f32>().map_err(|_| {
                        err(format!(
                            "{first:?} holds a non-number {s:?}",
                            first = first.unwrap_or("")
                        ))
                    })
                })
                .collect::<Result<Vec<f32>, _>>()?;
            *slot = Some(values);
        }
        let shift =
            shift.ok_or_else(|| err("no <AddShift> <LearnRateCoef> [ ... ] block".to_owned()))?;
        let scale =
            scale.ok_or_else(|| err("no <Rescale> <LearnRateCoef> [ ... ] block".to_owned()))?;
        if shift.is_empty() || shift.len() != scale.len() {
            return Err(err(format!(
                "<AddShift> has {} values but <Rescale> has {}",
                shift.len(),
                scale.len()
            )));
        }
        Ok(Self { shift, scale })
    }

    /// Feature width this CMVN applies to (560 for SenseVoice).
    pub fn dim(&self) -> usize {
        self.shift.len()
    }

    /// Normalises `feats` (row-major rows of `dim()` values) in place.
    pub fn apply(&self, feats: &mut [f32]) {
        for row in feats.chunks_exact_mut(self.dim()) {
            for ((x, s), k) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
                // Two f32 operations, as torch does them.
                *x = (*x + s) * k;
            }
        }
    }
}

/// Kaldi mel scale, written as torchaudio writes it (`ln(1 + f/700)`, not `ln_1p`).
#[allow(clippy::imprecise_flops)]
fn mel_scale(freq_hz: f64) -> f64 {
    1127.0 * (1.0 + freq_hz / 700.0).ln()
}

/// Triangular Kaldi mel filters, `[n_mels][nfft/2]` (the Nyquist bin always has weight 0).
pub fn mel_banks(n_mels: usize, nfft: usize) -> Vec<Vec<f64>> {
    let sample_rate = f64::from(SAMPLE_RATE_HZ);
    let num_fft_bins = nfft / 2;
    let fft_bin_width = sample_rate / nfft as f64;
    let mel_low = mel_scale(LOW_FREQ_HZ);
    let mel_high = mel_scale(0.5 * sample_rate);
    let delta = (mel_high - mel_low) / (n_mels + 1) as f64;
    (0..n_mels)
        .map(|m| {
            let left = mel_low + m as f64 * delta;
            let center = mel_low + (m as f64 + 1.0) * delta;
            let right = mel_low + (m as f64 + 2.0) * delta;
            (0..num_fft_bins)
                .map(|k| {
                    let mel = mel_scale(fft_bin_width * k as f64);
                    let up = (mel - left) / (center - left);
                    let down = (right - mel) / (right - center);
                    up.min(down).max(0.0)
                })
                .collect()
        })
        .collect()
}

/// Precomputed window, filters and FFT plan for one analysis window length.
struct FbankPlan {
    window_len: usize,
    window: Vec<f64>,
    /// Per mel bin: first FFT bin with non-zero weight, and the weights from there on.
    banks: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl FbankPlan {
    fn new(window_len: usize, n_mels: usize) -> Self {
        let nfft = window_len.next_power_of_two();
        // Symmetric Hamming (torch.hamming_window(periodic=False)).
        let window = (0..window_len)
            .map(|n| {
                if window_len == 1 {
                    1.0
                } else {
                    0.54 - 0.46
                        * (2.0 * std::f64::consts::PI * n as f64 / (window_len - 1) as f64).cos()
                }
            })
            .collect();
        let banks = mel_banks(n_mels, nfft)
            .into_iter()
            .map(|w| {
                let first = w.iter().position(|&v| v > 0.0).unwrap_or(w.len());
                let last = w.iter().rposition(|&v| v > 0.0).map_or(first, |l| l + 1);
                (first, w[first..last].to_vec())
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(nfft);
        Self {
            window_len,
            window,
            banks,
            fft,
        }
    }

    /// Log-mel energies of every frame, row-major `[frames][n_mels]`. Frames are independent,
    /// so runs of [`FRAMES_PER_TASK`] frames are computed in parallel on rayon's pool (each
    /// frame exactly as alone: the result does not depend on the split).
    fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let n = samples.len();
        if n < self.window_len || self.window_len == 0 {
            return Vec::new();
        }
        let frames = 1 + (n - self.window_len) / HOP_SAMPLES;
        let n_mels = self.banks.len();
        let mut out = vec![0.0f32; frames * n_mels];
        let ok = out
            .par_chunks_mut(FRAMES_PER_TASK * n_mels)
            .enumerate()
            .all(|(task, dst)| self.compute_frames(samples, task * FRAMES_PER_TASK, dst));
        // The only possible error is a wrong buffer length, which cannot happen: the buffers
        // come from the plan itself.
        if ok { out } else { Vec::new() }
    }

    /// Frames `first..` of `samples` into `dst` (`n_mels` values per frame, as many frames as
    /// `dst` holds); `false` if the FFT refused its buffers.
    fn compute_frames(&self, samples: &[f32], first: usize, dst: &mut [f32]) -> bool {
        let n_mels = self.banks.len();
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut frame = vec![0.0f64; self.window_len];
        let mut power = vec![0.0f64; spectrum.len()];
        for (i, row) in dst.chunks_exact_mut(n_mels).enumerate() {
            let start = (first + i) * HOP_SAMPLES;
            for (dst, &s) in frame
                .iter_mut()
                .zip(&samples[start..start + self.window_len])
            {
                // int16 scale, as FunASR multiplies by 32768 before kaldi.fbank.
                *dst = f64::from(s) * 32768.0;
            }
            let mean = frame.iter().sum::<f64>() / self.window_len as f64;
            frame.iter_mut().for_each(|x| *x -= mean);
            for j in (1..self.window_len).rev() {
                frame[j] -= PREEMPHASIS * frame[j - 1];
            }
            frame[0] -= PREEMPHASIS * frame[0];
            input.iter_mut().for_each(|x| *x = 0.0);
            for ((dst, x), w) in input.iter_mut().zip(&frame).zip(&self.window) {
                *dst = x * w;
            }
            if self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .is_err()
            {
                return false;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (out, (first, weights)) in row.iter_mut().zip(&self.banks) {
                let energy: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                *out = energy.max(ENERGY_FLOOR).ln() as f32;
            }
        }
        true
    }
}

/// Kaldi fbank + LFR + CMVN, with the FFT plan for the standard 25 ms window cached.
pub struct Frontend {
    n_mels: usize,
    lfr_m: usize,
    lfr_n: usize,
    cmvn: Cmvn,
    plan: FbankPlan,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("n_mels", &self.n_mels)
            .field("lfr_m", &self.lfr_m)
            .field("lfr_n", &self.lfr_n)
            .finish_non_exhaustive()
    }
}

impl Frontend {
    /// Builds a frontend; `cmvn.dim()` must equal `n_mels * lfr_m` (checked by the caller that
    /// knows the file names, see `SenseVoice::load`).
    pub fn new(n_mels: usize, lfr_m: usize, lfr_n: usize, cmvn: Cmvn) -> Self {
        Self {
            n_mels,
            lfr_m,
            lfr_n,
            cmvn,
            plan: FbankPlan::new(WINDOW_SAMPLES, n_mels),
        }
    }

    /// Feature width after LFR (560).
    pub fn feature_dim(&self) -> usize {
        self.n_mels * self.lfr_m
    }

    /// Log-mel fbank of a 16 kHz mono clip in [-1, 1): `(row-major [frames][n_mels], frames)`.
    ///
    /// Clips shorter than 25 ms use one window of the clip's own length, as FunASR's
    /// `frame_length=min(25, N/16)` does.
    pub fn fbank(&self, samples: &[f32]) -> (Vec<f32>, usize) {
        let out = if samples.len() >= WINDOW_SAMPLES {
            self.plan.compute(samples)
        } else {
            FbankPlan::new(short_window_len(samples.len()), self.n_mels).compute(samples)
        };
        let frames = out.len() / self.n_mels;
        (out, frames)
    }

    /// Full frontend: `(row-major [t_lfr][feature_dim], t_lfr)`.
    pub fn features(&self, samples: &[f32]) -> (Vec<f32>, usize) {
        let (fbank, frames) = self.fbank(samples);
        let (mut feats, t_lfr) = apply_lfr(&fbank, frames, self.n_mels, self.lfr_m, self.lfr_n);
        self.cmvn.apply(&mut feats);
        (feats, t_lfr)
    }
}

/// Window length torchaudio derives from `frame_length = N / 16000 * 1000` ms for short clips:
/// `int(16000 * frame_length * 0.001)`, computed in the same float order.
fn short_window_len(n: usize) -> usize {
    let frame_length_ms = n as f64 / f64::from(SAMPLE_RATE_HZ) * 1000.0;
    (f64::from(SAMPLE_RATE_HZ) * frame_length_ms * 0.001) as usize
}

/// Low frame rate stacking (FunASR `apply_lfr`): `ceil(T / lfr_n)` output frames of `lfr_m`
/// consecutive input frames, left-padded with `(lfr_m - 1) / 2` copies of frame 0 and
/// right-padded with the last frame.
pub fn apply_lfr(
    fbank: &[f32],
    frames: usize,
    n_mels: usize,
    lfr_m: usize,
    lfr_n: usize,
) -> (Vec<f32>, usize) {
    if frames == 0 {
        return (Vec::new(), 0);
    }
    let t_lfr = frames.div_ceil(lfr_n);
    let left = (lfr_m - 1) / 2;
    let padded_len = frames + left;
    // Index into the padded sequence → source frame.
    let source = |p: usize| p.saturating_sub(left).min(frames - 1);
    let mut out = Vec::with_capacity(t_lfr * lfr_m * n_mels);
    for i in 0..t_lfr {
        for j in 0..lfr_m {
            let p = (i * lfr_n + j).min(padded_len - 1);
            let f = source(p);
            out.extend_from_slice(&fbank[f * n_mels..(f + 1) * n_mels]);
        }
    }
    (out, t_lfr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmvn() -> Cmvn {
        Cmvn::parse(include_str!("testdata/am.mvn"), Path::new("am.mvn")).unwrap()
    }

    #[test]
    fn parses_release_am_mvn() {
        let c = cmvn();
        assert_eq!(c.dim(), 560);
        assert_eq!(&c.shift[..3], &[-8.311879, -8.600912, -9.615928]);
        assert_eq!(&c.scale[..3], &[0.155775, 0.154484, 0.1527379]);
        // The 80-dim statistics repeat 7 times.
        assert_eq!(c.shift[80..160], c.shift[..80]);
    }

    #[test]
    fn cmvn_errors_name_the_file() {
        let e = Cmvn::parse("<Nnet>\n</Nnet>\n", Path::new("dir/am.mvn")).unwrap_err();
        assert!(
            e.to_string().contains("dir/am.mvn") && e.to_string().contains("AddShift"),
            "{e}"
        );
        let text = include_str!("testdata/am.mvn").replacen("-8.311879", "x8", 1);
        let e = Cmvn::parse(&text, Path::new("am.mvn")).unwrap_err();
        assert!(e.to_string().contains("x8"), "{e}");
    }

    #[test]
    fn lfr_matches_reference_loop() {
        // The loop from SenseVoice/utils/frontend.py, written independently of apply_lfr.
        fn reference(fb: &[Vec<f32>], m: usize, n: usize) -> Vec<Vec<f32>> {
            let t = fb.len();
            let t_lfr = t.div_ceil(n);
            let mut padded: Vec<Vec<f32>> = vec![fb[0].clone(); (m - 1) / 2];
            padded.extend(fb.iter().cloned());
            let tp = padded.len();
            (0..t_lfr)
                .map(|i| {
                    let mut row = Vec::new();
                    if m <= tp - i * n {
                        for f in &padded[i * n..i * n + m] {
                            row.extend(f);
                        }
                    } else {
                        for f in &padded[i * n..tp] {
                            row.extend(f);
                        }
                        for _ in 0..(m - (tp - i * n)) {
                            row.extend(&padded[tp - 1]);
                        }
                    }
                    row
                })
                .collect()
        }
        for t in 1..40 {
            let fb: Vec<Vec<f32>> = (0..t).map(|i| vec![i as f32, -(i as f32)]).collect();
            let flat: Vec<f32> = fb.iter().flatten().copied().collect();
            let (got, t_lfr) = apply_lfr(&flat, t, 2, 7, 6);
            let want: Vec<f32> = reference(&fb, 7, 6).into_iter().flatten().collect();
            assert_eq!(t_lfr, t.div_ceil(6));
            assert_eq!(got, want, "T = {t}");
        }
        assert_eq!(apply_lfr(&[], 0, 80, 7, 6).1, 0);
    }

    #[test]
    fn mel_bank_properties() {
        let banks = mel_banks(80, 512);
        assert_eq!(banks.len(), 80);
        for (m, b) in banks.iter().enumerate() {
            assert_eq!(b.len(), 256);
            let peak = b.iter().cloned().fold(0.0, f64::max);
            assert!(peak > 0.3 && peak <= 1.0, "bin {m} peak {peak}");
            assert!(b.iter().all(|&w| (0.0..=1.0).contains(&w)));
        }
        // Bin 0 (DC) and bins below 20 Hz carry no weight.
        assert!(banks.iter().all(|b| b[0] == 0.0));
        // Filter centres increase.
        let centre = |b: &Vec<f64>| {
            b.iter()
                .enumerate()
                .fold((0, 0.0), |a, (k, &w)| if w > a.1 { (k, w) } else { a })
                .0
        };
        assert!(banks.windows(2).all(|w| centre(&w[0]) <= centre(&w[1])));
    }

    #[test]
    fn parallel_fbank_equals_frames_computed_alone() {
        let fe = Frontend::new(80, 7, 6, cmvn());
        // 5.3 s of a chirp with noise: several parallel tasks and a partial last one.
        let mut state = 7u32;
        let samples: Vec<f32> = (0..85_000)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let t = i as f32 / 16_000.0;
                0.2 * (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin()
                    + (state >> 8) as f32 / (1u32 << 24) as f32 * 0.01
            })
            .collect();
        let (fb, frames) = fe.fbank(&samples);
        assert!(frames > 3 * FRAMES_PER_TASK, "{frames} frames");
        for i in [0, 1, FRAMES_PER_TASK - 1, FRAMES_PER_TASK, frames - 1] {
            let mut alone = vec![0.0f32; 80];
            assert!(fe.plan.compute_frames(&samples, i, &mut alone));
            assert_eq!(&fb[i * 80..(i + 1) * 80], alone.as_slice(), "frame {i}");
        }
    }

    #[test]
    fn fbank_frame_count_and_tone_peak() {
        let fe = Frontend::new(80, 7, 6, cmvn());
        // 1 kHz tone: the strongest mel bin must be the one whose filter peaks nearest 1 kHz.
        let samples: Vec<f32> = (0..16000)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin())
            .collect();
        let (fb, frames) = fe.fbank(&samples);
        assert_eq!(frames, 1 + (16000 - 400) / 160);
        let row = &fb[10 * 80..11 * 80];
        let best = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
            .0;
        let target = mel_scale(1000.0);
        let delta = (mel_scale(8000.0) - mel_scale(20.0)) / 81.0;
        let expected = ((target - mel_scale(20.0)) / delta - 1.0).round() as usize;
        assert!(
            best.abs_diff(expected) <= 1,
            "best {best}, expected {expected}"
        );
        // Digital silence hits the energy floor exactly.
        let (fb, _) = fe.fbank(&[0.0; 800]);
        assert!(fb.iter().all(|&v| v == (f32::EPSILON as f64).ln() as f32));
        // Too-short and empty clips.
        assert_eq!(fe.fbank(&[0.1; 399]).1, 1);
        assert_eq!(fe.features(&[]).1, 0);
        let (f, t) = fe.features(&samples);
        assert_eq!((f.len(), t), (t * 560, frames.div_ceil(6)));
    }
}
