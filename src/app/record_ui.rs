//! Input: the "Open…" button, the record button with its timer and live level meter, and the
//! microphone picker. UI thread; returns [`Command`]s.

use eframe::egui;
use egui::RichText;

use super::command::Command;
use super::gpu_panel_ui::ERROR_COLOR;
use super::queue_ui::clock_secs;
use super::recording::{RecordState, RecordingView};
use crate::audio::InputDevice;

/// The record button's text when idle.
pub const RECORD_LABEL: &str = "● Record";
/// The record button's text while recording.
pub const STOP_LABEL: &str = "■ Stop";
/// The picker text of the default input device.
pub const DEFAULT_INPUT_LABEL: &str = "Default input";

/// What the input row shows.
pub struct InputView<'a> {
    /// The recorder.
    pub recording: &'a RecordingView,
    /// The chosen microphone (`None`: default).
    pub input_device: Option<&'a str>,
    /// A file dialog is open already.
    pub dialog_open: bool,
}

/// Level in dBFS as a bar fraction: -60 dB and below is empty, 0 dB full.
fn level_fraction(dbfs: f32) -> f32 {
    ((dbfs + 60.0) / 60.0).clamp(0.0, 1.0)
}

/// The input rows.
pub fn input_ui(ui: &mut egui::Ui, view: &InputView<'_>, commands: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!view.dialog_open, egui::Button::new("Open…"))
            .on_hover_text("Choose audio files to transcribe")
            .clicked()
        {
            commands.push(Command::OpenFiles);
        }
        match &view.recording.state {
            RecordState::Idle => {
                if ui
                    .button(RECORD_LABEL)
                    .on_hover_text("Record the microphone with live captions; the recording is transcribed when you stop")
                    .clicked()
                {
                    commands.push(Command::StartRecording);
                }
            }
            RecordState::Starting => {
                ui.add_enabled(false, egui::Button::new(RECORD_LABEL));
                ui.spinner();
                ui.label("opening the microphone…");
            }
            RecordState::Recording(_) => {
                if ui.button(STOP_LABEL).clicked() {
                    commands.push(Command::StopRecording);
                }
            }
            RecordState::Stopping => {
                ui.add_enabled(false, egui::Button::new(STOP_LABEL));
                ui.spinner();
            }
        }
        if let Some((elapsed, level)) = view.recording.live() {
            ui.label(
                RichText::new(clock_secs(elapsed.as_secs_f64()))
                    .monospace()
                    .color(ERROR_COLOR),
            );
            let db = level.rms_dbfs();
            ui.add(
                egui::ProgressBar::new(level_fraction(db))
                    .desired_width(110.0)
                    .text(format!("{db:.0} dB")),
            );
        }
    });
    let dropped = view.recording.dropped_frames();
    if dropped > 0 {
        ui.colored_label(
            ERROR_COLOR,
            format!(
                "⚠ {dropped} frames dropped: the recording has gaps (the disk could not keep up)"
            ),
        );
    }
    microphone_ui(ui, view, commands);
    if let Some(error) = &view.recording.error {
        ui.colored_label(ERROR_COLOR, format!("⚠ {error}"));
    }
    if let Some(live) = view
        .recording
        .live
        .as_ref()
        .filter(|_| view.recording.is_recording())
    {
        super::live_ui::live_ui(ui, live);
    } else if let Some(kept) = &view.recording.kept_live {
        super::live_ui::kept_live_ui(ui, kept);
    }
}

fn microphone_ui(ui: &mut egui::Ui, view: &InputView<'_>, commands: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        let Some(devices) = &view.recording.devices else {
            // No spinner: listing is quick, and a spinner would repaint every frame meanwhile.
            ui.label("Input");
            ui.label(RichText::new("listing input devices…").weak());
            return;
        };
        let chosen_name = view.input_device.map_or_else(
            || DEFAULT_INPUT_LABEL.to_owned(),
            |id| {
                devices
                    .devices()
                    .iter()
                    .find(|d| d.id == id)
                    .map_or_else(|| id.to_owned(), InputDevice::label)
            },
        );
        let mut chosen = view.input_device.map(str::to_owned);
        ui.add_enabled_ui(!view.recording.is_active(), |ui| {
            egui::ComboBox::new("input_device", "Input")
                .selected_text(chosen_name)
                .width(200.0)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut chosen, None, DEFAULT_INPUT_LABEL);
                    for device in devices.devices() {
                        ui.selectable_value(&mut chosen, Some(device.id.clone()), device.label())
                            .on_hover_text(if device.is_monitor {
                                format!(
                                    "{}: records what this computer plays (a call, a video)",
                                    device.id
                                )
                            } else {
                                device.id.clone()
                            });
                    }
                });
        });
        if chosen.as_deref() != view.input_device {
            commands.push(Command::SetInputDevice(chosen));
        }
        if ui
            .small_button("Refresh")
            .on_hover_text("List the input devices again")
            .clicked()
        {
            commands.push(Command::RefreshInputDevices);
        }
        if devices.devices().is_empty() {
            ui.label(RichText::new("no input device found").weak());
        }
    });
}
