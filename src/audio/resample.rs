//! Streaming conversion of mono audio at any rate to the model's 16 kHz.
//!
//! [`MonoResampler`] is fed packet by packet and appends 16 kHz samples to a caller's `Vec`,
//! so decoding a long file holds only the output plus one resampler chunk of input.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Indexing, Resampler, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

use super::MODEL_SAMPLE_RATE_HZ;

/// Input frames per resampler call: small enough to keep the held input tiny, large enough
/// to keep the FFT efficient.
const CHUNK_FRAMES: usize = 1024;

/// Largest reduced input block (`rate / gcd(rate, 16000)`) for which the FFT resampler is used.
/// Common rates (8, 11.025, 22.05, 32, 44.1, 48, 88.2, 96, 192 kHz) all fall below it; odd rates
/// would need a huge FFT and go to the sinc resampler instead.
const MAX_FFT_BLOCK: usize = 2048;

/// Lowest and highest source rates accepted. Anything outside is a broken header.
pub const MIN_SOURCE_RATE_HZ: u32 = 1_000;
/// Highest source rate accepted (768 kHz is the highest rate real hardware records at).
pub const MAX_SOURCE_RATE_HZ: u32 = 768_000;

/// Errors from building or running the resampler.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// The source rate is outside [`MIN_SOURCE_RATE_HZ`]..=[`MAX_SOURCE_RATE_HZ`].
    #[error("sample rate {rate_hz} Hz is outside the supported range 1000..=768000 Hz")]
    UnsupportedRate {
        /// The rejected rate.
        rate_hz: u32,
    },
    /// rubato refused the configuration.
    #[error("cannot build the resampler: {0}")]
    Construction(#[from] rubato::ResamplerConstructionError),
    /// rubato failed while processing.
    #[error("resampling failed: {0}")]
    Process(#[from] rubato::ResampleError),
    /// A buffer did not match the size rubato asked for (a bug, not bad input).
    #[error("resampler buffer size mismatch: {0}")]
    Size(#[from] rubato::audioadapter_buffers::SizeError),
}

/// Converts a mono stream at `source_rate_hz` to 16 kHz, chunk by chunk.
///
/// Uses rubato's band-limited FFT resampler for rates with a small ratio to 16 kHz and its
/// sinc resampler otherwise. The resampler's start-up delay is trimmed and the output length is
/// exactly `ceil(input_frames * 16000 / source_rate_hz)`, as with rubato's `process_all`.
pub struct MonoResampler {
    /// `None` when the source is already 16 kHz (samples pass straight through).
    inner: Option<Box<dyn Resampler<f32>>>,
    /// Input not yet consumed: less than one chunk between calls.
    pending: Vec<f32>,
    /// Scratch output for one resampler call.
    scratch: Vec<f32>,
    /// Output frames still to drop at the start (the resampler's delay).
    delay_frames_left: usize,
    input_frames: u64,
    output_frames: u64,
}

impl MonoResampler {
    /// Builds a resampler from `source_rate_hz` to [`MODEL_SAMPLE_RATE_HZ`].
    pub fn new(source_rate_hz: u32) -> Result<Self, ResampleError> {
        if !(MIN_SOURCE_RATE_HZ..=MAX_SOURCE_RATE_HZ).contains(&source_rate_hz) {
            return Err(ResampleError::UnsupportedRate {
                rate_hz: source_rate_hz,
            });
        }
        let inner = if source_rate_hz == MODEL_SAMPLE_RATE_HZ {
            None
        } else {
            Some(build_inner(source_rate_hz)?)
        };
        let (delay_frames_left, scratch_len) = match &inner {
            Some(r) => (r.output_delay(), r.output_frames_max()),
            None => (0, 0),
        };
        Ok(Self {
            inner,
            pending: Vec::with_capacity(CHUNK_FRAMES * 2),
            scratch: vec![0.0; scratch_len],
            delay_frames_left,
            input_frames: 0,
            output_frames: 0,
        })
    }

    /// Frames that the finished output will hold for the input seen so far.
    fn expected_output_frames(&self) -> u64 {
        match &self.inner {
            None => self.input_frames,
            Some(r) => (r.resample_ratio() * self.input_frames as f64).ceil() as u64,
        }
    }

    /// Feeds mono samples; appends every 16 kHz sample that is ready to `out`.
    pub fn push(&mut self, mono: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        self.input_frames += mono.len() as u64;
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(mono);
            self.output_frames += mono.len() as u64;
            return Ok(());
        };
        self.pending.extend_from_slice(mono);
        let mut consumed = 0;
        loop {
            let needed = inner.input_frames_next();
            if self.pending.len() - consumed < needed {
                break;
            }
            let input =
                InterleavedSlice::new(&self.pending[consumed..], 1, self.pending.len() - consumed)?;
            let scratch_len = self.scratch.len();
            let mut output = InterleavedSlice::new_mut(&mut self.scratch, 1, scratch_len)?;
            let (frames_in, frames_out) = inner.process_into_buffer(&input, &mut output, None)?;
            consumed += frames_in;
            emit(
                &self.scratch[..frames_out],
                &mut self.delay_frames_left,
                u64::MAX,
                &mut self.output_frames,
                out,
            );
        }
        self.pending.drain(..consumed);
        Ok(())
    }

    /// Flushes the remaining input and the resampler's tail; appends them to `out`.
    pub fn finish(mut self, out: &mut Vec<f32>) -> Result<(), ResampleError> {
        let expected = self.expected_output_frames();
        let Some(mut inner) = self.inner.take() else {
            return Ok(());
        };
        let mut partial_len = self.pending.len();
        // Each call with `partial_len` zero-pads its input, so after the leftover input the
        // loop pumps silence until the delayed tail has come out.
        let mut guard = 0;
        while self.output_frames < expected && guard < 64 {
            guard += 1;
            let needed = inner.input_frames_next();
            self.pending.resize(needed.max(partial_len), 0.0);
            let input = InterleavedSlice::new(&self.pending, 1, self.pending.len())?;
            let scratch_len = self.scratch.len();
            let mut output = InterleavedSlice::new_mut(&mut self.scratch, 1, scratch_len)?;
            let indexing = Indexing::new().partial_len(partial_len.min(needed));
            let (_, frames_out) =
                inner.process_into_buffer(&input, &mut output, Some(&indexing))?;
            partial_len = partial_len.saturating_sub(needed);
            if partial_len > 0 {
                self.pending.drain(..needed);
            }
            emit(
                &self.scratch[..frames_out],
                &mut self.delay_frames_left,
                expected,
                &mut self.output_frames,
                out,
            );
        }
        Ok(())
    }
}

/// Appends `chunk` to `out`, first dropping the resampler's remaining start-up delay and never
/// going past `limit` output frames.
fn emit(chunk: &[f32], delay_left: &mut usize, limit: u64, written: &mut u64, out: &mut Vec<f32>) {
    let skip = (*delay_left).min(chunk.len());
    *delay_left -= skip;
    let rest = &chunk[skip..];
    let room = usize::try_from(limit.saturating_sub(*written)).unwrap_or(usize::MAX);
    let take = rest.len().min(room);
    out.extend_from_slice(&rest[..take]);
    *written += take as u64;
}

fn build_inner(source_rate_hz: u32) -> Result<Box<dyn Resampler<f32>>, ResampleError> {
    let rate_in = source_rate_hz as usize;
    let rate_out = MODEL_SAMPLE_RATE_HZ as usize;
    let block_in = rate_in / gcd(rate_in, rate_out);
    if block_in <= MAX_FFT_BLOCK {
        let fft = Fft::<f32>::new(rate_in, rate_out, CHUNK_FRAMES, 1, FixedSync::Input)?;
        return Ok(Box::new(fft));
    }
    // Odd rates: a windowed-sinc resampler (band-limited, cutoff derived from the sinc length).
    let params = SincInterpolationParameters::new(128, WindowFunction::BlackmanHarris2)
        .oversampling_factor(256)
        .interpolation(SincInterpolationType::Linear);
    let ratio = rate_out as f64 / rate_in as f64;
    let sinc = Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK_FRAMES, 1, FixedAsync::Input)?;
    Ok(Box::new(sinc))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Largest magnitude kept from float sources (+18 dBFS); beyond it a file is broken, and huge
/// values would overflow the resampler's sums to infinity.
const MAX_ABS_SAMPLE: f32 = 8.0;

/// Averages interleaved frames of `channels` channels into `mono` (which is cleared first).
///
/// Non-finite samples (possible in float WAVs) become silence and magnitudes are capped at
/// `MAX_ABS_SAMPLE`, so the output is always finite.
pub fn downmix_into(interleaved: &[f32], channels: usize, mono: &mut Vec<f32>) {
    mono.clear();
    let channels = channels.max(1);
    let scale = 1.0 / channels as f32;
    mono.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().map(|&s| sanitize(s)).sum::<f32>() * scale),
    );
}

#[inline]
fn sanitize(sample: f32) -> f32 {
    if sample.is_finite() {
        sample.clamp(-MAX_ABS_SAMPLE, MAX_ABS_SAMPLE)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resample_all(rate_hz: u32, input: &[f32], piece: usize) -> Vec<f32> {
        let mut rs = MonoResampler::new(rate_hz).unwrap();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            rs.push(chunk, &mut out).unwrap();
        }
        rs.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn output_length_is_exact_for_common_and_odd_rates() {
        for &rate in &[
            8_000_u32, 11_025, 16_000, 22_050, 44_100, 48_000, 44_101, 96_000,
        ] {
            for &len in &[0_usize, 1, 100, 1023, 1024, 5000, 48_017] {
                let input = vec![0.1_f32; len];
                let out = resample_all(rate, &input, 333);
                let expected = (len as f64 * 16_000.0 / f64::from(rate)).ceil() as usize;
                assert_eq!(out.len(), expected, "rate {rate}, len {len}");
            }
        }
    }

    #[test]
    fn piece_size_does_not_change_the_result() {
        let input: Vec<f32> = (0..20_000).map(|i| (i as f32 * 0.01).sin()).collect();
        let a = resample_all(44_100, &input, 100);
        let b = resample_all(44_100, &input, 4096);
        assert_eq!(a.len(), b.len());
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0_f32, f32::max);
        assert!(max_diff < 1e-5, "max diff {max_diff}");
    }

    #[test]
    fn rejects_broken_rates() {
        assert!(matches!(
            MonoResampler::new(0),
            Err(ResampleError::UnsupportedRate { rate_hz: 0 })
        ));
        assert!(MonoResampler::new(5_000_000).is_err());
    }

    #[test]
    fn downmix_averages_channels() {
        let mut mono = Vec::new();
        downmix_into(&[1.0, 0.0, 0.5, 0.5, -1.0, 1.0], 2, &mut mono);
        assert_eq!(mono, vec![0.5, 0.5, 0.0]);
        downmix_into(&[f32::NAN, 1e30, -0.25], 1, &mut mono);
        assert_eq!(mono, vec![0.0, MAX_ABS_SAMPLE, -0.25]);
    }
}
