//! The History tab: past transcripts newest first with a full-text search box, and one opened
//! transcript with Copy, export, Show file, Transcribe again, Resume and Delete (with Undo).
//! UI thread; only draws what [`HistoryView`] holds and returns [`Command`]s.

use eframe::egui;
use egui::RichText;

use super::command::Command;
use super::gpu_panel_ui::ERROR_COLOR;
use super::history::{HISTORY_LIMIT, HistoryView, LibraryState};
use super::jobs::file_name;
use super::queue_ui::clock_secs;
use super::transcript_ui::copy_and_export_ui;
use crate::library::{HistoryEntry, JobState, StoredJob, format_utc};

/// The search box's hint.
pub const SEARCH_HINT: &str = "Search all transcripts";
/// The button that brings a deleted transcript back.
pub const UNDO_LABEL: &str = "Undo";
/// The button that queues an interrupted job again.
pub const RESUME_LABEL: &str = "Resume";
/// The button that closes the opened transcript.
pub const BACK_LABEL: &str = "◀ History";
/// The delete button.
pub const DELETE_LABEL: &str = "Delete";
/// The button that queues the file again with the current options.
pub const AGAIN_LABEL: &str = "Transcribe again";
/// The button that opens the file's folder.
pub const SHOW_FILE_LABEL: &str = "Show file";

/// What a state reads as in a row.
pub fn state_label(state: JobState) -> &'static str {
    match state {
        JobState::Recording => "recording",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Interrupted => "interrupted",
    }
}

/// One row's summary: `2026-12-01 08:45 · 1:23 · zh · CPU`.
pub fn entry_summary(entry: &HistoryEntry) -> String {
    let date = format_utc(entry.created_at_ms);
    let mut parts = vec![date.get(..16).unwrap_or(&date).to_owned()];
    if let Some(d) = entry.duration_s {
        parts.push(clock_secs(d));
    }
    if !entry.language.is_empty() {
        parts.push(entry.language.clone());
    }
    if let Some(device) = &entry.device {
        parts.push(device.clone());
    }
    if entry.state != JobState::Done {
        parts.push(state_label(entry.state).to_owned());
    }
    parts.join(" · ")
}

/// The History tab.
pub fn history_ui(
    ui: &mut egui::Ui,
    view: &HistoryView,
    dialog_open: bool,
    commands: &mut Vec<Command>,
) {
    match &view.state {
        LibraryState::Opening => {
            ui.label(RichText::new("opening the transcript library…").weak());
            return;
        }
        LibraryState::Unavailable(message) => {
            ui.colored_label(ERROR_COLOR, format!("History is off: {message}"));
            return;
        }
        LibraryState::Open => {}
    }
    if let Some(job) = &view.open {
        transcript_view_ui(ui, job, dialog_open, commands);
        return;
    }
    list_ui(ui, view, commands);
}

fn list_ui(ui: &mut egui::Ui, view: &HistoryView, commands: &mut Vec<Command>) {
    let mut search = view.search.clone();
    let response = ui.add(
        egui::TextEdit::singleline(&mut search)
            .hint_text(SEARCH_HINT)
            .desired_width(f32::INFINITY),
    );
    if response.changed() {
        commands.push(Command::HistorySearch(search));
    }
    ui.horizontal(|ui| {
        let count = view.entries.len();
        let mut text = if view.search.trim().is_empty() {
            if count >= HISTORY_LIMIT {
                format!("the newest {count} transcripts (search to find older ones)")
            } else {
                format!("{count} transcript(s)")
            }
        } else {
            format!("{count} match(es)")
        };
        if let Some(took) = view.last_query {
            text.push_str(&format!(" · {:.1} ms", took.as_secs_f64() * 1000.0));
        }
        ui.label(RichText::new(text).weak().small());
        if view.is_loading() {
            ui.label(RichText::new("…").weak());
        }
    });
    if let Some(deleted) = &view.deleted {
        ui.horizontal(|ui| {
            ui.label(format!("Deleted {}.", file_name(&deleted.path)));
            if ui.button(UNDO_LABEL).clicked() {
                commands.push(Command::HistoryUndoDelete);
            }
        });
    }
    if view.entries.is_empty() && !view.is_loading() {
        let text = if view.search.trim().is_empty() {
            "Transcripts appear here as soon as they are queued, and stay after the window closes."
        } else {
            "No transcript contains that."
        };
        ui.label(RichText::new(text).weak());
        return;
    }
    let row_height = ui.text_style_height(&egui::TextStyle::Body) * 2.0 + 8.0;
    egui::ScrollArea::vertical()
        .id_salt("history")
        .auto_shrink([false, false])
        .show_rows(ui, row_height, view.entries.len(), |ui, range| {
            for entry in &view.entries[range] {
                entry_row_ui(ui, entry, row_height, commands);
            }
        });
}

fn entry_row_ui(
    ui: &mut egui::Ui,
    entry: &HistoryEntry,
    row_height: f32,
    commands: &mut Vec<Command>,
) {
    let width = ui.available_width();
    ui.allocate_ui(egui::vec2(width, row_height), |ui| {
        ui.set_min_height(row_height);
        ui.vertical(|ui| {
            ui.horizontal(|ui| {
                let name = match &entry.recording {
                    Some(_) => format!("🎙 {}", file_name(&entry.path)),
                    None => file_name(&entry.path),
                };
                if ui
                    .add(egui::Button::new(RichText::new(name).strong()).frame(false))
                    .on_hover_text(entry.path.display().to_string())
                    .clicked()
                {
                    commands.push(Command::HistoryOpen(entry.id));
                }
                let summary = RichText::new(entry_summary(entry)).weak().small();
                if entry.state == JobState::Failed {
                    ui.colored_label(ERROR_COLOR, summary);
                } else {
                    ui.label(summary);
                }
                if entry.state == JobState::Interrupted && ui.small_button(RESUME_LABEL).clicked() {
                    commands.push(Command::HistoryResume(entry.id));
                }
            });
            let preview = entry
                .error
                .as_deref()
                .filter(|_| entry.preview.is_empty())
                .unwrap_or(&entry.preview);
            ui.add(egui::Label::new(RichText::new(preview.trim()).weak()).truncate());
        });
    });
}

fn transcript_view_ui(
    ui: &mut egui::Ui,
    job: &StoredJob,
    dialog_open: bool,
    commands: &mut Vec<Command>,
) {
    let entry = &job.entry;
    ui.horizontal_wrapped(|ui| {
        if ui.button(BACK_LABEL).clicked() {
            commands.push(Command::HistoryClose);
        }
        ui.label(RichText::new(file_name(&entry.path)).strong())
            .on_hover_text(entry.path.display().to_string());
    });
    ui.label(RichText::new(entry_summary(entry)).weak());
    if let Some(recording) = &entry.recording {
        let mut text = format!("Recorded from {}", recording.input_device);
        if recording.parts > 1 {
            text.push_str(&format!(" · {} files", recording.parts));
        }
        if recording.dropped_frames > 0 {
            text.push_str(&format!(" · {} frames dropped", recording.dropped_frames));
        }
        ui.label(RichText::new(text).weak());
    }
    let text = job.transcript.text.clone();
    let done = entry.state == JobState::Done;
    ui.horizontal_wrapped(|ui| {
        copy_and_export_ui(
            ui,
            text,
            done && !dialog_open,
            commands,
            Command::HistoryExport,
        );
    });
    ui.horizontal_wrapped(|ui| {
        if ui
            .button(SHOW_FILE_LABEL)
            .on_hover_text("Open the folder that holds the audio file")
            .clicked()
        {
            commands.push(Command::ShowFile(entry.path.clone()));
        }
        if ui
            .button(AGAIN_LABEL)
            .on_hover_text("Queue this file again with the current language and options")
            .clicked()
        {
            commands.push(if job.parts.len() > 1 {
                Command::TranscribeParts {
                    parts: job.parts.clone(),
                    offsets_s: job.part_offsets_s.clone(),
                }
            } else {
                Command::AddPaths(vec![entry.path.clone()])
            });
        }
        if matches!(
            entry.state,
            JobState::Interrupted | JobState::Failed | JobState::Cancelled
        ) && ui
            .button(RESUME_LABEL)
            .on_hover_text("Queue it again with the options it had")
            .clicked()
        {
            commands.push(Command::HistoryResume(entry.id));
        }
        if ui.button(DELETE_LABEL).clicked() {
            commands.push(Command::HistoryDelete(entry.id));
        }
    });
    if let Some(error) = &entry.error {
        ui.colored_label(ERROR_COLOR, error);
    }
    ui.separator();
    egui::ScrollArea::vertical()
        .id_salt("history_transcript")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            if job.transcript.segments.is_empty() {
                let note = if entry.state.is_unfinished() {
                    "waiting for the first segments…"
                } else {
                    "no text"
                };
                ui.label(RichText::new(note).weak());
            }
            for segment in &job.transcript.segments {
                ui.label(
                    RichText::new(format!(
                        "{}–{}",
                        clock_secs(segment.start_s),
                        clock_secs(segment.end_s)
                    ))
                    .monospace()
                    .weak(),
                );
                let text = segment.text.trim();
                if text.is_empty() {
                    ui.label(RichText::new("(no speech)").weak().italics());
                } else {
                    ui.add(egui::Label::new(text).wrap().selectable(true));
                }
            }
        });
}
