//! The queue list (one row per file: name, length, device, status, cancel), the overall progress
//! with its ETA, and the overlay shown while files are dragged over the window. UI thread.

use std::time::Instant;

use eframe::egui;
use egui::{Color32, RichText};

use super::command::Command;
use super::gpu_panel_ui::{ERROR_COLOR, TARGET_COLOR};
use super::jobs::{JobList, JobRow, JobStatus};

/// The overlay's text while files are dragged over the window.
pub const DROP_HINT: &str = "Drop audio files or folders to transcribe";

/// Tallest the queue list gets before it scrolls.
const QUEUE_MAX_HEIGHT: f32 = 220.0;

/// `83.4` → `1:23`.
pub fn clock_secs(secs: f64) -> String {
    // Lengths of audio files are far below u64::MAX seconds.
    let whole = secs.max(0.0).round() as u64;
    if whole >= 3600 {
        format!(
            "{}:{:02}:{:02}",
            whole / 3600,
            (whole % 3600) / 60,
            whole % 60
        )
    } else {
        format!("{}:{:02}", whole / 60, whole % 60)
    }
}

/// The queue: overall progress, then the rows.
pub fn queue_ui(ui: &mut egui::Ui, jobs: &JobList, commands: &mut Vec<Command>) {
    if jobs.rows().is_empty() {
        ui.label(
            RichText::new("No files yet. Drop audio files or folders here, use Open…, or record.")
                .weak(),
        );
        return;
    }
    let overall = jobs.overall(Instant::now());
    ui.horizontal(|ui| {
        ui.label(RichText::new("Queue").strong());
        let mut text = format!("{} / {} files", overall.finished, overall.total);
        if let Some(eta) = overall.eta {
            text.push_str(&format!(" · ETA {}", clock_secs(eta.as_secs_f64())));
        }
        ui.label(RichText::new(text).weak());
        if jobs.rows().iter().any(|r| r.status.is_finished())
            && ui.small_button("Clear finished").clicked()
        {
            commands.push(Command::ClearFinished);
        }
    });
    // Precision loss is irrelevant for a bar.
    ui.add(egui::ProgressBar::new(overall.fraction as f32).show_percentage());
    egui::ScrollArea::vertical()
        .id_salt("queue")
        .max_height(QUEUE_MAX_HEIGHT)
        .auto_shrink([false, true])
        .show(ui, |ui| {
            for row in jobs.rows() {
                row_ui(ui, row, jobs.selected == Some(row.job_id), commands);
            }
        });
}

fn row_ui(ui: &mut egui::Ui, row: &JobRow, selected: bool, commands: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        let name = ui
            .selectable_label(selected, row.name())
            .on_hover_text(row.path.display().to_string());
        if name.clicked() {
            commands.push(Command::Select(row.job_id));
        }
        if let Some(duration) = row.duration_s {
            ui.label(RichText::new(clock_secs(duration)).weak());
        }
        if let Some(device) = &row.device {
            ui.label(RichText::new(device).weak());
        }
        if !row.status.is_finished() {
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui
                    .small_button("Cancel")
                    .on_hover_text(format!("Cancel {}", row.name()))
                    .clicked()
                {
                    commands.push(Command::Cancel(row.job_id));
                }
            });
        }
    });
    match &row.status {
        JobStatus::Queued => {
            ui.label(RichText::new("queued").weak());
        }
        JobStatus::Running { done_s, total_s } => {
            let text = if *total_s > 0.0 {
                format!("{} / {}", clock_secs(*done_s), clock_secs(*total_s))
            } else {
                "decoding…".to_owned()
            };
            // Precision loss is irrelevant for a bar.
            ui.add(
                egui::ProgressBar::new(row.fraction() as f32)
                    .text(text)
                    .fill(Color32::from_rgb(0x2e, 0x7d, 0x32)),
            );
        }
        JobStatus::Done => {
            let took = row.wall_ms.map_or_else(String::new, |ms| {
                if ms < 1000.0 {
                    format!(" in {ms:.0} ms")
                } else {
                    format!(" in {:.1} s", ms / 1000.0)
                }
            });
            ui.colored_label(TARGET_COLOR, format!("Done{took}"));
        }
        JobStatus::Failed(message) => {
            ui.colored_label(ERROR_COLOR, format!("Failed: {message}"));
        }
        JobStatus::Cancelled => {
            ui.label(RichText::new("cancelled").weak());
        }
    }
    if let Some(warning) = &row.warning {
        ui.colored_label(ui.visuals().warn_fg_color, format!("⚠ {warning}"));
    }
    ui.add_space(4.0);
}

/// Dims the window and shows [`DROP_HINT`] while files are dragged over it.
pub fn drop_overlay_ui(ctx: &egui::Context) {
    let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
    if !hovering {
        return;
    }
    let rect = ctx.content_rect();
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::unique("drop_overlay_dim"),
    ));
    painter.rect_filled(rect, 0.0, Color32::from_black_alpha(170));
    painter.rect_stroke(
        rect.shrink(6.0),
        8.0,
        egui::Stroke::new(3.0, TARGET_COLOR),
        egui::StrokeKind::Inside,
    );
    egui::Area::new(egui::Id::unique("drop_overlay"))
        .order(egui::Order::Tooltip)
        .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
        .interactable(false)
        .show(ctx, |ui| {
            egui::Frame::popup(ui.style()).show(ui, |ui| {
                ui.label(RichText::new(DROP_HINT).heading().color(TARGET_COLOR));
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_minutes_then_hours() {
        assert_eq!(clock_secs(83.4), "1:23");
        assert_eq!(clock_secs(3725.0), "1:02:05");
        assert_eq!(clock_secs(-1.0), "0:00");
    }
}
