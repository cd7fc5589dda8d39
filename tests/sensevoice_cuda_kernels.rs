//! The fused CUDA kernels that only the release-size shapes reach (heads of 128, widths that are
//! multiples of 128 — the committed tiny model has neither) against the same steps as plain
//! candle ops in f32 on the same GPU. They need an NVIDIA GPU and a `--features cuda` build:
//!
//! `cargo test --release --features cuda --test sensevoice_cuda_kernels -- --ignored`

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{D, DType, Device, Tensor};
use gpuscribe::model::sensevoice::fused;

use common::xorshift::fill;

fn gpu() -> Device {
    gpuscribe::model::cuda_device(0).unwrap()
}

/// max |a - b| / max |b| over all elements (both converted to f32).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let diff = (a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let top = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / top.to_scalar::<f32>().unwrap().max(1e-12)
}

/// SAN-M attention as separate f32 ops: split q/k/v into heads, q·kᵀ, keys ≥ length masked,
/// softmax, ·v, merge.
fn attention_reference(qkv: &Tensor, heads: usize, lengths: &[usize]) -> Tensor {
    let (b, t, w) = qkv.dims3().unwrap();
    let (d, dk) = (w / 3, w / 3 / heads);
    let x = qkv
        .to_dtype(DType::F32)
        .unwrap()
        .reshape((b, t, 3, heads, dk))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap()
        .contiguous()
        .unwrap();
    let (q, k, v) = (x.get(0).unwrap(), x.get(1).unwrap(), x.get(2).unwrap());
    let scores = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
    let bias: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |j| if j < len { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let bias = Tensor::from_vec(bias, (b, 1, 1, t), qkv.device()).unwrap();
    let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias).unwrap()).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, d))
        .unwrap()
}

#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn fused_attention_equals_separate_ops() {
    let dev = gpu();
    let heads = 4;
    for (t, lengths, seed) in [
        (504, vec![504, 331, 17], 1),
        (512, vec![512, 1], 2),
        (100, vec![100, 63], 3),
        (37, vec![37], 4),
    ] {
        let b = lengths.len();
        // Uniform in ±0.85: scores of standard deviation ≈ 2.7 over 128 channels, a softmax far
        // from uniform (in the model q carries the folded dk^-0.5).
        let qkv = fill(&[b, t, 3 * heads * 128], seed, 0.85, &dev);
        let lens =
            Tensor::new(lengths.iter().map(|&l| l as u32).collect::<Vec<_>>(), &dev).unwrap();
        let want = attention_reference(&qkv, heads, &lengths);
        // The scores and the probabilities are rounded to the storage type once each, as the
        // separate products and softmax store them: bf16's 8 bits give a few 1e-2.
        for (dtype, bound) in [(DType::BF16, 3e-2), (DType::F16, 4e-3)] {
            let got = fused::attention(&qkv.to_dtype(dtype).unwrap(), heads, &lens)
                .expect(
                    "the fused attention serves heads of 128 and ≤ 512 frames in half precision",
                )
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(got.dtype(), dtype);
            let r = rel(&got, &want);
            println!("{dtype:?} T {t} lengths {lengths:?}: fused attention vs f32 ops rel {r:.2e}");
            assert!(r <= bound, "{dtype:?} T {t}: rel {r} > {bound}");
            // The batch equals each item alone, cut to its length (no leakage across items,
            // and padding past an item's length changes nothing).
            for (i, &len) in lengths.iter().enumerate() {
                let one = qkv.narrow(0, i, 1).unwrap().narrow(1, 0, len).unwrap();
                let one_len = Tensor::new(&[len as u32], &dev).unwrap();
                let alone = fused::attention(&one.to_dtype(dtype).unwrap(), heads, &one_len)
                    .unwrap()
                    .unwrap();
                let batched = got.narrow(0, i, 1).unwrap().narrow(1, 0, len).unwrap();
                let r = rel(&batched, &alone);
                assert!(r <= bound, "{dtype:?} item {i}: batched vs alone rel {r}");
            }
        }
        // f32 and over-long rows are not served: the caller runs the separate steps.
        assert!(fused::attention(&qkv, heads, &lens).is_none());
    }
    let long = fill(&[1, 513, 3 * heads * 128], 9, 0.1, &dev)
        .to_dtype(DType::BF16)
        .unwrap();
    let lens = Tensor::new(&[513u32], &dev).unwrap();
    assert!(fused::attention(&long, heads, &lens).is_none());
}

#[test]
#[ignore = "needs an NVIDIA GPU and a --features cuda build"]
fn fused_add_layer_norm_equals_separate_ops() {
    let dev = gpu();
    let d = 512;
    let x = fill(&[3, 50, d], 11, 4.0, &dev);
    let gamma = (fill(&[d], 12, 0.5, &dev) + 1.0).unwrap();
    let beta = fill(&[d], 13, 0.2, &dev);
    let gamma_beta = Tensor::cat(&[&gamma, &beta], 0).unwrap();
    for (dtype, bound) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 2e-3)] {
        let update = fill(&[3, 50, d], 14, 2.0, &dev).to_dtype(dtype).unwrap();
        let (sum, normed) = fused::add_layer_norm(&x, &update, &gamma_beta, 1e-5, true)
            .expect("the fused add + LayerNorm serves widths that are multiples of 128")
            .unwrap();
        let want_sum = (&x + update.to_dtype(DType::F32).unwrap()).unwrap();
        let sum = sum.expect("keep_sum returns the sum");
        assert_eq!(
            rel(&sum, &want_sum),
            0.0,
            "{dtype:?}: the sum is the f32 add"
        );
        let centred = want_sum
            .broadcast_sub(&want_sum.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let want = candle_nn::ops::layer_norm(&centred, &gamma, &beta, 1e-5).unwrap();
        assert_eq!(normed.dtype(), dtype);
        let r = rel(&normed, &want);
        println!("{dtype:?}: fused add + LayerNorm vs f32 ops rel {r:.2e}");
        assert!(r <= bound, "{dtype:?}: rel {r} > {bound}");
        let (no_sum, normed2) = fused::add_layer_norm(&x, &update, &gamma_beta, 1e-5, false)
            .unwrap()
            .unwrap();
        assert!(no_sum.is_none());
        assert_eq!(
            rel(&normed2, &normed),
            0.0,
            "{dtype:?}: keep_sum changes nothing else"
        );
    }
}
