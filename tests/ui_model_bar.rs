//! The window's first run, with the real model store against a local hub (`tests/hub_server`)
//! and a fake engine: no model → the bar offers the download and a folder; a dropped file waits
//! while the download runs, with progress in the bar and on the waiting row, and frames keep
//! coming; a stalled download fails within the timeout while frames keep coming; Cancel; the
//! offline message lists the files.

mod common;
mod hub_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{FakeEngine, fake_engine};
use crossbeam_channel::bounded;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use gpuscribe::app::{
    AppDeps, Command, GpuScribeApp, ModelState, USE_FOLDER_LABEL, WAITING_TEXT, download_label,
};
use gpuscribe::engine::Request;
use gpuscribe::gpu::GpuFeed;
use gpuscribe::model_store::{PINNED_REVISION, StoreConfig};
use hub_server::{HubServer, Quirks, REPO, tiny_files};

/// Longest a frame may take while the store works (the UI thread never waits on it).
const FRAME_BUDGET: Duration = Duration::from_millis(250);

struct Fixture {
    harness: Harness<'static, GpuScribeApp>,
    engine: FakeEngine,
    _hub: tempfile::TempDir,
    _recordings: tempfile::TempDir,
}

fn store_config(endpoint: &str, hub: &Path, offline: bool) -> StoreConfig {
    StoreConfig {
        endpoint: endpoint.to_owned(),
        hub_dir: hub.to_owned(),
        repo: REPO.to_owned(),
        // The release's pinned commit: the bar knows its size without asking the hub.
        revision: PINNED_REVISION.to_owned(),
        files: tiny_files().into_iter().map(|(name, _)| name).collect(),
        offline,
        token: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(800),
        retries: 1,
        backoff: Duration::from_millis(20),
    }
}

impl Fixture {
    fn new(endpoint: &str, offline: bool) -> Self {
        let (_gpu_tx, gpu_rx) = bounded(4);
        let (factory, engine) = fake_engine();
        let hub = tempfile::tempdir().expect("tempdir");
        let recordings = tempfile::tempdir().expect("tempdir");
        let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
        deps.recordings_dir = recordings.path().to_path_buf();
        deps.model_store = Some(store_config(endpoint, hub.path(), offline));
        let harness = Harness::builder()
            .with_size([1400.0, 900.0])
            .build_eframe(move |cc| GpuScribeApp::new(cc, deps));
        Self {
            harness,
            engine,
            _hub: hub,
            _recordings: recordings,
        }
    }

    /// Steps frames until `done` or `limit`; returns the frames drawn and the slowest one.
    fn step_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&GpuScribeApp) -> bool,
    ) -> (u32, Duration) {
        let until = Instant::now() + limit;
        let mut frames = 0;
        let mut slowest = Duration::ZERO;
        while !done(self.harness.state()) {
            assert!(
                Instant::now() < until,
                "not reached within {limit:?}; the bar shows {:?}",
                self.harness.state().model_state()
            );
            let t = Instant::now();
            self.harness.step();
            slowest = slowest.max(t.elapsed());
            frames += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (frames, slowest)
    }

    fn transcribe_requests(&self) -> Vec<PathBuf> {
        self.engine
            .requests
            .try_iter()
            .filter_map(|r| match r {
                Request::Transcribe { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }
}

fn clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/audio/en_short.wav")
}

fn is_missing(app: &GpuScribeApp) -> bool {
    matches!(app.model_state(), Some(ModelState::Missing { .. }))
}

#[test]
fn first_run_offers_the_download_and_a_folder() {
    let server = HubServer::start(tiny_files(), HashMap::new());
    let mut f = Fixture::new(&server.endpoint(), false);
    f.step_until(Duration::from_secs(10), is_missing);
    f.harness.step();
    let label = download_label(Some(936_681_768));
    assert_eq!(label, "Download SenseVoice-Small (937 MB)");
    f.harness.get_by_label(&label);
    f.harness.get_by_label(USE_FOLDER_LABEL);
    f.harness
        .get_by_label("SenseVoice-Small is not downloaded yet.");
    // Nothing is fetched before it is asked for.
    assert!(server.seen().is_empty(), "{:?}", server.seen());
}

#[test]
fn a_dropped_file_waits_for_the_download_while_frames_keep_coming() {
    let server = HubServer::start(
        tiny_files(),
        HashMap::from([(
            "model.pt".to_owned(),
            Quirks {
                delay_per_chunk: Some(Duration::from_millis(25)),
                ..Quirks::default()
            },
        )]),
    );
    let mut f = Fixture::new(&server.endpoint(), false);
    f.step_until(Duration::from_secs(10), is_missing);
    f.harness.state_mut().apply(Command::AddPaths(vec![clip()]));
    f.harness.step();
    assert_eq!(f.harness.state().waiting_for_model(), [clip()]);
    assert!(
        f.transcribe_requests().is_empty(),
        "sent before the model was ready"
    );

    // Progress reaches the bar and the waiting row while frames keep coming.
    f.step_until(Duration::from_secs(20), |app| {
        matches!(app.model_state(), Some(ModelState::Downloading(Some(p))) if p.bytes.done > 0)
    });
    f.harness.step();
    f.harness.get_by_label("Cancel");
    let row_text = format!("{WAITING_TEXT} · ");
    assert!(
        f.harness.query_by_label_contains(&row_text).is_some(),
        "the waiting row shows no progress"
    );
    // The bar and the waiting row.
    assert_eq!(f.harness.query_all_by_label_contains("% · ").count(), 2);
    let (frames, slowest) = f.step_until(Duration::from_secs(30), |app| {
        matches!(app.model_state(), Some(ModelState::Ready(_)))
    });
    assert!(frames >= 10, "only {frames} frames during the download");
    assert!(slowest < FRAME_BUDGET, "a frame took {slowest:?}");
    f.harness.step();
    assert_eq!(f.transcribe_requests(), vec![clip()]);
    assert!(f.harness.state().waiting_for_model().is_empty());
    assert_eq!(f.harness.state().jobs().rows().len(), 1);
}

#[test]
fn a_stalled_download_fails_within_the_timeout_and_the_file_keeps_waiting() {
    let server = HubServer::start(
        tiny_files(),
        HashMap::from([(
            "model.pt".to_owned(),
            Quirks {
                stall_after: Some(200_000),
                ..Quirks::default()
            },
        )]),
    );
    let mut f = Fixture::new(&server.endpoint(), false);
    f.step_until(Duration::from_secs(10), is_missing);
    f.harness.state_mut().apply(Command::AddPaths(vec![clip()]));
    let started = Instant::now();
    let (frames, slowest) = f.step_until(Duration::from_secs(10), |app| {
        matches!(app.model_state(), Some(ModelState::Failed(_)))
    });
    // Two attempts of one 0.8 s read timeout each, plus the back-off.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(frames >= 10, "only {frames} frames while stalled");
    assert!(slowest < FRAME_BUDGET, "a frame took {slowest:?}");
    f.harness.step();
    f.harness.get_by_label("Retry download");
    let Some(ModelState::Failed(message)) = f.harness.state().model_state() else {
        unreachable!("checked above");
    };
    assert!(
        message.contains("model.pt") && message.contains(REPO),
        "{message}"
    );
    assert_eq!(f.harness.state().waiting_for_model(), [clip()]);
    assert!(f.transcribe_requests().is_empty());
}

#[test]
fn cancel_stops_the_download_and_it_can_start_again() {
    let server = HubServer::start(
        tiny_files(),
        HashMap::from([(
            "model.pt".to_owned(),
            Quirks {
                delay_per_chunk: Some(Duration::from_millis(40)),
                ..Quirks::default()
            },
        )]),
    );
    let mut f = Fixture::new(&server.endpoint(), false);
    f.step_until(Duration::from_secs(10), is_missing);
    f.harness.state_mut().apply(Command::DownloadModel);
    f.step_until(Duration::from_secs(20), |app| {
        matches!(app.model_state(), Some(ModelState::Downloading(Some(p))) if p.bytes.done > 0)
    });
    f.harness.step();
    f.harness.get_by_label("Cancel").click();
    f.step_until(Duration::from_secs(10), is_missing);
    let served = server.served("model.pt");
    assert!(served < tiny_files()[0].1.len() as u64, "it ran to the end");
}

#[test]
fn offline_lists_the_files_and_where_to_put_them() {
    let mut f = Fixture::new("http://127.0.0.1:9", true);
    f.step_until(Duration::from_secs(10), |app| {
        matches!(app.model_state(), Some(ModelState::Offline(_)))
    });
    let Some(ModelState::Offline(message)) = f.harness.state().model_state() else {
        unreachable!("checked above");
    };
    for (name, _) in tiny_files() {
        assert!(message.contains(&name), "{name} not in {message}");
    }
    assert!(
        message.contains("models--FunAudioLLM--SenseVoiceSmall"),
        "{message}"
    );
    f.harness.step();
    f.harness.get_by_label(USE_FOLDER_LABEL);
}
