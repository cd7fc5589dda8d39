//! The SAN-M encoder (`SenseVoiceEncoderSmall`): structs mirror FunASR's classes and `vb.pp()`
//! names equal the checkpoint keys.
//!
//! Reference: FunASR `funasr/models/sense_voice/model.py` (`MultiHeadedAttentionSANM`,
//! `EncoderLayerSANM`, `PositionwiseFeedForward`, `SenseVoiceEncoderSmall`).
//!
//! Numerics: the residual stream, LayerNorm and softmax are always f32; matmuls and the FSMN
//! run in the weights' dtype (f32, f16 or bf16). That keeps f16/bf16 free of overflow in the
//! residual sum (FunASR issue #1889) at the cost of a few casts per layer.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::EncoderConfig;
use super::fused;

const LAYER_NORM_EPS: f32 = 1e-5;

/// Key-padding masks for one padded batch, built once per forward pass.
#[derive(Debug, Clone)]
pub struct BatchMask {
    /// `[B, T, 1]` of 1.0/0.0 in the compute dtype: zeroes padded frames around the FSMN.
    frames: Tensor,
    /// `[B, 1, 1, T]` f32 of 0 or -inf: added to attention scores of padded keys.
    key_bias: Tensor,
}

impl BatchMask {
    /// Builds masks for `lengths` (valid frames per item) in a batch padded to `max_len`.
    /// Returns `None` when no item is padded, so the unpadded path skips the mask ops.
    pub fn new(
        lengths: &[usize],
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Self>> {
        if lengths.iter().all(|&l| l == max_len) {
            return Ok(None);
        }
        let b = lengths.len();
        let mut valid = Vec::with_capacity(b * max_len);
        let mut bias = Vec::with_capacity(b * max_len);
        for &len in lengths {
            for t in 0..max_len {
                let ok = t < len;
                valid.push(if ok { 1.0f32 } else { 0.0 });
                bias.push(if ok { 0.0f32 } else { f32::NEG_INFINITY });
            }
        }
        let frames = Tensor::from_vec(valid, (b, max_len, 1), device)?.to_dtype(dtype)?;
        let key_bias = Tensor::from_vec(bias, (b, 1, 1, max_len), device)?;
        Ok(Some(Self { frames, key_bias }))
    }
}

/// Per-forward-pass state shared by every layer.
#[derive(Debug, Clone)]
pub struct FrameContext {
    /// Key-padding masks for the candle-ops path; `None` when no item is padded or when the
    /// fused kernels run (they mask with `lengths`).
    pub mask: Option<BatchMask>,
    /// `[T * K]` gather index into the zero-padded sequence for the unfolded FSMN (GPU path
    /// without fused kernels); `None` selects shift-and-add.
    pub fsmn_unfold: Option<Tensor>,
    /// Valid frames per item, u32 `[B]` on the batch's device, for the fused CUDA kernels.
    pub lengths: Tensor,
}

impl FrameContext {
    /// Builds the context for a batch padded to `max_len` frames. `unfold` picks the FSMN
    /// kernel (see [`MultiHeadedAttentionSANM`]).
    pub fn new(
        lengths: &[usize],
        max_len: usize,
        kernel_size: usize,
        unfold: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // The fused kernels mask with `lengths` alone: the masks and the gather index would be
        // uploaded for nothing.
        let fused = fused::enabled_on(device);
        let mask = if fused {
            None
        } else {
            BatchMask::new(lengths, max_len, dtype, device)?
        };
        let lengths_u32 = lengths.iter().map(|&l| l as u32).collect::<Vec<_>>();
        let lengths = Tensor::from_vec(lengths_u32, lengths.len(), device)?;
        let fsmn_unfold = if unfold && !fused {
            let index: Vec<u32> = (0..max_len)
                .flat_map(|t| (0..kernel_size).map(move |j| (t + j) as u32))
                .collect();
            Some(Tensor::from_vec(index, max_len * kernel_size, device)?)
        } else {
            None
        };
        Ok(Self {
            mask,
            fsmn_unfold,
            lengths,
        })
    }
}

/// `torch.nn.LayerNorm` with f32 parameters, computed in f32 whatever the model dtype.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `dim` as f32.
    pub fn load(dim: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get_with_hints_dtype(dim, "weight", Default::default(), DType::F32)?;
        let bias = vb.get_with_hints_dtype(dim, "bias", Default::default(), DType::F32)?;
        Ok(Self { weight, bias })
    }

    /// Normalises the last dimension in f32.
    ///
    /// candle's fused `layer_norm` (CPU and CUDA) computes the variance in one pass as
    /// `E[x²] - E[x]²`, which loses about 1e-4 relative accuracy on the scaled encoder input;
    /// centring first makes `E[x]²` vanish and keeps the single fused kernel.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_to(xs, DType::F32)
    }

    /// [`Self::forward`], returned in `dtype` (one fused kernel on CUDA).
    pub fn forward_to(&self, xs: &Tensor, dtype: DType) -> Result<Tensor> {
        fused::layer_norm(xs, &self.weight, &self.bias, LAYER_NORM_EPS, dtype)
    }
}

/// `PositionwiseFeedForward`: `w_2(relu(w_1(x)))`.
#[derive(Debug, Clone)]
pub struct PositionwiseFeedForward {
    w_1: Linear,
    w_2: Linear,
}

impl PositionwiseFeedForward {
    /// Loads `w_1` (`dim → hidden`) and `w_2` (`hidden → dim`).
    pub fn load(dim: usize, hidden: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            w_1: candle_nn::linear(dim, hidden, vb.pp("w_1"))?,
            w_2: candle_nn::linear(hidden, dim, vb.pp("w_2"))?,
        })
    }

    /// Applies the block in the weights' dtype.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        fused::linear(&self.w_2, &fused::linear(&self.w_1, xs, true)?, false)
    }
}

/// `MultiHeadedAttentionSANM`: fused QKV projection, multi-head attention and an FSMN memory
/// block (depthwise conv over time on v) added after `linear_out`.
#[derive(Debug, Clone)]
pub struct MultiHeadedAttentionSANM {
    linear_q_k_v: Linear,
    linear_out: Linear,
    /// FSMN taps as `[1, 1, D]` tensors, one per kernel position (from `fsmn_block.weight`
    /// `[D, 1, K]`), for the shift-and-add depthwise conv.
    fsmn_taps: Vec<Tensor>,
    /// The same taps as one `[K, D]` tensor, for the unfolded conv.
    fsmn_kd: Tensor,
    n_feat: usize,
    heads: usize,
    left_pad: usize,
    right_pad: usize,
}

impl MultiHeadedAttentionSANM {
    /// Loads the block for input width `in_feat` and model width `cfg.output_size`.
    pub fn load(in_feat: usize, cfg: &EncoderConfig, vb: &VarBuilder<'_>) -> Result<Self> {
        let n_feat = cfg.output_size;
        let heads = cfg.attention_heads;
        let k = cfg.kernel_size;
        let fsmn = vb.get((n_feat, 1, k), "fsmn_block.weight")?;
        // [D, 1, K] → [K, D] so each tap is one contiguous row.
        let fsmn_kd = fsmn.squeeze(1)?.t()?.contiguous()?;
        let fsmn_taps = (0..k)
            .map(|j| fsmn_kd.get(j)?.reshape((1, 1, n_feat)))
            .collect::<Result<Vec<_>>>()?;
        let left_pad = (k - 1) / 2 + cfg.sanm_shfit;
        // FunASR multiplies q by d_k^-0.5 before q·kᵀ; folding the factor into the q rows of the
        // projection saves one pass over q per layer.
        let qkv_vb = vb.pp("linear_q_k_v");
        let w = qkv_vb.get((3 * n_feat, in_feat), "weight")?;
        let b = qkv_vb.get(3 * n_feat, "bias")?;
        let scale = ((n_feat / heads) as f64).powf(-0.5);
        let w = Tensor::cat(
            &[
                (w.narrow(0, 0, n_feat)? * scale)?,
                w.narrow(0, n_feat, 2 * n_feat)?,
            ],
            0,
        )?;
        let b = Tensor::cat(
            &[
                (b.narrow(0, 0, n_feat)? * scale)?,
                b.narrow(0, n_feat, 2 * n_feat)?,
            ],
            0,
        )?;
        Ok(Self {
            linear_q_k_v: Linear::new(w, Some(b)),
            linear_out: candle_nn::linear(n_feat, n_feat, vb.pp("linear_out"))?,
            fsmn_taps,
            fsmn_kd,
            n_feat,
            heads,
            left_pad,
            right_pad: k - 1 - left_pad,
        })
    }

    /// FSMN memory: depthwise conv (cross-correlation, zero padding) + residual, masked.
    ///
    /// Never `conv1d(groups = D)`: candle runs grouped convs as one conv per channel (about 40x
    /// slower). On the CPU the conv is K shifted multiply-adds; on a GPU, where every op is a
    /// kernel launch, the K shifted views are gathered in one `index_select` and reduced in one
    /// multiply and one sum.
    fn forward_fsmn(&self, v: &Tensor, ctx: &FrameContext) -> Result<Tensor> {
        if let Some(out) = fused::fsmn(v, &self.fsmn_kd, &ctx.lengths, self.left_pad) {
            return out;
        }
        let (b, t, d) = v.dims3()?;
        let vm = match &ctx.mask {
            Some(m) => v.broadcast_mul(&m.frames)?,
            None => v.contiguous()?,
        };
        let padded = vm.pad_with_zeros(1, self.left_pad, self.right_pad)?;
        let acc = match &ctx.fsmn_unfold {
            Some(index) => {
                let k = self.fsmn_taps.len();
                let unfolded = padded.index_select(index, 1)?.reshape((b, t, k, d))?;
                (unfolded.broadcast_mul(&self.fsmn_kd)?.sum(2)? + &vm)?
            }
            None => {
                let mut acc = vm.clone();
                for (j, tap) in self.fsmn_taps.iter().enumerate() {
                    acc = (acc + padded.narrow(1, j, t)?.broadcast_mul(tap)?)?;
                }
                acc
            }
        };
        match &ctx.mask {
            Some(m) => acc.broadcast_mul(&m.frames),
            None => Ok(acc),
        }
    }

    /// Attention over `xs` `[B, T, in_feat]` (compute dtype) → `[B, T, D]` (compute dtype).
    pub fn forward(&self, xs: &Tensor, ctx: &FrameContext) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let d = self.n_feat;
        let h = self.heads;
        let dk = d / h;
        let qkv = fused::linear(&self.linear_q_k_v, xs, false)?;
        let fsmn = self.forward_fsmn(&qkv.narrow(2, 2 * d, d)?, ctx)?;
        // One copy splits q, k, v into heads: [B, T, 3, H, dk] → [3, B, H, T, dk].
        let heads = match fused::split_heads(&qkv, h) {
            Some(heads) => heads?,
            None => qkv
                .reshape((b, t, 3, h, dk))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?,
        };
        let (q, k, v) = (heads.get(0)?, heads.get(1)?, heads.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        let key_bias = ctx.mask.as_ref().map(|m| &m.key_bias);
        let attn = fused::masked_softmax(&scores, &ctx.lengths, key_bias)?;
        let per_head = attn.matmul(&v)?;
        let out = match fused::merge_heads(&per_head) {
            Some(out) => out?,
            None => per_head.transpose(1, 2)?.reshape((b, t, d))?,
        };
        fused::linear_add(&self.linear_out, &out, &fsmn)
    }
}

/// `EncoderLayerSANM` with `normalize_before=True`, `concat_after=False`.
#[derive(Debug, Clone)]
pub struct EncoderLayerSANM {
    self_attn: MultiHeadedAttentionSANM,
    feed_forward: PositionwiseFeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    /// The attention residual exists only when input and output widths match (not in
    /// `encoders0`, 560 → 512).
    residual: bool,
    dtype: DType,
}

impl EncoderLayerSANM {
    /// Loads one layer with input width `in_feat`.
    pub fn load(in_feat: usize, cfg: &EncoderConfig, vb: &VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            self_attn: MultiHeadedAttentionSANM::load(in_feat, cfg, &vb.pp("self_attn"))?,
            feed_forward: PositionwiseFeedForward::load(
                cfg.output_size,
                cfg.linear_units,
                &vb.pp("feed_forward"),
            )?,
            norm1: LayerNorm::load(in_feat, &vb.pp("norm1"))?,
            norm2: LayerNorm::load(cfg.output_size, &vb.pp("norm2"))?,
            residual: in_feat == cfg.output_size,
            dtype: vb.dtype(),
        })
    }

    /// `xs` is the f32 residual stream `[B, T, in_feat]`; returns f32 `[B, T, D]`.
    pub fn forward(&self, xs: &Tensor, ctx: &FrameContext) -> Result<Tensor> {
        let h = self.norm1.forward_to(xs, self.dtype)?;
        let att = self.self_attn.forward(&h, ctx)?;
        let xs = if self.residual {
            fused::add_to_f32(xs, &att)?
        } else {
            att.to_dtype(DType::F32)?
        };
        let h = self.norm2.forward_to(&xs, self.dtype)?;
        fused::add_to_f32(&xs, &self.feed_forward.forward(&h)?)
    }
}

/// Receives named intermediate tensors (batch dimension kept) for parity tests.
pub type Capture<'a> = &'a mut dyn FnMut(&str, &Tensor) -> Result<()>;

/// `SenseVoiceEncoderSmall`: `encoders0` (input width → D), `encoders`, `after_norm`,
/// `tp_encoders`, `tp_norm`. No time subsampling.
#[derive(Debug, Clone)]
pub struct SenseVoiceEncoderSmall {
    encoders0: Vec<EncoderLayerSANM>,
    encoders: Vec<EncoderLayerSANM>,
    after_norm: LayerNorm,
    tp_encoders: Vec<EncoderLayerSANM>,
    tp_norm: LayerNorm,
    output_size: usize,
    kernel_size: usize,
    dtype: DType,
}

impl SenseVoiceEncoderSmall {
    /// Loads the encoder for features of width `input_size` (560).
    pub fn load(input_size: usize, cfg: &EncoderConfig, vb: &VarBuilder<'_>) -> Result<Self> {
        let d = cfg.output_size;
        let stack = |name: &str,
                     n: usize,
                     first_in: Option<usize>|
         -> Result<Vec<EncoderLayerSANM>> {
            let vb = vb.pp(name);
            (0..n)
                .map(|i| {
                    EncoderLayerSANM::load(first_in.filter(|_| i == 0).unwrap_or(d), cfg, &vb.pp(i))
                })
                .collect()
        };
        Ok(Self {
            encoders0: stack("encoders0", 1, Some(input_size))?,
            encoders: stack("encoders", cfg.num_blocks - 1, None)?,
            after_norm: LayerNorm::load(d, &vb.pp("after_norm"))?,
            tp_encoders: stack("tp_encoders", cfg.tp_blocks, None)?,
            tp_norm: LayerNorm::load(d, &vb.pp("tp_norm"))?,
            output_size: d,
            kernel_size: cfg.kernel_size,
            dtype: vb.dtype(),
        })
    }

    /// Model width D.
    pub fn output_size(&self) -> usize {
        self.output_size
    }

    /// Encodes a padded batch `[B, T, input_size]` (f32, prompt frames included) with valid
    /// lengths `lengths`; returns f32 `[B, T, D]`. `capture` sees `encoder_input` and every
    /// layer output under its checkpoint name.
    pub fn forward(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let unfold = !xs.device().is_cpu();
        self.forward_with(xs, lengths, unfold, capture)
    }

    /// [`Self::forward`] with an explicit FSMN kernel choice (`unfold`: gather + reduce,
    /// otherwise shift-and-add); both give the same result.
    pub fn forward_with(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        unfold: bool,
        mut capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let (_, t, depth) = xs.dims3()?;
        let ctx = FrameContext::new(
            lengths,
            t,
            self.kernel_size,
            unfold,
            self.dtype,
            xs.device(),
        )?;
        let pe = sinusoidal_position_encoding(t, depth, xs.device())?;
        let mut xs =
            (xs.to_dtype(DType::F32)? * (self.output_size as f64).sqrt())?.broadcast_add(&pe)?;
        let mut emit = |name: &str, x: &Tensor| -> Result<()> {
            match capture.as_mut() {
                Some(f) => f(name, x),
                None => Ok(()),
            }
        };
        emit("encoder_input", &xs)?;
        for (i, layer) in self.encoders0.iter().enumerate() {
            xs = layer.forward(&xs, &ctx)?;
            emit(&format!("encoders0.{i}"), &xs)?;
        }
        for (i, layer) in self.encoders.iter().enumerate() {
            xs = layer.forward(&xs, &ctx)?;
            emit(&format!("encoders.{i}"), &xs)?;
        }
        xs = self.after_norm.forward(&xs)?;
        emit("after_norm", &xs)?;
        for (i, layer) in self.tp_encoders.iter().enumerate() {
            xs = layer.forward(&xs, &ctx)?;
            emit(&format!("tp_encoders.{i}"), &xs)?;
        }
        xs = self.tp_norm.forward(&xs)?;
        emit("tp_norm", &xs)?;
        Ok(xs)
    }
}

/// FunASR `SinusoidalPositionEncoder` for positions 1..=T: `[1, T, depth]` = `[sin | cos]`,
/// computed in f32 in the same operation order as the reference.
pub fn sinusoidal_position_encoding(t: usize, depth: usize, device: &Device) -> Result<Tensor> {
    let half = depth / 2;
    let increment = 10000f32.ln() / (depth as f32 / 2.0 - 1.0);
    let inv: Vec<f32> = (0..half).map(|i| (i as f32 * -increment).exp()).collect();
    let mut data = Vec::with_capacity(t * depth);
    for pos in 1..=t {
        let p = pos as f32;
        data.extend(inv.iter().map(|&s| (p * s).sin()));
        data.extend(inv.iter().map(|&s| (p * s).cos()));
    }
    Tensor::from_vec(data, (1, t, 2 * half), device)
}
