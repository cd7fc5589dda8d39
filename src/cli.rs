//! Command-line interface: `gpuscribe` (window), `gpuscribe gpus [--json]` and
//! `gpuscribe transcribe FILE…` (see [`crate::cli_transcribe`]), `gpuscribe listen` (see
//! [`crate::cli_listen`]). Runs on the main
//! thread before the window opens. Add a subcommand by adding a [`Command`] variant and a match
//! arm in `main.rs`.
//!
//! # `gpuscribe gpus --json` (schema version 1)
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "status": "ok",                 // or "no_gpu", "no_driver", "driver_not_loaded",
//!                                   //    "no_permission", "driver_too_old", "driver_error"
//!   "message": null,                // human explanation when status is not "ok"
//!   "driver_version": "580.159.04", // null without a driver
//!   "cuda_driver_version": 13000,   // CUDA version the driver supports ×1000, or null
//!   "taken_at_unix_ms": 1763876400000,
//!   "sample_cost_us": 812,
//!   "auto_device": { "kind": "gpu", "uuid": "GPU-…", "nvml_index": 0, "cuda_ordinal": 0,
//!                    "name": "NVIDIA H100 80GB HBM3" },   // or { "kind": "cpu" }
//!   "selected_device": { … same shape: where --device / SENSEVOICE_DEVICE lands; for `all`:
//!                        { "kind": "all", "gpu_count": 2 } },
//!   "gpus": [ { "nvml_index": 0, "cuda_ordinal": 0, "uuid": "GPU-…", "name": "…",
//!               "pci_bus_id": "00000000:18:00.0",
//!               "memory": { "total_bytes": …, "used_bytes": …, "free_bytes": …,
//!                           "reserved_bytes": … },          // or null
//!               "gpu_util_percent": 12, "memory_util_percent": 3, "temperature_c": 38,
//!               "power_draw_mw": 122875, "power_limit_mw": 700000,
//!               "sm_clock_mhz": 1980, "memory_clock_mhz": 2619, "fan_speed_percent": null,
//!               "processes": [ { "pid": 405, "name": "python3", "used_bytes": 3764387840,
//!                                "kind": "compute", "is_self": false } ],
//!               "error": null } ]
//! }
//! ```
//! Metrics a GPU does not support are `null`. New fields may be added; existing ones keep
//! their meaning until `schema_version` changes.

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::gpu::{
    DeviceChoice, DeviceChoiceError, GpuFeed, GpuSample, GpuSnapshot, GpuStatus, ResolvedDevice,
    cuda_ordinal,
};

/// Speech transcription on a shared GPU with SenseVoice-Small, and a live NVIDIA GPU monitor.
#[derive(Debug, Parser)]
#[command(name = "gpuscribe", version, about)]
pub struct Cli {
    /// Where transcription runs: auto, cpu, all (every GPU, one worker each), cuda:N, or a
    /// GPU UUID.
    #[arg(long, global = true, env = "SENSEVOICE_DEVICE")]
    pub device: Option<String>,

    /// Audio files or folders to queue in the window as it opens (as if dropped on it).
    #[arg(value_name = "FILE")]
    pub open: Vec<std::path::PathBuf>,

    /// What to do; none opens the window.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; none opens the window.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List NVIDIA GPUs with memory, utilisation and processes.
    Gpus {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Transcribe audio files (`--device all` spreads them over every GPU), or one shard of a
    /// list as a task of a Slurm array or Kubernetes Indexed Job.
    #[command(after_help = crate::cli_transcribe::EXIT_STATUS_HELP)]
    Transcribe(crate::cli_transcribe::TranscribeArgs),
    /// The release model: status, download, verify (see [`crate::cli_model`]).
    Model(crate::cli_model::ModelArgs),
    /// Live captions from a microphone (or a WAV file played at real-time pace).
    Listen(crate::cli_listen::ListenArgs),
    /// List, search and export past transcripts (the window's History).
    History(crate::cli_history::HistoryArgs),
    /// Serve the model for the app (started by the engine; not for people).
    #[cfg(not(feature = "cuda"))]
    #[command(hide = true)]
    Worker,
}

/// How long start-up waits for the monitor's first sample (NVML init can take seconds on
/// machines with many GPUs and persistence mode off).
pub const FIRST_SAMPLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `transcribe` with Auto waits for the GPU list before it runs without GPUs.
pub const AUTO_GPU_WAIT: Duration = Duration::from_secs(5);

/// Whether a `--device` value is the CPU (no GPU list needed at all).
pub fn is_cpu_device(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("cpu"))
}

/// Whether a `--device` value names particular GPUs (`cuda:N`, a UUID): validating it needs the
/// monitor's GPU list. `auto`, `cpu`, `all` and no value do not.
pub fn device_names_gpus(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !(v.eq_ignore_ascii_case("cpu")
            || v.eq_ignore_ascii_case("auto")
            || v.eq_ignore_ascii_case("all"))
    })
}

/// The monitor's first word, or an error if it stays silent.
pub fn first_status(feed: &mut GpuFeed) -> anyhow::Result<GpuStatus> {
    feed.wait_first(FIRST_SAMPLE_TIMEOUT)
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the GPU monitor did not answer within {} s",
                FIRST_SAMPLE_TIMEOUT.as_secs()
            )
        })
}

/// The GPUs in a status (none when the driver is unavailable).
pub fn gpus_of(status: &GpuStatus) -> &[GpuSnapshot] {
    match status {
        GpuStatus::Sample(sample) => &sample.gpus,
        GpuStatus::Unavailable(_) => &[],
    }
}

/// Validates `--device` / `SENSEVOICE_DEVICE` against the GPUs present.
pub fn validate_device(
    value: Option<&str>,
    status: &GpuStatus,
    cuda_visible_devices: Option<&str>,
) -> Result<Option<DeviceChoice>, DeviceChoiceError> {
    value
        .map(|v| DeviceChoice::parse(v, gpus_of(status), cuda_visible_devices))
        .transpose()
}

/// Where a device choice lands, in the JSON report.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceReport {
    /// The CPU.
    Cpu,
    /// A GPU.
    Gpu {
        /// NVML UUID.
        uuid: String,
        /// NVML index.
        nvml_index: u32,
        /// CUDA ordinal inside the engine (PCI bus order, `CUDA_VISIBLE_DEVICES` applied).
        cuda_ordinal: Option<u32>,
        /// Marketing name.
        name: String,
    },
    /// Every usable GPU, one worker each (`--device all` with at least one GPU).
    All {
        /// How many GPUs.
        gpu_count: usize,
    },
}

/// One GPU in the JSON report: the snapshot plus its CUDA ordinal.
#[derive(Debug, Serialize)]
pub struct GpuEntry<'a> {
    /// CUDA ordinal inside the engine, `null` when hidden by `CUDA_VISIBLE_DEVICES`.
    pub cuda_ordinal: Option<u32>,
    /// The snapshot's fields.
    #[serde(flatten)]
    pub gpu: &'a GpuSnapshot,
}

/// The `gpuscribe gpus --json` document (see the module docs for its shape).
#[derive(Debug, Serialize)]
pub struct GpusReport<'a> {
    /// Bumped when a field changes meaning or goes away.
    pub schema_version: u32,
    /// `ok`, `no_gpu`, or the driver problem's code.
    pub status: &'static str,
    /// Explanation when `status` is not `ok`.
    pub message: Option<String>,
    /// NVIDIA driver version.
    pub driver_version: Option<&'a str>,
    /// CUDA version the driver supports ×1000.
    pub cuda_driver_version: Option<i32>,
    /// When the sample was taken.
    pub taken_at_unix_ms: Option<u64>,
    /// How long the sample took.
    pub sample_cost_us: Option<u64>,
    /// Where `auto` would run.
    pub auto_device: DeviceReport,
    /// Where `--device` (default auto) runs.
    pub selected_device: DeviceReport,
    /// Every GPU.
    pub gpus: Vec<GpuEntry<'a>>,
}

/// Message for a machine where NVML works but reports no GPU.
pub const NO_GPU_MESSAGE: &str = "no NVIDIA GPU found";

/// Builds the report from the monitor's first status.
pub fn gpus_report<'a>(
    status: &'a GpuStatus,
    device: &DeviceChoice,
    cuda_visible_devices: Option<&str>,
) -> GpusReport<'a> {
    let gpus = gpus_of(status);
    let device_report = |choice: &DeviceChoice| match choice.resolve(gpus, cuda_visible_devices) {
        ResolvedDevice::Cpu(_) => DeviceReport::Cpu,
        ResolvedDevice::Gpu(gpu) => DeviceReport::Gpu {
            uuid: gpu.uuid.clone(),
            nvml_index: gpu.nvml_index,
            cuda_ordinal: cuda_ordinal(&gpu.uuid, gpus, cuda_visible_devices),
            name: gpu.name.clone(),
        },
        ResolvedDevice::AllGpus { count } => DeviceReport::All { gpu_count: count },
    };
    let (status_code, message, sample): (_, _, Option<&GpuSample>) = match status {
        GpuStatus::Unavailable(err) => (err.code(), Some(err.to_string()), None),
        GpuStatus::Sample(sample) if sample.gpus.is_empty() => {
            ("no_gpu", Some(NO_GPU_MESSAGE.to_owned()), Some(sample))
        }
        GpuStatus::Sample(sample) => ("ok", None, Some(sample)),
    };
    GpusReport {
        schema_version: 1,
        status: status_code,
        message,
        driver_version: sample.and_then(|s| s.driver.driver_version.as_deref()),
        cuda_driver_version: sample.and_then(|s| s.driver.cuda_driver_version),
        taken_at_unix_ms: sample.map(|s| s.taken_at_unix_ms),
        sample_cost_us: sample.map(|s| s.sample_cost_us),
        auto_device: device_report(&DeviceChoice::Auto),
        selected_device: device_report(device),
        gpus: gpus
            .iter()
            .map(|gpu| GpuEntry {
                cuda_ordinal: cuda_ordinal(&gpu.uuid, gpus, cuda_visible_devices),
                gpu,
            })
            .collect(),
    }
}

const MIB: u64 = 1 << 20;

fn or_na(value: Option<String>) -> String {
    value.unwrap_or_else(|| "n/a".to_owned())
}

/// Writes the human-readable table.
pub fn write_gpus_table(out: &mut dyn Write, report: &GpusReport<'_>) -> std::io::Result<()> {
    if report.gpus.is_empty() {
        match &report.message {
            Some(message) if report.status != "no_gpu" => {
                writeln!(out, "{NO_GPU_MESSAGE}: {message}")?;
            }
            _ => writeln!(out, "{NO_GPU_MESSAGE}")?,
        }
        writeln!(out, "Auto would pick: CPU")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<4} {:<6} {:<28} {:>19} {:>6} {:>6} {:>13}  UUID",
        "GPU", "CUDA", "NAME", "VRAM USED / TOTAL", "UTIL", "TEMP", "POWER"
    )?;
    for entry in &report.gpus {
        let gpu = entry.gpu;
        let vram = gpu.memory.map_or_else(
            || "n/a".to_owned(),
            |m| format!("{} / {} MiB", m.used_bytes / MIB, m.total_bytes / MIB),
        );
        let power = match (gpu.power_draw_mw, gpu.power_limit_mw) {
            (None, None) => "n/a".to_owned(),
            (draw, limit) => format!(
                "{} / {} W",
                or_na(draw.map(|v| (v / 1000).to_string())),
                or_na(limit.map(|v| (v / 1000).to_string()))
            ),
        };
        writeln!(
            out,
            "{:<4} {:<6} {:<28} {:>19} {:>6} {:>6} {:>13}  {}",
            gpu.nvml_index,
            or_na(entry.cuda_ordinal.map(|o| o.to_string())),
            gpu.name,
            vram,
            or_na(gpu.gpu_util_percent.map(|u| format!("{u} %"))),
            or_na(gpu.temperature_c.map(|t| format!("{t} °C"))),
            power,
            gpu.uuid
        )?;
        if let Some(error) = &gpu.error {
            writeln!(out, "     error: {error}")?;
        }
        for process in &gpu.processes {
            writeln!(
                out,
                "     pid {:<8} {:>10}  {}{}",
                process.pid,
                or_na(process.used_bytes.map(|b| format!("{} MiB", b / MIB))),
                process.name.as_deref().unwrap_or("n/a"),
                if process.is_self {
                    " (this process)"
                } else {
                    ""
                }
            )?;
        }
    }
    match &report.auto_device {
        DeviceReport::Cpu => writeln!(out, "Auto would pick: CPU")?,
        // Not reached today (Auto picks one device), but the table should not lie if it is.
        DeviceReport::All { gpu_count } => writeln!(out, "Auto would pick: all {gpu_count} GPUs")?,
        DeviceReport::Gpu {
            uuid,
            nvml_index,
            cuda_ordinal,
            name,
        } => writeln!(
            out,
            "Auto would pick: GPU {nvml_index} ({name}, {uuid}, cuda:{})",
            or_na(cuda_ordinal.map(|o| o.to_string()))
        )?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DriverInfo, GpuInitError, fake_gpu, fake_process, set_fake_used_bytes};

    fn sample(gpus: Vec<GpuSnapshot>) -> GpuStatus {
        GpuStatus::Sample(GpuSample::now(gpus, 42, DriverInfo::default()))
    }

    #[test]
    fn cli_parses_gpus_subcommand_and_device() {
        let cli = Cli::try_parse_from(["gpuscribe", "gpus", "--json", "--device", "cpu"])
            .expect("valid command line");
        assert_eq!(cli.device.as_deref(), Some("cpu"));
        assert!(matches!(cli.command, Some(Command::Gpus { json: true })));
        let cli = Cli::try_parse_from(["gpuscribe"]).expect("no arguments opens the window");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["gpuscribe", "a.wav", "talks", "--device", "cpu"])
            .expect("files open the window");
        assert!(cli.command.is_none());
        assert_eq!(
            cli.open,
            [std::path::PathBuf::from("a.wav"), "talks".into()]
        );
        let cli = Cli::try_parse_from(["gpuscribe", "transcribe", "a.wav"]).expect("subcommand");
        assert!(cli.open.is_empty() && matches!(cli.command, Some(Command::Transcribe(_))));
        // A global option before the subcommand still leaves it a subcommand.
        let cli = Cli::try_parse_from(["gpuscribe", "--device", "cpu", "gpus"]).expect("gpus");
        assert!(cli.open.is_empty() && matches!(cli.command, Some(Command::Gpus { .. })));
    }

    #[test]
    fn device_validation_uses_present_gpus() {
        let status = sample(vec![fake_gpu(0)]);
        assert_eq!(validate_device(None, &status, None), Ok(None));
        assert_eq!(
            validate_device(Some("cuda:0"), &status, None),
            Ok(Some(DeviceChoice::Gpu {
                uuid: fake_gpu(0).uuid
            }))
        );
        let no_driver = GpuStatus::Unavailable(GpuInitError::DriverNotLoaded);
        let err = validate_device(Some("cuda:0"), &no_driver, None).expect_err("no GPUs");
        assert_eq!(err.valid_choices, "auto, cpu, all (no NVIDIA GPU found)");
        assert_eq!(
            validate_device(Some("ALL"), &no_driver, None),
            Ok(Some(DeviceChoice::All))
        );
    }

    #[test]
    fn report_of_all_counts_the_gpus() {
        let status = sample(vec![fake_gpu(0), fake_gpu(1)]);
        let report = gpus_report(&status, &DeviceChoice::All, None);
        assert_eq!(report.selected_device, DeviceReport::All { gpu_count: 2 });
        let json = serde_json::to_value(&report.selected_device).expect("serialise");
        assert_eq!(json, serde_json::json!({ "kind": "all", "gpu_count": 2 }));
        let no_gpu = sample(Vec::new());
        let report = gpus_report(&no_gpu, &DeviceChoice::All, None);
        assert_eq!(report.selected_device, DeviceReport::Cpu);
    }

    #[test]
    fn report_without_driver_picks_cpu() {
        let status = GpuStatus::Unavailable(GpuInitError::NoDriver {
            detail: "libnvidia-ml.so.1: cannot open shared object file".to_owned(),
        });
        let report = gpus_report(&status, &DeviceChoice::Auto, None);
        assert_eq!(report.status, "no_driver");
        assert_eq!(report.auto_device, DeviceReport::Cpu);
        let mut table = Vec::new();
        write_gpus_table(&mut table, &report).expect("write to memory");
        let table = String::from_utf8(table).expect("utf-8");
        assert!(
            table.starts_with("no NVIDIA GPU found: No NVIDIA driver found"),
            "{table}"
        );
    }

    #[test]
    fn report_lists_gpus_processes_and_auto_choice() {
        let mut busy = fake_gpu(0);
        busy.processes = vec![fake_process(7, "转写服务", 3 * 1024 * MIB, false)];
        set_fake_used_bytes(&mut busy, 3 * 1024 * MIB);
        let status = sample(vec![busy, fake_gpu(1)]);
        let report = gpus_report(&status, &DeviceChoice::Cpu, None);
        assert_eq!(report.status, "ok");
        assert_eq!(report.selected_device, DeviceReport::Cpu);
        assert!(matches!(
            &report.auto_device,
            DeviceReport::Gpu {
                nvml_index: 1,
                cuda_ordinal: Some(1),
                ..
            }
        ));
        let mut table = Vec::new();
        write_gpus_table(&mut table, &report).expect("write to memory");
        let table = String::from_utf8(table).expect("utf-8");
        assert!(table.contains("3072 / 81559 MiB"), "{table}");
        assert!(table.contains("pid 7"), "{table}");
        assert!(table.contains("转写服务"), "{table}");
        assert!(table.contains("Auto would pick: GPU 1"), "{table}");
    }
}
