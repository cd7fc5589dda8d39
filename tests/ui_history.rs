//! The History tab of the real `eframe::App` on a real SQLite library (egui_kittest, fake
//! engine): transcripts recorded as events arrive, the list newest first, full-text search,
//! open / delete / undo, interrupted jobs resumed under their row, and a damaged saved setting
//! said in the window.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{FakeEngine, MemoryStorage, fake_engine};
use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use gpuscribe::app::{
    AppDeps, BACK_LABEL, Command, DELETE_LABEL, GpuScribeApp, LibraryState, RESUME_LABEL,
    UNDO_LABEL,
};
use gpuscribe::engine::{DecodeSettings, Event, FileTranscript, Request, Segment};
use gpuscribe::gpu::{GpuFeed, GpuStatus};
use gpuscribe::library::{JobState, LIBRARY_FILE, Library, NewJob};

struct Fixture {
    harness: Harness<'static, GpuScribeApp>,
    requests: Receiver<Request>,
    events: Sender<Event>,
    _gpu_tx: Sender<GpuStatus>,
}

impl Fixture {
    fn new(library: &Path, storage: Option<&'static MemoryStorage>) -> Self {
        let (gpu_tx, gpu_rx) = bounded(4);
        let (factory, engine) = fake_engine();
        let FakeEngine {
            requests, events, ..
        } = engine;
        let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
        deps.library_path = Some(library.to_owned());
        let harness = Harness::builder()
            .with_size([1400.0, 900.0])
            .with_max_steps(16)
            .build_eframe(move |cc| {
                if let Some(storage) = storage {
                    cc.storage = Some(storage);
                }
                GpuScribeApp::new(cc, deps)
            });
        let mut f = Self {
            harness,
            requests,
            events,
            _gpu_tx: gpu_tx,
        };
        f.wait_for("the library to open", |app| {
            app.history().state == LibraryState::Open
        });
        f
    }

    /// Steps the window until `done` holds (the library answers on its own thread).
    fn wait_for(&mut self, what: &str, done: impl Fn(&GpuScribeApp) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.harness.step();
            if done(self.harness.state()) {
                self.harness.run();
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn transcribe_requests(&self) -> Vec<(u64, PathBuf)> {
        self.requests
            .try_iter()
            .filter_map(|r| match r {
                Request::Transcribe { job_id, path, .. } => Some((job_id, path)),
                _ => None,
            })
            .collect()
    }

    fn inject(&mut self, event: Event) {
        self.events.try_send(event).expect("room for events");
        self.harness.run();
    }
}

fn transcript(path: &Path, text: &str) -> FileTranscript {
    FileTranscript {
        path: path.to_owned(),
        duration_s: 3.0,
        language: "zh".into(),
        emotion: "NEUTRAL".into(),
        event: "Speech".into(),
        text: text.into(),
        raw_text: text.into(),
        segments: vec![Segment {
            start_s: 0.0,
            end_s: 3.0,
            text: text.into(),
            language: "zh".into(),
            ..Segment::default()
        }],
        tokens: Vec::new(),
        words: Vec::new(),
    }
}

fn stored(library: &Path, texts: &[(&str, &str)]) {
    let (mut lib, _) = Library::open(library).expect("open");
    for (name, text) in texts {
        let path = PathBuf::from(format!("/recordings/{name}"));
        let id = lib
            .add_job(&NewJob {
                path: path.clone(),
                settings: DecodeSettings::default(),
                device_request: "auto".into(),
                model: "m".into(),
                model_revision: None,
                recording: None,
                parts: Vec::new(),
            })
            .expect("add");
        lib.job_done(id, &transcript(&path, text), 5.0)
            .expect("done");
    }
}

#[test]
fn history_lists_newest_first_searches_opens_deletes_and_undoes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let library = dir.path().join(LIBRARY_FILE);
    stored(
        &library,
        &[
            ("monday.wav", "周一的预算会议"),
            ("tuesday.wav", "weekly planning"),
            ("wednesday.wav", "明天的会议取消了"),
        ],
    );
    let mut f = Fixture::new(&library, None);
    f.harness.get_by_label("History").click();
    f.wait_for("the list", |app| app.history().entries.len() == 3);
    let names: Vec<String> = f
        .harness
        .state()
        .history()
        .entries
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "/recordings/wednesday.wav",
            "/recordings/tuesday.wav",
            "/recordings/monday.wav"
        ]
    );
    f.harness.get_by_label("周一的预算会议");

    // Full-text search inside unspaced Chinese, typed into the search box.
    f.harness.get_by_role(Role::TextInput).focus();
    f.harness.run();
    f.harness.get_by_role(Role::TextInput).type_text("会议");
    f.wait_for("the search", |app| app.history().entries.len() == 2);
    assert!(f.harness.query_by_label("weekly planning").is_none());

    // Open → the transcript view; delete → gone, with Undo.
    f.harness.get_by_label("wednesday.wav").click();
    f.wait_for("the transcript", |app| app.history().open.is_some());
    f.harness.get_by_label(BACK_LABEL);
    f.harness.get_by_label("明天的会议取消了");
    f.harness.get_by_label(DELETE_LABEL).click();
    f.harness.run();
    assert!(f.harness.state().history().open.is_none());
    f.wait_for("the list without it", |app| {
        app.history().entries.len() == 1 && !app.history().is_loading()
    });
    f.harness.get_by_label(UNDO_LABEL).click();
    f.wait_for("the list with it again", |app| {
        app.history().entries.len() == 2 && !app.history().is_loading()
    });
    let (lib, _) = Library::open(&library).expect("open");
    assert_eq!(lib.count().expect("count"), 3);
}

#[test]
fn jobs_are_recorded_as_they_arrive_and_interrupted_ones_resume_under_their_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let library = dir.path().join(LIBRARY_FILE);
    let first = PathBuf::from("/audio/first.wav");
    let second = PathBuf::from("/audio/second.wav");
    let second_id;
    {
        let mut f = Fixture::new(&library, None);
        f.harness
            .state_mut()
            .apply(Command::AddPaths(vec![first.clone(), second.clone()]));
        f.harness.run();
        let sent = f.transcribe_requests();
        assert_eq!(sent.len(), 2);
        f.inject(Event::JobStarted {
            job_id: sent[0].0,
            device: "GPU 0".into(),
        });
        f.inject(Event::JobDone {
            job_id: sent[0].0,
            transcript: transcript(&first, "第一个文件"),
            ms: 12.0,
        });
        f.inject(Event::JobStarted {
            job_id: sent[1].0,
            device: "GPU 0".into(),
        });
        f.harness.get_by_label("History").click();
        f.wait_for("both rows", |app| {
            let e = &app.history().entries;
            e.len() == 2 && e.iter().any(|e| e.state == JobState::Running)
        });
        second_id = f
            .harness
            .state()
            .history()
            .entries
            .iter()
            .find(|e| e.path == second)
            .expect("second row")
            .id;
        // The window closes with the second job still running.
    }
    let (lib, _) = Library::open(&library).expect("open");
    let state = |id| lib.get(id).expect("get").expect("present").entry.state;
    assert_eq!(state(second_id), JobState::Interrupted);
    drop(lib);

    let mut f = Fixture::new(&library, None);
    assert!(
        f.harness.state().log().iter().all(|l| !l.is_error),
        "{:?}",
        f.harness.state().log()
    );
    f.harness.get_by_label("History").click();
    f.wait_for("the list", |app| app.history().entries.len() == 2);
    f.harness.get_by_label(RESUME_LABEL).click();
    f.wait_for("the resumed job", |app| !app.jobs().rows().is_empty());
    let sent = f.transcribe_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, second);
    f.inject(Event::JobDone {
        job_id: sent[0].0,
        transcript: transcript(&second, "第二个文件"),
        ms: 12.0,
    });
    f.wait_for("the resumed row done", |app| {
        app.history()
            .entries
            .iter()
            .any(|e| e.id == second_id && e.state == JobState::Done)
    });
    assert_eq!(f.harness.state().history().entries.len(), 2, "same row");
}

#[test]
fn a_damaged_saved_setting_is_said_in_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut storage = MemoryStorage::default();
    eframe::Storage::set_string(&mut storage, eframe::APP_KEY, "(device: [[[garbage".into());
    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
    let f = Fixture::new(&dir.path().join(LIBRARY_FILE), Some(storage));
    let app = f.harness.state();
    assert_eq!(app.settings(), &gpuscribe::app::Settings::default());
    assert!(
        app.log()
            .iter()
            .any(|l| l.is_error && l.text.contains("could not be read")),
        "{:?}",
        app.log()
    );
}
