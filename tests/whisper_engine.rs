//! Whisper through the engine on the CPU: the real `gpuscribe-worker` process and the real
//! `gpuscribe transcribe --engine whisper`, on the committed random-weight Whisper
//! (`tests/data/whisper/model`). The worker's transcript must be what the model gives in-process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use candle_core::{DType, Device};
use gpuscribe::engine::batch::transcribe_files;
use gpuscribe::engine::{
    DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, Event, IdlePolicy, ResidencyConfig,
    SpeechEngine,
};
use gpuscribe::model::whisper::Whisper;
use gpuscribe::worker::whisper::options;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/whisper/model")
}

fn clip(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sensevoice/audio")
        .join(format!("{name}.wav"))
}

fn samples(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).expect("wav");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect()
}

/// The binaries under test; `GPUSCRIBE_TEST_BIN_DIR` points at copies when the target folder is
/// shared with other builds that replace them.
fn bin(name: &str, built: &str) -> PathBuf {
    std::env::var_os("GPUSCRIBE_TEST_BIN_DIR")
        .map_or_else(|| PathBuf::from(built), |dir| PathBuf::from(dir).join(name))
}

fn config(offload: IdlePolicy) -> EngineConfig {
    EngineConfig {
        model_dir: Some(model_dir()),
        engine: SpeechEngine::Whisper {
            model: "tiny".into(),
        },
        target: DeviceTarget::Cpu,
        residency: ResidencyConfig {
            offload,
            release_after_secs: None,
        },
        worker_exe: Some(bin(
            "gpuscribe-worker",
            env!("CARGO_BIN_EXE_gpuscribe-worker"),
        )),
        ..EngineConfig::default()
    }
}

fn settings() -> DecodeSettings {
    DecodeSettings {
        language: "de".into(),
        translate: true,
        ..DecodeSettings::default()
    }
}

#[test]
fn the_worker_gives_the_models_timed_pieces_and_survives_offload() {
    let path = clip("ja_long");
    let audio = samples(&path);
    let mut whisper = Whisper::load(&model_dir(), &Device::Cpu, DType::F32).expect("load");
    let expected = whisper
        .transcribe(&audio, &options(&settings()))
        .expect("transcribe");
    assert!(!expected.pieces.is_empty());

    let engine =
        EngineHandle::spawn(config(IdlePolicy::Immediately), Arc::new(|| {})).expect("engine");
    let mut texts = Vec::new();
    for _ in 0..2 {
        let id = engine.transcribe(path.clone(), settings());
        loop {
            match engine.recv_timeout(Duration::from_secs(120)) {
                Some(Event::JobDone {
                    job_id, transcript, ..
                }) if job_id == id => {
                    texts.push(transcript);
                    break;
                }
                Some(Event::JobFailed { message, .. }) => panic!("{message}"),
                Some(_) => {}
                None => panic!("timed out"),
            }
        }
    }
    let transcript = &texts[0];
    assert_eq!(transcript.language, "de");
    assert_eq!(transcript.segments.len(), expected.pieces.len());
    let duration = audio.len() as f64 / 16_000.0;
    for (segment, piece) in transcript.segments.iter().zip(&expected.pieces) {
        assert_eq!(segment.text, piece.text);
        assert!((segment.start_s - piece.start_s.min(duration)).abs() < 1e-9);
        assert!(segment.start_s <= segment.end_s && segment.end_s <= duration + 1e-9);
    }
    // The second job ran after an offload and a restore.
    assert_eq!(texts[0].segments, texts[1].segments);
}

#[test]
fn sensevoice_folders_are_refused_for_whisper_and_whisper_folders_for_sensevoice() {
    let sensevoice = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/tiny");
    let mut wrong = config(IdlePolicy::Never);
    wrong.model_dir = Some(sensevoice);
    let results = transcribe_files(
        &[clip("en_short")],
        wrong,
        Vec::new(),
        &settings(),
        &mut |_| {},
    )
    .expect("runs");
    let err = results[0].as_ref().expect_err("not a Whisper folder");
    assert!(err.contains("not a Whisper model folder"), "{err}");
    let mut wrong = config(IdlePolicy::Never);
    wrong.engine = SpeechEngine::SenseVoice;
    let results = transcribe_files(
        &[clip("en_short")],
        wrong,
        Vec::new(),
        &DecodeSettings::default(),
        &mut |_| {},
    )
    .expect("runs");
    let err = results[0].as_ref().expect_err("a Whisper folder");
    assert!(err.contains("Whisper engine"), "{err}");
}

#[test]
fn the_command_line_transcribes_with_whisper() {
    let output = Command::new(bin("gpuscribe", env!("CARGO_BIN_EXE_gpuscribe")))
        .args([
            "transcribe",
            "--engine",
            "whisper",
            "--whisper-model",
            "tiny",
        ])
        .args(["--language", "fr", "--format", "json", "--device", "cpu"])
        .arg("--model-dir")
        .arg(model_dir())
        .arg(clip("en_short"))
        .env(
            "GPUSCRIBE_WORKER",
            bin("gpuscribe-worker", env!("CARGO_BIN_EXE_gpuscribe-worker")),
        )
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let file = &json[0];
    assert_eq!(file["language"], "fr");
    let segments = file["segments"].as_array().expect("segments");
    assert!(!segments.is_empty());
    assert!(
        segments
            .iter()
            .all(|s| s["start_s"].as_f64() <= s["end_s"].as_f64())
    );

    // SenseVoice does not know French; Whisper sizes are checked.
    let output = Command::new(bin("gpuscribe", env!("CARGO_BIN_EXE_gpuscribe")))
        .args(["transcribe", "--language", "fr"])
        .arg(clip("en_short"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--engine whisper"));
    let output = Command::new(bin("gpuscribe", env!("CARGO_BIN_EXE_gpuscribe")))
        .args([
            "transcribe",
            "--engine",
            "whisper",
            "--whisper-model",
            "huge",
        ])
        .arg(clip("en_short"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("large-v3-turbo"));
}
