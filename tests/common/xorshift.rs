//! Deterministic pseudo-random values (xorshift64) for the tests that build random tensors, so a
//! failure reproduces from its seed.
// A failed tensor build is a failed test.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};

/// `n` values in [-scale, scale) from the xorshift64 state `state` (non-zero).
pub fn values(mut state: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A tensor of `shape` on `device` holding [`values`] from `seed` (spread by a golden-ratio
/// multiply).
pub fn fill(shape: &[usize], seed: u64, scale: f32, device: &Device) -> Tensor {
    let state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Tensor::from_vec(values(state, shape.iter().product(), scale), shape, device).unwrap()
}
