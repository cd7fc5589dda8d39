//! The eframe application. Runs on the UI (main) thread: `logic()` drains the channels from the
//! background threads, `ui()` only draws and collects [`Command`]s, applied after drawing.
//!
//! Layout: a toolbar on top, a status bar at the bottom, the transcription area on the left
//! (filled in by the engine integration), and the GPU panels in the centre.
//!
//! Everything the app talks to comes in through [`AppDeps`], so tests build it with fakes.

mod fonts;
mod format;
mod gpu_panel_ui;
mod gpu_view;
mod settings;
mod toolbar_ui;

use std::time::Duration;

use eframe::egui;
use egui::RichText;

pub use fonts::{CJK_FONT_BYTES, CJK_FONT_NAME, install_cjk_font};
pub use gpu_view::{GpuView, MonitorState, VanishedGpu};
pub use settings::{PlotWindow, Settings};
pub use toolbar_ui::{AUTO_LABEL, CPU_LABEL, Command, gpu_entry_label};

use crate::gpu::{DeviceChoice, GpuFeed, GpuSnapshot, ResolvedDevice, cuda_visible_gpus};

/// What the app needs from the outside world; tests pass fakes.
pub struct AppDeps {
    /// GPU samples (from [`crate::gpu::spawn_monitor`], or [`GpuFeed::from_receiver`] in tests).
    pub gpu_feed: GpuFeed,
    /// `--device` / `SENSEVOICE_DEVICE`, already validated. Overrides the saved choice for this
    /// run without overwriting it, until the user picks another device.
    pub device_from_cli: Option<DeviceChoice>,
    /// `CUDA_VISIBLE_DEVICES` as the engine will see it (`None` = unset).
    pub cuda_visible_devices: Option<String>,
}

impl AppDeps {
    /// Deps with just a GPU feed: saved device choice, all GPUs visible.
    pub fn new(gpu_feed: GpuFeed) -> Self {
        Self {
            gpu_feed,
            device_from_cli: None,
            cuda_visible_devices: None,
        }
    }
}

/// The GPU Scribe window.
pub struct GpuScribeApp {
    settings: Settings,
    device_from_cli: Option<DeviceChoice>,
    cuda_visible_devices: Option<String>,
    gpu_feed: GpuFeed,
    /// The interval the monitor last accepted; differs from the setting until it is sent.
    applied_sample_interval: Option<Duration>,
    gpus: GpuView,
}

impl GpuScribeApp {
    /// Restores settings from eframe storage, installs the CJK font, and takes the deps.
    pub fn new(cc: &eframe::CreationContext<'_>, deps: AppDeps) -> Self {
        install_cjk_font(&cc.egui_ctx);
        let settings: Settings = cc
            .storage
            .and_then(|storage| eframe::get_value(storage, eframe::APP_KEY))
            .unwrap_or_default();
        let AppDeps {
            gpu_feed,
            device_from_cli,
            cuda_visible_devices,
        } = deps;
        let mut app = Self {
            settings,
            device_from_cli,
            cuda_visible_devices,
            gpu_feed,
            applied_sample_interval: None,
            gpus: GpuView::default(),
        };
        app.sync_sample_interval();
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

    /// Applies one user command.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::SetDevice(device) => {
                self.device_from_cli = None;
                self.settings.device = device;
            }
            Command::SetPlotWindow(window) => self.settings.plot_window = window,
            Command::SetSampleInterval(interval) => {
                self.settings.sample_interval_ms =
                    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                self.sync_sample_interval();
            }
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
}

/// The placeholder for the transcription area (queue + transcript), filled in later.
fn transcription_ui(ui: &mut egui::Ui, resolved: ResolvedDevice<'_>) {
    ui.heading("Transcription");
    ui.separator();
    let target = match resolved {
        ResolvedDevice::Gpu(gpu) => format!("Runs on GPU {} · {}", gpu.nvml_index, gpu.name),
        ResolvedDevice::Cpu(_) => "Runs on the CPU".to_owned(),
    };
    ui.label(target);
    ui.add_space(8.0);
    ui.label(RichText::new("Drop audio files here or record from the microphone.").weak());
}

impl eframe::App for GpuScribeApp {
    fn logic(&mut self, _ctx: &egui::Context, _frame: &mut eframe::Frame) {
        for status in self.gpu_feed.drain() {
            self.gpus.apply(status);
        }
        self.sync_sample_interval();
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let visible: Vec<&GpuSnapshot> =
            cuda_visible_gpus(self.gpus.gpus(), self.cuda_visible_devices.as_deref());
        let mut selectable = visible.clone();
        selectable.sort_by_key(|g| g.nvml_index);
        let resolved = self.resolved_device();
        let target_uuid = match resolved {
            ResolvedDevice::Gpu(gpu) => Some(gpu.uuid.as_str()),
            ResolvedDevice::Cpu(_) => None,
        };

        let commands = egui::Panel::top("toolbar")
            .show(ui, |ui| {
                toolbar_ui::toolbar_ui(
                    ui,
                    &toolbar_ui::ToolbarInput {
                        device: self.device_choice(),
                        resolved,
                        selectable_gpus: &selectable,
                        plot_window: self.settings.plot_window,
                        sample_interval: self.settings.sample_interval(),
                    },
                )
            })
            .inner;
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar_ui(ui));
        egui::Panel::left("transcription")
            .resizable(true)
            .default_size(320.0)
            .min_size(200.0)
            .show(ui, |ui| transcription_ui(ui, resolved));
        egui::CentralPanel::default().show(ui, |ui| {
            gpu_panel_ui::gpus_ui(
                ui,
                &gpu_panel_ui::PanelsInput {
                    view: &self.gpus,
                    window: self.settings.plot_window.duration(),
                    target_uuid,
                    cuda_visible_devices: self.cuda_visible_devices.as_deref(),
                },
            );
        });

        for command in commands {
            self.apply(command);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}
