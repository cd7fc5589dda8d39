//! SenseVoice on a CUDA GPU against FunASR's fixtures (`tests/data/sensevoice`, written by
//! `tools/reference/generate.py`), the fused kernels against candle's plain ops, and batches
//! against single items. They need an NVIDIA GPU and a `--features cuda` build:
//!
//! `cargo test --release --features cuda --test sensevoice_cuda -- --ignored`

// Test helpers outside #[test] functions panic on purpose: a failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use gpuscribe::model::files::ModelFiles;
use gpuscribe::model::sensevoice::fused::set_fused_kernels;
use gpuscribe::model::sensevoice::model::Prompt;
use gpuscribe::model::sensevoice::{DecodeOptions, SenseVoice};
use serde_json::Value;

use common::sensevoice::{clips, data, reference, tensors, wav};
use common::xorshift;

/// The fused-kernel switch is process-wide: tests that run the model hold this lock.
static SWITCH: Mutex<()> = Mutex::new(());

fn gpu() -> Device {
    gpuscribe::model::cuda_device(0).expect("CUDA device 0 (a `--features cuda` build on a GPU)")
}

fn load(dtype: DType) -> SenseVoice {
    let files = ModelFiles::from_dir(&data().join("tiny")).unwrap();
    SenseVoice::load(&files, &gpu(), dtype).unwrap()
}

/// f32 logits `[T, V]` on the host of one clip's reference features.
fn logits(model: &SenseVoice, feats: &Tensor) -> Tensor {
    let frames = feats.dim(0).unwrap();
    let input = (
        feats.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        frames,
    );
    let out = model
        .forward_features(&[input], &[Prompt::default()], None)
        .unwrap();
    out.logits
        .i(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn rel(got: &Tensor, want: &Tensor) -> f32 {
    max_abs(&(got - want).unwrap()) / max_abs(want)
}

fn argmax(t: &Tensor) -> Vec<u32> {
    t.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()
}

fn agreement(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

fn all_finite(t: &Tensor) -> bool {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU and a `--features cuda` build"]
fn f32_on_the_gpu_matches_funasr() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_fused_kernels(true);
    let (r, t) = (reference(), tensors());
    let model = load(DType::F32);
    for clip in clips(&r) {
        let got = logits(&model, &t[&format!("{clip}/feats")]);
        let want = &t[&format!("{clip}/logits")];
        let e = rel(&got, want);
        assert!(e <= 1e-4, "{clip}: logits relative error {e}");
        assert_eq!(argmax(&got), argmax(want), "{clip}: frame ids");
        let out = model
            .transcribe_batch(&[&wav(&clip)], &DecodeOptions::default())
            .unwrap()
            .remove(0);
        assert_eq!(
            out.token_ids,
            ids(&r["clips"][&clip]["greedy_ids"]),
            "{clip}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and a `--features cuda` build"]
fn fused_kernels_equal_candle_ops() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let (r, t) = (reference(), tensors());
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let model = load(dtype);
        for clip in clips(&r) {
            let feats = &t[&format!("{clip}/feats")];
            set_fused_kernels(true);
            let fused = logits(&model, feats);
            set_fused_kernels(false);
            let plain = logits(&model, feats);
            set_fused_kernels(true);
            assert!(all_finite(&fused), "{dtype:?} {clip}: NaN or Inf");
            let e = rel(&fused, &plain);
            let a = agreement(&argmax(&fused), &argmax(&plain));
            println!("{dtype:?} {clip}: fused vs candle ops rel {e:.2e}, ids {a:.4}");
            if dtype == DType::F32 {
                assert!(e <= 1e-5, "{clip}: f32 fused vs candle ops rel {e}");
                assert_eq!(a, 1.0, "{clip}: f32 ids differ");
            } else {
                // Half precision rounds at different points in the two paths.
                assert!(e <= 5e-2, "{dtype:?} {clip}: rel {e}");
                assert!(a >= 0.97, "{dtype:?} {clip}: ids agree on {a}");
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and a `--features cuda` build"]
fn padded_batch_equals_single_items() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_fused_kernels(true);
    let r = reference();
    let names: Vec<String> = r["batch"]["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let audio: Vec<Vec<f32>> = names.iter().map(|c| wav(c)).collect();
    let refs: Vec<&[f32]> = audio.iter().map(Vec::as_slice).collect();
    for dtype in [DType::F32, DType::BF16] {
        let model = load(dtype);
        let batch = model
            .transcribe_batch(&refs, &DecodeOptions::default())
            .unwrap();
        for (i, item) in batch.iter().enumerate() {
            let alone = model
                .transcribe_batch(&refs[i..=i], &DecodeOptions::default())
                .unwrap()
                .remove(0);
            if dtype == DType::F32 {
                assert_eq!(item.token_ids, alone.token_ids, "{}", names[i]);
                assert_eq!(
                    item.token_ids,
                    ids(&r["batch"]["greedy_ids"][i]),
                    "{}",
                    names[i]
                );
            } else {
                assert_eq!(
                    item.raw_text.is_empty(),
                    alone.raw_text.is_empty(),
                    "{}",
                    names[i]
                );
            }
        }
        // Frame by frame: each item's logits in the batch against the item alone.
        let feats: Vec<(Vec<f32>, usize)> = refs.iter().map(|s| model.features(s)).collect();
        let prompts = vec![Prompt::default(); feats.len()];
        let out = model.forward_features(&feats, &prompts, None).unwrap();
        for (i, f) in feats.iter().enumerate() {
            let alone = model
                .forward_features(std::slice::from_ref(f), &[Prompt::default()], None)
                .unwrap();
            let len = alone.lengths[0];
            let host = |t: &Tensor| {
                t.narrow(0, 0, len)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
            };
            let got = host(&out.logits.i(i).unwrap());
            let want = host(&alone.logits.i(0).unwrap());
            let e = rel(&got, &want);
            let a = agreement(&argmax(&got), &argmax(&want));
            println!(
                "{dtype:?} {}: batch vs alone rel {e:.2e}, ids {a:.4}",
                names[i]
            );
            if dtype == DType::F32 {
                assert!(e <= 1e-5, "{}: rel {e}", names[i]);
            } else {
                assert!(a >= 0.97, "{}: ids agree on {a}", names[i]);
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and a `--features cuda` build"]
fn half_precision_is_finite_and_close_to_funasr() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_fused_kernels(true);
    let (r, t) = (reference(), tensors());
    for dtype in [DType::BF16, DType::F16] {
        let model = load(dtype);
        let (mut same, mut total) = (0usize, 0usize);
        for clip in clips(&r) {
            let got = logits(&model, &t[&format!("{clip}/feats")]);
            assert!(all_finite(&got), "{dtype:?} {clip}: NaN or Inf");
            let (ours, theirs) = (argmax(&got), argmax(&t[&format!("{clip}/logits")]));
            same += ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
            total += ours.len();
        }
        let a = same as f64 / total as f64;
        println!("{dtype:?}: frame ids equal to FunASR f32 on {a:.4} of {total} frames");
        assert!(a >= 0.95, "{dtype:?}: {a}");
    }
}

/// A pass shape seen twice is captured as a CUDA graph; its replays, with other features and
/// other valid lengths written into the graph's buffers, give exactly the direct path's encoder
/// output and ids (the same kernels), in f32 and bf16, for a pass and for a batch of passes.
#[test]
#[ignore = "needs an NVIDIA GPU and a `--features cuda` build"]
fn cuda_graph_replays_equal_the_direct_pass() {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_fused_kernels(true);
    for dtype in [DType::F32, DType::BF16] {
        let model = load(dtype);
        let net = model.model();
        let dev = model.device().clone();
        let dim = net.input_size();
        for items in [3usize, 19] {
            let frames = 37;
            for (round, seed) in [11u64, 12, 13, 14].into_iter().enumerate() {
                // Round 0 runs directly, round 1 captures, rounds 2 and 3 replay with new inputs.
                let data = xorshift::values(seed, items * frames * dim, 0.5);
                let feats = Tensor::from_vec(data, (items, frames, dim), &dev).unwrap();
                let lengths: Vec<usize> = (0..items)
                    .map(|i| frames - (i * 5 + round * 3) % 17)
                    .collect();
                let prompts = vec![Prompt::default(); items];
                let (enc, ids, lens) = net.encode_ids(&feats, &lengths, &prompts).unwrap();
                let (want_enc, want_lens) = net.encode_for_ctc(&feats, &lengths, &prompts).unwrap();
                let want_ids = net.ctc_ids(&want_enc).unwrap();
                assert_eq!(lens, want_lens);
                let host_u32 = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
                let host_f32 = |t: &Tensor| {
                    t.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                };
                assert_eq!(
                    host_u32(&ids),
                    host_u32(&want_ids),
                    "{dtype:?} {items} items, round {round}: ids"
                );
                assert_eq!(
                    host_f32(&enc),
                    host_f32(&want_enc),
                    "{dtype:?} {items} items, round {round}: encoder output"
                );
                let (fids, flens) = net.forward_ids(&feats, &lengths, &prompts).unwrap();
                assert_eq!(flens, want_lens);
                assert_eq!(host_u32(&fids), host_u32(&want_ids), "forward_ids");
            }
            // 3 items: one pass shape; 19 items: passes of 16 and 3 (the 3 already kept).
            let kept = net.cuda_graphs_kept();
            println!("{dtype:?} {items} items: {kept} graphs kept");
            assert!(kept >= 1, "{dtype:?}: no graph was captured");
        }
    }
}
