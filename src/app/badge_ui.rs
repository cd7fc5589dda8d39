//! The model's state badge ("SenseVoice · bf16 · GPU 0 · 512 MiB · unloads in 9:41"), its
//! measured VRAM, the "Unload now" / "Keep loaded" buttons, and the message log. UI thread;
//! reads state, returns [`Command`]s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eframe::egui;
use egui::RichText;

use super::LogLine;
use super::command::Command;
use super::engine_link::worker_vram_bytes;
use super::format;
use super::gpu_panel_ui::{ERROR_COLOR, TARGET_COLOR};
use crate::engine::{Action, Residency, SlotStatus};
use crate::gpu::GpuSnapshot;

/// What the badge row shows.
pub struct BadgeInput<'a> {
    /// The engine's device slots.
    pub slots: &'a [SlotStatus],
    /// The latest GPU sample's GPUs (for the measured VRAM).
    pub gpus: &'a [GpuSnapshot],
    /// "Keep loaded" as the user set it.
    pub keep_loaded: bool,
}

/// `581 s` → `9:41`.
fn minutes_seconds(duration: Duration) -> String {
    let secs = duration.as_secs();
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// The badge text of one device slot.
pub fn badge_text(slot: &SlotStatus) -> String {
    let mut parts = vec!["SenseVoice".to_owned()];
    if slot.unavailable.is_some() {
        // The reason is long; it is in the tooltip and the message log.
        parts.extend([slot.device.clone(), "unavailable".to_owned()]);
        return parts.join(" · ");
    }
    let dtype = (!slot.dtype.is_empty()).then(|| slot.dtype.clone());
    match slot.residency {
        Residency::Unloaded => parts.extend([slot.device.clone(), "not loaded".to_owned()]),
        Residency::Loading => parts.extend([slot.device.clone(), "loading…".to_owned()]),
        Residency::Ready => {
            parts.extend(dtype);
            parts.push(slot.device.clone());
            parts.push(format::mib(slot.weight_bytes));
        }
        Residency::Offloading => {
            parts.extend(dtype);
            parts.extend([slot.device.clone(), "offloading…".to_owned()]);
        }
        Residency::Offloaded => {
            parts.extend(dtype);
            parts.extend([slot.device.clone(), "offloaded to RAM".to_owned()]);
        }
        Residency::Released => parts.extend([slot.device.clone(), "released".to_owned()]),
    }
    match slot.countdown {
        Some((Action::Offload, left)) => {
            parts.push(format!("unloads in {}", minutes_seconds(left)));
        }
        Some((Action::Release, left)) => {
            parts.push(format!("releases in {}", minutes_seconds(left)));
        }
        Some((Action::Load | Action::Restore, _)) | None => {}
    }
    if slot.keep_loaded {
        parts.push("kept loaded".to_owned());
    }
    parts.join(" · ")
}

/// What NVML measures for the slot's worker on its GPU, e.g. `measured 1450 MiB (pid 4242)`
/// or `0 MiB — released`; `None` for the CPU.
pub fn measured_vram_text(slot: &SlotStatus, gpus: &[GpuSnapshot]) -> Option<String> {
    if slot.unavailable.is_some() {
        return None;
    }
    let uuid = slot.uuid.as_deref()?;
    let Some(pid) = slot.pid else {
        return Some("0 MiB — released".to_owned());
    };
    let gpu = gpus.iter().find(|g| g.uuid == uuid)?;
    Some(match worker_vram_bytes(gpu, pid) {
        Some(bytes) => format!("measured {} (pid {pid})", format::mib(bytes)),
        None => format!("not listed by NVML (pid {pid})"),
    })
}

/// The badge row: one badge per device slot, then the buttons.
pub fn badge_row_ui(ui: &mut egui::Ui, input: &BadgeInput<'_>, commands: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("Model").strong());
        if input.slots.is_empty() {
            ui.label("SenseVoice · not loaded (loads with the first file)");
        }
        for slot in input.slots {
            let loaded = matches!(slot.residency, Residency::Ready | Residency::Loading);
            let text = RichText::new(badge_text(slot));
            let text = if slot.unavailable.is_some() {
                text.color(ERROR_COLOR)
            } else if loaded {
                text.color(TARGET_COLOR)
            } else {
                text
            };
            let mut tooltip: Vec<String> = slot.unavailable.iter().cloned().collect();
            if let Some(ms) = slot.load_ms {
                tooltip.push(format!("last load {ms:.0} ms"));
            }
            if let Some(ms) = slot.restore_ms {
                tooltip.push(format!("last restore {ms:.0} ms"));
            }
            let response = ui.label(text);
            if !tooltip.is_empty() {
                response.on_hover_text(tooltip.join(", "));
            }
            if let Some(measured) = measured_vram_text(slot, input.gpus) {
                ui.label(RichText::new(measured).weak());
            }
            ui.separator();
        }
        if ui
            .button("Unload now")
            .on_hover_text("Move the weights to host RAM now; if they are there already, end the worker so VRAM goes back to 0")
            .clicked()
        {
            commands.push(Command::UnloadNow);
        }
        let mut keep = input.keep_loaded;
        if ui
            .toggle_value(&mut keep, "Keep loaded")
            .on_hover_text("Never unload the model while this is on")
            .changed()
        {
            commands.push(Command::SetKeepLoaded(keep));
        }
    });
}

/// `hh:mm:ss` (UTC) of a wall-clock time.
fn clock(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// The message log, newest last, scrolled to the end.
pub fn log_ui(ui: &mut egui::Ui, log: &[LogLine], commands: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Messages").strong());
        if ui.small_button("Clear").clicked() {
            commands.push(Command::ClearLog);
        }
    });
    egui::ScrollArea::vertical()
        .auto_shrink([false, true])
        .stick_to_bottom(true)
        .show(ui, |ui| {
            for line in log {
                ui.horizontal_wrapped(|ui| {
                    ui.label(RichText::new(clock(line.at)).monospace().weak());
                    if line.is_error {
                        ui.colored_label(ERROR_COLOR, &line.text);
                    } else {
                        ui.label(&line.text);
                    }
                });
            }
        });
}
