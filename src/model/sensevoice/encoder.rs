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
use super::cpu_matmul::{self, CpuMatmul, Projection};
use super::{cpu_f32, cpu_ops, fused};

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
    /// The same lengths on the host, for the fused CPU loops.
    pub host_lengths: Vec<usize>,
    /// Whether the layers run the fused CPU loops ([`fused::cpu_enabled_on`]).
    pub cpu_fused: bool,
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
        Self::with_cpu_fused(
            lengths,
            max_len,
            kernel_size,
            unfold,
            dtype,
            device,
            fused::cpu_enabled_on(device, dtype),
        )
    }

    /// [`Self::new`] with the choice of the fused CPU loops made by the caller (`false`: the
    /// candle ops, for comparing the two).
    pub fn with_cpu_fused(
        lengths: &[usize],
        max_len: usize,
        kernel_size: usize,
        unfold: bool,
        dtype: DType,
        device: &Device,
        cpu_fused: bool,
    ) -> Result<Self> {
        let cpu_fused = cpu_fused && device.is_cpu() && dtype == DType::F32;
        // The fused kernels mask with `lengths` alone: the masks and the gather index would be
        // uploaded for nothing.
        let fused = fused::enabled_on(device) || cpu_fused;
        let mask = if fused {
            None
        } else {
            BatchMask::new(lengths, max_len, dtype, device)?
        };
        let lengths_host = lengths.to_vec();
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
            host_lengths: lengths_host,
            cpu_fused,
        })
    }
}

impl FrameContext {
    /// The context of a pass through the fused CUDA kernels whose valid lengths (u32 `[B]`)
    /// are already on the device: no masks, no gather index, nothing uploaded (what a CUDA
    /// graph replays with new lengths written into the same buffer).
    pub fn for_fused_cuda(lengths: Tensor, host_lengths: Vec<usize>) -> Self {
        Self {
            mask: None,
            fsmn_unfold: None,
            lengths,
            host_lengths,
            cpu_fused: false,
        }
    }
}

/// `torch.nn.LayerNorm` with f32 parameters, computed in f32 whatever the model dtype.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// `[weight | bias]` for the fused add + LayerNorm kernel (CUDA devices only).
    gamma_beta: Option<Tensor>,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of width `dim` as f32.
    pub fn load(dim: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get_with_hints_dtype(dim, "weight", Default::default(), DType::F32)?;
        let bias = vb.get_with_hints_dtype(dim, "bias", Default::default(), DType::F32)?;
        let gamma_beta = if fused::enabled_on(weight.device()) {
            Some(Tensor::cat(&[&weight, &bias], 0)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            gamma_beta,
        })
    }

    /// `(x + update, LayerNorm(x + update))`, the sum in f32 (`x` f32) and the normalised rows
    /// in `update`'s dtype: one fused kernel on CUDA where it fits, an add and a LayerNorm
    /// elsewhere (the same values). Without `keep_sum` the sum may be `None`.
    pub fn add_forward(
        &self,
        x: &Tensor,
        update: &Tensor,
        keep_sum: bool,
    ) -> Result<(Option<Tensor>, Tensor)> {
        if let Some(gamma_beta) = &self.gamma_beta
            && let Some(out) =
                fused::add_layer_norm(x, update, gamma_beta, LAYER_NORM_EPS, keep_sum)
        {
            return out;
        }
        let sum = fused::add_to_f32(x, update)?;
        let normed = self.forward_to(&sum, update.dtype())?;
        Ok((Some(sum), normed))
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

    /// [`Self::forward`] through the fused CPU loop when `ctx` selects it.
    pub fn forward_in(&self, xs: &Tensor, ctx: &FrameContext) -> Result<Tensor> {
        if ctx.cpu_fused {
            cpu_ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, LAYER_NORM_EPS)
        } else {
            self.forward(xs)
        }
    }
}

/// `PositionwiseFeedForward`: `w_2(relu(w_1(x)))`.
#[derive(Debug, Clone)]
pub struct PositionwiseFeedForward {
    w_1: Linear,
    w_2: Linear,
    /// `w_1`'s and `w_2`'s products on the fused CPU path.
    w_1p: Projection,
    w_2p: Projection,
}

impl PositionwiseFeedForward {
    /// Loads `w_1` (`dim → hidden`) and `w_2` (`hidden → dim`); `matmul` picks the CPU
    /// products of the fused path.
    pub fn load(dim: usize, hidden: usize, vb: &VarBuilder<'_>, matmul: CpuMatmul) -> Result<Self> {
        let w_1 = candle_nn::linear(dim, hidden, vb.pp("w_1"))?;
        let w_2 = candle_nn::linear(hidden, dim, vb.pp("w_2"))?;
        Ok(Self {
            w_1p: Projection::new(&w_1, matmul)?,
            w_2p: Projection::new(&w_2, matmul)?,
            w_1,
            w_2,
        })
    }

    /// Applies the block in the weights' dtype.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        fused::linear(&self.w_2, &fused::linear(&self.w_1, xs, true)?, false)
    }

    /// `residual + forward(xs)` with the fused CPU loops (f32 on the CPU).
    fn forward_cpu(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (Some(b1), Some(b2)) = (self.w_1.bias(), self.w_2.bias()) else {
            candle_core::bail!("feed_forward: w_1 and w_2 have biases");
        };
        let hidden = cpu_ops::bias_act(&self.w_1p.forward(xs)?, b1, true)?;
        cpu_ops::residual_bias(&self.w_2p.forward(&hidden)?, b2, residual)
    }
}

/// `MultiHeadedAttentionSANM`: fused QKV projection, multi-head attention and an FSMN memory
/// block (depthwise conv over time on v) added after `linear_out`.
#[derive(Debug, Clone)]
pub struct MultiHeadedAttentionSANM {
    linear_q_k_v: Linear,
    linear_out: Linear,
    /// `linear_q_k_v`'s and `linear_out`'s products on the fused CPU path.
    q_k_v_p: Projection,
    out_p: Projection,
    /// The CPU product of q·kᵀ and attention·v on the fused CPU path.
    attn_matmul: CpuMatmul,
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
    /// Loads the block for input width `in_feat` and model width `cfg.output_size`; `matmul`
    /// picks the CPU products of the fused path.
    pub fn load(
        in_feat: usize,
        cfg: &EncoderConfig,
        vb: &VarBuilder<'_>,
        matmul: CpuMatmul,
    ) -> Result<Self> {
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
        let linear_q_k_v = Linear::new(w, Some(b));
        let linear_out = candle_nn::linear(n_feat, n_feat, vb.pp("linear_out"))?;
        Ok(Self {
            q_k_v_p: Projection::new(&linear_q_k_v, matmul)?,
            out_p: Projection::new(&linear_out, matmul)?,
            attn_matmul: matmul.resolve(),
            linear_q_k_v,
            linear_out,
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

    /// `residual + forward(xs)` (or `forward(xs)` without a residual) with the fused CPU
    /// loops (f32 on the CPU): the bias of the fused projection added while the heads are split,
    /// the masked softmax in one pass, and the FSMN block, `linear_out`'s bias and the residual
    /// in one pass after `linear_out`.
    fn forward_cpu(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        ctx: &FrameContext,
    ) -> Result<Tensor> {
        let (Some(qkv_bias), Some(out_bias)) = (self.linear_q_k_v.bias(), self.linear_out.bias())
        else {
            candle_core::bail!("self_attn: linear_q_k_v and linear_out have biases");
        };
        let qkv = self.q_k_v_p.forward(&xs.contiguous()?)?;
        let heads = cpu_ops::qkv_heads(&qkv, qkv_bias, self.heads)?;
        let (q, k, v) = (heads.get(0)?, heads.get(1)?, heads.get(2)?);
        let scores = cpu_matmul::matmul_nt(&q, &k, self.attn_matmul)?;
        let attn = cpu_ops::masked_softmax(&scores, &ctx.host_lengths)?;
        let per_head = match self.attn_matmul {
            CpuMatmul::F32 => attn.matmul(&v)?,
            CpuMatmul::Avx512 => cpu_f32::batched(&attn, &v, cpu_f32::Layout::Plain)?,
            mode => cpu_matmul::matmul_nt(&attn, &v.transpose(2, 3)?, mode)?,
        };
        let merged = cpu_ops::merge_heads(&per_head)?;
        let lo = self.out_p.forward(&merged)?;
        cpu_ops::attention_output(
            &lo,
            out_bias,
            &heads,
            &self.fsmn_kd,
            &ctx.host_lengths,
            self.left_pad,
            residual,
        )
    }

    /// Attention over `xs` `[B, T, in_feat]` (compute dtype) → `[B, T, D]` (compute dtype).
    pub fn forward(&self, xs: &Tensor, ctx: &FrameContext) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let d = self.n_feat;
        let h = self.heads;
        let dk = d / h;
        let qkv = fused::linear(&self.linear_q_k_v, xs, false)?;
        let fsmn = self.forward_fsmn(&qkv.narrow(2, 2 * d, d)?, ctx)?;
        if fused::attention_pays(b, t)
            && let Some(out) = fused::attention(&qkv, h, &ctx.lengths)
        {
            return fused::linear_add(&self.linear_out, &out?, &fsmn);
        }
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
    /// Loads one layer with input width `in_feat`; `matmul` picks the CPU products of the
    /// fused path.
    pub fn load(
        in_feat: usize,
        cfg: &EncoderConfig,
        vb: &VarBuilder<'_>,
        matmul: CpuMatmul,
    ) -> Result<Self> {
        Ok(Self {
            self_attn: MultiHeadedAttentionSANM::load(in_feat, cfg, &vb.pp("self_attn"), matmul)?,
            feed_forward: PositionwiseFeedForward::load(
                cfg.output_size,
                cfg.linear_units,
                &vb.pp("feed_forward"),
                matmul,
            )?,
            norm1: LayerNorm::load(in_feat, &vb.pp("norm1"))?,
            norm2: LayerNorm::load(cfg.output_size, &vb.pp("norm2"))?,
            residual: in_feat == cfg.output_size,
            dtype: vb.dtype(),
        })
    }

    /// `xs` is the f32 residual stream `[B, T, in_feat]`; returns f32 `[B, T, D]`.
    pub fn forward(&self, xs: &Tensor, ctx: &FrameContext) -> Result<Tensor> {
        if ctx.cpu_fused {
            let xs = xs.contiguous()?;
            let h = self.norm1.forward_in(&xs, ctx)?;
            let residual = self.residual.then_some(&xs);
            let xs = self.self_attn.forward_cpu(&h, residual, ctx)?;
            let h = self.norm2.forward_in(&xs, ctx)?;
            return self.feed_forward.forward_cpu(&h, &xs);
        }
        let (base, update) = self.forward_deferred(xs, None, ctx)?;
        fused::add_to_f32(&base, &update)
    }

    /// The layer applied to `xs + pending` (`pending`: the previous layer's last update, not
    /// yet added), returning `(base, update)` whose f32 sum is the layer's output: the residual
    /// adds join the LayerNorm that follows them (one kernel each on CUDA).
    fn forward_deferred(
        &self,
        xs: &Tensor,
        pending: Option<&Tensor>,
        ctx: &FrameContext,
    ) -> Result<(Tensor, Tensor)> {
        let (xs, h) = match pending {
            Some(update) => self.norm1.add_forward(xs, update, true)?,
            None => (Some(xs.clone()), self.norm1.forward_to(xs, self.dtype)?),
        };
        let xs = xs.ok_or_else(|| candle_core::Error::Msg("norm1 kept no sum".into()))?;
        let att = self.self_attn.forward(&h, ctx)?;
        let (xs, h) = if self.residual {
            let (sum, h) = self.norm2.add_forward(&xs, &att, true)?;
            let sum = sum.ok_or_else(|| candle_core::Error::Msg("norm2 kept no sum".into()))?;
            (sum, h)
        } else {
            let xs = att.to_dtype(DType::F32)?;
            let h = self.norm2.forward_to(&xs, self.dtype)?;
            (xs, h)
        };
        Ok((xs, self.feed_forward.forward(&h)?))
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
    /// Loads the encoder for features of width `input_size` (560), with the CPU matrix
    /// products [`CpuMatmul::from_env`] selects.
    pub fn load(input_size: usize, cfg: &EncoderConfig, vb: &VarBuilder<'_>) -> Result<Self> {
        Self::load_with_matmul(input_size, cfg, vb, CpuMatmul::from_env())
    }

    /// [`Self::load`] with the CPU matrix products chosen by the caller. The weights are packed
    /// for AMX only where the fused CPU path runs (f32 on the CPU) and AMX is available.
    pub fn load_with_matmul(
        input_size: usize,
        cfg: &EncoderConfig,
        vb: &VarBuilder<'_>,
        matmul: CpuMatmul,
    ) -> Result<Self> {
        let matmul = if fused::cpu_enabled_on(vb.device(), vb.dtype()) {
            matmul.resolve()
        } else {
            CpuMatmul::F32
        };
        tracing::debug!("SenseVoice encoder: CPU matrix products {}", matmul.name());
        let d = cfg.output_size;
        let stack =
            |name: &str, n: usize, first_in: Option<usize>| -> Result<Vec<EncoderLayerSANM>> {
                let vb = vb.pp(name);
                (0..n)
                    .map(|i| {
                        let in_feat = first_in.filter(|_| i == 0).unwrap_or(d);
                        EncoderLayerSANM::load(in_feat, cfg, &vb.pp(i), matmul)
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
        capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let cpu_fused = fused::cpu_enabled_on(xs.device(), self.dtype);
        self.forward_impl(xs, lengths, unfold, cpu_fused, capture)
    }

    /// [`Self::forward`] with candle's ops only (no fused CPU loops): the reference the fused
    /// CPU path is tested against.
    pub fn forward_candle_ops(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let unfold = !xs.device().is_cpu();
        self.forward_impl(xs, lengths, unfold, false, capture)
    }

    fn forward_impl(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        unfold: bool,
        cpu_fused: bool,
        mut capture: Option<Capture<'_>>,
    ) -> Result<Tensor> {
        let (_, t, depth) = xs.dims3()?;
        // Without a capture (which wants every layer's output) and off the fused CPU loops,
        // each layer's last residual add runs inside the next layer's first LayerNorm.
        let deferred = capture.is_none() && !cpu_fused;
        let ctx = FrameContext::with_cpu_fused(
            lengths,
            t,
            self.kernel_size,
            unfold,
            self.dtype,
            xs.device(),
            cpu_fused,
        )?;
        let pe = sinusoidal_position_encoding(t, depth, xs.device())?;
        if deferred {
            return self.forward_prepared(xs, &ctx, &pe);
        }
        let mut xs = self.scaled_input(xs, &pe)?;
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
        xs = self.after_norm.forward_in(&xs, &ctx)?;
        emit("after_norm", &xs)?;
        for (i, layer) in self.tp_encoders.iter().enumerate() {
            xs = layer.forward(&xs, &ctx)?;
            emit(&format!("tp_encoders.{i}"), &xs)?;
        }
        xs = self.tp_norm.forward_in(&xs, &ctx)?;
        emit("tp_norm", &xs)?;
        Ok(xs)
    }

    /// `xs · √D + pe` in f32: the encoder's input scaling and position encoding.
    fn scaled_input(&self, xs: &Tensor, pe: &Tensor) -> Result<Tensor> {
        (xs.to_dtype(DType::F32)? * (self.output_size as f64).sqrt())?.broadcast_add(pe)
    }

    /// The encoder on `xs` `[B, T, input_size]` with its context and position encoding
    /// (`pe` = [`sinusoidal_position_encoding`]`(T, input_size)`) made by the caller, each
    /// layer's last residual add deferred into the next layer's first LayerNorm; returns f32
    /// `[B, T, D]`. It copies nothing between host and device, so a CUDA graph can capture it.
    pub fn forward_prepared(&self, xs: &Tensor, ctx: &FrameContext, pe: &Tensor) -> Result<Tensor> {
        let xs = self.scaled_input(xs, pe)?;
        let layers = self.encoders0.iter().chain(&self.encoders);
        let xs = Self::forward_stack_deferred(layers, xs, ctx)?;
        let xs = self.after_norm.forward_in(&xs, ctx)?;
        let xs = Self::forward_stack_deferred(&self.tp_encoders, xs, ctx)?;
        self.tp_norm.forward_in(&xs, ctx)
    }

    /// `layers` in order on `xs`, each layer's last residual add deferred into the next one's
    /// first LayerNorm (see [`EncoderLayerSANM::forward_deferred`]); the last add runs here.
    fn forward_stack_deferred<'a>(
        layers: impl IntoIterator<Item = &'a EncoderLayerSANM>,
        mut xs: Tensor,
        ctx: &FrameContext,
    ) -> Result<Tensor> {
        let mut pending: Option<Tensor> = None;
        for layer in layers {
            let (base, update) = layer.forward_deferred(&xs, pending.as_ref(), ctx)?;
            xs = base;
            pending = Some(update);
        }
        match pending {
            Some(update) => fused::add_to_f32(&xs, &update),
            None => Ok(xs),
        }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::sensevoice::test_util::{fill, rel};

    /// A small random encoder (width 32, 4 heads, K 11) with input width 40.
    fn random_encoder(sanm_shfit: usize) -> (SenseVoiceEncoderSmall, usize) {
        random_encoder_with(sanm_shfit, CpuMatmul::F32)
    }

    fn random_encoder_with(
        sanm_shfit: usize,
        matmul: CpuMatmul,
    ) -> (SenseVoiceEncoderSmall, usize) {
        let cfg = EncoderConfig {
            output_size: 32,
            attention_heads: 4,
            linear_units: 48,
            num_blocks: 3,
            tp_blocks: 2,
            kernel_size: 11,
            sanm_shfit,
            normalize_before: true,
        };
        let (d, input) = (cfg.output_size, 40);
        let mut tensors = HashMap::new();
        let mut seed = 0;
        let mut put = |name: String, shape: Vec<usize>, scale: f32| {
            seed += 1;
            tensors.insert(name, fill(&shape, seed, scale));
        };
        let mut layer = |prefix: String, in_feat: usize| {
            let mut p = |n: &str, shape: Vec<usize>, scale: f32| {
                put(format!("{prefix}.{n}"), shape, scale);
            };
            p("self_attn.linear_q_k_v.weight", vec![3 * d, in_feat], 0.3);
            p("self_attn.linear_q_k_v.bias", vec![3 * d], 0.1);
            p("self_attn.linear_out.weight", vec![d, d], 0.3);
            p("self_attn.linear_out.bias", vec![d], 0.1);
            p("self_attn.fsmn_block.weight", vec![d, 1, 11], 0.3);
            p("feed_forward.w_1.weight", vec![48, d], 0.3);
            p("feed_forward.w_1.bias", vec![48], 0.1);
            p("feed_forward.w_2.weight", vec![d, 48], 0.3);
            p("feed_forward.w_2.bias", vec![d], 0.1);
            p("norm1.weight", vec![in_feat], 1.0);
            p("norm1.bias", vec![in_feat], 0.5);
            p("norm2.weight", vec![d], 1.0);
            p("norm2.bias", vec![d], 0.5);
        };
        layer("encoders0.0".to_owned(), input);
        for i in 0..cfg.num_blocks - 1 {
            layer(format!("encoders.{i}"), d);
        }
        for i in 0..cfg.tp_blocks {
            layer(format!("tp_encoders.{i}"), d);
        }
        for norm in ["after_norm", "tp_norm"] {
            put(format!("{norm}.weight"), vec![d], 1.0);
            put(format!("{norm}.bias"), vec![d], 0.5);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let encoder =
            SenseVoiceEncoderSmall::load_with_matmul(input, &cfg, &vb, matmul).expect("encoder");
        (encoder, input)
    }

    #[test]
    fn fused_cpu_path_equals_candle_ops_layer_by_layer() {
        for sanm_shfit in [0, 2] {
            let (encoder, input) = random_encoder(sanm_shfit);
            let xs = fill(&[3, 23, input], 99, 1.0);
            // Unpadded and padded batches (one item shorter than the FSMN kernel).
            for lengths in [[23, 23, 23], [23, 17, 6]] {
                let mut plain = Vec::new();
                let mut keep = |name: &str, t: &Tensor| -> Result<()> {
                    plain.push((name.to_owned(), t.clone()));
                    Ok(())
                };
                let want = encoder
                    .forward_candle_ops(&xs, &lengths, Some(&mut keep))
                    .expect("candle ops");
                let mut fused = Vec::new();
                let mut keep = |name: &str, t: &Tensor| -> Result<()> {
                    fused.push((name.to_owned(), t.clone()));
                    Ok(())
                };
                let got = encoder
                    .forward_impl(&xs, &lengths, false, true, Some(&mut keep))
                    .expect("fused");
                fused.push(("output".to_owned(), got));
                plain.push(("output".to_owned(), want));
                assert_eq!(plain.len(), fused.len());
                // Only the valid frames are compared: padded ones are free in both paths.
                for ((name, a), (_, b)) in fused.iter().zip(&plain) {
                    for (i, &len) in lengths.iter().enumerate() {
                        let a = a.get(i).and_then(|t| t.narrow(0, 0, len)).expect("a");
                        let b = b.get(i).and_then(|t| t.narrow(0, 0, len)).expect("b");
                        let r = rel(&a, &b);
                        assert!(
                            r < 1e-5,
                            "shift {sanm_shfit} {lengths:?} {name} item {i}: {r}"
                        );
                    }
                }
            }
        }
    }

    /// The fused CPU path with AMX products (bf16x3) stays within 1e-4 of the candle ops at
    /// every layer, on unpadded and padded batches; plain bf16 is measurably less exact.
    #[test]
    fn amx_cpu_path_stays_close_to_candle_ops() {
        let amx = crate::model::sensevoice::cpu_matmul::amx_available();
        if std::env::var("GPUSCRIBE_REQUIRE_AMX").is_ok_and(|v| v == "1") {
            assert!(amx, "GPUSCRIBE_REQUIRE_AMX=1 but AMX is not available");
        }
        let (reference, input) = random_encoder(2);
        let (x3, _) = random_encoder_with(2, CpuMatmul::Bf16x3);
        let (b16, _) = random_encoder_with(2, CpuMatmul::Bf16);
        let xs = fill(&[3, 37, input], 7, 1.0);
        for lengths in [[37, 37, 37], [37, 21, 6]] {
            let want = reference
                .forward_candle_ops(&xs, &lengths, None)
                .expect("candle ops");
            let got = x3
                .forward_impl(&xs, &lengths, false, true, None)
                .expect("x3");
            let low = b16
                .forward_impl(&xs, &lengths, false, true, None)
                .expect("bf16");
            for (i, &len) in lengths.iter().enumerate() {
                let valid = |t: &Tensor| t.get(i).and_then(|t| t.narrow(0, 0, len)).expect("item");
                let r3 = rel(&valid(&got), &valid(&want));
                let r16 = rel(&valid(&low), &valid(&want));
                eprintln!("{lengths:?} item {i}: bf16x3 {r3:e}, bf16 {r16:e}");
                assert!(r3 < 1e-4, "bf16x3 {lengths:?} item {i}: {r3}");
                if amx {
                    assert!(r16 > 1e-4 && r16 < 5e-2, "bf16 {lengths:?} item {i}: {r16}");
                } else {
                    assert!(r16 < 1e-5, "f32 fallback {lengths:?} item {i}: {r16}");
                }
            }
        }
    }

    #[test]
    fn avx512_cpu_path_equals_candle_ops() {
        // Resolves to candle's product on CPUs without AVX-512F: the same bound holds.
        let (reference, input) = random_encoder(2);
        let (avx, _) = random_encoder_with(2, CpuMatmul::Avx512);
        let xs = fill(&[3, 37, input], 7, 1.0);
        for lengths in [[37, 37, 37], [37, 21, 6]] {
            let want = reference
                .forward_candle_ops(&xs, &lengths, None)
                .expect("candle ops");
            let got = avx
                .forward_impl(&xs, &lengths, false, true, None)
                .expect("avx512");
            for (i, &len) in lengths.iter().enumerate() {
                let valid = |t: &Tensor| t.get(i).and_then(|t| t.narrow(0, 0, len)).expect("item");
                let r = rel(&valid(&got), &valid(&want));
                assert!(r < 1e-5, "avx512 {lengths:?} item {i}: {r}");
            }
        }
    }
}
