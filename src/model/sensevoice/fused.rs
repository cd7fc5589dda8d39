//! Encoder steps with three implementations: one fused CUDA kernel each (`cuda_ops`, in CUDA
//! builds on a CUDA device), fused CPU loops for f32 on the CPU (`cpu_ops`), and the plain
//! candle ops everywhere else. All compute the same function in f32 (the fused ones round once
//! at the end, the candle ones after each op).
//!
//! `GPUSCRIBE_NO_FUSED_KERNELS=1` turns the fused kernels off (CUDA and CPU), for comparing the
//! paths.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::Linear;

/// Whether `t`'s device runs the fused kernels.
pub fn enabled_for(t: &Tensor) -> bool {
    enabled_on(t.device())
}

/// Whether `device` runs the fused kernels.
pub fn enabled_on(device: &Device) -> bool {
    cfg!(feature = "cuda") && device.is_cuda() && !disabled()
}

/// Whether the fused CPU loops of `cpu_ops` run for a model computing in `dtype` on `device`
/// (f32 on the CPU, unless `GPUSCRIBE_NO_FUSED_KERNELS` is set).
pub fn cpu_enabled_on(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && !disabled()
}

fn cpu_enabled_for(t: &Tensor) -> bool {
    cpu_enabled_on(t.device(), t.dtype())
}

/// `x · Wᵀ` (no bias) as one matrix product over all leading dimensions.
pub fn matmul_no_bias(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    Linear::new(layer.weight().clone(), None).forward(x)
}

/// 0: follow `GPUSCRIBE_NO_FUSED_KERNELS`; 1: on; 2: off (see [`set_fused_kernels`]).
static OVERRIDE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns the fused kernels on or off for the whole process from now on, whatever
/// `GPUSCRIBE_NO_FUSED_KERNELS` says (for comparing the two paths in one process, as the CUDA
/// tests do). Tensors already computed are not affected.
pub fn set_fused_kernels(on: bool) {
    OVERRIDE.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match OVERRIDE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => *DISABLED.get_or_init(|| {
            std::env::var_os("GPUSCRIBE_NO_FUSED_KERNELS")
                .is_some_and(|v| !v.is_empty() && v != "0")
        }),
    }
}

/// `relu?(x · Wᵀ + b)`: candle's matmul, then the bias (and ReLU) in one pass (a CUDA kernel,
/// or on the CPU in f32 one multi-threaded loop with the same result as candle's ops).
pub fn linear(layer: &Linear, x: &Tensor, relu: bool) -> Result<Tensor> {
    let Some(bias) = layer.bias() else {
        let y = layer.forward(x)?;
        return if relu { y.relu() } else { Ok(y) };
    };
    if let Some(y) = linear_lt(layer, x, relu, None) {
        return y;
    }
    let y = matmul_no_bias(layer, x)?;
    if cpu_enabled_for(&y) && y.is_contiguous() {
        return super::cpu_ops::bias_act(&y, bias, relu);
    }
    #[cfg(feature = "cuda")]
    if enabled_for(&y) {
        return y.apply_op2_no_bwd(bias, &super::cuda_ops::BiasAct { relu });
    }
    let y = y.broadcast_add(bias)?;
    if relu { y.relu() } else { Ok(y) }
}

/// `x · Wᵀ + b + residual` (`residual` of the output's shape and dtype): on a CUDA device in
/// half precision one cuBLASLt call adds the residual in the product's epilogue.
pub fn linear_add(layer: &Linear, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if residual.dtype() == x.dtype()
        && let Some(y) = linear_lt(layer, x, false, Some(residual))
    {
        return y;
    }
    linear(layer, x, false)? + residual
}

/// `relu?(x · Wᵀ + b) (+ residual)` in one cuBLASLt call, where it applies: a CUDA device with
/// the fused kernels on, f16/bf16, a layer with a bias. `None` elsewhere (the caller computes it
/// with the other paths).
fn linear_lt(
    layer: &Linear,
    x: &Tensor,
    relu: bool,
    residual: Option<&Tensor>,
) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled_for(x)
        && matches!(x.dtype(), DType::F16 | DType::BF16)
        && let Some(bias) = layer.bias()
    {
        let run = || {
            let op = super::cuda_ops::LinearLt {
                relu,
                residual: residual.map(Tensor::contiguous).transpose()?,
            };
            x.contiguous()?.apply_op3_no_bwd(layer.weight(), bias, &op)
        };
        return Some(run());
    }
    let _ = (layer, x, relu, residual);
    None
}

/// LayerNorm of `x` (any float dtype, computed in f32) with f32 `weight`/`bias`, returned in
/// `out_dtype`. The mean is removed before candle's one-pass variance (see `LayerNorm`).
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    out_dtype: DType,
) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    #[cfg(feature = "cuda")]
    if enabled_for(&x) {
        let op = super::cuda_ops::LayerNormTo { eps, out_dtype };
        return x.contiguous()?.apply_op3_no_bwd(weight, bias, &op);
    }
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    candle_nn::ops::layer_norm(&centred, weight, bias, eps)?.to_dtype(out_dtype)
}

/// `(x + update, LayerNorm(x + update))` in one CUDA kernel (`x` f32 `[.., D]`, `update` of
/// the same shape in the output dtype, `gamma_beta` f32 `[2·D]`); the sum is returned only with
/// `keep_sum`. `None` where it does not apply (fused kernels off, not CUDA, a width the kernel
/// does not hold): the caller adds and normalises separately, with the same result.
pub fn add_layer_norm(
    x: &Tensor,
    update: &Tensor,
    gamma_beta: &Tensor,
    eps: f32,
    keep_sum: bool,
) -> Option<Result<(Option<Tensor>, Tensor)>> {
    #[cfg(feature = "cuda")]
    if enabled_for(x)
        && x.dtype() == DType::F32
        && super::cuda_ops::add_layer_norm_fits(x.dim(D::Minus1).ok()?)
    {
        let run = || {
            let op = super::cuda_ops::AddLayerNorm::new(eps, keep_sum);
            let normed =
                x.contiguous()?
                    .apply_op3_no_bwd(&update.contiguous()?, gamma_beta, &op)?;
            let sum = if keep_sum { Some(op.take_sum()?) } else { None };
            Ok((sum, normed))
        };
        return Some(run());
    }
    let _ = (x, update, gamma_beta, eps, keep_sum);
    None
}

/// `residual + update` in f32 (`residual` f32, `update` any float dtype).
pub fn add_to_f32(residual: &Tensor, update: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled_for(residual) {
        return residual
            .contiguous()?
            .apply_op2_no_bwd(&update.contiguous()?, &super::cuda_ops::AddToF32);
    }
    residual + update.to_dtype(DType::F32)?
}

/// Softmax of attention scores `[B, H, Tq, Tk]` over keys, in f32, with keys at or beyond
/// `lengths[b]` masked; returned in the scores' dtype. `key_bias` (`[B, 1, 1, Tk]`, 0 or -inf)
/// is the same mask for the candle path; both are `None` when no item is padded.
pub fn masked_softmax(
    scores: &Tensor,
    lengths: &Tensor,
    key_bias: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled_for(scores) {
        return scores
            .contiguous()?
            .apply_op2_no_bwd(lengths, &super::cuda_ops::MaskedSoftmax);
    }
    let _ = lengths;
    let f32_scores = scores.to_dtype(DType::F32)?;
    let f32_scores = match key_bias {
        Some(bias) => f32_scores.broadcast_add(bias)?,
        None => f32_scores,
    };
    candle_nn::ops::softmax_last_dim(&f32_scores)?.to_dtype(scores.dtype())
}

/// Index of the largest value along the last axis (u32, first on ties): one kernel on a CUDA
/// device, candle's `argmax` elsewhere.
pub fn argmax_last(x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled_for(x) {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&super::cuda_ops::ArgmaxLast);
    }
    x.argmax(D::Minus1)
}

/// The fused q/k/v projection `[B, T, 3·D]` split into heads `[3, B, H, T, D/H]` in one copy
/// kernel on a CUDA device; `None` where the fused kernels are off or the rows are not whole
/// 16-byte vectors (the caller then uses candle's permute and copy).
pub fn split_heads(qkv: &Tensor, heads: usize) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled_for(qkv) && heads_fit(qkv, qkv.dim(2).ok()? / (3 * heads.max(1))) {
        let op = super::cuda_ops::Heads::Split { heads };
        return Some(qkv.contiguous().and_then(|q| q.apply_op1_no_bwd(&op)));
    }
    let _ = (qkv, heads);
    None
}

/// Attention output `[B, H, T, dk]` back to `[B, T, H·dk]` in one copy kernel on a CUDA
/// device; `None` as for [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled_for(x) && heads_fit(x, x.dim(3).ok()?) {
        let op = super::cuda_ops::Heads::Merge;
        return Some(x.contiguous().and_then(|x| x.apply_op1_no_bwd(&op)));
    }
    let _ = x;
    None
}

/// Query rows (batch × frames) up to which [`attention`]'s one kernel beats the separate steps.
///
/// Measured on an H200 (BENCHMARKS.md): a 10 s clip (1 × 171 rows) end to end 16.3 → 9.0 ms
/// with it, where launches dominate; at 8 × 504 and 16 × 504 rows the separate cuBLAS products
/// and softmax are faster (13.6k against 18.7k × realtime at 16), so batches use them.
pub const FUSED_ATTENTION_MAX_ROWS: usize = 1024;

/// Whether a batch of `batch` items of `frames` frames should take [`attention`]'s one kernel.
pub fn attention_pays(batch: usize, frames: usize) -> bool {
    batch.saturating_mul(frames) <= FUSED_ATTENTION_MAX_ROWS
}

/// SAN-M attention from the fused q/k/v projection `[B, T, 3·D]` to the merged heads
/// `[B, T, D]` (keys at or past `lengths[b]` masked) in one CUDA kernel, for f16/bf16 with heads
/// of 128 and at most 512 frames; `None` elsewhere (the caller runs the separate steps).
pub fn attention(qkv: &Tensor, heads: usize, lengths: &Tensor) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled_for(qkv)
        && matches!(qkv.dtype(), DType::F16 | DType::BF16)
        && heads > 0
        && super::cuda_ops::attention_fits(qkv.dim(1).ok()?, qkv.dim(2).ok()? / (3 * heads))
    {
        let op = super::cuda_ops::SanmAttention { heads };
        return Some(
            qkv.contiguous()
                .and_then(|q| q.apply_op2_no_bwd(lengths, &op)),
        );
    }
    let _ = (qkv, heads, lengths);
    None
}

/// Whether rows of `dk` elements of `t`'s dtype are whole 16-byte vectors.
#[cfg(feature = "cuda")]
fn heads_fit(t: &Tensor, dk: usize) -> bool {
    dk > 0 && (dk * t.dtype().size_in_bytes()) % 16 == 0
}

/// The FSMN memory block on a CUDA device: `mask · (v·mask + Σⱼ tapⱼ ⊙ shift(v·mask, j - left))`
/// in one kernel (`v` `[B, T, D]` may be a strided view with contiguous channels; `taps`
/// `[K, D]`; `lengths` u32 `[B]`). `None` where the fused kernels are off: the caller then uses
/// candle ops.
pub fn fsmn(v: &Tensor, taps: &Tensor, lengths: &Tensor, left: usize) -> Option<Result<Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled_for(v) {
        return Some(v.apply_op3_no_bwd(taps, lengths, &super::cuda_ops::Fsmn { left }));
    }
    let _ = (v, taps, lengths, left);
    None
}
