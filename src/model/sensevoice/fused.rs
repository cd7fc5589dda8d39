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
    cfg!(feature = "cuda") && device.is_cuda() && !disabled_by_env()
}

/// Whether the fused CPU loops of `cpu_ops` run for a model computing in `dtype` on `device`
/// (f32 on the CPU, unless `GPUSCRIBE_NO_FUSED_KERNELS` is set).
pub fn cpu_enabled_on(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32 && !disabled_by_env()
}

fn cpu_enabled_for(t: &Tensor) -> bool {
    cpu_enabled_on(t.device(), t.dtype())
}

/// `x · Wᵀ` (no bias) as one matrix product over all leading dimensions.
pub fn matmul_no_bias(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    Linear::new(layer.weight().clone(), None).forward(x)
}

fn disabled_by_env() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| {
        std::env::var_os("GPUSCRIBE_NO_FUSED_KERNELS").is_some_and(|v| !v.is_empty() && v != "0")
    })
}

/// `relu?(x · Wᵀ + b)`: candle's matmul, then the bias (and ReLU) in one pass (a CUDA kernel,
/// or on the CPU in f32 one multi-threaded loop with the same result as candle's ops).
pub fn linear(layer: &Linear, x: &Tensor, relu: bool) -> Result<Tensor> {
    let Some(bias) = layer.bias() else {
        let y = layer.forward(x)?;
        return if relu { y.relu() } else { Ok(y) };
    };
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
