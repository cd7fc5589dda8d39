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
mod export;
mod fonts;
mod format;
mod gpu_panel_ui;
mod gpu_view;
mod history;
mod history_ui;
mod inputs;
mod jobs;
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
use std::time::{Duration, SystemTime};

use eframe::egui;
use egui::RichText;

pub use badge_ui::{badge_text, measured_vram_text};
pub use command::Command;
pub use engine_link::{EngineView, Marker, MarkerLog, gpu_free_list, marker_label, target_for};
pub use export::{ExportError, default_export_name, export_transcript};
pub use fonts::{CJK_FONT_BYTES, CJK_FONT_NAME, install_cjk_font};
pub use gpu_view::{GpuView, MonitorState, VanishedGpu};
pub use history::{HISTORY_LIMIT, HistoryView, LibraryState};
pub use history_ui::{
    AGAIN_LABEL, BACK_LABEL, DELETE_LABEL, RESUME_LABEL, SEARCH_HINT, SHOW_FILE_LABEL, UNDO_LABEL,
    entry_summary,
};
pub use inputs::{AUDIO_EXTENSIONS, default_recordings_dir, expand_paths, is_audio_file};
pub use jobs::{JobList, JobRow, JobStatus, Overall};
pub use queue_ui::DROP_HINT;
pub use settings::{PlotWindow, Settings};
pub use settings_file::{SETTINGS_FILE, check_settings_file, settings_file_path};
pub use toolbar_ui::{AUTO_LABEL, CPU_LABEL, all_gpus_label, gpu_entry_label};

use crate::engine::{DeviceTarget, EngineConfig, EngineHandle, GpuFree};
use crate::gpu::{DeviceChoice, GpuFeed, GpuSnapshot, ResolvedDevice, cuda_visible_gpus};
use recording::RecordingView;
use tasks::Tasks;

/// Starts an engine for a configuration: [`EngineHandle::spawn`] in the app, a handle over
/// test channels ([`EngineHandle::from_channels`]) in tests. Called again when the model
/// folder changes.
pub type EngineFactory = Box<dyn FnMut(EngineConfig) -> std::io::Result<EngineHandle>>;

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
    /// The transcript library to open (`None`: no history, nothing recorded; tests that do not
    /// look at history leave it out so they never touch the user's library).
    pub library_path: Option<PathBuf>,
    /// Problems found before the window opened (a damaged settings file, …), shown in the log.
    pub notices: Vec<String>,
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
            library_path: None,
            notices: Vec::new(),
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
    tab: LeftTab,
    history: HistoryView,
    /// The `library` thread; `None` without a library.
    library: Option<crate::library::service::LibraryService>,
    /// Names recordings for the library until it has ids for them.
    next_recording_token: u64,
    /// The recording running now, by token.
    recording_token: Option<u64>,
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
            library_path,
            mut notices,
        } = deps;
        let (settings, settings_problem) = settings_file::load_settings(cc.storage);
        // The file check before start-up says the same, with the backup's name.
        if !notices
            .iter()
            .any(|n| n.contains(settings_file::SAID_BEFORE))
        {
            notices.extend(settings_problem);
        }
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
            tab: LeftTab::default(),
            history,
            library,
            next_recording_token: 1,
            recording_token: None,
        };
        for notice in notices {
            app.log_line(notice, true);
        }
        app.start_engine();
        app.sync_sample_interval();
        app.apply(Command::RefreshInputDevices);
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

    /// The transcription queue.
    pub fn jobs(&self) -> &JobList {
        &self.jobs
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
                if let MonitorState::Unavailable(err) = &self.gpus.state {
                    ui.label(RichText::new(err.to_string()).weak());
                }
                return;
            };
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
        self.sync_sample_interval();
        self.sync_target();
        self.drain_engine();
        for result in self.tasks.drain() {
            self.on_task(result);
        }
        self.drain_recorder();
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
