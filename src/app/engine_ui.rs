//! The engine/model picker: SenseVoice-Small (the default) or a Whisper size, each Whisper size
//! with its download size and the device memory it needs for one window. UI thread; returns
//! [`Command`]s.

use eframe::egui;

use super::command::Command;
use crate::engine::SpeechEngine;
use crate::model::whisper::sizes::SIZES;

/// "151 MB download, about 0.9 GiB to run" for a Whisper size.
pub fn whisper_size_note(name: &str) -> Option<String> {
    let size = crate::model::whisper::sizes::by_name(name)?;
    Some(format!(
        "{} MB download, about {:.1} GiB to run (f32)",
        size.download_bytes() / 1_000_000,
        size.job_bytes(4) as f64 / f64::from(1u32 << 30)
    ))
}

/// The picker row.
pub fn engine_picker_ui(ui: &mut egui::Ui, current: &SpeechEngine, commands: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.label("Speech model");
        let mut wanted = current.clone();
        egui::ComboBox::from_id_salt("speech-engine")
            .selected_text(current.label())
            .show_ui(ui, |ui| {
                ui.selectable_value(
                    &mut wanted,
                    SpeechEngine::SenseVoice,
                    SpeechEngine::SenseVoice.label(),
                );
                for size in &SIZES {
                    let engine = SpeechEngine::Whisper {
                        model: size.name.to_owned(),
                    };
                    let label = engine.label();
                    ui.selectable_value(&mut wanted, engine, label)
                        .on_hover_text(whisper_size_note(size.name).unwrap_or_default());
                }
            });
        if let SpeechEngine::Whisper { model } = current
            && let Some(note) = whisper_size_note(model)
        {
            ui.weak(note);
        }
        if &wanted != current {
            commands.push(Command::SetEngine(wanted));
        }
    });
}
