//! The toolbar: transcription device picker, plot span, sampling interval. UI thread; returns
//! [`Command`]s that the app applies after drawing.

use eframe::egui;
use std::time::Duration;

use egui::RichText;

use super::command::Command;
use super::format;
use super::gpu_panel_ui::TARGET_COLOR;
use super::settings::PlotWindow;
use crate::gpu::{
    CpuReason, DeviceChoice, GpuSnapshot, MAX_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL, ResolvedDevice,
    short_uuid,
};

/// What the toolbar shows.
pub struct ToolbarInput<'a> {
    /// The current choice.
    pub device: &'a DeviceChoice,
    /// Where it lands.
    pub resolved: ResolvedDevice<'a>,
    /// The GPUs CUDA can use (the picker's GPU entries).
    pub selectable_gpus: &'a [&'a GpuSnapshot],
    /// The plot span.
    pub plot_window: PlotWindow,
    /// Current sampling interval.
    pub sample_interval: Duration,
}

/// The picker text of the Auto entry.
pub const AUTO_LABEL: &str = "Auto (most free VRAM)";
/// The picker text of the CPU entry.
pub const CPU_LABEL: &str = "CPU";

/// The picker text of the All entry (and of the closed picker when All is chosen).
pub fn all_gpus_label(count: usize) -> String {
    format!("All GPUs ({count})")
}

/// The picker text of a GPU entry: index, name and free VRAM.
pub fn gpu_entry_label(gpu: &GpuSnapshot) -> String {
    let free = gpu.free_bytes().map_or_else(
        || "free VRAM n/a".to_owned(),
        |b| format!("{} GiB free", format::gib(b)),
    );
    format!("GPU {} · {} · {free}", gpu.nvml_index, gpu.name)
}

/// Draws the toolbar and returns what the user changed.
pub fn toolbar_ui(ui: &mut egui::Ui, input: &ToolbarInput<'_>) -> Vec<Command> {
    let mut commands = Vec::new();
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(crate::APP_NAME).strong());
        ui.separator();
        device_picker_ui(ui, input, &mut commands);
        ui.separator();
        ui.label("History:");
        for window in PlotWindow::ALL {
            if ui
                .selectable_label(input.plot_window == window, window.label())
                .clicked()
                && input.plot_window != window
            {
                commands.push(Command::SetPlotWindow(window));
            }
        }
        ui.separator();
        interval_ui(ui, input.sample_interval, &mut commands);
    });
    commands
}

fn device_picker_ui(ui: &mut egui::Ui, input: &ToolbarInput<'_>, commands: &mut Vec<Command>) {
    let selected_text = match (input.device, input.resolved) {
        (DeviceChoice::Auto, ResolvedDevice::Gpu(gpu)) => {
            format!("Auto → GPU {} · {}", gpu.nvml_index, gpu.name)
        }
        (DeviceChoice::Auto, ResolvedDevice::Cpu(_)) => "Auto → CPU".to_owned(),
        (DeviceChoice::Cpu, _) => CPU_LABEL.to_owned(),
        (DeviceChoice::Gpu { .. }, ResolvedDevice::Gpu(gpu)) => gpu_entry_label(gpu),
        (DeviceChoice::Gpu { uuid }, ResolvedDevice::Cpu(_)) => {
            format!("{} (not present)", short_uuid(uuid))
        }
        (_, ResolvedDevice::AllGpus { count }) => all_gpus_label(count),
        (DeviceChoice::All, _) => "All GPUs → CPU".to_owned(),
    };
    let mut chosen = input.device.clone();
    // The label doubles as the picker's accessible name.
    egui::ComboBox::new("device_picker", "Transcription device")
        .selected_text(selected_text)
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut chosen, DeviceChoice::Auto, AUTO_LABEL);
            for gpu in input.selectable_gpus {
                let choice = DeviceChoice::Gpu {
                    uuid: gpu.uuid.clone(),
                };
                ui.selectable_value(&mut chosen, choice, gpu_entry_label(gpu));
            }
            // Spreading files only means something with a second GPU.
            if input.selectable_gpus.len() >= 2 {
                let label = all_gpus_label(input.selectable_gpus.len());
                ui.selectable_value(&mut chosen, DeviceChoice::All, label);
            }
            ui.selectable_value(&mut chosen, DeviceChoice::Cpu, CPU_LABEL);
        });
    if chosen != *input.device {
        commands.push(Command::SetDevice(chosen));
    }
    match input.resolved {
        ResolvedDevice::Cpu(CpuReason::ChosenGpuMissing) => {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                "⚠ chosen GPU not present — transcription runs on the CPU",
            );
        }
        ResolvedDevice::Cpu(_) => {
            ui.label(RichText::new("runs on the CPU").weak());
        }
        ResolvedDevice::Gpu(_) | ResolvedDevice::AllGpus { .. } => {
            ui.label(RichText::new("●").color(TARGET_COLOR));
        }
    }
}

fn interval_ui(ui: &mut egui::Ui, current: Duration, commands: &mut Vec<Command>) {
    let range_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut interval_ms = range_ms(current);
    ui.label("Sample every");
    let response = ui.add(
        egui::DragValue::new(&mut interval_ms)
            .range(range_ms(MIN_SAMPLE_INTERVAL)..=range_ms(MAX_SAMPLE_INTERVAL))
            .speed(10)
            .suffix(" ms"),
    );
    if response.changed() {
        commands.push(Command::SetSampleInterval(Duration::from_millis(
            interval_ms,
        )));
    }
}
