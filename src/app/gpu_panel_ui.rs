//! Drawing of the GPU area: one panel per GPU (VRAM bar, metrics, plots, processes), or the
//! explanation of why there is none. UI thread; reads state, changes nothing.

use eframe::egui;
use std::time::{Duration, Instant};

use egui::{Color32, RichText};
use egui_plot::{Corner, Legend, Line, Plot, PlotPoint, Text, VLine};

use super::engine_link::{MarkerLog, marker_label};
use super::format::{self, NOT_AVAILABLE};
use super::gpu_view::{GpuView, MonitorState};
use crate::engine::MarkerKind;
use crate::gpu::{GpuHistory, GpuProcess, GpuSnapshot, HistoryPoint, cuda_ordinal};

/// Narrowest width of one GPU panel; the grid uses as many columns as fit.
const PANEL_MIN_WIDTH: f32 = 430.0;
const PLOT_HEIGHT: f32 = 90.0;
/// The colour of "this is where transcription runs" and of our own process.
pub const TARGET_COLOR: Color32 = Color32::from_rgb(0x4c, 0xaf, 0x50);
/// The colour of errors.
pub const ERROR_COLOR: Color32 = Color32::from_rgb(0xe5, 0x73, 0x73);

/// Shared inputs of every panel in one frame.
pub struct PanelsInput<'a> {
    /// GPU state.
    pub view: &'a GpuView,
    /// The plot span.
    pub window: Duration,
    /// The GPUs transcription runs on (none, one, or all of them).
    pub target_uuids: &'a [String],
    /// `CUDA_VISIBLE_DEVICES`, to show each GPU's CUDA ordinal.
    pub cuda_visible_devices: Option<&'a str>,
    /// Pids of our worker processes (marked as ours in the process tables).
    pub worker_pids: &'a [u32],
    /// Load/offload/… markers for the VRAM plots.
    pub markers: &'a MarkerLog,
}

/// The whole GPU area.
pub fn gpus_ui(ui: &mut egui::Ui, input: &PanelsInput<'_>) {
    let view = input.view;
    match &view.state {
        MonitorState::Starting => {
            notice_ui(ui, "Looking for NVIDIA GPUs…", None);
            return;
        }
        MonitorState::NotAnswering => {
            notice_ui(
                ui,
                "GPU monitor not answering — the NVIDIA driver has not replied yet; transcription works meanwhile",
                None,
            );
            return;
        }
        MonitorState::Unavailable(err) => {
            notice_ui(ui, &err.to_string(), err.detail());
            return;
        }
        MonitorState::Running => {}
    }
    let (Some(now), gpus) = (view.now(), view.gpus()) else {
        return;
    };
    if gpus.is_empty() && view.vanished.is_empty() {
        notice_ui(
            ui,
            "No NVIDIA GPU found — transcription runs on the CPU",
            None,
        );
        return;
    }
    let panels: Vec<(&GpuSnapshot, Option<Duration>)> = gpus
        .iter()
        .map(|g| (g, None))
        .chain(
            view.vanished
                .iter()
                .map(|v| (&v.last, Some(view.vanished_for(v)))),
        )
        .collect();
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            // Truncation is the point: whole columns only.
            let columns = ((ui.available_width() / PANEL_MIN_WIDTH) as usize).clamp(1, 4);
            for row in panels.chunks(columns) {
                ui.columns(columns, |cols| {
                    for (col, (gpu, vanished_for)) in cols.iter_mut().zip(row) {
                        gpu_panel_ui(col, gpu, *vanished_for, now, input);
                    }
                });
                ui.add_space(6.0);
            }
        });
}

fn notice_ui(ui: &mut egui::Ui, message: &str, detail: Option<&str>) {
    ui.add_space(24.0);
    ui.vertical_centered(|ui| {
        ui.label(RichText::new(message).heading());
        if let Some(detail) = detail {
            ui.label(RichText::new(detail).weak().small());
        }
    });
}

/// One GPU's panel.
fn gpu_panel_ui(
    ui: &mut egui::Ui,
    gpu: &GpuSnapshot,
    vanished_for: Option<Duration>,
    now: Instant,
    input: &PanelsInput<'_>,
) {
    let is_target = input.target_uuids.contains(&gpu.uuid);
    let mut frame = egui::Frame::group(ui.style()).inner_margin(8.0);
    if is_target {
        frame = frame.stroke(egui::Stroke::new(1.5, TARGET_COLOR));
    }
    frame.show(ui, |ui| {
        ui.set_min_width(ui.available_width());
        header_ui(ui, gpu, is_target, input);
        if let Some(gone_for) = vanished_for {
            ui.colored_label(
                ERROR_COLOR,
                format!(
                    "No longer reported by the driver (last seen {} ago)",
                    format::age(gone_for)
                ),
            );
        }
        if let Some(error) = &gpu.error {
            ui.colored_label(ERROR_COLOR, format!("⚠ NVML error: {error}"));
        }
        vram_bar_ui(ui, gpu);
        metrics_ui(ui, gpu);
        plots_ui(ui, gpu, now, input);
        processes_ui(ui, gpu, input.worker_pids);
    });
}

fn header_ui(ui: &mut egui::Ui, gpu: &GpuSnapshot, is_target: bool, input: &PanelsInput<'_>) {
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new(format!("GPU {}", gpu.nvml_index)).strong());
        ui.label(RichText::new(&gpu.name).strong());
        if is_target {
            ui.label(
                RichText::new("▶ transcription runs here")
                    .color(TARGET_COLOR)
                    .strong(),
            );
        }
    });
    let ordinal = cuda_ordinal(&gpu.uuid, input.view.gpus(), input.cuda_visible_devices)
        .map_or_else(|| "not visible to CUDA".to_owned(), |o| format!("cuda:{o}"));
    ui.label(
        RichText::new(format!(
            "{} · {} · {ordinal}",
            gpu.short_uuid(),
            gpu.pci_bus_id
        ))
        .small()
        .weak(),
    )
    .on_hover_text(&gpu.uuid);
}

fn vram_bar_ui(ui: &mut egui::Ui, gpu: &GpuSnapshot) {
    let Some(memory) = gpu.memory else {
        ui.label(format!("VRAM {NOT_AVAILABLE}"));
        return;
    };
    // Precision loss is irrelevant for a bar.
    let fraction = if memory.total_bytes == 0 {
        0.0
    } else {
        memory.used_bytes as f32 / memory.total_bytes as f32
    };
    let text = format!(
        "VRAM {} / {} GiB used ({:.0} %) · {} GiB free",
        format::gib(memory.used_bytes),
        format::gib(memory.total_bytes),
        fraction * 100.0,
        format::gib(memory.free_bytes),
    );
    ui.add(egui::ProgressBar::new(fraction).text(text))
        .on_hover_text(format!(
            "NVML v2: used excludes the {} GiB the driver reserves (used + free + reserved = total)",
            format::gib(memory.reserved_bytes)
        ));
}

fn metrics_ui(ui: &mut egui::Ui, gpu: &GpuSnapshot) {
    egui::Grid::new(("metrics", &gpu.uuid))
        .num_columns(6)
        .spacing([10.0, 2.0])
        .show(ui, |ui| {
            let pair = |ui: &mut egui::Ui, name: &str, value: String| {
                ui.label(RichText::new(name).weak());
                ui.label(value);
            };
            pair(ui, "GPU", format::with_unit(gpu.gpu_util_percent, "%"));
            pair(
                ui,
                "Memory",
                format::with_unit(gpu.memory_util_percent, "%"),
            );
            pair(ui, "Temp", format::with_unit(gpu.temperature_c, "°C"));
            ui.end_row();
            pair(
                ui,
                "Power",
                format::power(gpu.power_draw_mw, gpu.power_limit_mw),
            );
            pair(ui, "SM", format::with_unit(gpu.sm_clock_mhz, "MHz"));
            pair(
                ui,
                "Mem clock",
                format::with_unit(gpu.memory_clock_mhz, "MHz"),
            );
            ui.end_row();
            pair(ui, "Fan", format::with_unit(gpu.fan_speed_percent, "%"));
            ui.end_row();
        });
}

/// `x` of a reading: seconds before `now` (negative).
fn seconds_before(now: Instant, point: &HistoryPoint) -> f64 {
    -now.saturating_duration_since(point.at).as_secs_f64()
}

/// The colour of a marker line.
fn marker_color(kind: MarkerKind) -> Color32 {
    match kind {
        MarkerKind::Load | MarkerKind::Restore => Color32::from_rgb(0x42, 0xa5, 0xf5),
        MarkerKind::Offload => Color32::from_rgb(0xff, 0xb7, 0x4d),
        MarkerKind::Release => Color32::from_rgb(0xba, 0x68, 0xc8),
        MarkerKind::OutOfMemory => ERROR_COLOR,
        MarkerKind::LiveStart | MarkerKind::LiveStop => Color32::from_rgb(0x66, 0xbb, 0x6a),
    }
}

fn plots_ui(ui: &mut egui::Ui, gpu: &GpuSnapshot, now: Instant, input: &PanelsInput<'_>) {
    let history: &GpuHistory = &input.view.history;
    let window = input.window;
    let points: Vec<&HistoryPoint> = history.window(&gpu.uuid, now, window).collect();
    let series = |value: &dyn Fn(&HistoryPoint) -> Option<f64>| -> Vec<[f64; 2]> {
        points
            .iter()
            .filter_map(|p| value(p).map(|v| [seconds_before(now, p), v]))
            .collect()
    };
    let used = series(&|p| p.used_bytes.map(format::bytes_to_gib));
    let total = series(&|p| p.total_bytes.map(format::bytes_to_gib));
    let util = series(&|p| p.gpu_util_percent.map(f64::from));
    let mem_util = series(&|p| p.memory_util_percent.map(f64::from));
    let total_gib = gpu
        .memory
        .map_or(1.0, |m| format::bytes_to_gib(m.total_bytes));
    let window_secs = window.as_secs_f64();
    let max_used_gib = used.iter().map(|p| p[1]).fold(0.0, f64::max);
    let y_max = vram_axis_max(max_used_gib, total_gib);
    let scaled = y_max < total_gib;

    ui.horizontal(|ui| {
        ui.label(RichText::new("VRAM (GiB)").small().weak());
        if scaled {
            ui.label(
                RichText::new(format!("0–{y_max} of {total_gib:.1}"))
                    .small()
                    .weak(),
            );
        }
    });
    small_plot(("vram", &gpu.uuid), window_secs, y_max).show(ui, |plot| {
        // On a large GPU the total would flatten everything else against the axis.
        if !scaled {
            plot.line(Line::new("total", total).color(Color32::GRAY));
        }
        plot.line(Line::new("used", used).color(TARGET_COLOR).fill(0.0));
        for marker in input.markers.for_gpu(&gpu.uuid) {
            let x = -now.saturating_duration_since(marker.at).as_secs_f64();
            if x < -window_secs {
                continue;
            }
            let label = marker_label(marker.kind);
            let color = marker_color(marker.kind);
            plot.vline(VLine::new(label, x).color(color).width(1.5));
            plot.text(
                Text::new(label, PlotPoint::new(x, y_max), label)
                    .color(color)
                    .anchor(egui::Align2::LEFT_TOP),
            );
        }
    });
    ui.label(RichText::new("Utilisation (%)").small().weak());
    small_plot(("util", &gpu.uuid), window_secs, 100.0).show(ui, |plot| {
        plot.line(Line::new("GPU", util).color(Color32::from_rgb(0x42, 0xa5, 0xf5)));
        plot.line(Line::new("memory", mem_util).color(Color32::from_rgb(0xff, 0xb7, 0x4d)));
    });
}

/// The top of the VRAM plot: the whole card while the memory in use is a sizeable part of it,
/// else a round number above the peak in the window, so that 1.6 GiB on a 141 GiB GPU (the model
/// loading, offloading, releasing) is a visible curve and not a line on the axis.
fn vram_axis_max(max_used_gib: f64, total_gib: f64) -> f64 {
    if !(max_used_gib.is_finite() && total_gib.is_finite()) || total_gib <= 0.0 {
        return total_gib.max(1.0);
    }
    if max_used_gib >= 0.4 * total_gib {
        return total_gib;
    }
    let wanted = (max_used_gib * 1.25).max(1.0);
    let magnitude = 10f64.powf(wanted.log10().floor());
    let nice = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * magnitude)
        .find(|&top| top >= wanted)
        .unwrap_or(10.0 * magnitude);
    nice.min(total_gib)
}

/// A fixed, non-interactive plot so scrolling the panel list never zooms a plot instead.
fn small_plot(id: (&str, &String), window_secs: f64, y_max: f64) -> Plot<'static> {
    Plot::new(id)
        .height(PLOT_HEIGHT)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .include_x(-window_secs)
        .include_x(0.0)
        .include_y(0.0)
        .include_y(y_max)
        .legend(Legend::default().position(Corner::LeftTop))
        .x_axis_formatter(|mark, _| minutes_seconds(mark.value))
}

/// `-90.0` → `-1:30`.
fn minutes_seconds(seconds: f64) -> String {
    // Axis marks are whole seconds at most a few hours away, so the cast is exact.
    let secs = seconds.round() as i64;
    let sign = if secs < 0 { "-" } else { "" };
    let abs = secs.unsigned_abs();
    format!("{sign}{}:{:02}", abs / 60, abs % 60)
}

fn processes_ui(ui: &mut egui::Ui, gpu: &GpuSnapshot, worker_pids: &[u32]) {
    if gpu.processes.is_empty() {
        ui.label(RichText::new("No processes on this GPU").weak());
        return;
    }
    // The source sorts already; sorting again keeps the table right for any source.
    let mut processes: Vec<&GpuProcess> = gpu.processes.iter().collect();
    processes.sort_by(|a, b| b.used_bytes.cmp(&a.used_bytes).then(a.pid.cmp(&b.pid)));
    egui::Grid::new(("processes", &gpu.uuid))
        .num_columns(4)
        .striped(true)
        .spacing([12.0, 2.0])
        .show(ui, |ui| {
            for heading in ["PID", "Process", "VRAM", "Type"] {
                ui.label(RichText::new(heading).small().strong());
            }
            ui.end_row();
            for process in processes {
                process_row_ui(ui, process, worker_pids.contains(&process.pid));
                ui.end_row();
            }
        });
}

/// The process-table name of our worker.
pub const WORKER_PROCESS_LABEL: &str = "gpuscribe-worker (ours)";

fn process_row_ui(ui: &mut egui::Ui, process: &GpuProcess, is_worker: bool) {
    let ours = process.is_self || is_worker;
    let styled = |text: String| {
        let text = RichText::new(text);
        if ours {
            text.color(TARGET_COLOR).strong()
        } else {
            text
        }
    };
    ui.label(styled(process.pid.to_string()));
    let name = process
        .name
        .as_deref()
        .map_or(NOT_AVAILABLE, format::process_display_name);
    let name = if is_worker {
        WORKER_PROCESS_LABEL.to_owned()
    } else if process.is_self {
        format!("{name} (this app)")
    } else {
        name.to_owned()
    };
    let response = ui.label(styled(name));
    if let Some(full) = &process.name {
        response.on_hover_text(full);
    }
    ui.label(styled(
        process
            .used_bytes
            .map_or_else(|| NOT_AVAILABLE.to_owned(), format::mib),
    ));
    ui.label(styled(process.kind.short_label().to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_marks_read_as_minutes_and_seconds() {
        assert_eq!(minutes_seconds(-90.0), "-1:30");
        assert_eq!(minutes_seconds(-600.0), "-10:00");
        assert_eq!(minutes_seconds(0.0), "0:00");
        assert_eq!(minutes_seconds(-5.4), "-0:05");
    }

    #[test]
    fn the_vram_axis_follows_use_on_a_large_gpu() {
        // The H200: 1.6 GiB of 140.4 in use → a 2 GiB axis; idle → 1 GiB.
        assert_eq!(vram_axis_max(1.57, 140.4), 2.0);
        assert_eq!(vram_axis_max(0.0, 140.4), 1.0);
        assert_eq!(vram_axis_max(9.0, 140.4), 20.0);
        assert_eq!(vram_axis_max(41.0, 140.4), 100.0);
        // A busy card, or a small one, shows all of it.
        assert_eq!(vram_axis_max(60.0, 140.4), 140.4);
        assert_eq!(vram_axis_max(3.5, 8.0), 8.0);
        assert_eq!(vram_axis_max(0.2, 0.5), 0.5);
        // The peak always fits.
        for used in [0.3, 1.0, 1.7, 4.9, 12.0, 33.0, 55.9] {
            let top = vram_axis_max(used, 140.4);
            assert!((used..=140.4).contains(&top), "{used} → {top}");
        }
        assert_eq!(vram_axis_max(f64::NAN, 80.0), 80.0);
    }
}
