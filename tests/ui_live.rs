//! Live transcription in the real window (egui_kittest): **Record** plays the spoken fixtures
//! through the capture path (`AppDeps::capture_file`: the recorder's own callback, ring buffer,
//! WAV writer and live tap, fed at real-time pace instead of by a sound card), the real engine
//! and `gpuscribe-worker` transcribe with the tiny FunASR-made model on the CPU. Partial lines
//! appear (greyed, with an ellipsis) while the audio plays, each final line takes its partial's
//! place, and after **Stop** the saved file's transcript takes the live lines' place. And the
//! VRAM plot's live markers, with a fake engine and a fake GPU.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::fake_engine;
use crossbeam_channel::bounded;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use gpuscribe::app::{
    AppDeps, EngineFactory, GpuScribeApp, JobStatus, LIVE_HEADING, RECORD_LABEL, STOP_LABEL,
    TRANSCRIBING_RECORDING, live_line_text, live_stamp,
};
use gpuscribe::engine::{EngineHandle, MarkerKind};
use gpuscribe::gpu::{DeviceChoice, DriverInfo, GpuFeed, GpuSample, GpuStatus, fake_gpu};
use gpuscribe::live::LiveLine;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice")
}

fn read_wav(path: &Path) -> Vec<i16> {
    let mut reader = hound::WavReader::open(path).unwrap();
    reader.samples::<i16>().map(Result::unwrap).collect()
}

/// The three fixtures, 0.5 s of silence before, 1 s after each: 9.9 s of audio (as in
/// `tests/live_pipeline.rs`).
fn spoken_wav(dir: &Path) -> (PathBuf, Vec<i16>) {
    let mut samples = vec![0i16; 8_000];
    for name in ["en_short", "zh_mid", "ja_long"] {
        samples.extend(read_wav(&data().join("audio").join(format!("{name}.wav"))));
        samples.extend(vec![0i16; 16_000]);
    }
    let path = dir.join("spoken.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&path, spec).unwrap();
    for &s in &samples {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
    (path, samples)
}

/// An engine factory for the real engine with the tiny model and the test's worker binary.
fn real_engine() -> EngineFactory {
    Box::new(|mut config| {
        config.model_dir = Some(data().join("tiny"));
        config.worker_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_gpuscribe-worker")));
        EngineHandle::spawn(config, Arc::new(|| {}))
    })
}

fn harness(deps: AppDeps) -> Harness<'static, GpuScribeApp> {
    Harness::builder()
        .with_size([1400.0, 900.0])
        .with_max_steps(16)
        .build_eframe(move |cc| GpuScribeApp::new(cc, deps))
}

/// What one frame showed of the live lines.
#[derive(Debug)]
struct Frame {
    /// Seconds since Record was clicked (the file plays from about then).
    at: f64,
    finals: Vec<LiveLine>,
    partial: Option<LiveLine>,
}

/// Checks that the frame draws exactly its lines, each as `stamp` + text, the partial with
/// its ellipsis (the widget draws it greyed, in italics: `live_ui::lines_ui`).
fn assert_drawn(harness: &Harness<'_, GpuScribeApp>, frame: &Frame) {
    harness.get_by_label(LIVE_HEADING);
    for line in frame.finals.iter().chain(&frame.partial) {
        let stamp = live_stamp(line);
        assert!(
            harness.query_all_by_label(&stamp).count() >= 1,
            "{stamp} not drawn: {frame:?}"
        );
        let text = live_line_text(line);
        if !text.trim().is_empty() {
            assert!(
                harness.query_all_by_label(&text).count() >= 1,
                "{text:?} not drawn: {frame:?}"
            );
        }
    }
}

#[test]
fn live_lines_come_while_recording_and_the_recording_transcript_takes_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, samples) = spoken_wav(dir.path());
    let duration_s = samples.len() as f64 / 16_000.0;
    let (_gpu_tx, gpu_rx) = bounded::<GpuStatus>(4);
    let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), real_engine());
    deps.recordings_dir = dir.path().join("recordings");
    deps.device_from_cli = Some(DeviceChoice::Cpu);
    deps.capture_file = Some(wav.clone());
    let mut harness = harness(deps);
    harness.run();

    harness.get_by_label(RECORD_LABEL).click();
    let clicked = Instant::now();
    let mut frames: Vec<Frame> = Vec::new();
    // Record until three finals are in and the file has played out, then Stop.
    let deadline = clicked + Duration::from_secs(60);
    loop {
        harness.step();
        let app = harness.state();
        if let Some(live) = app
            .recording()
            .live
            .as_ref()
            .filter(|_| app.recording().is_recording())
        {
            let frame = Frame {
                at: clicked.elapsed().as_secs_f64(),
                finals: live.finals.clone(),
                partial: live.partial.clone(),
            };
            assert_drawn(&harness, &frame);
            let done = frame.finals.len() >= 3 && frame.at > duration_s;
            frames.push(frame);
            if done {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no three finals in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        harness.state().recording().is_recording(),
        "the file plays on as silence until Stop"
    );

    // A partial line showed while the audio was still playing.
    let first_partial = frames.iter().find(|f| f.partial.is_some()).unwrap();
    assert!(
        first_partial.at < duration_s - 1.0,
        "first partial at {:.2} s of {duration_s:.1} s",
        first_partial.at
    );
    // The first final came before the audio ended, too.
    let first_final = frames.iter().find(|f| !f.finals.is_empty()).unwrap();
    assert!(
        first_final.at < duration_s,
        "first final at {:.2} s",
        first_final.at
    );
    // Every utterance showed as a partial before its final, and from the frame its final came
    // in, its partial was gone (a later utterance's partial may show).
    let finals = &frames.last().unwrap().finals;
    assert_eq!(finals.len(), 3, "{finals:#?}");
    for line in finals {
        let partial_at = frames.iter().position(|f| {
            f.partial
                .as_ref()
                .is_some_and(|p| p.utterance == line.utterance)
        });
        let final_at = frames
            .iter()
            .position(|f| f.finals.iter().any(|l| l.utterance == line.utterance))
            .unwrap();
        assert!(
            partial_at.is_some_and(|p| p < final_at),
            "utterance {} had no partial before its final",
            line.utterance
        );
        assert!(
            frames[final_at..].iter().all(|f| f
                .partial
                .as_ref()
                .is_none_or(|p| p.utterance > line.utterance)),
            "utterance {}'s partial outlived its final",
            line.utterance
        );
    }

    // Stop: the saved file is transcribed as a dropped file would be; until it is done the live
    // lines stay, then its transcript takes their place.
    harness.get_by_label(STOP_LABEL).click();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kept_shown = false;
    let job_id = loop {
        harness.step();
        let app = harness.state();
        if let Some(kept) = &app.recording().kept_live {
            assert_eq!(&kept.lines, finals, "the live lines kept after Stop");
            harness.get_by_label(TRANSCRIBING_RECORDING);
            kept_shown = true;
        }
        let done = app
            .jobs()
            .rows()
            .iter()
            .find(|r| r.status == JobStatus::Done)
            .map(|r| r.job_id);
        if let Some(id) = done
            && app.recording().kept_live.is_none()
        {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the recording was not transcribed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    harness.run();
    assert!(
        kept_shown,
        "the live lines vanished before the transcript was done"
    );
    assert!(harness.query_by_label(LIVE_HEADING).is_none());
    assert!(harness.query_by_label(TRANSCRIBING_RECORDING).is_none());
    let app = harness.state();
    let row = app.jobs().row(job_id).unwrap();
    assert_eq!(app.jobs().selected_row().map(|r| r.job_id), Some(job_id));
    let transcript = row.transcript.as_ref().unwrap();
    // The recording is the whole played file (then the silence until Stop): the final
    // transcript is of exactly the audio the live lines were made from. (Its text is not the
    // live lines joined: the tiny random model's text depends on where the audio is cut, and
    // the file is one segment where live made three; tests/live_pipeline.rs compares cut for
    // cut.)
    let saved = read_wav(&row.path);
    assert!(saved.len() > samples.len(), "{} samples", saved.len());
    assert!(
        saved
            .iter()
            .zip(&samples)
            .all(|(a, b)| (i32::from(*a) - i32::from(*b)).abs() <= 1),
        "the recording differs from the played file"
    );
    assert!(saved[samples.len()..].iter().all(|&s| s == 0));
    assert!(transcript.duration_s >= duration_s);
    assert!(!transcript.raw_text.is_empty());
}

#[test]
fn live_start_and_stop_are_marked_on_the_vram_plot_of_the_gpu_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, _) = spoken_wav(dir.path());
    let (gpu_tx, gpu_rx) = bounded::<GpuStatus>(4);
    let (factory, _engine) = fake_engine();
    let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
    deps.recordings_dir = dir.path().join("recordings");
    let gpu = fake_gpu(0);
    deps.device_from_cli = Some(DeviceChoice::Gpu {
        uuid: gpu.uuid.clone(),
    });
    deps.capture_file = Some(wav);
    let mut harness = harness(deps);
    gpu_tx
        .try_send(GpuStatus::Sample(GpuSample::now(
            vec![gpu.clone(), fake_gpu(1)],
            10,
            DriverInfo::default(),
        )))
        .unwrap();
    harness.run();
    let kinds = |harness: &Harness<'_, GpuScribeApp>, uuid: &str| -> Vec<MarkerKind> {
        let markers = &harness.state().engine_view().markers;
        markers.for_gpu(uuid).map(|m| m.kind).collect()
    };
    assert!(kinds(&harness, &gpu.uuid).is_empty());

    harness.get_by_label(RECORD_LABEL).click();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !harness.state().recording().is_recording() {
        assert!(Instant::now() < deadline, "recording did not start");
        harness.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    harness.step();
    assert_eq!(kinds(&harness, &gpu.uuid), [MarkerKind::LiveStart]);
    harness.get_by_label(STOP_LABEL).click();
    while harness.state().recording().is_active() {
        assert!(Instant::now() < deadline, "recording did not stop");
        harness.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    harness.step();
    assert_eq!(
        kinds(&harness, &gpu.uuid),
        [MarkerKind::LiveStart, MarkerKind::LiveStop]
    );
    // Only the GPU the device choice uses is marked.
    assert!(kinds(&harness, &fake_gpu(1).uuid).is_empty());
}
