//! The engine end to end on the CPU: the real `gpuscribe-worker` process, the tiny random
//! SenseVoice from `tests/data/sensevoice` (made by FunASR itself, see tools/reference), and the
//! texts FunASR's `AutoModel.generate` produced for the same clips.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpuscribe::engine::batch::transcribe_files;
use gpuscribe::engine::{
    DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, Event, IdlePolicy, Request,
    Residency, ResidencyConfig,
};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice")
}

fn config(offload: IdlePolicy) -> EngineConfig {
    EngineConfig {
        model_dir: Some(data().join("tiny")),
        target: DeviceTarget::Cpu,
        residency: ResidencyConfig {
            offload,
            release_after_secs: None,
        },
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_gpuscribe-worker"))),
        ..EngineConfig::default()
    }
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(data().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn clip(name: &str) -> PathBuf {
    data().join("audio").join(format!("{name}.wav"))
}

const CLIPS: [&str; 3] = ["en_short", "zh_mid", "ja_long"];

#[test]
fn several_files_match_funasr_and_a_bad_file_is_reported_by_name() {
    let bad = tempfile::Builder::new().suffix(".wav").tempfile().unwrap();
    std::fs::write(bad.path(), "this is text, not audio").unwrap();
    let mut paths: Vec<PathBuf> = CLIPS.iter().map(|c| clip(c)).collect();
    paths.insert(1, bad.path().to_path_buf());
    let reference = reference();
    for (language, itn, key) in [
        ("auto", false, "auto"),
        ("en", false, "en"),
        ("zh", true, "zh_itn"),
    ] {
        let settings = DecodeSettings {
            language: language.into(),
            use_itn: itn,
            rich: false,
            translate: false,
        };
        let results = transcribe_files(
            &paths,
            config(IdlePolicy::Never),
            Vec::new(),
            &settings,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(results.len(), 4);
        let err = results[1].as_ref().unwrap_err();
        assert!(err.contains(&bad.path().display().to_string()), "{err}");
        for (name, result) in CLIPS.iter().zip([&results[0], &results[2], &results[3]]) {
            let transcript = result.as_ref().unwrap();
            let expected = reference["clips"][name]["generate"][key].as_str().unwrap();
            assert_eq!(transcript.raw_text, expected, "{name} {key}");
            let samples = reference["clips"][name]["num_samples"].as_f64().unwrap();
            assert!((transcript.duration_s - samples / 16_000.0).abs() < 1e-9);
            assert!(!transcript.language.is_empty());
        }
    }
}

fn wait_for(engine: &EngineHandle, mut pred: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(event) = engine.recv_timeout(Duration::from_secs(60)) {
        let done = pred(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
    panic!("timed out; saw {seen:?}");
}

fn done_text(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            Event::JobDone { transcript, .. } => Some(transcript.raw_text.clone()),
            _ => None,
        })
        .expect("a finished job")
}

#[test]
fn offload_release_and_reload_give_the_same_text_and_cancel_works() {
    let engine = EngineHandle::spawn(config(IdlePolicy::Immediately), Arc::new(|| {})).unwrap();
    let settings = DecodeSettings::default();
    // Lazy: no worker before the first job.
    assert!(engine.recv_timeout(Duration::from_millis(700)).is_none());

    let first = engine.transcribe(clip("zh_mid"), settings.clone());
    let events = wait_for(
        &engine,
        |e| matches!(e, Event::JobDone { job_id, .. } if *job_id == first),
    );
    let text = done_text(&events);
    // "Immediately": offloaded once the queue drains.
    wait_for(
        &engine,
        |e| matches!(e, Event::Status(s) if s.iter().any(|s| s.residency == Residency::Offloaded)),
    );
    let second = engine.transcribe(clip("zh_mid"), settings.clone());
    let events = wait_for(
        &engine,
        |e| matches!(e, Event::JobDone { job_id, .. } if *job_id == second),
    );
    assert_eq!(done_text(&events), text, "after restore");
    engine.send(Request::ReleaseNow);
    wait_for(
        &engine,
        |e| matches!(e, Event::Status(s) if s.iter().any(|s| s.residency == Residency::Released && s.pid.is_none())),
    );
    // Two jobs queued back to back; the second is cancelled before it starts.
    let third = engine.transcribe(clip("zh_mid"), settings.clone());
    let fourth = engine.transcribe(clip("ja_long"), settings);
    engine.send(Request::Cancel(fourth));
    let events = wait_for(
        &engine,
        |e| matches!(e, Event::JobDone { job_id, .. } if *job_id == third),
    );
    assert_eq!(done_text(&events), text, "after a full release and reload");
    let is_fourth_cancelled = |e: &Event| matches!(e, Event::JobFailed { job_id, cancelled: true, .. } if *job_id == fourth);
    let cancelled = events.iter().any(is_fourth_cancelled)
        || wait_for(&engine, |e| {
            matches!(e, Event::JobFailed { job_id, .. } | Event::JobDone { job_id, .. } if *job_id == fourth)
        })
        .iter()
        .any(is_fourth_cancelled);
    assert!(cancelled);
}
