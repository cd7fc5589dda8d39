//! The engine/model picker, driven by egui_kittest through the real `eframe::App` with a fake
//! engine and the real model store against a local hub (`tests/hub_server`) serving a Whisper
//! repository: SenseVoice-Small is the default; every Whisper size is offered with its download
//! size and memory need; picking Whisper base starts an engine for it, saves it in the
//! settings, switches the model bar to Whisper base's files, and a file added then waits for
//! that download and goes to the engine once the files are verified.

mod common;
mod hub_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FakeEngine, MemoryStorage, fake_engine};
use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use gpuscribe::app::{
    AppDeps, Command, ENGINE_PICKER_LABEL, GpuScribeApp, ModelState, Settings, download_label_for,
    engine_entry_label,
};
use gpuscribe::engine::{EngineConfig, Event, Request, SpeechEngine};
use gpuscribe::gpu::GpuFeed;
use gpuscribe::model::whisper::sizes::{SIZES, by_name};
use gpuscribe::model_store::{PINNED_REVISION, StoreConfig};
use hub_server::{COMMIT, HubServer, whisper_files};

struct Fixture {
    harness: Harness<'static, GpuScribeApp>,
    requests: Receiver<Request>,
    configs: Arc<Mutex<Vec<EngineConfig>>>,
    _events: Sender<Event>,
    _gpu_tx: Sender<gpuscribe::gpu::GpuStatus>,
}

/// SenseVoice's store settings (as `main` gives the window), at the local hub.
fn store_config(endpoint: &str, hub: &Path) -> StoreConfig {
    StoreConfig {
        endpoint: endpoint.to_owned(),
        hub_dir: hub.to_owned(),
        repo: "FunAudioLLM/SenseVoiceSmall".to_owned(),
        revision: PINNED_REVISION.to_owned(),
        files: ["model.pt", "am.mvn", "config.yaml"]
            .map(str::to_owned)
            .to_vec(),
        offline: false,
        token: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        retries: 1,
        backoff: Duration::from_millis(20),
    }
}

impl Fixture {
    fn new(endpoint: &str, hub: &Path, storage: Option<&'static MemoryStorage>) -> Self {
        let (gpu_tx, gpu_rx) = bounded(4);
        let (factory, engine) = fake_engine();
        let FakeEngine {
            requests,
            events,
            configs,
        } = engine;
        let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
        deps.recordings_dir = hub.join("recordings");
        deps.model_store = Some(store_config(endpoint, hub));
        let mut harness = Harness::builder()
            .with_size([1400.0, 900.0])
            .with_max_steps(16)
            .build_eframe(move |cc| {
                if let Some(storage) = storage {
                    cc.storage = Some(storage);
                }
                GpuScribeApp::new(cc, deps)
            });
        harness.run();
        Self {
            harness,
            requests,
            configs,
            _events: events,
            _gpu_tx: gpu_tx,
        }
    }

    fn engines(&self) -> Vec<SpeechEngine> {
        self.configs
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.engine.clone())
            .collect()
    }

    fn picker_text(&self) -> Option<String> {
        self.harness
            .get_by_role_and_label(Role::ComboBox, ENGINE_PICKER_LABEL)
            .accesskit_node()
            .value()
    }

    fn step_until(&mut self, limit: Duration, mut done: impl FnMut(&GpuScribeApp) -> bool) {
        let until = Instant::now() + limit;
        while !done(self.harness.state()) {
            assert!(
                Instant::now() < until,
                "not reached within {limit:?}; the bar shows {:?}",
                self.harness.state().model_state()
            );
            self.harness.step();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn transcribe_requests(&self) -> Vec<PathBuf> {
        self.requests
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

fn base() -> SpeechEngine {
    SpeechEngine::Whisper {
        model: "base".into(),
    }
}

#[test]
fn picking_whisper_base_saves_it_downloads_it_and_sends_jobs_to_it() {
    let server = HubServer::start_repo("openai/whisper-base", whisper_files(), HashMap::new());
    let hub = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(&server.endpoint(), hub.path(), None);

    // SenseVoice-Small is the default, for the engine and the store.
    assert_eq!(
        f.harness.state().settings().engine,
        SpeechEngine::SenseVoice
    );
    assert_eq!(f.engines(), vec![SpeechEngine::SenseVoice]);
    assert_eq!(
        f.harness.state().model_store_label(),
        Some("SenseVoice-Small")
    );

    f.harness.get_by_label("Model settings").click();
    f.harness.run();
    assert_eq!(f.picker_text().as_deref(), Some("SenseVoice-Small"));
    f.harness
        .get_by_role_and_label(Role::ComboBox, ENGINE_PICKER_LABEL)
        .click();
    f.harness.run();
    // Every Whisper size is offered with its download size and memory need.
    for size in &SIZES {
        let entry = engine_entry_label(&SpeechEngine::Whisper {
            model: size.name.to_owned(),
        });
        assert!(
            entry.contains(" MB download, about ") && entry.contains(" GiB to run"),
            "{entry}"
        );
        f.harness.get_by_label(&entry);
    }
    let entry = engine_entry_label(&base());
    let size = by_name("base").expect("base");
    assert!(
        entry.starts_with(&format!(
            "Whisper base · {} MB download",
            size.download_bytes() / 1_000_000
        )),
        "{entry}"
    );
    f.harness.get_by_label(&entry).click();
    f.harness.run();

    // The choice: in the settings, a new engine for it, the closed picker names it.
    assert_eq!(f.harness.state().settings().engine, base());
    assert_eq!(f.engines(), vec![SpeechEngine::SenseVoice, base()]);
    assert_eq!(f.picker_text().as_deref(), Some("Whisper base"));
    assert_eq!(f.harness.state().model_store_label(), Some("Whisper base"));

    // The bar offers Whisper base's download; nothing is fetched before it is asked for.
    f.step_until(Duration::from_secs(10), |app| {
        matches!(app.model_state(), Some(ModelState::Missing { .. }))
    });
    f.harness.run();
    let label = download_label_for("Whisper base", Some(size.download_bytes()));
    f.harness.get_by_label(&label);
    f.harness
        .get_by_label("Whisper base is not downloaded yet.");
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    // A file added now waits for Whisper base's files, then goes to the Whisper engine.
    f.harness.state_mut().apply(Command::AddPaths(vec![clip()]));
    f.harness.step();
    assert_eq!(f.harness.state().waiting_for_model(), [clip()]);
    assert!(f.transcribe_requests().is_empty());
    f.step_until(Duration::from_secs(30), |app| {
        matches!(app.model_state(), Some(ModelState::Ready(_)))
    });
    f.harness.step();
    let Some(ModelState::Ready(dir)) = f.harness.state().model_state() else {
        unreachable!("ready above")
    };
    assert_eq!(
        *dir,
        hub.path()
            .join("models--openai--whisper-base/snapshots")
            .join(COMMIT)
    );
    assert!(dir.join("model.safetensors").is_file());
    assert_eq!(f.transcribe_requests(), vec![clip()]);
    assert_eq!(f.engines().last(), Some(&base()));

    // Saved, and the next run starts with Whisper base.
    let mut storage = MemoryStorage::default();
    eframe::App::save(f.harness.state_mut(), &mut storage);
    let saved: Settings = eframe::get_value(&storage, eframe::APP_KEY).expect("saved");
    assert_eq!(saved.engine, base());
    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
    let again = Fixture::new(&server.endpoint(), hub.path(), Some(storage));
    assert_eq!(again.engines(), vec![base()]);
    assert_eq!(
        again.harness.state().model_store_label(),
        Some("Whisper base")
    );
}
