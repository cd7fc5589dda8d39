//! The released Whisper sizes: their Hugging Face repositories, shapes, download sizes and an
//! estimate of the device memory one window needs (the fit check before a load).

/// Overhead of a CUDA context with cuBLAS (the same figure the SenseVoice estimate uses).
const CUDA_CONTEXT_BYTES: u64 = 600 * 1024 * 1024;
/// Frames after the encoder's stride-2 convolution.
const AUDIO_CTX: u64 = 1500;
/// Decoder context of every released model.
const TEXT_CTX: u64 = 448;

/// One Whisper checkpoint's architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WhisperSize {
    /// The name used on the command line and in settings (`tiny`, `large-v3-turbo`, …).
    pub name: &'static str,
    /// The Hugging Face repository.
    pub repo: &'static str,
    /// Width.
    pub d_model: u64,
    /// Encoder layers.
    pub encoder_layers: u64,
    /// Decoder layers.
    pub decoder_layers: u64,
    /// Attention heads.
    pub heads: u64,
    /// Mel bins (128 for large-v3 and its derivatives).
    pub n_mels: u64,
    /// Vocabulary.
    pub vocab: u64,
    /// Bytes per weight in the published `model.safetensors` (4: f32, 2: f16).
    pub stored_bytes: u64,
}

const fn size(
    name: &'static str,
    repo: &'static str,
    shape: [u64; 6],
    stored_bytes: u64,
) -> WhisperSize {
    WhisperSize {
        name,
        repo,
        d_model: shape[0],
        encoder_layers: shape[1],
        decoder_layers: shape[2],
        heads: shape[3],
        n_mels: shape[4],
        vocab: shape[5],
        stored_bytes,
    }
}

/// Every size offered, smallest first (shapes from each repository's `config.json`).
pub const SIZES: [WhisperSize; 13] = [
    size("tiny", "openai/whisper-tiny", [384, 4, 4, 6, 80, 51865], 4),
    size(
        "tiny.en",
        "openai/whisper-tiny.en",
        [384, 4, 4, 6, 80, 51864],
        4,
    ),
    size("base", "openai/whisper-base", [512, 6, 6, 8, 80, 51865], 4),
    size(
        "base.en",
        "openai/whisper-base.en",
        [512, 6, 6, 8, 80, 51864],
        4,
    ),
    size(
        "small",
        "openai/whisper-small",
        [768, 12, 12, 12, 80, 51865],
        4,
    ),
    size(
        "small.en",
        "openai/whisper-small.en",
        [768, 12, 12, 12, 80, 51864],
        4,
    ),
    size(
        "medium",
        "openai/whisper-medium",
        [1024, 24, 24, 16, 80, 51865],
        4,
    ),
    size(
        "medium.en",
        "openai/whisper-medium.en",
        [1024, 24, 24, 16, 80, 51864],
        4,
    ),
    size(
        "large-v2",
        "openai/whisper-large-v2",
        [1280, 32, 32, 20, 80, 51865],
        4,
    ),
    size(
        "large-v3",
        "openai/whisper-large-v3",
        [1280, 32, 32, 20, 128, 51866],
        2,
    ),
    size(
        "large-v3-turbo",
        "openai/whisper-large-v3-turbo",
        [1280, 32, 4, 20, 128, 51866],
        2,
    ),
    size(
        "distil-large-v3",
        "distil-whisper/distil-large-v3",
        [1280, 32, 2, 20, 128, 51866],
        2,
    ),
    size(
        "distil-small.en",
        "distil-whisper/distil-small.en",
        [768, 12, 2, 12, 80, 51864],
        4,
    ),
];

/// The size called `name`.
pub fn by_name(name: &str) -> Option<&'static WhisperSize> {
    SIZES.iter().find(|s| s.name == name)
}

/// The names, for messages and pickers.
pub fn names() -> Vec<&'static str> {
    SIZES.iter().map(|s| s.name).collect()
}

impl WhisperSize {
    /// Parameters (weights stored in the checkpoint, the encoder's sinusoids included).
    pub fn params(&self) -> u64 {
        let d = self.d_model;
        let attn = 4 * d * d + 3 * d; // q, k (no bias), v, out
        let mlp = 8 * d * d + 5 * d; // d → 4d → d
        let ln = 2 * d;
        let encoder = self.n_mels * d * 3 + d + d * d * 3 + d + AUDIO_CTX * d;
        let encoder = encoder + self.encoder_layers * (attn + mlp + 2 * ln) + ln;
        let decoder = self.vocab * d + TEXT_CTX * d;
        let decoder = decoder + self.decoder_layers * (2 * attn + mlp + 3 * ln) + ln;
        encoder + decoder
    }

    /// Bytes of `model.safetensors` to download.
    pub fn download_bytes(&self) -> u64 {
        self.params() * self.stored_bytes
    }

    /// Bytes of weights on the device at `dtype_bytes` per element.
    pub fn weight_bytes(&self, dtype_bytes: u64) -> u64 {
        self.params() * dtype_bytes
    }

    /// Peak activation bytes while transcribing one 30 s window: the encoder's attention
    /// scores and softmax (per layer, counted in f32), its hidden states, the decoder's
    /// cross-attention keys and values for every layer, and its self-attention cache.
    pub fn activation_bytes(&self, dtype_bytes: u64) -> u64 {
        let d = self.d_model;
        let scores = 2 * self.heads * AUDIO_CTX * AUDIO_CTX * 4;
        // conv1 runs at 3000 frames; then input, normed, q/k/v, attention out, 4d MLP.
        let hidden = (2 * AUDIO_CTX * d + AUDIO_CTX * (10 * d)) * dtype_bytes;
        let cross_kv = self.decoder_layers * 2 * AUDIO_CTX * d * dtype_bytes;
        // Greedy steps run one position on a cache of the context: its keys and values, the
        // prompt's scores, and one position's logits (at the run dtype, then in f32).
        let decoder = self.decoder_layers * 2 * TEXT_CTX * d * dtype_bytes
            + 2 * self.heads * TEXT_CTX * (TEXT_CTX + AUDIO_CTX) * 4
            + self.vocab * (dtype_bytes + 4);
        scores + hidden + cross_kv + decoder
    }

    /// Device memory for the model and one window, with the CUDA context.
    pub fn job_bytes(&self, dtype_bytes: u64) -> u64 {
        CUDA_CONTEXT_BYTES + self.weight_bytes(dtype_bytes) + self.activation_bytes(dtype_bytes)
    }

    /// Whether it fits in `available_bytes` of free device memory.
    pub fn fits(&self, dtype_bytes: u64, available_bytes: u64) -> bool {
        self.job_bytes(dtype_bytes) <= available_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn parameter_counts_match_the_published_sizes() {
        // OpenAI's rounded figures (39 M, 74 M, 244 M, 769 M, 1550 M; tiny counts 37.8 M), 809 M for turbo.
        for (name, published) in [
            ("tiny", 39.0),
            ("base", 74.0),
            ("small", 244.0),
            ("medium", 769.0),
            ("large-v3", 1550.0),
            ("large-v3-turbo", 809.0),
        ] {
            let size = by_name(name).expect(name);
            let millions = size.params() as f64 / 1e6;
            assert!(
                (millions - published).abs() / published < 0.05,
                "{name}: {millions:.1} M against {published} M"
            );
        }
    }

    #[test]
    fn estimates_grow_with_size_and_tiny_fits_in_one_gib() {
        let tiny = by_name("tiny").expect("tiny");
        assert!(tiny.job_bytes(4) < 1024 * 1024 * 1024);
        assert!((140 * MB..160 * MB).contains(&tiny.download_bytes()));
        let mut last = 0;
        for name in ["tiny", "base", "small", "medium", "large-v2"] {
            let bytes = by_name(name).expect(name).job_bytes(4);
            assert!(bytes > last, "{name}");
            last = bytes;
        }
        let large = by_name("large-v3").expect("large-v3");
        assert!(!large.fits(4, 4 * 1024 * MB));
        assert!(large.fits(4, 16 * 1024 * MB));
    }

    #[test]
    fn names_are_unique_and_found() {
        let mut names = names();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(by_name("medium.en").is_some() && by_name("huge").is_none());
    }
}
