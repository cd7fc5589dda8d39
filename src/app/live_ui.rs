//! Live captions under the record button: while recording, the final utterances with their time
//! range and the utterance being spoken as a greyed partial line; after Stop, the same lines
//! until the recording's own transcript is done. UI thread; only draws.

use eframe::egui;
use egui::RichText;

use super::recording::{KeptLive, LiveView};
use crate::live::LiveLine;

/// The heading above the live lines.
pub const LIVE_HEADING: &str = "Live transcript";

/// Under the heading after Stop, until the recording's transcript takes the lines' place.
pub const TRANSCRIBING_RECORDING: &str =
    "recording stopped: transcribing the saved file, whose transcript replaces these lines";

/// A line's time range, to the tenth of a second: `00:01.2–00:03.4`.
pub fn live_stamp(line: &LiveLine) -> String {
    format!("{}–{}", tenths(line.start), tenths(line.end))
}

/// A line's text as shown: a partial ends in an ellipsis (and is drawn greyed, in italics).
pub fn live_line_text(line: &LiveLine) -> String {
    if line.partial {
        format!("{} …", line.text)
    } else {
        line.text.clone()
    }
}

/// `mm:ss.s`.
fn tenths(secs: f64) -> String {
    let tenths = (secs.max(0.0) * 10.0).round() as u64;
    format!(
        "{:02}:{:02}.{}",
        tenths / 600,
        (tenths / 10) % 60,
        tenths % 10
    )
}

/// The live lines of the recording in progress, newest at the bottom.
pub fn live_ui(ui: &mut egui::Ui, live: &LiveView) {
    ui.label(RichText::new(LIVE_HEADING).strong());
    if live.finals.is_empty() && live.partial.is_none() {
        ui.label(RichText::new("listening…").weak());
        return;
    }
    lines_ui(ui, live.finals.iter().chain(live.partial.as_ref()));
}

/// A stopped recording's live lines while its transcript is being made.
pub fn kept_live_ui(ui: &mut egui::Ui, kept: &KeptLive) {
    ui.label(RichText::new(LIVE_HEADING).strong());
    ui.label(RichText::new(TRANSCRIBING_RECORDING).weak());
    lines_ui(ui, kept.lines.iter());
}

fn lines_ui<'a>(ui: &mut egui::Ui, lines: impl Iterator<Item = &'a LiveLine>) {
    egui::ScrollArea::vertical()
        .id_salt("live_lines")
        .max_height(140.0)
        .stick_to_bottom(true)
        .show(ui, |ui| {
            for line in lines {
                ui.horizontal_wrapped(|ui| {
                    ui.label(RichText::new(live_stamp(line)).monospace().weak());
                    let text = RichText::new(live_line_text(line));
                    ui.label(if line.partial {
                        text.weak().italics()
                    } else {
                        text
                    });
                });
            }
        });
}
