//! Parity with FunASR 1.4.16 on the committed tiny-model fixtures (`tests/data/sensevoice`,
//! produced by `tools/reference/generate.py`).

// Test helpers outside #[test] functions panic on purpose: a failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use gpuscribe::model::files::ModelFiles;
use gpuscribe::model::sensevoice::model::{Language, Prompt};
use gpuscribe::model::sensevoice::postprocess::rich_transcription_postprocess;
use gpuscribe::model::sensevoice::tokenizer::Tokenizer;
use gpuscribe::model::sensevoice::weights::{HostWeights, WeightsError};
use gpuscribe::model::sensevoice::{DecodeOptions, SenseVoice, TextStyle};
use serde_json::Value;

use common::sensevoice::{clips, data, reference, tensors, wav};

fn tiny_files(weights: &str) -> ModelFiles {
    let dir = data().join("tiny");
    let mut f = ModelFiles::from_dir(&dir).unwrap();
    f.weights = dir.join(weights);
    f
}

fn load(weights: &str) -> SenseVoice {
    SenseVoice::load(&tiny_files(weights), &Device::Cpu, DType::F32).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn features_match_funasr_frontend() {
    let r = reference();
    let t = tensors();
    let model = load("model.safetensors");
    for clip in clips(&r) {
        let samples = wav(&clip);
        assert_eq!(
            samples.len() as u64,
            r["clips"][&clip]["num_samples"].as_u64().unwrap()
        );
        let (feats, frames) = model.features(&samples);
        let want = &t[&format!("{clip}/feats")];
        assert_eq!([frames, 560], want.dims(), "{clip}");
        let got = Tensor::from_vec(feats, (frames, 560), &Device::Cpu).unwrap();
        let diff = max_abs(&(got - want).unwrap());
        assert!(diff <= 1e-3, "{clip}: feature max abs diff {diff}");
    }
}

#[test]
fn every_layer_and_logits_match() {
    let r = reference();
    let t = tensors();
    for weights in ["model.safetensors", "model.pt"] {
        let model = load(weights);
        for clip in clips(&r) {
            let feats = &t[&format!("{clip}/feats")];
            let frames = feats.dim(0).unwrap();
            let input = (
                feats.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                frames,
            );
            let mut seen = Vec::new();
            let mut check = |name: &str, got: &Tensor| -> candle_core::Result<()> {
                let want = &t[&format!("{clip}/{name}")];
                let got = got.i(0)?;
                assert_eq!(got.dims(), want.dims(), "{clip}/{name}");
                let rel = max_abs(&(&got - want)?) / max_abs(want);
                assert!(rel <= 1e-4, "{weights} {clip}/{name}: relative error {rel}");
                seen.push(name.to_owned());
                Ok(())
            };
            let out = model
                .forward_features(&[input], &[Prompt::default()], Some(&mut check))
                .unwrap();
            assert_eq!(seen.len(), 1 + 1 + 2 + 1 + 2 + 1, "{seen:?}");
            let want = &t[&format!("{clip}/logits")];
            let rel = max_abs(&(out.logits.i(0).unwrap() - want).unwrap()) / max_abs(want);
            assert!(rel <= 1e-4, "{weights} {clip}/logits: relative error {rel}");
        }
    }
}

#[test]
fn generate_texts_and_ids_are_identical() {
    let r = reference();
    let model = load("model.pt");
    for clip in clips(&r) {
        let samples = wav(&clip);
        let case = &r["clips"][&clip];
        for (key, text) in case["generate"].as_object().unwrap() {
            let use_itn = key.ends_with("_itn");
            let lang = key.trim_end_matches("_itn");
            let opts = DecodeOptions {
                language: Language::from_code(lang),
                use_itn,
                ..DecodeOptions::default()
            };
            let out = model
                .transcribe_batch(&[&samples], &opts)
                .unwrap()
                .remove(0);
            assert_eq!(out.raw_text, text.as_str().unwrap(), "{clip} {key}");
            if key == "auto" {
                assert_eq!(out.token_ids, ids(&case["greedy_ids"]), "{clip}");
            }
        }
    }
}

#[test]
fn padded_batch_of_three_equals_reference() {
    let r = reference();
    let model = load("model.safetensors");
    let names: Vec<String> = r["batch"]["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let audio: Vec<Vec<f32>> = names.iter().map(|c| wav(c)).collect();
    let refs: Vec<&[f32]> = audio.iter().map(Vec::as_slice).collect();
    let out = model
        .transcribe_batch(&refs, &DecodeOptions::default())
        .unwrap();
    for (i, t) in out.iter().enumerate() {
        assert_eq!(
            t.raw_text,
            r["batch"]["texts"][i].as_str().unwrap(),
            "{}",
            names[i]
        );
        assert_eq!(
            t.token_ids,
            ids(&r["batch"]["greedy_ids"][i]),
            "{}",
            names[i]
        );
        let alone = model
            .transcribe_batch(&refs[i..=i], &DecodeOptions::default())
            .unwrap();
        assert_eq!(alone[0].token_ids, t.token_ids);
    }
}

#[test]
fn tokenizer_decodes_like_sentencepiece() {
    let r = reference();
    let cases = [
        ("tiny/chn_jpn_yue_eng_ko_spectok.bpe.model", &r["tokenizer"]),
        (
            "spm_default_flags.model",
            &r["tokenizer_default_flags"]["cases"],
        ),
    ];
    for (file, cases) in cases {
        let tok = Tokenizer::from_file(&data().join(file)).unwrap();
        let cases = cases.as_array().unwrap();
        assert!(cases.len() > 10);
        for c in cases {
            let ids = ids(&c["ids"]);
            assert_eq!(
                tok.decode(&ids).unwrap(),
                c["text"].as_str().unwrap(),
                "{file} {ids:?}"
            );
            let pieces: Vec<&str> = ids.iter().map(|&i| tok.piece(i).unwrap()).collect();
            let want: Vec<&str> = c["pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(pieces, want);
        }
    }
    let tok =
        Tokenizer::from_file(&data().join("tiny/chn_jpn_yue_eng_ko_spectok.bpe.model")).unwrap();
    assert_eq!(tok.vocab_size() as u64, r["pieces"].as_u64().unwrap());
    for (piece, id) in r["special_token_ids"].as_object().unwrap() {
        assert_eq!(
            tok.id_of(piece),
            Some(id.as_u64().unwrap() as u32),
            "{piece}"
        );
    }
    assert!(tok.decode(&[500]).is_err());
}

#[test]
fn postprocess_matches_funasr() {
    let r = reference();
    let cases = r["postprocess"].as_array().unwrap();
    assert!(cases.len() > 10);
    for c in cases {
        let raw = c["raw"].as_str().unwrap();
        assert_eq!(
            rich_transcription_postprocess(raw),
            c["rich"].as_str().unwrap(),
            "{raw}"
        );
    }
}

#[test]
fn rigged_timestamps_match_funasr() {
    let r = reference();
    let ts = &r["timestamps"];
    let t = tensors();
    // A model folder whose CTC head is the rigged one from the fixture.
    let dir = tempfile::tempdir().unwrap();
    let tiny = data().join("tiny");
    for f in [
        "am.mvn",
        "config.yaml",
        "chn_jpn_yue_eng_ko_spectok.bpe.model",
    ] {
        std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
    }
    let mut weights =
        candle_core::safetensors::load(tiny.join("model.safetensors"), &Device::Cpu).unwrap();
    weights.insert(
        "ctc.ctc_lo.weight".into(),
        t["timestamps/ctc_lo.weight"].clone(),
    );
    weights.insert(
        "ctc.ctc_lo.bias".into(),
        t["timestamps/ctc_lo.bias"].clone(),
    );
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    let model = SenseVoice::load(
        &ModelFiles::from_dir(dir.path()).unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();

    let samples = wav(ts["clip"].as_str().unwrap());
    let opts = DecodeOptions {
        timestamps: true,
        text_style: TextStyle::Rich,
        ..DecodeOptions::default()
    };
    let out = model
        .transcribe_batch(&[&samples], &opts)
        .unwrap()
        .remove(0);
    assert_eq!(out.raw_text, ts["text"].as_str().unwrap());
    let pieces: Vec<&str> = out.tokens.iter().map(|t| t.piece.as_str()).collect();
    let want: Vec<&str> = ts["text2tokens_after_4"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces, want);
    let got: Vec<[i64; 2]> = out.words.iter().map(|w| [w.start_ms, w.end_ms]).collect();
    let want: Vec<[i64; 2]> = serde_json::from_value(ts["timestamp"].clone()).unwrap();
    assert_eq!(got, want);
    let words: Vec<&str> = out.words.iter().map(|w| w.word.as_str()).collect();
    let want: Vec<&str> = ts["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(words, want);
    assert_eq!(out.tags.language.as_deref(), Some("en"));
    assert_eq!(out.text, "hello wonderful world你好");
    assert!(!out.segments.is_empty());
}

#[test]
fn bad_checkpoints_from_the_fixture() {
    let tiny = data().join("tiny");
    let dir = tempfile::tempdir().unwrap();
    let pt = std::fs::read(tiny.join("model.pt")).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &pt[..pt.len() * 2 / 3]).unwrap();
    let e = HostWeights::load(&truncated).unwrap_err();
    assert!(matches!(e, WeightsError::NotACheckpoint { .. }), "{e}");
    assert!(e.to_string().contains("truncated.pt"), "{e}");
    // Truncated inside the data of the last tensors (the zip directory is intact).
    let mut cut = pt.clone();
    let mid = cut.len() / 2;
    cut[mid..mid + 4096].fill(0);
    let damaged = dir.path().join("damaged.pt");
    std::fs::write(&damaged, &cut).unwrap();
    // Zeroed bytes inside stored tensor data fail the entry's CRC-32.
    let e = HostWeights::load(&damaged).unwrap_err();
    assert!(matches!(e, WeightsError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("damaged.pt"), "{e}");

    let files = |weights: PathBuf| ModelFiles {
        weights,
        ..tiny_files("model.pt")
    };
    let all = HostWeights::load(&tiny.join("model.pt"))
        .unwrap()
        .tensors()
        .clone();
    let mut removed = all.clone();
    removed.remove("encoder.encoders.0.self_attn.fsmn_block.weight");
    let p = dir.path().join("removed.safetensors");
    candle_core::safetensors::save(&removed, &p).unwrap();
    let e = SenseVoice::load(&files(p), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder.encoders.0.self_attn.fsmn_block.weight")
            && e.contains("removed.safetensors"),
        "{e}"
    );

    let mut reshaped = all;
    let w = reshaped["encoder.after_norm.weight"]
        .narrow(0, 0, 10)
        .unwrap();
    reshaped.insert("encoder.after_norm.weight".into(), w);
    let p = dir.path().join("reshaped.safetensors");
    candle_core::safetensors::save(&reshaped, &p).unwrap();
    let e = SenseVoice::load(&files(p), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder.after_norm.weight")
            && e.contains("[10]")
            && e.contains("reshaped.safetensors"),
        "{e}"
    );

    let text = dir.path().join("model.pt");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let e = SenseVoice::load(&files(text), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a readable model checkpoint"), "{e}");
}

#[test]
fn half_precision_pipeline_runs_on_cpu() {
    for dtype in [DType::BF16, DType::F16] {
        let model = SenseVoice::load(&tiny_files("model.pt"), &Device::Cpu, dtype).unwrap();
        let samples = wav("en_short");
        let out = model
            .transcribe_batch(&[&samples], &DecodeOptions::default())
            .unwrap();
        assert!(
            out[0].raw_text.starts_with("<|"),
            "{dtype:?}: {}",
            out[0].raw_text
        );
        // Rebuilding on the same device from the host copy gives the same result.
        let again = model
            .to_device(&Device::Cpu)
            .unwrap()
            .transcribe_batch(&[&samples], &DecodeOptions::default())
            .unwrap();
        assert_eq!(again[0].token_ids, out[0].token_ids);
    }
}
