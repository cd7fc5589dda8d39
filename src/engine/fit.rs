//! Will the job fit? An estimate of the VRAM a batch needs, against what NVML says is free.

use serde::{Deserialize, Serialize};

/// LFR frames per second of audio (one every 60 ms), plus the 4 prompt frames per item.
const FRAMES_PER_SEC: f64 = 1000.0 / 60.0;
const PROMPT_FRAMES: f64 = 4.0;

/// Overhead of a CUDA context with cuBLAS and cuRAND (measured: 586 MiB on an H100).
pub const CUDA_CONTEXT_BYTES: u64 = 600 * 1024 * 1024;

/// The shape facts the estimate needs (from the model's config).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Bytes of all weights at the run dtype.
    pub weight_bytes: u64,
    /// Encoder width (512 for the release model).
    pub d_model: u64,
    /// Feed-forward width (2048).
    pub ffn_units: u64,
    /// Attention heads (4).
    pub heads: u64,
    /// CTC vocabulary (25055).
    pub vocab: u64,
    /// Bytes per element of the run dtype (2 for bf16/f16, 4 for f32).
    pub dtype_bytes: u64,
}

impl ModelShape {
    /// The release SenseVoice-Small at `dtype_bytes` per element.
    pub fn sensevoice_small(dtype_bytes: u64) -> Self {
        Self {
            weight_bytes: 233_999_167 * dtype_bytes,
            d_model: 512,
            ffn_units: 2048,
            heads: 4,
            vocab: 25_055,
            dtype_bytes,
        }
    }

    /// Peak activation bytes of one forward pass over `batch` items padded to `secs` seconds.
    pub fn activation_bytes(&self, batch: u64, secs: f64) -> u64 {
        let t = (secs * FRAMES_PER_SEC).ceil() + PROMPT_FRAMES;
        let t = t as u64;
        let b = batch;
        // Attention scores and their softmax, in f32, live together: 2 × B·H·T².
        let scores = 2 * b * self.heads * t * t * 4;
        // Hidden states alive at once in a layer: input, normed, qkv (3×), attention out, FSMN,
        // FFN hidden (ffn_units): about 8·d + ffn per frame, at the run dtype, doubled for
        // f32 upcasts in LayerNorm.
        let hidden = b * t * (8 * self.d_model + self.ffn_units) * self.dtype_bytes * 2;
        // CTC logits at the run dtype, a few items at a time (`IDS_CHUNK`), before and after
        // the bias.
        let chunk = b.min(crate::model::sensevoice::model::IDS_CHUNK as u64);
        let logits = chunk * t * self.vocab * self.dtype_bytes * 2;
        scores + hidden + logits
    }

    /// Total VRAM for the model plus one batch, with the CUDA context.
    pub fn job_bytes(&self, batch: u64, secs: f64) -> u64 {
        CUDA_CONTEXT_BYTES + self.weight_bytes + self.activation_bytes(batch, secs)
    }
}

/// Free VRAM we allow ourselves: NVML's free bytes less a safety margin (a fraction, default 0.1).
pub fn usable_bytes(free_bytes: u64, margin: f64) -> u64 {
    let margin = margin.clamp(0.0, 0.9);
    (free_bytes as f64 * (1.0 - margin)) as u64
}

/// The largest batch of `secs`-second segments that fits in `available_bytes` next to the
/// weights (already resident or not, as `weights_resident` says), at most `max_batch`; 0 if not
/// even one fits.
pub fn max_batch_that_fits(
    shape: &ModelShape,
    secs: f64,
    available_bytes: u64,
    weights_resident: bool,
    max_batch: u64,
) -> u64 {
    let fixed = if weights_resident {
        0
    } else {
        CUDA_CONTEXT_BYTES + shape.weight_bytes
    };
    let Some(room) = available_bytes.checked_sub(fixed) else {
        return 0;
    };
    // The logits term stops growing past a few items, so search rather than divide.
    let mut batch = 0;
    while batch < max_batch && shape.activation_bytes(batch + 1, secs) <= room {
        batch += 1;
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    #[test]
    fn release_model_fits_in_two_gib_with_a_batch_of_thirty_second_segments() {
        let bf16 = ModelShape::sensevoice_small(2);
        // Weights are ~446 MiB in bf16.
        assert!(bf16.weight_bytes < 470 * 1024 * 1024);
        let batch = max_batch_that_fits(&bf16, 30.0, 2 * GIB, false, 64);
        assert!(batch >= 4, "batch {batch}");
        assert!(bf16.job_bytes(batch, 30.0) <= 2 * GIB);
    }

    #[test]
    fn nothing_fits_when_free_memory_is_below_the_weights() {
        let bf16 = ModelShape::sensevoice_small(2);
        assert_eq!(
            max_batch_that_fits(&bf16, 30.0, 300 * 1024 * 1024, false, 64),
            0
        );
        // The same room is plenty once the weights are resident.
        assert!(max_batch_that_fits(&bf16, 30.0, 300 * 1024 * 1024, true, 64) >= 1);
    }

    #[test]
    fn activation_grows_with_batch_and_length() {
        let f32s = ModelShape::sensevoice_small(4);
        assert!(f32s.activation_bytes(2, 30.0) > f32s.activation_bytes(1, 30.0));
        assert!(f32s.activation_bytes(1, 30.0) > f32s.activation_bytes(1, 10.0));
        assert_eq!(usable_bytes(1000, 0.1), 900);
    }
}
