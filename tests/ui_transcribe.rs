//! The transcription side of the real `eframe::App`, driven by egui_kittest with a fake engine
//! (channels: the test reads the requests the UI sends and answers with events): dropping files
//! and folders, the drop overlay, the queue with progress and errors, the transcript with CJK
//! text, export, the model badge and its buttons, VRAM markers, and the GPU list the engine gets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod common;

use common::{FakeEngine, fake_engine};
use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use gpuscribe::app::{
    AppDeps, Command, DROP_HINT, GpuScribeApp, JobStatus, badge_text, export_transcript,
};
use gpuscribe::engine::transcript::render;
use gpuscribe::engine::{
    Action, DeviceTarget, EngineConfig, Event, ExportFormat, FileTranscript, MarkerKind, Request,
    Residency, SlotStatus, TokenTime,
};
use gpuscribe::gpu::{DriverInfo, GpuFeed, GpuSample, GpuStatus, fake_gpu, fake_process};

const MIB: u64 = 1 << 20;

/// A file handed to egui as if dropped by the window system.
#[derive(Debug)]
struct TestFile(PathBuf);

impl egui::DroppedFile for TestFile {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn clip(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sensevoice/audio")
        .join(format!("{name}.wav"))
}

struct Fixture {
    harness: Harness<'static, GpuScribeApp>,
    gpu_tx: Sender<GpuStatus>,
    requests: Receiver<Request>,
    events: Sender<Event>,
    configs: Arc<Mutex<Vec<EngineConfig>>>,
    _recordings: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::opening(Vec::new())
    }

    /// The window as `gpuscribe FILE…` opens it.
    fn opening(open_paths: Vec<PathBuf>) -> Self {
        let (gpu_tx, gpu_rx) = bounded(64);
        let (factory, engine) = fake_engine();
        let FakeEngine {
            requests,
            events,
            configs,
        } = engine;
        let recordings = tempfile::tempdir().expect("tempdir");
        let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
        deps.recordings_dir = recordings.path().to_path_buf();
        deps.open_paths = open_paths;
        let mut harness = Harness::builder()
            .with_size([1400.0, 900.0])
            // New rows and the theme can take a few frames to settle; 4 (the default) is tight.
            .with_max_steps(16)
            .build_eframe(move |cc| GpuScribeApp::new(cc, deps));
        harness.run();
        Self {
            harness,
            gpu_tx,
            requests,
            events,
            configs,
            _recordings: recordings,
        }
    }

    fn sent(&self) -> Vec<Request> {
        self.requests.try_iter().collect()
    }

    fn inject(&mut self, event: Event) {
        self.events.try_send(event).expect("room for events");
        self.harness.run();
    }

    fn sample(&mut self, gpus: Vec<gpuscribe::gpu::GpuSnapshot>) {
        let status = GpuStatus::Sample(GpuSample::now(gpus, 10, DriverInfo::default()));
        self.gpu_tx.try_send(status).expect("room for samples");
        self.harness.run();
    }

    fn drop_files(&mut self, paths: &[PathBuf]) {
        for path in paths {
            self.harness
                .input_mut()
                .dropped_files
                .push(Arc::new(TestFile(path.clone())));
        }
        self.harness.run();
    }

    /// The (job id, path) of every `Transcribe` request sent since the last call.
    fn transcribe_requests(&self) -> Vec<(u64, PathBuf)> {
        self.sent()
            .into_iter()
            .filter_map(|r| match r {
                Request::Transcribe { job_id, path, .. } => Some((job_id, path)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn dropped_files_are_queued_and_sent_to_the_engine() {
    let mut f = Fixture::new();
    let files = [clip("zh_mid"), clip("en_short")];
    f.drop_files(&files);
    let sent = f.transcribe_requests();
    assert_eq!(
        sent.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        files
    );
    let rows = f.harness.state().jobs().rows();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].job_id, sent[0].0);
    assert!(rows.iter().all(|r| r.status == JobStatus::Queued));
    // The first row is also the selected one, whose name heads the transcript.
    assert_eq!(f.harness.query_all_by_label("zh_mid.wav").count(), 2);
    assert_eq!(f.harness.query_all_by_label("en_short.wav").count(), 1);
    assert_eq!(f.harness.query_all_by_label("queued").count(), 2);
}

#[test]
fn files_named_on_the_command_line_are_queued_as_the_window_opens() {
    let files = vec![clip("ja_long"), clip("en_short")];
    let mut f = Fixture::opening(files.clone());
    // Held until the engine knows the GPUs, or `--device cuda:0 FILE` would start on the CPU.
    assert!(f.transcribe_requests().is_empty());
    assert!(f.harness.state().jobs().rows().is_empty());
    f.sample(vec![fake_gpu(0)]);
    let sent = f.sent();
    let gpus_at = sent.iter().position(|r| matches!(r, Request::Gpus(_)));
    let first_job_at = sent
        .iter()
        .position(|r| matches!(r, Request::Transcribe { .. }));
    assert!(
        gpus_at.is_some() && gpus_at < first_job_at,
        "GPUs before the first job: {sent:?}"
    );
    let paths: Vec<PathBuf> = sent
        .into_iter()
        .filter_map(|r| match r {
            Request::Transcribe { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(paths, files);
    assert_eq!(f.harness.state().jobs().rows().len(), 2);
}

#[test]
fn a_dropped_folder_gives_its_audio_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(clip("en_short"), dir.path().join("b.wav")).expect("copy");
    std::fs::copy(clip("zh_mid"), dir.path().join("a.FLAC")).expect("copy");
    std::fs::write(dir.path().join("notes.txt"), "not audio").expect("write");
    let mut f = Fixture::new();
    f.drop_files(&[dir.path().to_path_buf()]);
    let paths: Vec<PathBuf> = f
        .transcribe_requests()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        paths,
        vec![dir.path().join("a.FLAC"), dir.path().join("b.wav")]
    );
}

#[test]
fn a_bad_file_becomes_one_error_row_and_the_rest_stay_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.wav");
    std::fs::write(&bad, "this is text, not audio").expect("write");
    let mut f = Fixture::new();
    f.drop_files(&[clip("zh_mid"), bad.clone(), clip("ja_long")]);
    let sent = f.transcribe_requests();
    let (bad_id, _) = sent.iter().find(|(_, p)| *p == bad).expect("sent");
    let message = format!(
        "cannot decode the audio (no supported format): {}",
        bad.display()
    );
    f.inject(Event::JobFailed {
        job_id: *bad_id,
        message: message.clone(),
        cancelled: false,
    });
    let rows = f.harness.state().jobs().rows();
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| matches!(r.status, JobStatus::Failed(_)))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].path, bad);
    assert_eq!(
        rows.iter()
            .filter(|r| r.status == JobStatus::Queued)
            .count(),
        2
    );
    f.harness.get_by_label(&format!("Failed: {message}"));
}

#[test]
fn hovering_files_shows_the_drop_overlay() {
    let mut f = Fixture::new();
    assert!(f.harness.query_by_label(DROP_HINT).is_none());
    f.harness.input_mut().hovered_files.push(egui::HoveredFile {
        path: Some(clip("zh_mid")),
        ..Default::default()
    });
    f.harness.step();
    f.harness.step();
    f.harness.get_by_label(DROP_HINT);
    f.harness.input_mut().hovered_files.clear();
    f.harness.step();
    f.harness.step();
    assert!(f.harness.query_by_label(DROP_HINT).is_none());
}

fn segment(start_s: f64, end_s: f64, text: &str) -> gpuscribe::engine::Segment {
    gpuscribe::engine::Segment {
        start_s,
        end_s,
        text: text.to_owned(),
        language: "zh".to_owned(),
        emotion: "NEUTRAL".to_owned(),
        event: "Speech".to_owned(),
    }
}

#[test]
fn progress_and_the_cjk_transcript_show() {
    let mut f = Fixture::new();
    f.drop_files(&[clip("zh_mid")]);
    let (job_id, path) = f.transcribe_requests().remove(0);
    f.inject(Event::JobStarted {
        job_id,
        device: "GPU 0".to_owned(),
    });
    f.inject(Event::JobDecoded {
        job_id,
        duration_s: 10.0,
        warning: None,
    });
    f.inject(Event::JobProgress {
        job_id,
        done_s: 5.0,
        total_s: 10.0,
        segments: vec![segment(0.0, 5.0, "转写结果：你好世界")],
    });
    f.harness.get_by_label("0:05 / 0:10");
    f.harness.get_by_label("GPU 0");
    f.harness.get_by_label("转写结果：你好世界");
    f.harness.get_by_label("0:00.0–0:05.0");
    f.harness.get_by_label("zh · NEUTRAL · Speech");
    let overall = f.harness.state().jobs().overall(std::time::Instant::now());
    assert!((overall.fraction - 0.5).abs() < 1e-9, "{overall:?}");

    let segments = vec![
        segment(0.0, 5.0, "转写结果：你好世界"),
        segment(5.0, 10.0, "こんにちは 안녕하세요"),
    ];
    f.inject(Event::JobDone {
        job_id,
        transcript: FileTranscript {
            path,
            duration_s: 10.0,
            language: "zh".to_owned(),
            text: "转写结果：你好世界 こんにちは 안녕하세요".to_owned(),
            segments,
            ..FileTranscript::default()
        },
        ms: 1234.0,
    });
    f.harness.get_by_label("Done in 1.2 s");
    f.harness.get_by_label("こんにちは 안녕하세요");
    assert_eq!(f.harness.state().jobs().rows()[0].status, JobStatus::Done);
    assert_eq!(
        f.harness
            .state()
            .jobs()
            .overall(std::time::Instant::now())
            .fraction,
        1.0
    );
}

#[test]
fn cue_lines_show_their_times_and_a_click_shows_the_range() {
    let mut f = Fixture::new();
    f.drop_files(&[clip("en_short")]);
    let (job_id, path) = f.transcribe_requests().remove(0);
    let token = |token: &str, start_s: f64, end_s: f64| TokenTime {
        token: token.to_owned(),
        start_s,
        end_s,
    };
    f.inject(Event::JobDone {
        job_id,
        transcript: FileTranscript {
            path,
            duration_s: 5.0,
            language: "en".to_owned(),
            text: "Hello world. Second line.".to_owned(),
            segments: vec![gpuscribe::engine::Segment {
                language: "en".to_owned(),
                ..segment(0.0, 5.0, "Hello world. Second line.")
            }],
            tokens: vec![
                token("<|en|>", 0.0, 0.03),
                token("\u{2581}Hello", 0.5, 0.8),
                token("\u{2581}world", 0.9, 1.2),
                token(".", 1.2, 1.26),
                token("\u{2581}Second", 3.0, 3.4),
                token("\u{2581}line", 3.5, 3.8),
                token(".", 3.8, 3.86),
            ],
            ..FileTranscript::default()
        },
        ms: 100.0,
    });
    // One line per sentence (a long pause between them), each with its times; the first,
    // shorter than the minimum, is held to 0.8 s; the tag is not in the text.
    f.harness.get_by_label("en · NEUTRAL · Speech");
    f.harness.get_by_label("0:00.5–0:01.3");
    f.harness.get_by_label("0:03.0–0:03.9");
    f.harness.get_by_label("Second line.");
    assert!(
        f.harness
            .query_by_label("00:00:00.500 → 00:00:01.300 (0.80 s)")
            .is_none()
    );
    f.harness.get_by_label("Hello world.").click();
    f.harness.run();
    f.harness
        .get_by_label("00:00:00.500 → 00:00:01.300 (0.80 s)");
    f.harness.get_by_label("Second line.").click();
    f.harness.run();
    f.harness
        .get_by_label("00:00:03.000 → 00:00:03.860 (0.86 s)");
    assert!(
        f.harness
            .query_by_label("00:00:00.500 → 00:00:01.300 (0.80 s)")
            .is_none()
    );
}

#[test]
fn cancel_sends_the_job_id_and_the_row_reads_cancelled() {
    let mut f = Fixture::new();
    f.drop_files(&[clip("en_short")]);
    let (job_id, _) = f.transcribe_requests().remove(0);
    f.harness.get_by_label("Cancel").click();
    f.harness.run();
    assert!(
        f.sent()
            .iter()
            .any(|r| matches!(r, Request::Cancel(id) if *id == job_id))
    );
    f.inject(Event::JobFailed {
        job_id,
        message: "cancelled".to_owned(),
        cancelled: true,
    });
    assert_eq!(
        f.harness.state().jobs().rows()[0].status,
        JobStatus::Cancelled
    );
}

#[test]
fn export_writes_what_render_produces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let transcript = FileTranscript {
        path: clip("zh_mid"),
        duration_s: 4.5,
        text: "你好".to_owned(),
        segments: vec![segment(0.0, 2.25, "你好"), segment(2.25, 4.5, "世界")],
        ..FileTranscript::default()
    };
    for format in [
        ExportFormat::Txt,
        ExportFormat::Srt,
        ExportFormat::Vtt,
        ExportFormat::Json,
    ] {
        let path = dir.path().join(format!("out.{}", format.extension()));
        export_transcript(&transcript, format, &path).expect("export");
        let written = std::fs::read_to_string(&path).expect("read");
        assert_eq!(written, render(&transcript, format));
        assert!(written.contains("世界"), "{format:?}: {written}");
    }
    let back: FileTranscript =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.json")).expect("read"))
            .expect("json");
    assert_eq!(back, transcript);
    let err = export_transcript(
        &transcript,
        ExportFormat::Srt,
        &dir.path().join("missing/out.srt"),
    )
    .expect_err("no folder");
    assert!(err.to_string().contains("missing/out.srt"), "{err}");
}

fn ready_slot(pid: u32) -> SlotStatus {
    SlotStatus {
        device: "GPU 0".to_owned(),
        uuid: Some(fake_gpu(0).uuid),
        residency: Residency::Ready,
        dtype: "bf16".to_owned(),
        weight_bytes: 512 * MIB,
        pid: Some(pid),
        countdown: Some((Action::Offload, Duration::from_secs(9 * 60 + 41))),
        keep_loaded: false,
        load_ms: Some(850.0),
        restore_ms: None,
        unavailable: None,
    }
}

#[test]
fn the_badge_shows_the_slot_and_its_measured_vram() {
    assert_eq!(
        badge_text(&ready_slot(1)),
        "SenseVoice · bf16 · GPU 0 · 512 MiB · unloads in 9:41"
    );
    let mut f = Fixture::new();
    let mut gpu = fake_gpu(0);
    gpu.processes = vec![fake_process(
        4242,
        "/usr/bin/gpuscribe-worker",
        1450 * MIB,
        false,
    )];
    f.sample(vec![gpu]);
    f.inject(Event::Status(vec![ready_slot(4242)]));
    f.harness
        .get_by_label("SenseVoice · bf16 · GPU 0 · 512 MiB · unloads in 9:41");
    f.harness.get_by_label("measured 1450 MiB (pid 4242)");
    f.harness.get_by_label("gpuscribe-worker (ours)");

    let released = SlotStatus {
        residency: Residency::Released,
        pid: None,
        countdown: None,
        ..ready_slot(4242)
    };
    assert_eq!(badge_text(&released), "SenseVoice · GPU 0 · released");
    f.inject(Event::Status(vec![released]));
    f.harness.get_by_label("SenseVoice · GPU 0 · released");
    f.harness.get_by_label("0 MiB — released");
    assert!(
        f.harness
            .query_by_label("gpuscribe-worker (ours)")
            .is_none()
    );
}

#[test]
fn unload_now_and_keep_loaded_send_their_requests() {
    let mut f = Fixture::new();
    f.sent();
    f.harness.get_by_label("Unload now").click();
    f.harness.run();
    assert!(matches!(f.sent().as_slice(), [Request::UnloadNow]));
    f.harness.get_by_label("Keep loaded").click();
    f.harness.run();
    assert!(matches!(f.sent().as_slice(), [Request::KeepLoaded(true)]));
    assert!(f.harness.state().keep_loaded());
    f.harness.get_by_label("Keep loaded").click();
    f.harness.run();
    assert!(matches!(f.sent().as_slice(), [Request::KeepLoaded(false)]));
}

#[test]
fn markers_are_kept_per_gpu() {
    let mut f = Fixture::new();
    f.sample(vec![fake_gpu(0), fake_gpu(1)]);
    f.inject(Event::Marker {
        uuid: Some(fake_gpu(1).uuid),
        kind: MarkerKind::Load,
        at: SystemTime::now(),
    });
    f.inject(Event::Marker {
        uuid: None,
        kind: MarkerKind::Release,
        at: SystemTime::now(),
    });
    let markers = &f.harness.state().engine_view().markers;
    let kinds: Vec<MarkerKind> = markers.for_gpu(&fake_gpu(1).uuid).map(|m| m.kind).collect();
    assert_eq!(kinds, vec![MarkerKind::Load]);
    assert_eq!(markers.for_gpu(&fake_gpu(0).uuid).count(), 0);
}

#[test]
fn the_engine_gets_the_gpus_and_the_chosen_target() {
    let mut f = Fixture::new();
    let at_start = f.sent();
    assert!(
        !at_start.iter().any(|r| matches!(r, Request::SetTarget(_))),
        "the first target goes in the config: {at_start:?}"
    );
    assert_eq!(
        f.configs.lock().expect("lock")[0].target,
        DeviceTarget::Auto
    );
    f.sample(vec![fake_gpu(0), fake_gpu(1)]);
    let gpus = f
        .sent()
        .into_iter()
        .find_map(|r| match r {
            Request::Gpus(gpus) => Some(gpus),
            _ => None,
        })
        .expect("GPUs sent");
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[1].uuid, fake_gpu(1).uuid);
    assert_eq!(gpus[1].cuda_ordinal, 1);
    assert_eq!(
        gpus[0].free_bytes,
        fake_gpu(0).memory.expect("memory").free_bytes
    );
    f.harness
        .state_mut()
        .apply(Command::SetDevice(gpuscribe::gpu::DeviceChoice::Cpu));
    f.harness.run();
    assert!(
        f.sent()
            .iter()
            .any(|r| matches!(r, Request::SetTarget(DeviceTarget::Cpu)))
    );
}

#[test]
fn options_travel_with_new_jobs_and_a_model_folder_restarts_the_engine() {
    let mut f = Fixture::new();
    f.harness.get_by_label("ITN").click();
    f.harness.run();
    assert!(f.harness.state().settings().decode.use_itn);
    f.drop_files(&[clip("en_short")]);
    let settings = f
        .sent()
        .into_iter()
        .find_map(|r| match r {
            Request::Transcribe { settings, .. } => Some(settings),
            _ => None,
        })
        .expect("sent");
    assert!(settings.use_itn);

    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/tiny");
    f.harness
        .state_mut()
        .apply(Command::SetModelDir(Some(tiny.clone())));
    f.harness.run();
    let configs = f.configs.lock().expect("lock");
    assert_eq!(configs.len(), 2);
    assert_eq!(configs[1].model_dir.as_deref(), Some(tiny.as_path()));
    drop(configs);
    // The job that was in flight on the old engine is not left spinning.
    assert!(matches!(
        f.harness.state().jobs().rows()[0].status,
        JobStatus::Failed(_)
    ));
}

#[test]
fn an_unavailable_device_is_named_and_explained_on_hover() {
    let slot = SlotStatus {
        unavailable: Some("GPU unavailable: built without CUDA".to_owned()),
        residency: Residency::Unloaded,
        pid: None,
        countdown: None,
        ..ready_slot(1)
    };
    assert_eq!(badge_text(&slot), "SenseVoice · GPU 0 · unavailable");
    let mut f = Fixture::new();
    f.inject(Event::Status(vec![slot]));
    f.harness.get_by_label("SenseVoice · GPU 0 · unavailable");
    assert!(f.harness.query_by_label("0 MiB — released").is_none());
}
