//! `SenseVoiceSmall`: prompt embeddings + `SenseVoiceEncoderSmall` + CTC head.
//!
//! Reference: FunASR `funasr/models/sense_voice/model.py` (`SenseVoiceSmall.inference`).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::SenseVoiceConfig;
use super::cpu_matmul::{CpuMatmul, Projection};
use super::encoder::{Capture, SenseVoiceEncoderSmall};
use super::{cpu_ops, fused};

/// Rows of `embed.weight` used as the four prompt frames.
///
/// Frame 0 is the language query, frames 1 and 2 are fixed (emotion and event queries), frame
/// 3 selects inverse text normalisation.
pub const PROMPT_FRAMES: usize = 4;
/// `embed.weight` rows: 7 + 7 languages + 2 text-norm options.
pub const EMBED_ROWS: usize = 16;
const EVENT_EMO_ROWS: [u32; 2] = [1, 2];

/// Language passed to the model's first prompt frame (`lid_dict` in FunASR).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Let the model detect the language.
    #[default]
    Auto,
    /// Mandarin Chinese.
    Zh,
    /// English.
    En,
    /// Cantonese.
    Yue,
    /// Japanese.
    Ja,
    /// Korean.
    Ko,
    /// No speech.
    Nospeech,
}

impl Language {
    /// Every value, in `lid_dict` order.
    pub const ALL: [Self; 7] = [
        Self::Auto,
        Self::Zh,
        Self::En,
        Self::Yue,
        Self::Ja,
        Self::Ko,
        Self::Nospeech,
    ];

    /// Row of `embed.weight` (`lid_dict`).
    pub fn embed_row(self) -> u32 {
        match self {
            Self::Auto => 0,
            Self::Zh => 3,
            Self::En => 4,
            Self::Yue => 7,
            Self::Ja => 11,
            Self::Ko => 12,
            Self::Nospeech => 13,
        }
    }

    /// FunASR's language string ("auto", "zh", …).
    pub fn code(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Zh => "zh",
            Self::En => "en",
            Self::Yue => "yue",
            Self::Ja => "ja",
            Self::Ko => "ko",
            Self::Nospeech => "nospeech",
        }
    }

    /// Parses a language string; unknown strings map to `Auto`, as in FunASR.
    pub fn from_code(code: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|l| l.code() == code)
            .unwrap_or(Self::Auto)
    }
}

/// The prompt of one batch item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prompt {
    /// Language query.
    pub language: Language,
    /// `<|withitn|>` (row 14) when true, `<|woitn|>` (row 15) when false.
    pub use_itn: bool,
}

impl Prompt {
    /// The four `embed.weight` rows.
    pub fn embed_rows(self) -> [u32; PROMPT_FRAMES] {
        let itn = if self.use_itn { 14 } else { 15 };
        [
            self.language.embed_row(),
            EVENT_EMO_ROWS[0],
            EVENT_EMO_ROWS[1],
            itn,
        ]
    }
}

/// Batch items whose CTC logits [`SenseVoiceSmall::forward_ids`] holds at once (25 MB each
/// for a 30 s segment in bf16).
pub const IDS_CHUNK: usize = 4;

/// Items per encoder pass on a CUDA device: larger batches run as several passes of this many.
/// At 16 × 30 s a layer's attention scores (33 MB in bf16) and activations stay in the H200's
/// 50 MB L2 cache; at 32 they do not, and the forward took 2.3× the time for 2× the work.
pub const ENCODER_CHUNK: usize = 16;

/// The passes a CUDA batch of `b` items is run in: `(first item, items)`, at most
/// [`ENCODER_CHUNK`] items each.
pub(crate) fn encoder_chunks(b: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..b)
        .step_by(ENCODER_CHUNK)
        .map(move |start| (start, ENCODER_CHUNK.min(b - start)))
}

/// Output of a batched forward pass.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// CTC logits `[B, 4 + T_max, vocab]` in the model's compute dtype (raw, before
    /// log-softmax).
    pub logits: Tensor,
    /// Valid frames per item, prompt frames included (`feats_len + 4`).
    pub lengths: Vec<usize>,
}

/// `SenseVoiceSmall` for inference.
#[derive(Debug, Clone)]
pub struct SenseVoiceSmall {
    embed: Tensor,
    encoder: SenseVoiceEncoderSmall,
    ctc_lo: Linear,
    /// The CTC head's product on the CPU in f32 (AMX when [`CpuMatmul::from_env`] picks it).
    ctc_p: Projection,
    input_size: usize,
    vocab_size: usize,
    dtype: DType,
    /// Captured CUDA graphs of repeated pass shapes (CUDA builds on a CUDA device with the
    /// fused kernels, unless `GPUSCRIBE_CUDA_GRAPHS=0`).
    #[cfg(feature = "cuda")]
    graphs: Option<std::sync::Arc<super::cuda_graph::Graphs>>,
}

impl SenseVoiceSmall {
    /// Builds the model from weights named as in the checkpoint (`embed`, `encoder.*`,
    /// `ctc.ctc_lo`). `vocab_size` is the tokenizer's piece count.
    pub fn load(cfg: &SenseVoiceConfig, vocab_size: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        let input_size = cfg.input_size();
        let d = cfg.encoder_conf.output_size;
        let ctc_lo = pad_vocab(
            candle_nn::linear(d, vocab_size, vb.pp("ctc").pp("ctc_lo"))?,
            vb.device(),
        )?;
        let matmul = if fused::cpu_enabled_on(vb.device(), vb.dtype()) {
            CpuMatmul::from_env()
        } else {
            CpuMatmul::F32
        };
        let ctc_p = Projection::new(&ctc_lo, matmul)?;
        Ok(Self {
            // Prompt rows join the f32 feature stream, so keep them in f32.
            embed: vb.get_with_hints_dtype(
                (EMBED_ROWS, input_size),
                "embed.weight",
                Default::default(),
                DType::F32,
            )?,
            encoder: SenseVoiceEncoderSmall::load(
                input_size,
                &cfg.encoder_conf,
                &vb.pp("encoder"),
            )?,
            ctc_lo,
            ctc_p,
            input_size,
            vocab_size,
            dtype: vb.dtype(),
            #[cfg(feature = "cuda")]
            graphs: super::cuda_graph::Graphs::for_device(vb.device()).map(std::sync::Arc::new),
        })
    }

    /// CUDA graphs of pass shapes this model keeps now (0 without CUDA graphs).
    pub fn cuda_graphs_kept(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &self.graphs {
            return graphs.kept();
        }
        0
    }

    /// The encoder.
    pub fn encoder(&self) -> &SenseVoiceEncoderSmall {
        &self.encoder
    }

    /// Vocabulary size of the CTC head.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Feature width expected by `forward` (560).
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Compute dtype of the matmuls.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Greedy CTC frame ids `[B, 4 + T_max]` (u32, on the device) of a padded batch, without
    /// keeping the whole batch's logits: the CTC head and argmax run a few items at a time, so
    /// the vocabulary-wide logits never take more than [`IDS_CHUNK`] items' worth of memory.
    /// Same arguments as [`Self::forward`]; returns the ids and the valid lengths.
    pub fn forward_ids(
        &self,
        feats: &Tensor,
        feat_lengths: &[usize],
        prompts: &[Prompt],
    ) -> Result<(Tensor, Vec<usize>)> {
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &self.graphs
            && let Some((_, ids, lengths)) =
                graphs.encode_ids(self, feats, feat_lengths, prompts)?
        {
            return Ok((ids, lengths));
        }
        let (enc, lengths) = self.encode_for_ctc(feats, feat_lengths, prompts)?;
        Ok((self.ctc_ids(&enc)?, lengths))
    }

    /// [`Self::encode_for_ctc`] and [`Self::ctc_ids`] of its output in one call: the encoder
    /// output, the ids and the valid lengths. On a CUDA device a pass shape seen before runs as
    /// one captured CUDA graph (the same kernels, a single launch).
    pub fn encode_ids(
        &self,
        feats: &Tensor,
        feat_lengths: &[usize],
        prompts: &[Prompt],
    ) -> Result<(Tensor, Tensor, Vec<usize>)> {
        #[cfg(feature = "cuda")]
        if let Some(graphs) = &self.graphs
            && let Some(out) = graphs.encode_ids(self, feats, feat_lengths, prompts)?
        {
            return Ok(out);
        }
        let (enc, lengths) = self.encode_for_ctc(feats, feat_lengths, prompts)?;
        let ids = self.ctc_ids(&enc)?;
        Ok((enc, ids, lengths))
    }

    /// The prompt rows of `prompts` (u32 `[B · 4]`, on the host) for [`Self::encode_prepared`].
    pub(crate) fn prompt_rows(prompts: &[Prompt]) -> Vec<u32> {
        prompts.iter().flat_map(|p| p.embed_rows()).collect()
    }

    /// One encoder pass of `feats` (f32 `[B, T, input_size]`) whose prompt rows, context and
    /// position encoding (`[1, 4 + T, input_size]`) are already on the device: the encoder
    /// output in the compute dtype and the greedy ids. Nothing crosses between host and
    /// device, so a CUDA graph can capture it.
    #[cfg(feature = "cuda")]
    pub(crate) fn encode_prepared(
        &self,
        feats: &Tensor,
        rows: &Tensor,
        ctx: &super::encoder::FrameContext,
        pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let b = feats.dim(0)?;
        let prompt =
            self.embed
                .index_select(rows, 0)?
                .reshape((b, PROMPT_FRAMES, self.input_size))?;
        let xs = Tensor::cat(&[&prompt, feats], 1)?;
        let enc = self
            .encoder
            .forward_prepared(&xs, ctx, pe)?
            .to_dtype(self.dtype)?;
        let ids = self.ctc_ids(&enc)?;
        Ok((enc, ids))
    }

    /// The position encoding [`Self::encode_prepared`] takes for passes of `frames` frames
    /// (prompt frames included).
    #[cfg(feature = "cuda")]
    pub(crate) fn position_encoding(&self, frames: usize) -> Result<Tensor> {
        super::encoder::sinusoidal_position_encoding(frames, self.input_size, self.device())
    }

    /// The encoder output `[B, 4 + T_max, D]` in the compute dtype, ready for the CTC head, and
    /// the valid lengths. Same arguments as [`Self::forward`].
    pub fn encode_for_ctc(
        &self,
        feats: &Tensor,
        feat_lengths: &[usize],
        prompts: &[Prompt],
    ) -> Result<(Tensor, Vec<usize>)> {
        let (enc, lengths) = self.encode(feats, feat_lengths, prompts, None)?;
        Ok((enc.to_dtype(self.dtype)?, lengths))
    }

    /// Greedy frame ids `[B, 4 + T_max]` of [`Self::encode_for_ctc`]'s output, [`IDS_CHUNK`]
    /// items at a time.
    pub fn ctc_ids(&self, enc: &Tensor) -> Result<Tensor> {
        // Padding columns of the CTC head score -inf: the argmax never picks them.
        let b = enc.dim(0)?;
        let mut ids = Vec::with_capacity(b.div_ceil(IDS_CHUNK));
        for start in (0..b).step_by(IDS_CHUNK) {
            let chunk = enc.narrow(0, start, IDS_CHUNK.min(b - start))?;
            ids.push(fused::argmax_last(&self.ctc_logits(&chunk)?)?);
        }
        Tensor::cat(&ids, 0)
    }

    /// f32 CTC log-probabilities of item `b` of [`Self::encode_for_ctc`]'s output over its speech
    /// frames `4..len`, reduced to the vocabulary `columns`: `[len - 4, columns.len()]`. The
    /// log-softmax runs over the whole vocabulary on the device; only the chosen columns come
    /// back, which is all a forced alignment of those ids reads.
    pub fn speech_log_probs(
        &self,
        enc: &Tensor,
        b: usize,
        len: usize,
        columns: &[u32],
    ) -> Result<Tensor> {
        let frames = len.saturating_sub(PROMPT_FRAMES);
        let h = enc.get(b)?.narrow(0, PROMPT_FRAMES, frames)?;
        let logits = self.vocab_only(self.ctc_logits(&h)?)?;
        let logits = logits.to_dtype(DType::F32)?;
        let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
        let cols = Tensor::from_vec(columns.to_vec(), columns.len(), lp.device())?;
        lp.index_select(&cols, 1)
    }

    /// Runs a padded batch. `feats` is f32 `[B, T_max, input_size]` (zero-padded after CMVN),
    /// `feat_lengths[b]` the valid LFR frames of item b and `prompts[b]` its prompt.
    pub fn forward(
        &self,
        feats: &Tensor,
        feat_lengths: &[usize],
        prompts: &[Prompt],
        capture: Option<Capture<'_>>,
    ) -> Result<ModelOutput> {
        let (enc, lengths) = self.encode(feats, feat_lengths, prompts, capture)?;
        // Kept in the compute dtype: in f32 the logits of a batch of 16 x 30 s segments alone
        // take 815 MB; greedy decoding needs only their argmax.
        let logits = self.vocab_only(self.ctc_logits(&enc.to_dtype(self.dtype)?)?)?;
        Ok(ModelOutput { logits, lengths })
    }

    /// The CTC head `x · Wᵀ + b`: AMX products on the CPU when packed, [`fused::linear`]
    /// otherwise.
    fn ctc_logits(&self, x: &Tensor) -> Result<Tensor> {
        match self.ctc_lo.bias() {
            Some(bias)
                if self.ctc_p.is_packed() && fused::cpu_enabled_on(x.device(), x.dtype()) =>
            {
                cpu_ops::bias_act(&self.ctc_p.forward(&x.contiguous()?)?, bias, false)
            }
            _ => fused::linear(&self.ctc_lo, x, false),
        }
    }

    /// `logits` `[.., padded vocab]` of the CTC head narrowed to the real vocabulary (a view).
    fn vocab_only(&self, logits: Tensor) -> Result<Tensor> {
        if logits.dim(candle_core::D::Minus1)? == self.vocab_size {
            Ok(logits)
        } else {
            logits.narrow(candle_core::D::Minus1, 0, self.vocab_size)
        }
    }

    /// Prompt frames + encoder: f32 `[B, 4 + T_max, D]` and the valid lengths.
    fn encode(
        &self,
        feats: &Tensor,
        feat_lengths: &[usize],
        prompts: &[Prompt],
        capture: Option<Capture<'_>>,
    ) -> Result<(Tensor, Vec<usize>)> {
        let (b, _, _) = feats.dims3()?;
        if feat_lengths.len() != b || prompts.len() != b {
            candle_core::bail!(
                "batch of {b} items got {} lengths and {} prompts",
                feat_lengths.len(),
                prompts.len()
            );
        }
        let rows = Tensor::from_vec(
            Self::prompt_rows(prompts),
            b * PROMPT_FRAMES,
            feats.device(),
        )?;
        let prompt =
            self.embed
                .index_select(&rows, 0)?
                .reshape((b, PROMPT_FRAMES, self.input_size))?;
        let xs = Tensor::cat(&[&prompt, &feats.to_dtype(DType::F32)?], 1)?;
        let lengths: Vec<usize> = feat_lengths.iter().map(|l| l + PROMPT_FRAMES).collect();
        let enc = if xs.device().is_cuda() && b > ENCODER_CHUNK && capture.is_none() {
            let mut parts = Vec::with_capacity(b.div_ceil(ENCODER_CHUNK));
            for (start, n) in encoder_chunks(b) {
                let part = xs.narrow(0, start, n)?;
                parts.push(
                    self.encoder
                        .forward(&part, &lengths[start..start + n], None)?,
                );
            }
            Tensor::cat(&parts, 0)?
        } else {
            self.encoder.forward(&xs, &lengths, capture)?
        };
        Ok((enc, lengths))
    }
}

/// On a CUDA device, the CTC head with its output rows padded to a multiple of 8 (zero weights,
/// bias -inf): cuBLAS has no fast kernel for the odd row count of SenseVoice's 25,055-piece
/// vocabulary (a 16 × 30 s batch's CTC product took 2.3 ms in an unaligned kernel, as long as
/// 20 encoder layers' matrix products). The padding columns never win an argmax and
/// [`SenseVoiceModel::forward`] narrows them away. Elsewhere the head is unchanged.
fn pad_vocab(head: Linear, device: &Device) -> Result<Linear> {
    let (vocab, d) = head.weight().dims2()?;
    let padded = vocab.next_multiple_of(8);
    if !device.is_cuda() || padded == vocab {
        return Ok(head);
    }
    let extra = padded - vocab;
    let w = head.weight();
    // Without a bias the padding columns would score 0 and could win: leave such a head alone.
    let Some(b) = head.bias() else {
        return Ok(head);
    };
    let weight = Tensor::cat(&[w, &Tensor::zeros((extra, d), w.dtype(), device)?], 0)?;
    let pad = Tensor::full(f32::NEG_INFINITY, extra, device)?.to_dtype(b.dtype())?;
    let bias = Tensor::cat(&[b, &pad], 0)?;
    Ok(Linear::new(weight, Some(bias)))
}
