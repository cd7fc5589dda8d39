//! The transcript of the selected file (subtitle-sized lines with times and tags, Copy, TXT/SRT/VTT/JSON
//! export) and the decode options for new jobs (language, ITN, emoji). UI thread.

use std::sync::Arc;

use eframe::egui;
use egui::RichText;

use super::command::Command;
use super::gpu_panel_ui::ERROR_COLOR;
use super::jobs::{JobRow, JobStatus};
use crate::engine::subtitles::{Cue, CueRules, segment_cues, transcript_cues};
use crate::engine::transcript::vtt_time;
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

/// **Copy** (all of `text` to the clipboard) and one save button per export format, each giving
/// `export(format)` when clicked; shared by the transcript view and History.
pub(super) fn copy_and_export_ui(
    ui: &mut egui::Ui,
    text: String,
    can_export: bool,
    commands: &mut Vec<Command>,
    export: fn(ExportFormat) -> Command,
) {
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
            .add_enabled(can_export, egui::Button::new(export_label(format)))
            .on_hover_text(format!("Save as {}", export_label(format)))
            .clicked()
        {
            commands.push(export(format));
        }
    }
}

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

/// `1:02.3`: minutes, seconds and tenths.
pub fn clock_tenths(secs: f64) -> String {
    let tenths = (secs.max(0.0) * 10.0).round() as u64;
    let (whole, tenth) = (tenths / 10, tenths % 10);
    if whole >= 3600 {
        format!(
            "{}:{:02}:{:02}.{tenth}",
            whole / 3600,
            (whole % 3600) / 60,
            whole % 60
        )
    } else {
        format!("{}:{:02}.{tenth}", whole / 60, whole % 60)
    }
}

/// What the selected cue line shows: `00:00:01.000 → 00:00:02.260 (1.26 s)`.
pub fn cue_range_label(cue: &Cue) -> String {
    format!(
        "{} → {} ({:.2} s)",
        vtt_time(cue.start_s),
        vtt_time(cue.end_s),
        cue.end_s - cue.start_s
    )
}

/// The cue lines of a row: from the finished transcript's token times, or from the segments
/// received so far. Kept in egui's memory per row and rebuilt only when the row changes.
fn row_cues(ui: &egui::Ui, row: &JobRow) -> Arc<Vec<Cue>> {
    let id = egui::Id::unique(("transcript-cues", row.job_id));
    let stamp = (
        row.segments.len(),
        row.transcript
            .as_ref()
            .map(|t| (t.tokens.len(), t.segments.len())),
    );
    type Cached = ((usize, Option<(usize, usize)>), Arc<Vec<Cue>>);
    if let Some((seen, cues)) = ui.data(|d| d.get_temp::<Cached>(id))
        && seen == stamp
    {
        return cues;
    }
    let rules = CueRules::default();
    let cues = Arc::new(match &row.transcript {
        Some(t) => transcript_cues(t, &rules),
        None => segment_cues(&row.segments, &rules, row.duration_s),
    });
    ui.data_mut(|d| d.insert_temp::<Cached>(id, (stamp, cues.clone())));
    cues
}

/// The tags of the segment a cue starts in, `zh · NEUTRAL · Speech`.
fn tags_at(segments: &[Segment], at_s: f64) -> String {
    segments
        .iter()
        .rev()
        .find(|s| s.start_s <= at_s + 1e-9)
        .or(segments.first())
        .map(|segment| {
            [&segment.language, &segment.emotion, &segment.event]
                .into_iter()
                .map(String::as_str)
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .unwrap_or_default()
}

/// One line per cue with its times; a click selects it and shows its exact range.
fn cues_ui(ui: &mut egui::Ui, row: &JobRow) {
    let cues = row_cues(ui, row);
    let selected_id = egui::Id::unique(("transcript-cue-selected", row.job_id));
    let mut selected: Option<usize> = ui.data(|d| d.get_temp(selected_id)).flatten();
    if let Some(cue) = selected.and_then(|i| cues.get(i)) {
        ui.label(RichText::new(cue_range_label(cue)).monospace());
    }
    let segments = row
        .transcript
        .as_ref()
        .map_or(row.segments.as_slice(), |t| t.segments.as_slice());
    let mut tags_shown = String::new();
    for (i, cue) in cues.iter().enumerate() {
        let tags = tags_at(segments, cue.start_s);
        if !tags.is_empty() && tags != tags_shown {
            ui.label(RichText::new(&tags).small().weak());
            tags_shown = tags;
        }
        ui.horizontal(|ui| {
            ui.label(
                RichText::new(format!(
                    "{}–{}",
                    clock_tenths(cue.start_s),
                    clock_tenths(cue.end_s)
                ))
                .monospace()
                .weak(),
            );
            let mut text = RichText::new(cue.text());
            if selected == Some(i) {
                text = text.background_color(ui.visuals().selection.bg_fill);
            }
            let line = ui.add(egui::Label::new(text).wrap().sense(egui::Sense::click()));
            if line.clicked() {
                selected = if selected == Some(i) { None } else { Some(i) };
            }
            line.on_hover_text("Click to show this line's time range");
        });
    }
    if cues.is_empty() && row.status.is_finished() && !row.segments.is_empty() {
        ui.label(RichText::new("(no speech)").weak().italics());
    }
    ui.data_mut(|d| d.insert_temp(selected_id, selected));
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
        copy_and_export_ui(
            ui,
            row.text(),
            done && !dialog_open,
            commands,
            Command::Export,
        );
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
            cues_ui(ui, row);
        });
}
