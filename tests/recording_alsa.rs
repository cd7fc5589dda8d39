//! Recording through the real window (egui_kittest, no display) with the ALSA `file` plugin as
//! the microphone, in child processes: alsa-lib reads `~/.asoundrc` once, so each child gets a
//! `HOME` of its own (see `tests/common/alsa.rs`). Needs alsa-lib and sox.
//!
//! * A recording past a lowered part size (`GPUSCRIBE_RECORDING_PART_BYTES`) is written in
//!   three or more files and transcribed by the real worker (the tiny FunASR-made model) as one
//!   job: one history row whose segments, token and word times are each part's own, moved by
//!   where the part starts, and whose export covers every part.
//! * A window killed with SIGKILL mid-recording: the next start repairs the WAV header, lists
//!   the recording as interrupted, and Resume transcribes every second that reached the disk.

// Test code: a panic is how a failure is reported, also from helper functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use egui_kittest::Harness;
use gpuscribe::app::{AppDeps, Command, EngineFactory, GpuScribeApp, JobStatus, LibraryState};
use gpuscribe::audio::wav_sink::PART_LIMIT_ENV;
use gpuscribe::audio::{recording_parts, wav_duration_s};
use gpuscribe::engine::batch::transcribe_files;
use gpuscribe::engine::transcript::{ExportFormat, render};
use gpuscribe::engine::{DecodeSettings, EngineHandle, FileTranscript};
use gpuscribe::gpu::GpuFeed;
use gpuscribe::library::{DATA_DIR_ENV, JobState, LIBRARY_FILE, Library, StoredJob};

use common::alsa::{child_test, microphone_home, tiny_cpu_engine};
use common::sensevoice::data;

const CHILD_ENV: &str = "GPUSCRIBE_RECORDING_CHILD";

/// This test binary again, running only `test` as the child `mode`, with the microphone's
/// folder as `HOME` and the data folder in it.
fn child(test: &str, mode: &str, home: &Path, part_bytes: u64) -> Process {
    let mut cmd = child_test(test, home);
    cmd.env(CHILD_ENV, mode)
        .env(DATA_DIR_ENV, home.join("data"))
        .env(PART_LIMIT_ENV, part_bytes.to_string())
        .env_remove("CUDA_VISIBLE_DEVICES");
    cmd
}

/// The microphone: the model's test clips over and over.
fn microphone() -> tempfile::TempDir {
    let audio = data().join("audio");
    let clips =
        ["en_short.wav", "zh_mid.wav", "ja_long.wav"].map(|n| audio.join(n).into_os_string());
    microphone_home(&clips, &["repeat", "30"])
}

/// The window with the real engine (the tiny model on the CPU) and the library in `home`.
fn window(home: &Path) -> Harness<'static, GpuScribeApp> {
    let factory: EngineFactory = Box::new(|mut config| {
        let ours = tiny_cpu_engine();
        config.model_dir = ours.model_dir;
        config.target = ours.target;
        config.residency = ours.residency;
        config.worker_exe = ours.worker_exe;
        EngineHandle::spawn(config, Arc::new(|| {}))
    });
    let (_gpu_tx, gpu_rx) = bounded(1);
    let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
    deps.library_path = Some(home.join("data").join(LIBRARY_FILE));
    deps.recordings_dir = home.join("recordings");
    let mut harness = Harness::builder()
        .with_size([1200.0, 800.0])
        .with_max_steps(4)
        .build_eframe(move |cc| GpuScribeApp::new(cc, deps));
    step_until(
        &mut harness,
        "the library to open",
        Duration::from_secs(20),
        |app| app.history().state == LibraryState::Open,
    );
    harness
}

fn step_until(
    harness: &mut Harness<'static, GpuScribeApp>,
    what: &str,
    patience: Duration,
    done: impl Fn(&GpuScribeApp) -> bool,
) {
    let deadline = Instant::now() + patience;
    loop {
        harness.step();
        if done(harness.state()) {
            return;
        }
        if let Some(err) = harness.state().recording_error() {
            panic!("recording failed: {err}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_recording(harness: &mut Harness<'static, GpuScribeApp>) {
    harness.state_mut().apply(Command::StartRecording);
    step_until(
        harness,
        "the recording to start",
        Duration::from_secs(20),
        |app| app.recording_elapsed().is_some(),
    );
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The recording's files in `dir`, in order (`x.wav`, `x-part2.wav`, …); every file there is one.
fn recording_files(dir: &Path) -> Vec<PathBuf> {
    let all = files_in(dir);
    let ordered = all
        .iter()
        .find(|p| !p.to_string_lossy().contains("-part"))
        .map(|first| recording_parts(first))
        .unwrap_or_default();
    assert_eq!(ordered.len(), all.len(), "one recording's files: {all:?}");
    ordered
}

/// What the library holds about its only row.
fn only_job(home: &Path) -> StoredJob {
    let (library, _) = Library::open(&home.join("data").join(LIBRARY_FILE)).unwrap();
    let rows = library.list(None, 100).unwrap();
    assert_eq!(rows.len(), 1, "one history row: {rows:?}");
    library.get(rows[0].id).unwrap().unwrap()
}

/// Each part transcribed on its own by a fresh engine, then moved by where it starts: what the
/// recording's one transcript must be.
fn parts_joined(parts: &[PathBuf], settings: &DecodeSettings) -> FileTranscript {
    let results =
        transcribe_files(parts, tiny_cpu_engine(), Vec::new(), settings, &mut |_| {}).unwrap();
    let mut whole = FileTranscript {
        path: parts[0].clone(),
        ..FileTranscript::default()
    };
    let mut offset = 0.0;
    let mut texts = Vec::new();
    let mut raws = Vec::new();
    let mut last_duration = 0.0;
    for (result, path) in results.into_iter().zip(parts) {
        let part = result.unwrap();
        // Where a part starts is what its file holds, as the recording counts it.
        offset += last_duration;
        last_duration = wav_duration_s(path).unwrap();
        if whole.language.is_empty() && !part.text.trim().is_empty() {
            whole.language.clone_from(&part.language);
            whole.emotion.clone_from(&part.emotion);
            whole.event.clone_from(&part.event);
        }
        for mut s in part.segments {
            s.start_s += offset;
            s.end_s += offset;
            whole.segments.push(s);
        }
        for mut t in part.tokens {
            t.start_s += offset;
            t.end_s += offset;
            whole.tokens.push(t);
        }
        let offset_ms = (offset * 1000.0).round() as i64;
        for mut w in part.words {
            w.start_ms += offset_ms;
            w.end_ms += offset_ms;
            whole.words.push(w);
        }
        texts.extend(Some(part.text.trim().to_owned()).filter(|t| !t.is_empty()));
        raws.extend(Some(part.raw_text.trim().to_owned()).filter(|t| !t.is_empty()));
        whole.duration_s = offset + part.duration_s;
    }
    whole.text = texts.join(" ");
    whole.raw_text = raws.join(" ");
    whole
}

/// Bytes after the `data` chunk's header: the samples in the file, whatever its header says.
fn data_bytes(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(4).position(|w| w == b"data").unwrap();
    (bytes.len() - at - 8) as u64
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-6, "{what}: {a} vs {b}");
}

/// The stored transcript is the parts' own transcripts joined (times moved by each part's
/// start), and `gpuscribe history export` gives the same SRT and JSON.
fn check_one_transcript(home: &Path, stored: &StoredJob) {
    let expected = parts_joined(&stored.parts, &stored.settings);
    let got = &stored.transcript;
    assert_eq!(got.text, expected.text);
    assert_eq!(got.raw_text, expected.raw_text);
    assert_close(got.duration_s, expected.duration_s, "length");
    assert_eq!(got.segments.len(), expected.segments.len(), "segments");
    for (g, e) in got.segments.iter().zip(&expected.segments) {
        assert_close(g.start_s, e.start_s, "segment start");
        assert_close(g.end_s, e.end_s, "segment end");
        assert_eq!(g.text, e.text);
    }
    assert!(!expected.tokens.is_empty(), "the tiny model writes tokens");
    assert_eq!(got.tokens.len(), expected.tokens.len(), "tokens");
    for (g, e) in got.tokens.iter().zip(&expected.tokens) {
        assert_eq!(g.token, e.token);
        assert_close(g.start_s, e.start_s, "token start");
    }
    assert_eq!(got.words, expected.words);
    let last_start = stored.parts.len() - 1;
    let offset_of_last: f64 = stored.parts[..last_start]
        .iter()
        .map(|p| wav_duration_s(p).unwrap())
        .sum();
    assert!(
        got.tokens.iter().any(|t| t.start_s >= offset_of_last),
        "times go on into the last part (from {offset_of_last:.2} s)"
    );

    let export = |format: &str| {
        let out = Process::new(env!("CARGO_BIN_EXE_gpuscribe"))
            .env(DATA_DIR_ENV, home.join("data"))
            .args([
                "history",
                "export",
                &stored.entry.id.to_string(),
                "--format",
                format,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let mut reference = expected.clone();
    reference.path.clone_from(&got.path);
    reference.language.clone_from(&got.language);
    assert_eq!(export("srt"), render(&reference, ExportFormat::Srt));
    let json: FileTranscript = serde_json::from_str(&export("json")).unwrap();
    assert_eq!(json.tokens.len(), expected.tokens.len());
    assert_eq!(json.words, expected.words);
}

#[test]
fn a_recording_past_the_part_size_is_one_transcript_with_continuous_times() {
    const TEST: &str = "a_recording_past_the_part_size_is_one_transcript_with_continuous_times";
    if std::env::var_os(CHILD_ENV).is_some() {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        let mut window = window(&home);
        start_recording(&mut window);
        let recordings = home.join("recordings");
        step_until(&mut window, "a third part", Duration::from_secs(60), |_| {
            files_in(&recordings).len() >= 3
        });
        window.state_mut().apply(Command::StopRecording);
        step_until(
            &mut window,
            "the transcript",
            Duration::from_secs(120),
            |app| {
                let rows = app.jobs().rows();
                rows.len() == 1 && rows[0].status.is_finished()
            },
        );
        assert_eq!(window.state().jobs().rows()[0].status, JobStatus::Done);
        eprintln!("child done");
        return;
    }
    let home = microphone();
    // 0.5 s per part at 48 kHz (the plugin's device rate), 1.5 s at 16 kHz.
    let part_bytes = 48_000;
    let out = child(TEST, "parts", home.path(), part_bytes)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && log.contains("child done"), "{log}");

    let stored = only_job(home.path());
    assert_eq!(stored.entry.state, JobState::Done);
    let on_disk = recording_files(&home.path().join("recordings"));
    assert!(on_disk.len() >= 3, "{on_disk:?}");
    assert_eq!(stored.parts, on_disk);
    let info = stored.entry.recording.clone().expect("a recording");
    assert_eq!(info.parts as usize, on_disk.len());
    for part in &on_disk[..on_disk.len() - 1] {
        let reader = hound::WavReader::open(part).unwrap();
        let bytes = u64::from(reader.duration()) * 2;
        assert_eq!(bytes, part_bytes, "{} is a full part", part.display());
    }
    check_one_transcript(home.path(), &stored);
}

#[test]
fn a_window_killed_mid_recording_leaves_a_readable_file_listed_interrupted() {
    const TEST: &str = "a_window_killed_mid_recording_leaves_a_readable_file_listed_interrupted";
    if std::env::var_os(CHILD_ENV).is_some() {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        let mut window = window(&home);
        start_recording(&mut window);
        // Recording until killed; say how far it got.
        loop {
            window.step();
            if let Some(elapsed) = window.state().recording_elapsed() {
                println!("recorded {:.3}", elapsed.as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let home = microphone();
    // 1 s per part at 48 kHz.
    let part_bytes = 96_000;
    let mut proc = child(TEST, "crash", home.path(), part_bytes)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let recordings = home.path().join("recordings");
    let mut last_elapsed = 0.0;
    let deadline = Instant::now() + Duration::from_secs(90);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(secs) = line.strip_prefix("recorded ") {
            last_elapsed = secs.parse::<f64>().unwrap();
        }
        // Into the third part, and a header rewrite or two after.
        if files_in(&recordings).len() >= 3 && last_elapsed >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the child did not record");
    }
    // What reached the files before the kill, and the kill.
    let bytes_before: u64 = files_in(&recordings).iter().map(|p| data_bytes(p)).sum();
    proc.kill().unwrap();
    proc.wait().unwrap();
    let on_disk = recording_files(&recordings);
    let last = on_disk.last().unwrap().clone();
    let header_said = wav_duration_s(&last).unwrap();

    // The next start: the recording is repaired and listed interrupted.
    let mut window = window(home.path());
    let stored = only_job(home.path());
    assert_eq!(stored.entry.state, JobState::Interrupted);
    assert_eq!(stored.parts, on_disk);
    let info = stored.entry.recording.clone().expect("a recording");
    assert_eq!(
        (info.parts as usize, info.state.as_str()),
        (on_disk.len(), "interrupted")
    );
    let frames: u64 = on_disk
        .iter()
        .map(|p| u64::from(hound::WavReader::open(p).unwrap().duration()))
        .sum();
    let repaired = wav_duration_s(&last).unwrap();
    let total: f64 = on_disk.iter().map(|p| wav_duration_s(p).unwrap()).sum();
    eprintln!(
        "killed at {last_elapsed:.2} s captured; on disk {total:.2} s in {} files; the last \
         part's header said {header_said:.3} s, repaired {repaired:.3} s",
        on_disk.len()
    );
    // Every sample that reached the files before the kill is readable now.
    assert!(
        frames * 2 >= bytes_before / 2 * 2,
        "{frames} frames < {bytes_before} bytes"
    );
    // And that is about where the kill came: at most the ring buffer and a flush behind.
    assert!(
        total >= last_elapsed - 5.0,
        "{total} s on disk, {last_elapsed} s captured"
    );
    assert!(
        (stored.entry.duration_s.unwrap() - total).abs() < 1e-6,
        "listed with its length"
    );

    // Resume transcribes it, all parts, as one job.
    window
        .state_mut()
        .apply(Command::HistoryResume(stored.entry.id));
    step_until(
        &mut window,
        "the resumed transcript",
        Duration::from_secs(120),
        |app| {
            let rows = app.jobs().rows();
            rows.len() == 1 && rows[0].status.is_finished()
        },
    );
    drop(window);
    let resumed = only_job(home.path());
    assert_eq!(resumed.entry.state, JobState::Done);
    check_one_transcript(home.path(), &resumed);
}
