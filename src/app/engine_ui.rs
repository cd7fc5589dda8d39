//! The engine/model picker: SenseVoice-Small (the default) or a Whisper size, each Whisper size
//! with its download size and the device memory it needs for one window. UI thread; returns
//! [`Command`]s.

use eframe::egui;

use super::command::Command;
use crate::engine::SpeechEngine;
use crate::model::whisper::sizes::SIZES;

/// The picker's label.
pub const ENGINE_PICKER_LABEL: &str = "Speech model";

/// "151 MB download, about 0.9 GiB to run" for a Whisper size.
pub fn whisper_size_note(name: &str) -> Option<String> {
    let size = crate::model::whisper::sizes::by_name(name)?;
    Some(format!(
        "{} MB download, about {:.1} GiB to run (f32)",
        size.download_bytes() / 1_000_000,
        size.job_bytes(4) as f64 / f64::from(1u32 << 30)
    ))
}

/// An entry of the open picker: "SenseVoice-Small", or "Whisper base · 290 MB download,
/// about 1.2 GiB to run (f32)".
pub fn engine_entry_label(engine: &SpeechEngine) -> String {
    match engine {
        SpeechEngine::SenseVoice => engine.label(),
        SpeechEngine::Whisper { model } => match whisper_size_note(model) {
            Some(note) => format!("{} · {note}", engine.label()),
            None => engine.label(),
        },
    }
}

/// The picker row.
pub fn engine_picker_ui(ui: &mut egui::Ui, current: &SpeechEngine, commands: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        let mut wanted = current.clone();
        egui::ComboBox::new("speech-engine", ENGINE_PICKER_LABEL)
            .selected_text(current.label())
            .show_ui(ui, |ui| {
                ui.selectable_value(
                    &mut wanted,
                    SpeechEngine::SenseVoice,
                    engine_entry_label(&SpeechEngine::SenseVoice),
                );
                for size in &SIZES {
                    let engine = SpeechEngine::Whisper {
                        model: size.name.to_owned(),
                    };
                    let label = engine_entry_label(&engine);
                    ui.selectable_value(&mut wanted, engine, label);
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
