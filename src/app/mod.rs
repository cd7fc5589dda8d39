//! The eframe application. Runs on the UI (main) thread: `logic()` drains the channels from the
//! background threads (GPU monitor, engine, tasks, recorder), `ui()` only draws and collects
//! [`Command`]s, applied after drawing (see `actions.rs`).
//!
//! Layout: a toolbar on top (device picker, plot settings, the model's state badge), a message
//! log and a status bar at the bottom, the transcription area on the left (input, queue,
//! transcript), and the GPU panels in the centre.
//!
//! Everything the app talks to comes in through [`AppDeps`], so tests build it with fakes.

mod actions;
mod badge_ui;
mod command;
mod engine_link;
mod engine_ui;
mod export;
mod fonts;
mod format;
mod gpu_panel_ui;
mod gpu_view;
mod history;
mod history_ui;
mod inputs;
mod jobs;
mod live_marks;
mod live_ui;
mod model_bar;
mod model_bar_ui;
mod model_ui;
mod queue_ui;
mod record_ui;
mod recording;
mod settings;
mod settings_file;
mod tasks;
mod toolbar_ui;
mod transcript_ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use eframe::egui;
use egui::RichText;

pub use badge_ui::{badge_text, measured_vram_text};
pub use command::Command;
pub use engine_link::{EngineView, Marker, MarkerLog, gpu_free_list, marker_label, target_for};
pub use engine_ui::{ENGINE_PICKER_LABEL, engine_entry_label, whisper_size_note};
pub use export::{ExportError, default_export_name, export_transcript};
pub use fonts::{CJK_FONT_BYTES, CJK_FONT_NAME, install_cjk_font};
pub use gpu_view::{GpuView, MONITOR_PATIENCE, MonitorState, VanishedGpu};
pub use history::{HISTORY_LIMIT, HistoryView, LibraryState};
pub use history_ui::{
    AGAIN_LABEL, BACK_LABEL, DELETE_LABEL, RESUME_LABEL, SEARCH_HINT, SHOW_FILE_LABEL, UNDO_LABEL,
    entry_summary,
};
pub use inputs::{
    AUDIO_EXTENSIONS, default_recordings_dir, expand_paths, is_audio_file, recording_file_name,
};
pub use jobs::{JobList, JobRow, JobStatus, Overall};
pub use live_ui::{LIVE_HEADING, TRANSCRIBING_RECORDING, live_line_text, live_stamp};
pub use model_bar::{ModelState, download_label, download_label_for};
pub use model_bar_ui::{USE_FOLDER_LABEL, WAITING_TEXT, progress_text};
pub use queue_ui::DROP_HINT;
pub use record_ui::{RECORD_LABEL, STOP_LABEL};
pub use recording::{KeptLive, LiveView, RecordState, RecordingView};
pub use settings::{PlotWindow, Settings};
pub use settings_file::{SETTINGS_FILE, check_settings_file, settings_file_path};
pub use toolbar_ui::{AUTO_LABEL, CPU_LABEL, all_gpus_label, gpu_entry_label};

use crate::engine::{DeviceTarget, EngineConfig, EngineHandle, GpuFree};
use crate::gpu::{DeviceChoice, GpuFeed, GpuSnapshot, ResolvedDevice, cuda_visible_gpus};
use crate::model_store::{ModelStore, StoreConfig};
use model_bar::ModelGate;
use tasks::Tasks;

/// Starts an engine for a configuration: [`EngineHandle::spawn`] in the app, a handle over
/// test channels ([`EngineHandle::from_channels`]) in tests. Called again when the model
/// folder changes.
pub type EngineFactory = Box<dyn FnMut(EngineConfig) -> std::io::Result<EngineHandle>>;

/// The environment variable naming a file that **Record** plays as its input
/// ([`AppDeps::capture_file`]).
pub const CAPTURE_FILE_ENV: &str = "GPUSCRIBE_CAPTURE_FILE";

/// What the app needs from the outside world; tests pass fakes.
pub struct AppDeps {
    /// GPU samples (from [`crate::gpu::spawn_monitor`], or [`GpuFeed::from_receiver`] in tests).
    pub gpu_feed: GpuFeed,
    /// Starts the transcription engine.
    pub engine: EngineFactory,
    /// `--device` / `SENSEVOICE_DEVICE`, already validated. Overrides the saved choice for this
    /// run without overwriting it, until the user picks another device.
    pub device_from_cli: Option<DeviceChoice>,
    /// `CUDA_VISIBLE_DEVICES` as the engine will see it (`None` = unset).
    pub cuda_visible_devices: Option<String>,
    /// Where recordings are written.
    pub recordings_dir: PathBuf,
    /// Files and folders to queue as the window opens (`gpuscribe FILE…`).
    pub open_paths: Vec<PathBuf>,
    /// The model store for the release model (the model bar, and files waiting for the
    /// download). `None`: no store; files go straight to the engine (tests of the queue).
    pub model_store: Option<StoreConfig>,
    /// The transcript library to open (`None`: no history, nothing recorded; tests that do not
    /// look at history leave it out so they never touch the user's library).
    pub library_path: Option<PathBuf>,
    /// Problems found before the window opened (a damaged settings file, …), shown in the log.
    pub notices: Vec<String>,
    /// Record plays this audio file in real time instead of opening an input device
    /// (`GPUSCRIBE_CAPTURE_FILE`; demos and tests of the live view).
    pub capture_file: Option<PathBuf>,
}

impl AppDeps {
    /// Deps with a GPU feed and an engine: saved device choice, all GPUs visible, recordings
    /// in the app's data folder.
    pub fn new(gpu_feed: GpuFeed, engine: EngineFactory) -> Self {
        Self {
            gpu_feed,
            engine,
            device_from_cli: None,
            cuda_visible_devices: None,
            recordings_dir: default_recordings_dir(),
            open_paths: Vec::new(),
            model_store: None,
            library_path: None,
            notices: Vec::new(),
            capture_file: None,
        }
    }
}

/// The left panel's tabs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeftTab {
    /// Input, options, queue and transcript.
    #[default]
    Transcribe,
    /// Past transcripts.
    History,
}

impl LeftTab {
    /// The tab's text.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transcribe => "Transcription",
            Self::History => "History",
        }
    }
}

/// One line of the message log.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When it was logged.
    pub at: SystemTime,
    /// The message.
    pub text: String,
    /// An error (drawn in red) rather than a notice.
    pub is_error: bool,
}

/// Most lines the log keeps.
const LOG_LINES: usize = 200;

/// How long files named on the command line wait for the GPU monitor's first answer.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// The GPU Scribe window.
pub struct GpuScribeApp {
    settings: Settings,
    device_from_cli: Option<DeviceChoice>,
    cuda_visible_devices: Option<String>,
    gpu_feed: GpuFeed,
    /// The interval the monitor last accepted; differs from the setting until it is sent.
    applied_sample_interval: Option<Duration>,
    gpus: GpuView,
    engine_factory: EngineFactory,
    /// `None` when the engine could not start (the log says why).
    engine: Option<EngineHandle>,
    /// The target last sent to the engine.
    sent_target: Option<DeviceTarget>,
    /// The GPUs last sent to the engine (sent again to a new engine).
    sent_gpus: Vec<GpuFree>,
    engine_view: EngineView,
    /// "Keep loaded" as the user set it.
    keep_loaded: bool,
    jobs: JobList,
    tasks: Tasks,
    /// A file dialog is open (one at a time).
    dialog_open: bool,
    recording: RecordingView,
    recordings_dir: PathBuf,
    log: Vec<LogLine>,
    /// The model-folder text field's contents while it is edited.
    model_dir_text: String,
    /// Files named on the command line, queued once the engine knows the GPUs.
    pending_open: Vec<PathBuf>,
    started_at: Instant,
    /// The chosen model's store and the files waiting for it (`None`: no store).
    model: Option<ModelGate>,
    /// The store settings the app was given (SenseVoice-Small's); a Whisper size's store is
    /// derived from them ([`StoreConfig::for_engine`]).
    store_base: Option<StoreConfig>,
    /// Wakes the UI when a store has news.
    store_waker: crate::engine::Waker,
    tab: LeftTab,
    history: HistoryView,
    /// The `library` thread; `None` without a library.
    library: Option<crate::library::service::LibraryService>,
    /// Names recordings for the library until it has ids for them.
    next_recording_token: u64,
    /// The recording running now, by token.
    recording_token: Option<u64>,
    /// The sample rate of the recording in progress (its parts' offsets follow from it).
    recording_rate_hz: u32,
    /// [`AppDeps::capture_file`].
    capture_file: Option<PathBuf>,
    /// The GPUs marked with the live session's start, for its stop marker (`None`: no live
    /// session marked).
    live_marked: Option<Vec<String>>,
}

/// The model store and gate for `engine`'s release files, from the app's store settings.
fn spawn_gate(
    base: Option<&StoreConfig>,
    engine: &crate::engine::SpeechEngine,
    waker: &crate::engine::Waker,
) -> Result<Option<ModelGate>, String> {
    let Some(base) = base else { return Ok(None) };
    match ModelStore::spawn(base.for_engine(engine), Arc::clone(waker)) {
        Ok(store) => Ok(Some(ModelGate::new(store, engine.label()))),
        Err(err) => Err(format!("the model-store thread did not start: {err}")),
    }
}

impl GpuScribeApp {
    /// Restores settings from eframe storage, installs the CJK font, starts the engine and lists
    /// the input devices in the background.
    pub fn new(cc: &eframe::CreationContext<'_>, deps: AppDeps) -> Self {
        install_cjk_font(&cc.egui_ctx);
        let AppDeps {
            gpu_feed,
            engine,
            device_from_cli,
            cuda_visible_devices,
            recordings_dir,
            open_paths,
            model_store,
            library_path,
            mut notices,
            capture_file,
        } = deps;
        let (settings, settings_problem) = settings_file::load_settings(cc.storage);
        // The file check before start-up says the same, with the backup's name.
        if !notices
            .iter()
            .any(|n| n.contains(settings_file::SAID_BEFORE))
        {
            notices.extend(settings_problem);
        }
        let store_waker: crate::engine::Waker = {
            let ctx = cc.egui_ctx.clone();
            Arc::new(move || ctx.request_repaint())
        };
        let (model, store_error) =
            match spawn_gate(model_store.as_ref(), &settings.engine, &store_waker) {
                Ok(model) => (model, None),
                Err(err) => (None, Some(err)),
            };
        let library = library_path.and_then(|path| {
            let ctx = cc.egui_ctx.clone();
            crate::library::service::LibraryService::spawn(
                path,
                std::sync::Arc::new(move || ctx.request_repaint()),
            )
            .map_err(|err| {
                notices.push(format!(
                    "the history is off: cannot start its thread: {err}"
                ));
            })
            .ok()
        });
        let history = HistoryView::new(if library.is_some() {
            LibraryState::Opening
        } else {
            LibraryState::Unavailable("no transcript library in this session".to_owned())
        });
        let model_dir_text = settings
            .model_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut app = Self {
            settings,
            device_from_cli,
            cuda_visible_devices,
            gpu_feed,
            applied_sample_interval: None,
            gpus: GpuView::default(),
            engine_factory: engine,
            engine: None,
            sent_target: None,
            sent_gpus: Vec::new(),
            engine_view: EngineView::default(),
            keep_loaded: false,
            jobs: JobList::default(),
            tasks: Tasks::new(cc.egui_ctx.clone()),
            dialog_open: false,
            recording: RecordingView::default(),
            recordings_dir,
            log: Vec::new(),
            model_dir_text,
            pending_open: Vec::new(),
            started_at: Instant::now(),
            model,
            store_base: model_store,
            store_waker,
            tab: LeftTab::default(),
            history,
            library,
            next_recording_token: 1,
            recording_token: None,
            recording_rate_hz: 0,
            capture_file,
            live_marked: None,
        };
        if let Some(err) = store_error {
            app.log_line(err, true);
        }
        for notice in notices {
            app.log_line(notice, true);
        }
        app.start_engine();
        app.sync_sample_interval();
        app.apply(Command::RefreshInputDevices);
        app.pending_open = open_paths;
        app
    }

    /// The device choice in force (the command line's, else the saved one).
    pub fn device_choice(&self) -> &DeviceChoice {
        self.device_from_cli
            .as_ref()
            .unwrap_or(&self.settings.device)
    }

    /// Where transcription runs right now.
    pub fn resolved_device(&self) -> ResolvedDevice<'_> {
        self.device_choice()
            .resolve(self.gpus.gpus(), self.cuda_visible_devices.as_deref())
    }

    /// The persisted settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The GPU state (latest sample, history).
    pub fn gpu_view(&self) -> &GpuView {
        &self.gpus
    }

    /// What the engine last reported (slots, markers).
    pub fn engine_view(&self) -> &EngineView {
        &self.engine_view
    }

    /// The recorder and its live lines.
    pub fn recording(&self) -> &RecordingView {
        &self.recording
    }

    /// The transcription queue.
    pub fn jobs(&self) -> &JobList {
        &self.jobs
    }

    /// Length recorded so far, while a recording runs.
    pub fn recording_elapsed(&self) -> Option<std::time::Duration> {
        self.recording.live().map(|(elapsed, _)| elapsed)
    }

    /// The last recording error, if the last attempt failed.
    pub fn recording_error(&self) -> Option<&str> {
        self.recording.error.as_deref()
    }

    /// The History tab's state.
    pub fn history(&self) -> &HistoryView {
        &self.history
    }

    /// The left panel's tab.
    pub fn tab(&self) -> LeftTab {
        self.tab
    }

    /// The message log, oldest first.
    pub fn log(&self) -> &[LogLine] {
        &self.log
    }

    /// What the model bar shows (`None`: no model store).
    pub fn model_state(&self) -> Option<&ModelState> {
        self.model.as_ref().map(|m| &m.state)
    }

    /// The model the store and its bar are for ("SenseVoice-Small", "Whisper base").
    pub fn model_store_label(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.label.as_str())
    }

    /// Files waiting for the model download.
    pub fn waiting_for_model(&self) -> &[PathBuf] {
        self.model.as_ref().map_or(&[], |m| m.waiting.as_slice())
    }

    /// "Keep loaded" as the user set it.
    pub fn keep_loaded(&self) -> bool {
        self.keep_loaded
    }

    fn log_line(&mut self, text: String, is_error: bool) {
        if is_error {
            tracing::warn!("{text}");
        } else {
            tracing::info!("{text}");
        }
        self.log.push(LogLine {
            at: SystemTime::now(),
            text,
            is_error,
        });
        if self.log.len() > LOG_LINES {
            self.log.drain(..self.log.len() - LOG_LINES);
        }
    }

    fn sync_sample_interval(&mut self) {
        let wanted = self.settings.sample_interval();
        if self.applied_sample_interval != Some(wanted) && self.gpu_feed.set_sample_interval(wanted)
        {
            self.applied_sample_interval = Some(wanted);
        }
    }

    fn status_bar_ui(&self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let Some(sample) = &self.gpus.latest else {
                match &self.gpus.state {
                    MonitorState::Unavailable(err) => {
                        ui.label(RichText::new(err.to_string()).weak());
                    }
                    MonitorState::NotAnswering => {
                        ui.label(RichText::new("GPU monitor not answering").weak());
                    }
                    MonitorState::Starting | MonitorState::Running => {}
                }
                return;
            };
            // A monitor that stopped (stuck in the driver, or its thread died) leaves old numbers.
            let stale_after = (self.settings.sample_interval() * 4).max(Duration::from_secs(10));
            if let Some(age) = self.gpus.sample_age(std::time::Instant::now())
                && age > stale_after
            {
                ui.label(
                    RichText::new(format!(
                        "GPU monitor not answering (last sample {} s ago)",
                        age.as_secs()
                    ))
                    .color(ui.visuals().warn_fg_color)
                    .small(),
                );
            }
            let mut parts = Vec::new();
            if let Some(version) = &sample.driver.driver_version {
                parts.push(format!("NVIDIA driver {version}"));
            }
            if let Some(cuda) = sample.driver.cuda_driver_version {
                parts.push(format!("CUDA {}.{}", cuda / 1000, (cuda % 1000) / 10));
            }
            parts.push(format!("{} GPU(s)", sample.gpus.len()));
            parts.push(format!(
                "sampled every {} ms in {} µs",
                self.settings.sample_interval().as_millis(),
                sample.sample_cost_us
            ));
            ui.label(RichText::new(parts.join(" · ")).weak().small());
        });
    }

    fn left_panel_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        ui.horizontal(|ui| {
            for tab in [LeftTab::Transcribe, LeftTab::History] {
                if ui
                    .selectable_label(self.tab == tab, RichText::new(tab.label()).heading())
                    .clicked()
                    && self.tab != tab
                {
                    commands.push(Command::SetTab(tab));
                }
            }
        });
        match self.tab {
            LeftTab::Transcribe => self.transcription_ui(ui, commands),
            LeftTab::History => {
                ui.separator();
                history_ui::history_ui(ui, &self.history, self.dialog_open, commands);
            }
        }
    }

    fn transcription_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        let target = match self.resolved_device() {
            ResolvedDevice::Gpu(gpu) => format!("Runs on GPU {} · {}", gpu.nvml_index, gpu.name),
            ResolvedDevice::AllGpus { count } => {
                format!("Runs on all GPUs ({count}), one worker each")
            }
            ResolvedDevice::Cpu(_) => "Runs on the CPU".to_owned(),
        };
        ui.label(RichText::new(target).weak());
        if self.settings.model_dir.is_none()
            && let Some(gate) = &self.model
        {
            model_bar_ui::model_bar_ui(ui, gate, self.dialog_open, commands);
        }
        ui.separator();
        record_ui::input_ui(
            ui,
            &record_ui::InputView {
                recording: &self.recording,
                input_device: self.settings.input_device.as_deref(),
                dialog_open: self.dialog_open,
            },
            commands,
        );
        ui.separator();
        transcript_ui::options_ui(ui, &self.settings.decode, commands);
        model_ui::model_settings_ui(
            ui,
            &self.settings,
            &mut self.model_dir_text,
            self.dialog_open,
            commands,
        );
        ui.separator();
        queue_ui::queue_ui(ui, &self.jobs, commands);
        ui.separator();
        transcript_ui::transcript_ui(ui, self.jobs.selected_row(), self.dialog_open, commands);
    }
}

impl eframe::App for GpuScribeApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.drain_gpu_feed();
        self.gpus
            .check_silence(std::time::Instant::now(), MONITOR_PATIENCE);
        if self.gpus.state == MonitorState::Starting {
            // Nothing else wakes the window if the monitor never answers.
            ctx.request_repaint_after(Duration::from_millis(500));
        }
        for report in crate::faults::take_reports() {
            self.log_line(report, true);
        }
        self.check_engine();
        self.sync_sample_interval();
        self.sync_target();
        // Files from the command line go to the engine once it knows the GPUs (the first sample,
        // or the monitor's word that there are none), so `--device cuda:0 FILE` runs on that GPU;
        // a monitor that does not answer holds them back for at most OPEN_WAIT.
        if !self.pending_open.is_empty()
            && (!matches!(self.gpus.state, MonitorState::Starting)
                || self.started_at.elapsed() >= OPEN_WAIT)
        {
            let paths = std::mem::take(&mut self.pending_open);
            self.apply(Command::AddPaths(paths));
        }
        if !self.pending_open.is_empty() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
        self.drain_engine();
        self.drain_model();
        for result in self.tasks.drain() {
            self.on_task(result);
        }
        self.drain_recorder();
        self.drain_live();
        if let Some(wait) = self.drain_library() {
            ctx.request_repaint_after(wait);
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if !dropped.is_empty() {
            self.apply(Command::AddPaths(dropped));
        }
        // The level meter and timer move on their own only while recording.
        if self.recording.is_recording() {
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let mut commands = Vec::new();
        let visible: Vec<&GpuSnapshot> =
            cuda_visible_gpus(self.gpus.gpus(), self.cuda_visible_devices.as_deref());
        let mut selectable = visible.clone();
        selectable.sort_by_key(|g| g.nvml_index);
        let resolved = self.resolved_device();
        // Owned: the transcription panel below borrows `self` mutably.
        let target_uuids: Vec<String> = self
            .device_choice()
            .target_gpus(self.gpus.gpus(), self.cuda_visible_devices.as_deref())
            .into_iter()
            .map(|g| g.uuid.clone())
            .collect();

        egui::Panel::top("toolbar").show(ui, |ui| {
            commands.extend(toolbar_ui::toolbar_ui(
                ui,
                &toolbar_ui::ToolbarInput {
                    device: self.device_choice(),
                    resolved,
                    selectable_gpus: &selectable,
                    plot_window: self.settings.plot_window,
                    sample_interval: self.settings.sample_interval(),
                },
            ));
            badge_ui::badge_row_ui(
                ui,
                &badge_ui::BadgeInput {
                    slots: &self.engine_view.slots,
                    gpus: self.gpus.gpus(),
                    keep_loaded: self.keep_loaded,
                },
                &mut commands,
            );
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar_ui(ui));
        if !self.log.is_empty() {
            egui::Panel::bottom("log")
                .resizable(true)
                .default_size(70.0)
                .show(ui, |ui| badge_ui::log_ui(ui, &self.log, &mut commands));
        }
        egui::Panel::left("transcription")
            .resizable(true)
            .default_size(440.0)
            .min_size(280.0)
            .show(ui, |ui| self.left_panel_ui(ui, &mut commands));
        let worker_pids = self.engine_view.worker_pids();
        egui::CentralPanel::default().show(ui, |ui| {
            gpu_panel_ui::gpus_ui(
                ui,
                &gpu_panel_ui::PanelsInput {
                    view: &self.gpus,
                    window: self.settings.plot_window.duration(),
                    target_uuids: &target_uuids,
                    cuda_visible_devices: self.cuda_visible_devices.as_deref(),
                    worker_pids: &worker_pids,
                    markers: &self.engine_view.markers,
                },
            );
        });
        queue_ui::drop_overlay_ui(ui.ctx());

        for command in commands {
            self.apply(command);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}
