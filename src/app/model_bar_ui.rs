//! The model bar: shown while the chosen model's release files (SenseVoice-Small or a Whisper
//! size) are not ready. Offers **Download SenseVoice-Small (size)** (or **Download Whisper base
//! (size)**) and **Use a folder…**, shows the download's progress, speed and
//! time left with a Cancel, the files waiting for the model, and, offline, which files to get
//! and where they go. UI thread; returns [`Command`]s.

use eframe::egui;
use egui::RichText;

use super::command::Command;
use super::gpu_panel_ui::ERROR_COLOR;
use super::jobs::file_name;
use super::model_bar::{ModelGate, ModelState, download_label_for};
use crate::model_store::{format_bytes, format_eta};

/// The "use a local folder" button.
pub const USE_FOLDER_LABEL: &str = "Use a folder…";
/// The text of a waiting row.
pub const WAITING_TEXT: &str = "waiting for the model";

/// "45% · 421 MB of 937 MB · 12 MB/s · 43 s left".
pub fn progress_text(state: &ModelState) -> Option<String> {
    let ModelState::Downloading(progress) = state else {
        return None;
    };
    let Some(p) = progress else {
        return Some("starting…".to_owned());
    };
    let percent = (p.bytes.done * 100).checked_div(p.bytes.total).unwrap_or(0);
    let mut text = format!(
        "{percent}% · {} of {}",
        format_bytes(p.bytes.done),
        format_bytes(p.bytes.total)
    );
    if let Some(rate) = p.bytes_per_s {
        text.push_str(&format!(" · {}/s", format_bytes(rate as u64)));
    }
    if let Some(eta) = p.eta {
        text.push_str(&format!(" · {} left", format_eta(eta)));
    }
    Some(text)
}

/// Draws the bar (nothing once the model is ready).
pub fn model_bar_ui(
    ui: &mut egui::Ui,
    gate: &ModelGate,
    dialog_open: bool,
    commands: &mut Vec<Command>,
) {
    if gate.is_ready() {
        return;
    }
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        match &gate.state {
            ModelState::Checking => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!(
                        "Looking for {} in the Hugging Face cache…",
                        gate.label
                    ));
                });
            }
            ModelState::Missing { total_bytes, .. } => {
                ui.label(format!("{} is not downloaded yet.", gate.label));
                ui.horizontal(|ui| {
                    if ui
                        .button(download_label_for(&gate.label, *total_bytes))
                        .clicked()
                    {
                        commands.push(Command::DownloadModel);
                    }
                    folder_button(ui, dialog_open, commands);
                });
            }
            ModelState::Downloading(progress) => {
                let file = progress
                    .as_ref()
                    .map_or_else(String::new, |p| format!(": {}", p.bytes.file));
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Downloading {} {file}", gate.label));
                    if ui.button("Cancel").clicked() {
                        commands.push(Command::CancelModelDownload);
                    }
                });
                let fraction = progress.as_ref().map_or(0.0, |p| {
                    (p.bytes.done as f64 / p.bytes.total.max(1) as f64) as f32
                });
                ui.add(egui::ProgressBar::new(fraction));
                if let Some(text) = progress_text(&gate.state) {
                    ui.label(RichText::new(text).weak());
                }
            }
            ModelState::Offline(message) => {
                ui.colored_label(ui.visuals().warn_fg_color, message);
                folder_button(ui, dialog_open, commands);
            }
            ModelState::Failed(message) => {
                ui.colored_label(ERROR_COLOR, message);
                ui.horizontal(|ui| {
                    if ui.button("Retry download").clicked() {
                        commands.push(Command::DownloadModel);
                    }
                    folder_button(ui, dialog_open, commands);
                });
            }
            ModelState::Ready(_) => {}
        }
        waiting_ui(ui, gate);
    });
}

fn folder_button(ui: &mut egui::Ui, dialog_open: bool, commands: &mut Vec<Command>) {
    if ui
        .add_enabled(!dialog_open, egui::Button::new(USE_FOLDER_LABEL))
        .on_hover_text(
            "A folder with model.pt (or model.safetensors), am.mvn, the .bpe.model and config.yaml",
        )
        .clicked()
    {
        commands.push(Command::ChooseModelDir);
    }
}

fn waiting_ui(ui: &mut egui::Ui, gate: &ModelGate) {
    if gate.waiting.is_empty() {
        return;
    }
    let suffix = progress_text(&gate.state)
        .map(|t| format!(" · {t}"))
        .unwrap_or_default();
    for path in &gate.waiting {
        ui.horizontal(|ui| {
            ui.label(file_name(path))
                .on_hover_text(path.display().to_string());
            ui.label(RichText::new(format!("{WAITING_TEXT}{suffix}")).weak());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_store::{ByteCount, Progress};
    use std::time::Duration;

    #[test]
    fn progress_reads_percent_speed_and_time_left() {
        let state = ModelState::Downloading(Some(Progress {
            bytes: ByteCount {
                file: "model.pt".into(),
                file_done: 500_000_000,
                file_total: 936_291_369,
                done: 468_340_884,
                total: 936_681_768,
            },
            bytes_per_s: Some(12_000_000.0),
            eta: Some(Duration::from_secs(39)),
        }));
        assert_eq!(
            progress_text(&state).as_deref(),
            Some("50% · 468 MB of 937 MB · 12 MB/s · 39 s left")
        );
        assert_eq!(progress_text(&ModelState::Checking), None);
    }
}
