//! Model settings: the model folder (empty = the release model from Hugging Face) and the idle
//! policy (when the weights leave VRAM and when the worker exits). UI thread; returns
//! [`Command`]s.

use std::path::PathBuf;

use eframe::egui;
use egui::RichText;

use super::command::Command;
use super::settings::Settings;
use crate::engine::{IdlePolicy, ResidencyConfig, residency::DEFAULT_OFFLOAD_AFTER_SECS};

/// The text of the model-folder field's hint.
pub const MODEL_DIR_HINT: &str = "empty: download the release model on first use";

/// The collapsible "Model settings" section.
pub fn model_settings_ui(
    ui: &mut egui::Ui,
    settings: &Settings,
    model_dir_text: &mut String,
    dialog_open: bool,
    commands: &mut Vec<Command>,
) {
    egui::CollapsingHeader::new("Model settings")
        .default_open(false)
        .show(ui, |ui| {
            super::engine_ui::engine_picker_ui(ui, &settings.engine, commands);
            ui.horizontal(|ui| {
                ui.label("Model folder");
                let response = ui.add(
                    egui::TextEdit::singleline(model_dir_text)
                        .hint_text(MODEL_DIR_HINT)
                        .desired_width(ui.available_width() - 80.0),
                );
                // Applied when the field is left (or Enter), not on every key press: a new
                // folder restarts the engine.
                if response.lost_focus() {
                    let trimmed = model_dir_text.trim();
                    let dir = (!trimmed.is_empty()).then(|| PathBuf::from(trimmed));
                    if dir != settings.model_dir {
                        commands.push(Command::SetModelDir(dir));
                    }
                }
                if ui
                    .add_enabled(!dialog_open, egui::Button::new("Choose…"))
                    .clicked()
                {
                    commands.push(Command::ChooseModelDir);
                }
            });
            if let Some(dir) = &settings.model_dir
                && settings.engine == crate::engine::SpeechEngine::SenseVoice
                && !dir.join("config.yaml").is_file()
            {
                ui.colored_label(
                    ui.visuals().warn_fg_color,
                    format!("⚠ no config.yaml in {}", dir.display()),
                );
            }
            residency_ui(ui, settings.residency, commands);
        });
}

fn residency_ui(ui: &mut egui::Ui, current: ResidencyConfig, commands: &mut Vec<Command>) {
    let mut wanted = current;
    ui.horizontal_wrapped(|ui| {
        ui.label("Unload from VRAM");
        let after = match current.offload {
            IdlePolicy::AfterSecs(secs) => IdlePolicy::AfterSecs(secs),
            IdlePolicy::Never | IdlePolicy::Immediately => {
                IdlePolicy::AfterSecs(DEFAULT_OFFLOAD_AFTER_SECS)
            }
        };
        ui.selectable_value(&mut wanted.offload, IdlePolicy::Never, "never");
        ui.selectable_value(
            &mut wanted.offload,
            IdlePolicy::Immediately,
            "after each job",
        );
        ui.selectable_value(&mut wanted.offload, after, "when idle for");
        let mut secs = match wanted.offload {
            IdlePolicy::AfterSecs(secs) => secs,
            IdlePolicy::Never | IdlePolicy::Immediately => DEFAULT_OFFLOAD_AFTER_SECS,
        };
        let idle = matches!(wanted.offload, IdlePolicy::AfterSecs(_));
        let response = ui.add_enabled(
            idle,
            egui::DragValue::new(&mut secs)
                .range(1..=86_400)
                .speed(5)
                .suffix(" s"),
        );
        if idle && response.changed() {
            wanted.offload = IdlePolicy::AfterSecs(secs);
        }
    });
    ui.horizontal(|ui| {
        let mut release = wanted.release_after_secs.is_some();
        ui.checkbox(&mut release, "End the worker after")
            .on_hover_text("Once offloaded, end the worker process: its CUDA context goes too and VRAM returns to 0 MiB");
        let mut secs = wanted.release_after_secs.unwrap_or(1800);
        ui.add_enabled(
            release,
            egui::DragValue::new(&mut secs)
                .range(0..=86_400)
                .speed(5)
                .suffix(" s"),
        );
        ui.label(RichText::new("offloaded").weak());
        wanted.release_after_secs = release.then_some(secs);
    });
    if wanted != current {
        commands.push(Command::SetResidency(wanted));
    }
}
