//! Helpers for the unit tests of the SenseVoice modules.

use candle_core::{Device, Tensor};

/// A deterministic fill in [-scale, scale) (xorshift), so a failure reproduces from the seed.
pub(crate) fn fill(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// max |a − b| / max |b| (over all elements; `b` all zero counts as a scale of the smallest
/// positive f32).
pub(crate) fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("diff");
    let scale = b
        .abs()
        .and_then(|t| t.max_all()?.to_scalar::<f32>())
        .expect("scale");
    diff / scale.max(f32::MIN_POSITIVE)
}
