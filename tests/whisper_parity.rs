//! Whisper in candle against transformers' `WhisperForConditionalGeneration` on the committed
//! random-weight model (`tests/data/whisper`, made by `tools/reference/whisper_generate.py`):
//! features, encoder output, decoder logits and greedy ids (f32, CPU); f16 and bf16 on the CPU
//! against the same references within stated bounds; and, opt-in, the same checks on a
//! random-weight model of whisper-base's full size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gpuscribe::model::whisper::frontend::mel_filters;
use gpuscribe::model::whisper::{Whisper, WhisperOptions};
use serde::Deserialize;

#[path = "common/clips.rs"]
mod clips;
use clips::{audio, flat};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/whisper")
}

#[derive(Deserialize)]
struct Case {
    language: Option<String>,
    task: String,
    timestamps: bool,
    prompt: Vec<u32>,
    detected_language: String,
    ids: Vec<u32>,
    text: String,
}

/// How far the reference's own float32 run is from the same model in float64 (the generator's
/// `f32_vs_f64`), as max |f32 − f64| / max(max |f64|, 1).
#[derive(Deserialize)]
struct RoundingError {
    encoder: f32,
    logits: HashMap<String, f32>,
}

#[derive(Deserialize)]
struct Clip {
    cases: HashMap<String, Case>,
    f32_vs_f64: Option<RoundingError>,
}

/// The bound on max |ours − reference| / max(max |reference|, 1) in f32. Both sides round in
/// f32, and the reference's own rounding error (its distance from its float64 run) grows with
/// width and depth: about 3e-6 on the shrunk model, up to 4e-4 on the encoder and 5e-2 on the
/// logits at whisper-base's size with these random weights, so a fixed 1e-4 only holds for the
/// shrunk model. Ours sums in another order (and through the encoder's output into the
/// decoder), so it may be off by a few times as much: measured up to 3.1x on whisper-base's
/// logits, 1.7x on its encoder; the bound is 4x. Never below 1e-4, which is what the shrunk
/// model is held to.
fn f32_bound(reference_rounding: Option<f32>) -> f32 {
    reference_rounding.map_or(1e-4, |r| (4.0 * r).max(1e-4))
}

#[derive(Deserialize)]
struct Reference {
    max_new_tokens: usize,
    clips: HashMap<String, Clip>,
}

struct Fixture {
    meta: Reference,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    fixture_at(&data())
}

fn fixture_at(dir: &Path) -> Fixture {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let meta: Reference = serde_json::from_str(&text).expect("reference.json parses");
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors");
    Fixture { meta, tensors }
}

fn model() -> Whisper {
    model_at(&data(), DType::F32)
}

fn model_at(dir: &Path, dtype: DType) -> Whisper {
    Whisper::load(&dir.join("model"), &Device::Cpu, dtype).expect("load")
}

/// (max |a − b|, max |b|).
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "lengths");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0, f32::max);
    (d, m)
}

fn options(case: &Case, max_new_tokens: usize) -> WhisperOptions {
    WhisperOptions {
        language: case.language.clone(),
        translate: case.task == "translate",
        timestamps: case.timestamps,
        max_new_tokens: Some(max_new_tokens),
    }
}

#[test]
fn mel_filters_and_features_match_the_feature_extractor() {
    let fx = fixture();
    let filters = flat(&fx.tensors["mel_filters"]); // (201, 80)
    let ours = mel_filters(80);
    let mut worst = 0.0f64;
    for f in 0..201 {
        for m in 0..80 {
            worst = worst.max((ours[m * 201 + f] - f64::from(filters[f * 80 + m])).abs());
        }
    }
    assert!(worst < 1e-6, "mel filters off by {worst}");
    let whisper = model();
    for name in fx.meta.clips.keys() {
        let expected = flat(&fx.tensors[&format!("{name}/features")]);
        let (d, m) = diff(&whisper.features(&audio(name)), &expected);
        // Log10 energies; the reference's STFT is torch's f32 FFT, ours realfft's.
        assert!(d < 5e-4, "{name}: features off by {d} (max {m})");
    }
}

#[test]
fn encoder_output_matches() {
    check_encoder(&data());
}

fn check_encoder(dir: &Path) {
    let fx = fixture_at(dir);
    let mut whisper = model_at(dir, DType::F32);
    for (name, clip) in &fx.meta.clips {
        let features = flat(&fx.tensors[&format!("{name}/features")]);
        let expected = flat(&fx.tensors[&format!("{name}/encoder")]);
        let ours = flat(&whisper.encode(&features).expect("encode"));
        let (d, m) = diff(&ours, &expected);
        let bound = f32_bound(clip.f32_vs_f64.as_ref().map(|r| r.encoder));
        println!(
            "{name}: encoder {:.2e} relative (bound {bound:.2e})",
            d / m.max(1.0)
        );
        assert!(
            d <= bound * m.max(1.0),
            "{name}: encoder off by {d} (max {m}, bound {bound})"
        );
        // From our own features as well: the whole path from samples.
        let own = flat(
            &whisper
                .encode(&whisper.features(&audio(name)))
                .expect("encode"),
        );
        let (d, m) = diff(&own, &expected);
        // The features differ by up to 5e-4 (two FFTs), 20 times the shrunk model's 1e-4;
        // the network amplifies that difference as it does rounding, so the bound grows with
        // the f32 bound above (10 x it: the 2e-3 the shrunk model is held to).
        let own_bound = 10.0 * bound.max(2e-4);
        println!(
            "{name}: encoder from our features {:.2e} relative (bound {own_bound:.2e})",
            d / m.max(1.0)
        );
        assert!(
            d <= own_bound * m.max(1.0),
            "{name}: encoder from our features off by {d} (max {m}, bound {own_bound})"
        );
    }
}

#[test]
fn decoder_logits_match_teacher_forced() {
    check_logits(&data());
}

fn check_logits(dir: &Path) {
    let fx = fixture_at(dir);
    let mut whisper = model_at(dir, DType::F32);
    for (name, clip) in &fx.meta.clips {
        let features = flat(&fx.tensors[&format!("{name}/features")]);
        let audio = whisper.encode(&features).expect("encode");
        for (case_name, case) in &clip.cases {
            let tokens: Vec<u32> = case.prompt.iter().chain(&case.ids).copied().collect();
            let logits = whisper.logits(&audio, &tokens).expect("logits");
            let expected = flat(&fx.tensors[&format!("{name}/{case_name}/logits")]);
            let (d, m) = diff(&flat(&logits), &expected);
            let rounding = clip.f32_vs_f64.as_ref().map(|r| r.logits[case_name]);
            let bound = f32_bound(rounding);
            println!(
                "{name}/{case_name}: logits {:.2e} relative (bound {bound:.2e})",
                d / m.max(1.0)
            );
            assert!(
                d <= bound * m.max(1.0),
                "{name}/{case_name}: logits off by {d} (max {m}, bound {bound})"
            );
        }
    }
}

#[test]
fn greedy_ids_language_and_text_are_identical() {
    check_ids(&data());
}

fn check_ids(dir: &Path) {
    let fx = fixture_at(dir);
    let mut whisper = model_at(dir, DType::F32);
    let mut compared = 0;
    for (name, clip) in &fx.meta.clips {
        let features = flat(&fx.tensors[&format!("{name}/features")]);
        let audio = whisper.encode(&features).expect("encode");
        for (case_name, case) in &clip.cases {
            let result = whisper
                .decode_window(&audio, 30.0, &options(case, fx.meta.max_new_tokens))
                .expect("decode");
            assert_eq!(result.prompt, case.prompt, "{name}/{case_name}: prompt");
            assert_eq!(result.tokens, case.ids, "{name}/{case_name}: ids");
            assert_eq!(
                format!("<|{}|>", result.language),
                case.detected_language,
                "{name}/{case_name}"
            );
            assert_eq!(
                whisper.tokenizer().decode(&result.tokens),
                case.text,
                "{name}/{case_name}: text"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 9);
}

/// Candle's operations for the greedy steps (`Whisper::set_fused_step(false)`) give the ids of
/// transformers, as the fused f32 CPU step (the default on the CPU, the test above) does.
#[test]
fn candle_ops_for_the_steps_give_the_same_ids() {
    let fx = fixture();
    let mut whisper = model();
    assert!(
        whisper.fused_step(),
        "the fused step by default for f32 on the CPU"
    );
    assert!(!whisper.set_fused_step(false));
    let mut compared = 0;
    for (name, clip) in &fx.meta.clips {
        let features = flat(&fx.tensors[&format!("{name}/features")]);
        let audio = whisper.encode(&features).expect("encode");
        for (case_name, case) in &clip.cases {
            let result = whisper
                .decode_window(&audio, 30.0, &options(case, fx.meta.max_new_tokens))
                .expect("decode");
            assert_eq!(result.tokens, case.ids, "{name}/{case_name}: ids");
            compared += 1;
        }
    }
    assert_eq!(compared, 9);
    let mut half = model_at(&data(), DType::F16);
    assert!(
        !half.fused_step() && !half.set_fused_step(true),
        "f16 has no fused step"
    );
}

#[test]
fn the_whole_path_from_samples_gives_the_same_ids() {
    let fx = fixture();
    let mut whisper = model();
    for (name, clip) in &fx.meta.clips {
        let case = &clip.cases["detect_transcribe_ts"];
        let result = whisper
            .transcribe(&audio(name), &options(case, fx.meta.max_new_tokens))
            .expect("transcribe");
        assert_eq!(result.tokens, case.ids, "{name}");
        assert!(!result.pieces.is_empty(), "{name}: timed pieces");
        for piece in &result.pieces {
            assert!(piece.start_s <= piece.end_s, "{piece:?}");
        }
    }
}

/// What `examples/whisper_bench.rs` runs (samples in, `Whisper::transcribe` with language `en`,
/// no timestamps, a token limit) gives the ids of transformers' `generate()` with the logits
/// processors `WhisperForConditionalGeneration` builds for it (begin-suppress, suppress): the
/// fixture's `en_transcribe_nots` case, written on the CPU in exact f32 by the same call
/// `tools/reference/whisper_bench.py` makes.
#[test]
fn the_bench_decode_gives_the_ids_of_transformers_generate() {
    let fx = fixture();
    let mut whisper = model();
    let bench = WhisperOptions {
        language: Some("en".into()),
        translate: false,
        timestamps: false,
        max_new_tokens: Some(fx.meta.max_new_tokens),
    };
    let en = whisper.vocabulary().language_id("en");
    let mut compared = 0;
    for (name, clip) in &fx.meta.clips {
        let case = &clip.cases["en_transcribe_nots"];
        assert_eq!(
            bench,
            options(case, fx.meta.max_new_tokens),
            "{name}: the fixture case is the bench's options"
        );
        let result = whisper
            .transcribe(&audio(name), &bench)
            .expect("transcribe");
        assert_eq!(result.prompt, case.prompt, "{name}: prompt");
        assert_eq!(
            result.prompt,
            whisper.prompt(en, false, false),
            "{name}: prompt"
        );
        assert_eq!(result.tokens, case.ids, "{name}: ids");
        compared += 1;
    }
    assert_eq!(compared, 3);
}

#[test]
fn bad_folders_and_options_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Whisper::load(dir.path(), &Device::Cpu, DType::F32).expect_err("empty folder");
    let text = err.to_string();
    assert!(
        text.contains("config.json") && text.contains("model.safetensors"),
        "{text}"
    );
    // A config that is not Whisper's.
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(data().join("model").join(name), dir.path().join(name)).expect("copy");
    }
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\"}").expect("write");
    let err = Whisper::load(dir.path(), &Device::Cpu, DType::F32).expect_err("bert");
    assert!(err.to_string().contains("bert"), "{err}");
    // Truncated weights.
    std::fs::copy(
        data().join("model/config.json"),
        dir.path().join("config.json"),
    )
    .expect("copy");
    let bytes = std::fs::read(data().join("model/model.safetensors")).expect("read");
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");
    let err = Whisper::load(dir.path(), &Device::Cpu, DType::F32).expect_err("truncated");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // Precisions other than f32/f16/bf16 are refused.
    let err = Whisper::load(&data().join("model"), &Device::Cpu, DType::U8).expect_err("u8");
    assert!(err.to_string().contains("bf16"), "{err}");
    // An unknown language names the known ones.
    let mut whisper = model();
    let options = WhisperOptions {
        language: Some("xx".into()),
        ..WhisperOptions::default()
    };
    let err = whisper
        .transcribe(&[0.0; 16_000], &options)
        .expect_err("xx");
    assert!(
        err.to_string().contains("\"xx\"") && err.to_string().contains(" de "),
        "{err}"
    );
}

/// Speed on the CPU: features + encoder + greedy decoding of each committed clip, language
/// `en`, no timestamps, 64 new tokens at most (as `whisper_generate.py --bench`).
/// `WHISPER_BENCH_MODEL=DIR cargo test --release --test whisper_parity -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: needs WHISPER_BENCH_MODEL (e.g. whisper_generate.py --preset tiny --model-only)"]
fn bench_cpu() {
    let dir = PathBuf::from(std::env::var("WHISPER_BENCH_MODEL").expect("WHISPER_BENCH_MODEL"));
    let mut whisper = Whisper::load(&dir, &Device::Cpu, DType::F32).expect("load");
    let clips: Vec<Vec<f32>> = ["en_short", "ja_long", "zh_mid"]
        .iter()
        .map(|n| audio(n))
        .collect();
    let options = WhisperOptions {
        language: Some("en".into()),
        translate: false,
        timestamps: false,
        max_new_tokens: Some(64),
    };
    let mut runs = Vec::new();
    let mut tokens = 0;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        tokens = 0;
        for clip in &clips {
            let result = whisper.transcribe(clip, &options).expect("transcribe");
            tokens += result.prompt.len() + result.tokens.len();
        }
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{{\"clips\": {}, \"tokens\": {tokens}, \"runs_ms\": {runs:?}, \"best_ms\": {best:.1}}}",
        clips.len()
    );
}

/// Why the network is not candle-transformers' own `Whisper`: its tanh-approximated GELU puts
/// its encoder further from the reference than ours (which must be within 1e-4, above).
#[test]
fn candle_transformers_own_model_is_further_from_the_reference() {
    use candle_transformers::models::whisper::model::Whisper as CandleWhisper;
    let fx = fixture();
    let dir = data().join("model");
    let config =
        gpuscribe::model::whisper::config::read_config(&dir.join("config.json")).expect("config");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).expect("load");
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut theirs = CandleWhisper::load(&vb, config).expect("candle-transformers load");
    let mut ours = model();
    let name = "ja_long";
    let features = flat(&fx.tensors[&format!("{name}/features")]);
    let expected = flat(&fx.tensors[&format!("{name}/encoder")]);
    let mel = Tensor::from_slice(&features, (1, 80, 3000), &Device::Cpu).expect("mel");
    let their_out = flat(&theirs.encoder.forward(&mel, true).expect("forward"));
    let our_out = flat(&ours.encode(&features).expect("encode"));
    let (d_theirs, m) = diff(&their_out, &expected);
    let (d_ours, _) = diff(&our_out, &expected);
    println!("encoder max |diff|: candle-transformers {d_theirs}, ours {d_ours} (max {m})");
    assert!(d_ours < d_theirs, "{d_ours} vs {d_theirs}");
}

/// How far a half-precision run is from the f32 references.
#[derive(Debug)]
struct HalfReport {
    /// Worst max |encoder − reference| / max |reference| over the clips.
    encoder_rel: f32,
    /// Worst max |logits − reference| / max |reference| over the cases (teacher-forced).
    logits_rel: f32,
    /// Share of teacher-forced positions whose argmax is the reference's.
    argmax_agree: f64,
    /// Cases whose greedy ids are exactly the reference's.
    ids_identical: usize,
    /// Shortest run of leading greedy ids equal to the reference's.
    ids_prefix_min: usize,
    /// Cases compared.
    cases: usize,
}

fn argmax_rows(values: &[f32], width: usize) -> Vec<usize> {
    values
        .chunks(width)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

fn half_report(dir: &Path, dtype: DType) -> HalfReport {
    let fx = fixture_at(dir);
    let mut whisper = model_at(dir, dtype);
    assert_eq!(whisper.dtype(), dtype);
    let mut report = HalfReport {
        encoder_rel: 0.0,
        logits_rel: 0.0,
        argmax_agree: 0.0,
        ids_identical: 0,
        ids_prefix_min: usize::MAX,
        cases: 0,
    };
    let (mut agree, mut positions) = (0usize, 0usize);
    for (name, clip) in &fx.meta.clips {
        let features = flat(&fx.tensors[&format!("{name}/features")]);
        let audio = whisper.encode(&features).expect("encode");
        let expected = flat(&fx.tensors[&format!("{name}/encoder")]);
        let (d, m) = diff(&flat(&audio), &expected);
        report.encoder_rel = report.encoder_rel.max(d / m);
        for (case_name, case) in &clip.cases {
            let tokens: Vec<u32> = case.prompt.iter().chain(&case.ids).copied().collect();
            let logits = flat(&whisper.logits(&audio, &tokens).expect("logits"));
            let expected = flat(&fx.tensors[&format!("{name}/{case_name}/logits")]);
            let (d, m) = diff(&logits, &expected);
            report.logits_rel = report.logits_rel.max(d / m);
            let width = expected.len() / tokens.len();
            let ours = argmax_rows(&logits, width);
            let theirs = argmax_rows(&expected, width);
            agree += ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
            positions += theirs.len();
            let result = whisper
                .decode_window(&audio, 30.0, &options(case, fx.meta.max_new_tokens))
                .expect("decode");
            let prefix = result
                .tokens
                .iter()
                .zip(&case.ids)
                .take_while(|(a, b)| a == b)
                .count();
            report.ids_prefix_min = report.ids_prefix_min.min(prefix);
            report.ids_identical += usize::from(result.tokens == case.ids);
            report.cases += 1;
        }
    }
    report.argmax_agree = agree as f64 / positions as f64;
    report
}

/// f16 and bf16 run on the CPU and follow the f32 references within these bounds (measured on
/// the committed model: f16 encoder 3.6e-3, logits 6.1e-3, argmax 99.7 %; bf16 3.6e-2, 6.2e-2,
/// 94.3 %). Greedy ids are not bounded: with random weights they part from f32's after a few
/// tokens (shortest common prefix 2 in f16, 4 in bf16), as any rounding change makes them do.
#[test]
fn half_precision_runs_on_the_cpu_and_follows_f32() {
    for (dtype, encoder, logits, argmax) in [
        (DType::F16, 1e-2, 2e-2, 0.98),
        (DType::BF16, 1e-1, 1.5e-1, 0.90),
    ] {
        let report = half_report(&data(), dtype);
        println!("{dtype:?}: {report:?}");
        assert_eq!(report.cases, 9);
        assert!(report.encoder_rel <= encoder, "{dtype:?}: {report:?}");
        assert!(report.logits_rel <= logits, "{dtype:?}: {report:?}");
        assert!(report.argmax_agree >= argmax, "{dtype:?}: {report:?}");
    }
}

/// The same checks at whisper-base's full size (d_model 512, 6 + 6 layers, 8 heads, the real
/// 51,865-token vocabulary; random weights, 290 MB, so not committed):
/// `whisper_generate.py --preset base --out DIR`, then
/// `WHISPER_BASE_FIXTURE=DIR cargo test --test whisper_parity -- --ignored base_size`.
#[test]
#[ignore = "needs WHISPER_BASE_FIXTURE (whisper_generate.py --preset base --out DIR, 290 MB)"]
fn base_size_random_weights_match_transformers() {
    let dir = PathBuf::from(std::env::var("WHISPER_BASE_FIXTURE").expect("WHISPER_BASE_FIXTURE"));
    let config = std::fs::read_to_string(dir.join("model/config.json")).expect("config.json");
    let config: serde_json::Value = serde_json::from_str(&config).expect("config parses");
    assert_eq!(config["d_model"], 512);
    assert_eq!(config["encoder_layers"], 6);
    assert_eq!(config["vocab_size"], 51865);
    let fx = fixture_at(&dir);
    assert!(
        fx.meta.clips.values().all(|c| c.f32_vs_f64.is_some()),
        "the fixture must record f32_vs_f64 (rerun whisper_generate.py)"
    );
    check_encoder(&dir);
    check_logits(&dir);
    check_ids(&dir);
    for dtype in [DType::F16, DType::BF16] {
        println!("{dtype:?}: {:?}", half_report(&dir, dtype));
    }
}
