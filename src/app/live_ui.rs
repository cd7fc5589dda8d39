//! Live captions under the record button while recording: final utterances with their time
//! range, and the utterance being spoken as a greyed partial line. UI thread; only draws.

use eframe::egui;
use egui::RichText;

use super::queue_ui::clock_secs;
use super::recording::LiveView;
use crate::live::LiveLine;

/// The heading above the live lines.
pub const LIVE_HEADING: &str = "Live transcript";

fn stamp(line: &LiveLine) -> String {
    format!("{}–{}", clock_secs(line.start), clock_secs(line.end))
}

/// The live lines, newest at the bottom.
pub fn live_ui(ui: &mut egui::Ui, live: &LiveView) {
    ui.label(RichText::new(LIVE_HEADING).strong());
    if live.finals.is_empty() && live.partial.is_none() {
        ui.label(RichText::new("listening…").weak());
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("live_lines")
        .max_height(140.0)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            for line in &live.finals {
                ui.horizontal_wrapped(|ui| {
                    ui.label(RichText::new(stamp(line)).monospace().weak());
                    ui.label(&line.text);
                });
            }
            if let Some(line) = &live.partial {
                ui.horizontal_wrapped(|ui| {
                    ui.label(RichText::new(stamp(line)).monospace().weak());
                    ui.label(RichText::new(format!("{} …", line.text)).weak().italics());
                });
            }
        });
}
