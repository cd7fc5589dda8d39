//! Whisper's encoder and decoder, following candle-transformers' `whisper::model` (MIT or
//! Apache-2.0, huggingface/candle) with three changes that the reference maths and the
//! half-precision runs need:
//! - exact (erf) GELU, as transformers and OpenAI use, where candle's `gelu` is the tanh
//!   approximation;
//! - the encoder positions and the causal mask in the weights' dtype (candle-transformers 0.11.1
//!   builds them in f32 and fails on f16/bf16 weights, huggingface/candle#3791);
//! - a key/value cache for the decoder's self-attention, so a greedy step costs one position
//!   (and for f32 on the CPU a fused step over the same weights, `cpu_step.rs`);
//! - the query alone scaled by `head_dim^-0.5`, as transformers does (candle-transformers scales
//!   query and keys by `head_dim^-0.25` each);
//! - the attention softmax in f32 for f16 and bf16 on the CPU: candle 0.11.1's CPU softmax
//!   sums the exponentials in the input dtype, and a bf16 sum over 1500 audio frames stalls
//!   (8 bits of mantissa: past 256 each addend under 1 rounds away), which wrecked every bf16
//!   transcript (f16 loses less, from 1024 on). CUDA's softmax accumulates in f32 already.
//!
//! For f32 on the CPU the encoder runs its steps around the matrix products as the fused loops
//! of [`crate::model::cpu_ops`] (LayerNorm, bias + GELU, the head split, softmax, bias +
//! residual: one multi-threaded, vectorised pass each) instead of candle's operations, which make
//! one pass and one allocation per elementary step, mostly on one thread, with libm's `erff` and
//! `expf` (`GPUSCRIBE_NO_FUSED_KERNELS=1` turns them off; the tests compare both). The products
//! stay candle's gemm: at Whisper's shapes (1500 frames, heads of 64) it measured faster than
//! SenseVoice's AVX-512 kernel (`sensevoice::cpu_f32`, BENCHMARKS.md).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Embedding, LayerNorm, Linear, Module, VarBuilder};
use candle_transformers::models::whisper::Config;

use super::cpu_step::CpuStep;
use crate::model::cpu_ops;
use crate::model::sensevoice::fused::{cpu_enabled_on, matmul_no_bias};

/// LayerNorm of contiguous f32 `x` through the fused CPU loop.
fn layer_norm_cpu(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    let bias = ln
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("layer norm without bias".into()))?;
    cpu_ops::layer_norm(x, ln.weight(), bias, ln.eps() as f32)
}

/// `residual + (x · Wᵀ + b)` through the fused CPU loop.
fn linear_residual_cpu(layer: &Linear, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
    let y = matmul_no_bias(layer, x)?;
    match layer.bias() {
        Some(bias) => cpu_ops::residual_bias(&y, bias, residual),
        None => residual + y,
    }
}

fn linear(i: usize, o: usize, bias: bool, vb: &VarBuilder<'_>) -> Result<Linear> {
    let weight = vb.get((o, i), "weight")?;
    let bias = if bias { Some(vb.get(o, "bias")?) } else { None };
    Ok(Linear::new(weight, bias))
}

fn layer_norm(size: usize, vb: &VarBuilder<'_>) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        vb.get(size, "weight")?,
        vb.get(size, "bias")?,
        1e-5,
    ))
}

#[derive(Debug, Clone)]
pub(super) struct Attention {
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) out: Linear,
    pub(super) heads: usize,
    /// Self-attention: the keys and values of the positions so far. Cross-attention: the
    /// audio's keys and values.
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            q: linear(d, d, true, &vb.pp("q_proj"))?,
            k: linear(d, d, false, &vb.pp("k_proj"))?,
            v: linear(d, d, true, &vb.pp("v_proj"))?,
            out: linear(d, d, true, &vb.pp("out_proj"))?,
            heads,
            cache: None,
        })
    }

    /// `xa`: cross-attention over the audio (keys and values computed once per window).
    /// Without it, self-attention; `cached` appends to the cache (the decoder's steps).
    fn forward(
        &mut self,
        x: &Tensor,
        xa: Option<&Tensor>,
        mask: Option<&Tensor>,
        cached: bool,
    ) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        let (k, v) = match (xa, self.cache.take()) {
            (Some(_), Some(kv)) => kv,
            (Some(xa), None) => (self.k.forward(xa)?, self.v.forward(xa)?),
            (None, previous) => {
                let (k, v) = (self.k.forward(x)?, self.v.forward(x)?);
                match previous {
                    Some((pk, pv)) if cached => {
                        (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?)
                    }
                    _ => (k, v),
                }
            }
        };
        if xa.is_some() || cached {
            self.cache = Some((k.clone(), v.clone()));
        }
        let wv = self.attend(&q, &k, &v, mask)?;
        self.out.forward(&wv)
    }

    /// Self-attention of contiguous f32 `x` `[B, T, D]` on the CPU through the fused loops,
    /// the output projection's bias and `residual` added: `residual + attention(x)`.
    fn forward_cpu(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let scale = ((d / self.heads) as f32).powf(-0.5);
        let q = cpu_ops::heads(
            &matmul_no_bias(&self.q, x)?,
            self.q.bias(),
            self.heads,
            scale,
        )?;
        let k = cpu_ops::heads(&matmul_no_bias(&self.k, x)?, self.k.bias(), self.heads, 1.0)?;
        let v = cpu_ops::heads(&matmul_no_bias(&self.v, x)?, self.v.bias(), self.heads, 1.0)?;
        let w = cpu_ops::masked_softmax(&q.matmul(&k.t()?)?, &vec![t; b])?;
        let merged = cpu_ops::merge_heads(&w.matmul(&v)?)?;
        linear_residual_cpu(&self.out, &merged, residual)
    }

    fn heads_of(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.heads, d / self.heads))?
            .transpose(1, 2)
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (_, n_q, d) = q.dims3()?;
        let n_k = k.dim(1)?;
        // transformers' order: the projected query times head_dim^-0.5, the keys as they are
        // (scaling a transposed key view cost a serial strided pass over all 1500 audio keys).
        let scale = ((d / self.heads) as f64).powf(-0.5);
        let q = self.heads_of(&(q * scale)?)?.contiguous()?;
        let k = self.heads_of(k)?.contiguous()?;
        let v = self.heads_of(v)?.contiguous()?;
        let mut qk = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            // Rows for the new positions (the last n_q of n_k), all n_k columns.
            let mask = mask.narrow(0, n_k - n_q, n_q)?.narrow(1, 0, n_k)?;
            qk = qk.broadcast_add(&mask)?;
        }
        let half = matches!(qk.dtype(), DType::BF16 | DType::F16);
        let w = if half && qk.device().is_cpu() {
            candle_nn::ops::softmax_last_dim(&qk.to_dtype(DType::F32)?)?.to_dtype(qk.dtype())?
        } else {
            candle_nn::ops::softmax_last_dim(&qk)?
        };
        w.matmul(&v)?.transpose(1, 2)?.flatten_from(2)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) attn: Attention,
    pub(super) attn_ln: LayerNorm,
    pub(super) cross: Option<(Attention, LayerNorm)>,
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
    pub(super) mlp_ln: LayerNorm,
}

impl Block {
    fn load(d: usize, heads: usize, cross: bool, vb: &VarBuilder<'_>) -> Result<Self> {
        let cross = if cross {
            Some((
                Attention::load(d, heads, &vb.pp("encoder_attn"))?,
                layer_norm(d, &vb.pp("encoder_attn_layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            attn: Attention::load(d, heads, &vb.pp("self_attn"))?,
            attn_ln: layer_norm(d, &vb.pp("self_attn_layer_norm"))?,
            cross,
            fc1: linear(d, 4 * d, true, &vb.pp("fc1"))?,
            fc2: linear(4 * d, d, true, &vb.pp("fc2"))?,
            mlp_ln: layer_norm(d, &vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(
        &mut self,
        x: &Tensor,
        xa: Option<&Tensor>,
        mask: Option<&Tensor>,
        cached: bool,
    ) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward(&self.attn_ln.forward(x)?, None, mask, cached)?)?;
        let x = match &mut self.cross {
            Some((attn, ln)) => (&x + attn.forward(&ln.forward(&x)?, xa, None, false)?)?,
            None => x,
        };
        let h = self.fc1.forward(&self.mlp_ln.forward(&x)?)?.gelu_erf()?;
        x + self.fc2.forward(&h)?
    }

    /// An encoder block of contiguous f32 `x` on the CPU through the fused loops.
    fn encode_cpu(&self, x: &Tensor) -> Result<Tensor> {
        let x = self
            .attn
            .forward_cpu(&layer_norm_cpu(&self.attn_ln, x)?, x)?;
        let h = matmul_no_bias(&self.fc1, &layer_norm_cpu(&self.mlp_ln, &x)?)?;
        let h = cpu_ops::bias_gelu(&h, self.fc1.bias())?;
        linear_residual_cpu(&self.fc2, &h, &x)
    }

    fn reset(&mut self) {
        self.attn.cache = None;
        if let Some((attn, _)) = &mut self.cross {
            attn.cache = None;
        }
    }
}

fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let inc = 10000f64.ln() / (channels / 2 - 1) as f64;
    let mut table = vec![0f32; length * channels];
    for t in 0..length {
        for i in 0..channels / 2 {
            let x = t as f64 * (-(i as f64) * inc).exp();
            table[t * channels + i] = x.sin() as f32;
            table[t * channels + channels / 2 + i] = x.cos() as f32;
        }
    }
    table
}

/// The encoder positions every checkpoint stores: `(max_source_positions, d_model)` sinusoids.
pub fn encoder_positions(config: &Config) -> Vec<f32> {
    sinusoids(config.max_source_positions, config.d_model)
}

/// Whisper's encoder and decoder.
#[derive(Debug, Clone)]
pub struct Network {
    conv1: Conv1d,
    conv2: Conv1d,
    audio_positions: Tensor,
    encoder: Vec<Block>,
    encoder_ln: LayerNorm,
    pub(super) tokens: Embedding,
    pub(super) text_positions: Tensor,
    pub(super) decoder: Vec<Block>,
    pub(super) decoder_ln: LayerNorm,
    mask: Tensor,
    /// Positions in the decoder's self-attention cache.
    cached: usize,
    /// The fused CPU step's caches (`step_cpu`).
    pub(super) cpu_step: CpuStep,
}

impl Network {
    /// Loads the Hugging Face layout (`model.encoder.*`, `model.decoder.*`).
    pub fn load(vb: &VarBuilder<'_>, config: &Config) -> Result<Self> {
        let (d, dtype, device) = (config.d_model, vb.dtype(), vb.device().clone());
        let enc = vb.pp("model.encoder");
        let dec = vb.pp("model.decoder");
        let conv = |vb: VarBuilder<'_>, i: usize, stride: usize| -> Result<Conv1d> {
            let cfg = Conv1dConfig {
                padding: 1,
                stride,
                groups: 1,
                dilation: 1,
                cudnn_fwd_algo: None,
            };
            Ok(Conv1d::new(
                vb.get((d, i, 3), "weight")?,
                Some(vb.get(d, "bias")?),
                cfg,
            ))
        };
        let n_ctx = config.max_target_positions;
        let mask: Vec<f32> = (0..n_ctx)
            .flat_map(|i| (0..n_ctx).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Self {
            conv1: conv(enc.pp("conv1"), config.num_mel_bins, 1)?,
            conv2: conv(enc.pp("conv2"), d, 2)?,
            audio_positions: Tensor::from_vec(
                encoder_positions(config),
                (config.max_source_positions, d),
                &device,
            )?
            .to_dtype(dtype)?,
            encoder: (0..config.encoder_layers)
                .map(|i| {
                    Block::load(
                        d,
                        config.encoder_attention_heads,
                        false,
                        &enc.pp(format!("layers.{i}")),
                    )
                })
                .collect::<Result<_>>()?,
            encoder_ln: layer_norm(d, &enc.pp("layer_norm"))?,
            tokens: Embedding::new(dec.get((config.vocab_size, d), "embed_tokens.weight")?, d),
            text_positions: dec.get((n_ctx, d), "embed_positions.weight")?,
            decoder: (0..config.decoder_layers)
                .map(|i| {
                    Block::load(
                        d,
                        config.decoder_attention_heads,
                        true,
                        &dec.pp(format!("layers.{i}")),
                    )
                })
                .collect::<Result<_>>()?,
            decoder_ln: layer_norm(d, &dec.pp("layer_norm"))?,
            mask: Tensor::from_vec(mask, (n_ctx, n_ctx), &device)?.to_dtype(dtype)?,
            cached: 0,
            cpu_step: CpuStep::default(),
        })
    }

    /// Encoder output for a `(batch, n_mels, 3000)` mel: `(batch, 1500, d_model)`.
    pub fn encode(&mut self, mel: &Tensor) -> Result<Tensor> {
        if cpu_enabled_on(mel.device(), mel.dtype()) {
            return self.encode_cpu(mel);
        }
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.audio_positions.narrow(0, 0, t)?)?;
        for block in &mut self.encoder {
            x = block.forward(&x, None, None, false)?;
        }
        self.encoder_ln.forward(&x)
    }

    /// [`Self::encode`] for f32 on the CPU, through the fused loops.
    fn encode_cpu(&self, mel: &Tensor) -> Result<Tensor> {
        let x = cpu_ops::bias_gelu(&self.conv1.forward(mel)?.contiguous()?, None)?;
        let x = cpu_ops::bias_gelu(&self.conv2.forward(&x)?.contiguous()?, None)?;
        let x = x.transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x
            .broadcast_add(&self.audio_positions.narrow(0, 0, t)?)?
            .contiguous()?;
        for block in &self.encoder {
            x = block.encode_cpu(&x)?;
        }
        layer_norm_cpu(&self.encoder_ln, &x)
    }

    /// Forgets the decoder's caches (a new window).
    pub fn reset(&mut self) {
        self.cached = 0;
        self.decoder.iter_mut().for_each(Block::reset);
        self.cpu_step.reset();
    }

    /// Decoder hidden states of `tokens` (`(batch, n)`), the positions after those already
    /// cached when `cached` (greedy steps), otherwise from position 0 without touching the
    /// self-attention cache (teacher forcing).
    pub fn decode(&mut self, tokens: &Tensor, audio: &Tensor, cached: bool) -> Result<Tensor> {
        let n = tokens.dim(1)?;
        let start = if cached { self.cached } else { 0 };
        let positions = self.text_positions.narrow(0, start, n)?;
        let mut x = self.tokens.forward(tokens)?.broadcast_add(&positions)?;
        for block in &mut self.decoder {
            x = block.forward(&x, Some(audio), Some(&self.mask), cached)?;
        }
        if cached {
            self.cached += n;
        }
        self.decoder_ln.forward(&x)
    }

    /// Logits of hidden states: `(batch, n, vocab)` (the output layer is the token embedding).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let w = self.tokens.embeddings();
        hidden.broadcast_matmul(&w.t()?)
    }
}
