//! The transcript of the selected file (segments with times and tags, Copy, TXT/SRT/VTT/JSON
//! export) and the decode options for new jobs (language, ITN, emoji). UI thread.

use eframe::egui;
use egui::RichText;

use super::command::Command;
use super::gpu_panel_ui::ERROR_COLOR;
use super::jobs::{JobRow, JobStatus};
use super::queue_ui::clock_secs;
use crate::engine::{DecodeSettings, ExportFormat, Segment};

/// The language choices, as SenseVoice names them.
pub const LANGUAGES: [&str; 6] = ["auto", "zh", "en", "yue", "ja", "ko"];

/// The export buttons, in order.
pub const EXPORT_FORMATS: [ExportFormat; 4] = [
    ExportFormat::Txt,
    ExportFormat::Srt,
    ExportFormat::Vtt,
    ExportFormat::Json,
];

/// The button text of an export format.
pub fn export_label(format: ExportFormat) -> String {
    format.extension().to_uppercase()
}

/// Language, ITN and emoji options for the next jobs.
pub fn options_ui(ui: &mut egui::Ui, current: &DecodeSettings, commands: &mut Vec<Command>) {
    let mut wanted = current.clone();
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::new("language", "Language")
            .selected_text(wanted.language.clone())
            .width(70.0)
            .show_ui(ui, |ui| {
                for language in LANGUAGES {
                    ui.selectable_value(&mut wanted.language, language.to_owned(), language);
                }
            });
        ui.checkbox(&mut wanted.use_itn, "ITN")
            .on_hover_text("Inverse text normalisation: punctuation and digits");
        ui.checkbox(&mut wanted.rich, "Emoji")
            .on_hover_text("Show emotions and sound events as emoji in the text");
    });
    if wanted != *current {
        commands.push(Command::SetDecode(wanted));
    }
}

fn segment_ui(ui: &mut egui::Ui, segment: &Segment) {
    ui.horizontal_wrapped(|ui| {
        ui.label(
            RichText::new(format!(
                "{}–{}",
                clock_secs(segment.start_s),
                clock_secs(segment.end_s)
            ))
            .monospace()
            .weak(),
        );
        let tags: Vec<&str> = [&segment.language, &segment.emotion, &segment.event]
            .into_iter()
            .map(String::as_str)
            .filter(|t| !t.is_empty())
            .collect();
        if !tags.is_empty() {
            ui.label(RichText::new(tags.join(" · ")).small().weak());
        }
    });
    let text = segment.text.trim();
    if text.is_empty() {
        ui.label(RichText::new("(no speech)").weak().italics());
    } else {
        ui.add(egui::Label::new(text).wrap().selectable(true));
    }
    ui.add_space(4.0);
}

/// The selected row's transcript.
pub fn transcript_ui(
    ui: &mut egui::Ui,
    row: Option<&JobRow>,
    dialog_open: bool,
    commands: &mut Vec<Command>,
) {
    let Some(row) = row else {
        ui.label(RichText::new("The transcript of the selected file appears here.").weak());
        return;
    };
    let done = row.status == JobStatus::Done;
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(row.name()).strong());
        if let Some(t) = &row.transcript
            && !t.language.is_empty()
        {
            ui.label(RichText::new(&t.language).weak());
        }
        let text = row.text();
        if ui
            .add_enabled(!text.is_empty(), egui::Button::new("Copy"))
            .on_hover_text("Copy all text to the clipboard")
            .clicked()
        {
            // Output only: the clipboard is not app state.
            ui.ctx().copy_text(text);
        }
        for format in EXPORT_FORMATS {
            if ui
                .add_enabled(
                    done && !dialog_open,
                    egui::Button::new(export_label(format)),
                )
                .on_hover_text(format!("Save as {}", export_label(format)))
                .clicked()
            {
                commands.push(Command::Export(format));
            }
        }
    });
    if let JobStatus::Failed(message) = &row.status {
        ui.colored_label(ERROR_COLOR, message);
    }
    egui::ScrollArea::vertical()
        .id_salt("transcript")
        .auto_shrink([false, false])
        .stick_to_bottom(!done)
        .show(ui, |ui| {
            if row.segments.is_empty() && !row.status.is_finished() {
                ui.label(RichText::new("waiting for the first segments…").weak());
            }
            for segment in &row.segments {
                segment_ui(ui, segment);
            }
        });
}
