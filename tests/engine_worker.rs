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

/// A copy of `src` (a file) at `dest`, for names the repository cannot hold.
#[cfg(unix)]
fn os_name(bytes: &[u8]) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::OsStr::from_bytes(bytes).to_os_string()
}

#[cfg(unix)]
#[test]
fn files_and_a_model_folder_whose_names_are_not_utf8_transcribe_beside_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    // A Latin-1 "modèle" folder with the tiny model, a Latin-1 "café.wav" and a name of bytes
    // that are no encoding at all.
    let model = dir.path().join(os_name(b"mod\xe8le"));
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(data().join("tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let latin1 = dir.path().join(os_name(b"caf\xe9.wav"));
    let invalid = dir.path().join(os_name(b"\xff\xfe\x80.wav"));
    std::fs::copy(clip("zh_mid"), &latin1).unwrap();
    std::fs::copy(clip("zh_mid"), &invalid).unwrap();
    let mut config = config(IdlePolicy::Never);
    config.model_dir = Some(model);
    let paths = vec![latin1.clone(), clip("zh_mid"), invalid.clone()];
    let results = transcribe_files(
        &paths,
        config,
        Vec::new(),
        &DecodeSettings::default(),
        &mut |_| {},
    )
    .unwrap();
    let expected = reference()["clips"]["zh_mid"]["generate"]["auto"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, result) in paths.iter().zip(&results) {
        let transcript = result.as_ref().unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(transcript.raw_text, expected, "{path:?}");
        assert_eq!(&transcript.path, path, "the exact bytes come back");
    }
}

#[cfg(unix)]
#[test]
fn the_cli_on_the_cpu_transcribes_a_latin1_name_beside_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join(os_name(b"caf\xe9.wav"));
    std::fs::copy(clip("en_short"), &latin1).unwrap();
    let hello = dir.path().join("hello.wav");
    std::fs::copy(clip("en_short"), &hello).unwrap();
    let started = std::time::Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscribe"))
        .arg("transcribe")
        .arg("--device")
        .arg("cpu")
        .arg("--model-dir")
        .arg(data().join("tiny"))
        .arg(&latin1)
        .arg(&hello)
        .env("GPUSCRIBE_WORKER", env!("CARGO_BIN_EXE_gpuscribe-worker"))
        // A GPU monitor that would never answer must not matter to `--device cpu`.
        .env("GPUSCRIBE_FAKE_GPUS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // "==> NAME <==" then the text, for each file; the same clip gives the same text.
    let sections: Vec<(&str, &str)> = stdout
        .split("==> ")
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.split_once(" <==\n"))
        .collect();
    assert_eq!(sections.len(), 2, "{stdout}");
    assert!(sections[0].0.ends_with("caf\u{fffd}.wav"), "{stdout}");
    assert!(sections[1].0.ends_with("hello.wav"), "{stdout}");
    assert_eq!(sections[0].1, sections[1].1);
    assert!(!sections[0].1.trim().is_empty(), "{stdout}");
}

/// A WAV of `minutes` of speech (the Japanese clip over and over), so a job runs many passes.
fn long_clip(dir: &Path, minutes: u32) -> PathBuf {
    let mut reader = hound::WavReader::open(clip("ja_long")).expect("test setup");
    let spec = reader.spec();
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("a sample"))
        .collect();
    let path = dir.join("long.wav");
    let mut writer = hound::WavWriter::create(&path, spec).expect("test setup");
    let wanted = u64::from(minutes) * 60 * u64::from(spec.sample_rate);
    let mut written = 0;
    while written < wanted {
        for s in &samples {
            writer.write_sample(*s).expect("test setup");
        }
        written += samples.len() as u64;
    }
    writer.finalize().expect("test setup");
    path
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("test setup");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Starts a long job on a real worker, sends it `sig` after its first batch, and returns the
/// notices and whether the job finished, with the signalled pid.
fn signal_mid_job(sig: &str) -> (Vec<String>, String, u32) {
    let dir = tempfile::tempdir().expect("test setup");
    let long = long_clip(dir.path(), 20);
    let mut config = config(IdlePolicy::Never);
    config.watchdog.min_silence = Duration::from_millis(1500);
    config.watchdog.first_pass = Duration::from_secs(5);
    let engine = EngineHandle::spawn(config, Arc::new(|| {})).expect("test setup");
    let job = engine.transcribe(long, DecodeSettings::default());
    let mut pid = None;
    let mut signalled = None;
    let mut notices = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = engine.recv_timeout(left).expect("the job ends");
        match event {
            Event::Status(slots) => pid = slots.iter().find_map(|s| s.pid).or(pid),
            Event::JobProgress { job_id, .. } if job_id == job && signalled.is_none() => {
                let pid = pid.expect("a worker pid before any progress");
                signal(pid, sig);
                signalled = Some(pid);
            }
            Event::Notice(text) => notices.push(text),
            Event::JobDone {
                job_id, transcript, ..
            } if job_id == job => {
                return (notices, transcript.raw_text, signalled.expect("signalled"));
            }
            Event::JobFailed {
                job_id, message, ..
            } if job_id == job => panic!("{message}; notices {notices:?}"),
            _ => {}
        }
    }
}

/// Whether `pid` is gone for good (not even a zombie waiting to be reaped).
fn reaped(pid: u32) -> bool {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    (0..200).any(|_| {
        let gone = !stat.exists();
        if !gone {
            std::thread::sleep(Duration::from_millis(10));
        }
        gone
    })
}

#[cfg(unix)]
#[test]
fn a_worker_stopped_with_sigstop_mid_job_is_killed_reaped_and_its_job_retried() {
    let (notices, text, pid) = signal_mid_job("STOP");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("the worker on CPU sent nothing for")
                && n.contains("killed; trying again")),
        "{notices:?}"
    );
    assert!(!text.is_empty());
    assert!(reaped(pid), "worker {pid} is still there");
}

#[cfg(unix)]
#[test]
fn a_worker_killed_with_sigkill_mid_job_is_named_and_its_job_retried() {
    let (notices, text, pid) = signal_mid_job("KILL");
    assert!(
        notices.iter().any(|n| n
            .contains("the worker on CPU killed by signal 9 (SIGKILL) — out of host memory?")
            && n.contains("trying again")),
        "{notices:?}"
    );
    assert!(!text.is_empty());
    assert!(reaped(pid), "worker {pid} is still there");
}

#[test]
fn streamed_transcripts_come_in_pieces_that_join_to_the_assembled_ones() {
    // The same files through the engine that assembles transcripts (the window, the library)
    // and through the one that hands them out in pieces (the command line).
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = CLIPS.iter().map(|c| clip(c)).collect();
    paths.push(long_clip(dir.path(), 3));
    let run = |stream: bool| -> Vec<Event> {
        let engine = EngineHandle::spawn(
            EngineConfig {
                stream_transcripts: stream,
                ..config(IdlePolicy::Never)
            },
            Arc::new(|| {}),
        )
        .unwrap();
        for path in &paths {
            engine.transcribe(path.clone(), DecodeSettings::default());
        }
        let mut done = 0;
        wait_for(&engine, |e| {
            done += usize::from(matches!(e, Event::JobDone { .. } | Event::JobFailed { .. }));
            done == paths.len()
        })
    };
    let assembled = run(false);
    let streamed = run(true);
    assert!(
        !assembled
            .iter()
            .any(|e| matches!(e, Event::JobTranscribed { .. }))
    );
    let mut wholes = assembled.iter().filter_map(|e| match e {
        Event::JobDone { transcript, .. } => Some(transcript.clone()),
        _ => None,
    });
    let mut pieces: std::collections::HashMap<u64, gpuscribe::engine::TranscriptAssembler> =
        std::collections::HashMap::new();
    let mut counts: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for event in &streamed {
        match event {
            Event::JobTranscribed { job_id, results } => {
                *counts.entry(*job_id).or_default() += 1;
                let assembler = pieces.entry(*job_id).or_default();
                results.iter().for_each(|r| assembler.push(r.clone()));
            }
            Event::JobDone {
                job_id, transcript, ..
            } => {
                assert!(transcript.segments.is_empty() && transcript.tokens.is_empty());
                assert!(transcript.text.is_empty() && transcript.words.is_empty());
                let joined = pieces
                    .remove(job_id)
                    .unwrap()
                    .finish(transcript.path.clone(), transcript.duration_s);
                assert_eq!(
                    (&joined.language, &joined.event),
                    (&transcript.language, &transcript.event)
                );
                let whole = wholes.next().unwrap();
                assert!(!whole.tokens.is_empty());
                assert_eq!(joined, whole);
            }
            _ => {}
        }
    }
    assert!(wholes.next().is_none());
    // The 3-minute clip came in more than one piece.
    assert!(counts.values().any(|&n| n > 1), "{counts:?}");
}
