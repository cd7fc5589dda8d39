//! A tiny random SenseVoice built in Rust: batching, dtypes and weight validation.
//!
//! These need no reference fixtures; parity with FunASR is in `sensevoice_parity.rs`.

// Test helpers outside #[test] functions panic on purpose: a failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use gpuscribe::model::sensevoice::config::SenseVoiceConfig;
use gpuscribe::model::sensevoice::model::{Language, Prompt, SenseVoiceSmall};
use gpuscribe::model::sensevoice::weights::{HostWeights, WeightsError, expected_tensors};

use common::xorshift;

const TINY_CONFIG: &str = "
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: 32
    attention_heads: 4
    linear_units: 48
    num_blocks: 3
    tp_blocks: 2
    kernel_size: 11
    sanm_shfit: 0
    normalize_before: true
frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
";
const VOCAB: usize = 50;

fn config() -> SenseVoiceConfig {
    SenseVoiceConfig::from_yaml(TINY_CONFIG, Path::new("tiny/config.yaml")).unwrap()
}

/// Deterministic uniform values in [-scale, scale) (candle's CPU RNG cannot be seeded).
fn uniform(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let data = xorshift::values(state, shape.iter().product(), scale);
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn random_tensors(cfg: &SenseVoiceConfig, seed: u64) -> HashMap<String, Tensor> {
    expected_tensors(cfg, VOCAB)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let seed = seed * 1000 + i as u64;
            let t = if name.contains("norm") && name.ends_with("weight") {
                (uniform(&shape, seed, 0.1) + 1.0).unwrap()
            } else {
                uniform(&shape, seed, 0.5)
            };
            (name, t)
        })
        .collect()
}

fn build(dtype: DType) -> SenseVoiceSmall {
    let cfg = config();
    let host = HostWeights::from_tensors(random_tensors(&cfg, 7), Path::new("tiny.safetensors"));
    host.validate(&expected_tensors(&cfg, VOCAB)).unwrap();
    let host = host.to_dtype(dtype).unwrap();
    let vb = host.materialize(dtype, &Device::Cpu).unwrap();
    SenseVoiceSmall::load(&cfg, VOCAB, &vb).unwrap()
}

fn feats(t: usize, seed: u64) -> Tensor {
    uniform(&[1, t, 560], seed + 99, 1.5)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn padded_batch_equals_one_by_one() {
    let model = build(DType::F32);
    let lens = [13usize, 30, 21];
    let items: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(i, &t)| feats(t, i as u64))
        .collect();
    let prompts = [
        Prompt {
            language: Language::Auto,
            use_itn: false,
        },
        Prompt {
            language: Language::En,
            use_itn: true,
        },
        Prompt {
            language: Language::Zh,
            use_itn: false,
        },
    ];
    let t_max = 30;
    let padded: Vec<Tensor> = items
        .iter()
        .map(|x| x.pad_with_zeros(1, 0, t_max - x.dim(1).unwrap()).unwrap())
        .collect();
    let batch = Tensor::cat(&padded, 0).unwrap();
    let out = model.forward(&batch, &lens, &prompts, None).unwrap();
    assert_eq!(out.lengths, [17, 34, 25]);
    for (i, x) in items.iter().enumerate() {
        let single = model
            .forward(x, &lens[i..=i], &prompts[i..=i], None)
            .unwrap();
        let valid = out.logits.i((i, ..lens[i] + 4)).unwrap();
        let alone = single.logits.i(0).unwrap();
        let diff = max_abs_diff(&valid, &alone);
        assert!(diff < 1e-4, "item {i}: max diff {diff}");
        let a: Vec<u32> = valid.argmax(1).unwrap().to_vec1().unwrap();
        let b: Vec<u32> = alone.argmax(1).unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "item {i}");
    }
    // Without masks the padded frames would leak into the valid ones: check the test can fail.
    let unmasked = model
        .forward(&batch, &[30, 30, 30], &prompts, None)
        .unwrap();
    let single = model
        .forward(&items[0], &lens[..1], &prompts[..1], None)
        .unwrap();
    assert!(
        max_abs_diff(
            &unmasked.logits.i((0, ..17)).unwrap(),
            &single.logits.i(0).unwrap()
        ) > 1e-3
    );
}

#[test]
fn half_precision_stays_finite_and_close() {
    let reference = build(DType::F32);
    let x = feats(40, 3);
    let prompts = [Prompt::default()];
    let want = reference.forward(&x, &[40], &prompts, None).unwrap().logits;
    for dtype in [DType::BF16, DType::F16] {
        let got = build(dtype)
            .forward(&x, &[40], &prompts, None)
            .unwrap()
            .logits;
        // Logits stay in the compute dtype; compare them in f32.
        assert_eq!(got.dtype(), dtype);
        let got = got.to_dtype(DType::F32).unwrap();
        let finite = got
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "{dtype:?} produced NaN/inf");
        let scale = want
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff < 0.1 * scale,
            "{dtype:?}: diff {diff} vs scale {scale}"
        );
    }
}

#[test]
fn capture_sees_every_layer() {
    let model = build(DType::F32);
    let mut names = Vec::new();
    let mut cb = |name: &str, t: &Tensor| {
        names.push((name.to_owned(), t.dims().to_vec()));
        Ok(())
    };
    model
        .forward(&feats(9, 1), &[9], &[Prompt::default()], Some(&mut cb))
        .unwrap();
    let got: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        got,
        [
            "encoder_input",
            "encoders0.0",
            "encoders.0",
            "encoders.1",
            "after_norm",
            "tp_encoders.0",
            "tp_encoders.1",
            "tp_norm"
        ]
    );
    assert_eq!(names[0].1, [1, 13, 560]);
    assert_eq!(names[1].1, [1, 13, 32]);
}

fn validate_err(tensors: HashMap<String, Tensor>) -> WeightsError {
    let cfg = config();
    HostWeights::from_tensors(tensors, Path::new("bad/model.safetensors"))
        .validate(&expected_tensors(&cfg, VOCAB))
        .unwrap_err()
}

#[test]
fn validation_names_tensor_and_file() {
    let cfg = config();
    let mut t = random_tensors(&cfg, 1);
    t.remove("encoder.tp_encoders.1.norm2.bias");
    let e = validate_err(t).to_string();
    assert!(
        e.contains("encoder.tp_encoders.1.norm2.bias") && e.contains("bad/model.safetensors"),
        "{e}"
    );

    let mut t = random_tensors(&cfg, 1);
    t.insert(
        "encoder.encoders.7.norm1.weight".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = validate_err(t).to_string();
    assert!(e.contains("encoder.encoders.7.norm1.weight"), "{e}");

    let mut t = random_tensors(&cfg, 1);
    t.insert(
        "ctc.ctc_lo.weight".into(),
        Tensor::zeros((VOCAB + 1, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = validate_err(t).to_string();
    assert!(
        e.contains("ctc.ctc_lo.weight") && e.contains("[51, 32]") && e.contains("[50, 32]"),
        "{e}"
    );

    // A `module.` prefix (DataParallel checkpoints) is stripped.
    let prefixed = random_tensors(&cfg, 1)
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    HostWeights::from_tensors(prefixed, Path::new("m.pt"))
        .validate(&expected_tensors(&cfg, VOCAB))
        .unwrap();
}

#[test]
fn bad_files_are_errors_not_panics() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&random_tensors(&cfg, 2), &good).unwrap();
    let host = HostWeights::load(&good).unwrap();
    host.validate(&expected_tensors(&cfg, VOCAB)).unwrap();

    let bytes = std::fs::read(&good).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated.safetensors", bytes[..bytes.len() / 2].to_vec()),
        (
            "random.pt",
            (0..5000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("notes.pt", b"this is a text file, not a model\n".to_vec()),
        ("empty.pt", Vec::new()),
    ];
    for (name, data) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let e = HostWeights::load(&p).unwrap_err();
        assert!(
            matches!(
                e,
                WeightsError::NotACheckpoint { .. }
                    | WeightsError::Empty { .. }
                    | WeightsError::Tensor { .. }
            ),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
    let e = HostWeights::load(&dir.path().join("absent.pt")).unwrap_err();
    assert!(matches!(e, WeightsError::Io { .. }), "{e}");
}

#[test]
fn fsmn_kernels_agree() {
    let model = build(DType::F32);
    // Encoder input (prompt frames included) of two items, the first padded.
    let x = Tensor::cat(&[feats(37, 5), feats(37, 6)], 0).unwrap();
    let enc_lens = [24usize, 37];
    let a = model
        .encoder()
        .forward_with(&x, &enc_lens, false, None)
        .unwrap();
    let b = model
        .encoder()
        .forward_with(&x, &enc_lens, true, None)
        .unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-4, "shift-add vs unfold: {diff}");
}
