//! NVIDIA GPU monitor. Runs on the `gpu-monitor` thread, which alone owns NVML.
//!
//! ```text
//!  gpu-monitor thread                                  UI thread
//!  ┌──────────────────────────────┐  bounded channel   ┌─────────────────────────────┐
//!  │ GpuSource (NvmlSource / Fake)│ ──GpuStatus──────▶ │ GpuFeed::drain() in logic() │
//!  │ sample() every 500 ms        │  + repaint()       │ GpuHistory (10 min per UUID) │
//!  └──────────────────────────────┘                    └─────────────────────────────┘
//! ```
//!
//! * [`spawn_monitor`] starts the thread; the source is created on it, so NVML is initialised once
//!   and never crosses threads. Without a driver the feed carries one
//!   [`GpuStatus::Unavailable`] whose message the UI shows; nothing panics.
//! * Each [`GpuSample`] is plain data (serde `Serialize`), timed in [`GpuSample::sample_cost_us`].
//!   A field a GPU does not support is `None`; an error on one GPU goes to its
//!   [`GpuSnapshot::error`] and the next sample tries again.
//! * [`DeviceChoice`] and [`cuda_ordinal`] decide and name where transcription runs (by UUID).
//!
//! This module knows nothing about egui: the UI passes a repaint closure.

mod choice;
mod fake;
mod history;
mod monitor;
mod nvml;
mod snapshot;
mod source;

pub use choice::{
    CUDA_VISIBLE_DEVICES, CpuReason, DeviceChoice, DeviceChoiceError, ResolvedDevice, auto_pick,
    cuda_ordinal, cuda_visible_devices_from_env, cuda_visible_gpus,
};
pub use fake::{
    FakeGpuControl, FakeGpuSource, fake_gpu, fake_process, fake_uuid, set_fake_used_bytes,
};
pub use history::{GpuHistory, HistoryPoint, MAX_PLOT_WINDOW};
pub use monitor::{
    DEFAULT_SAMPLE_INTERVAL, GpuFeed, MAX_SAMPLE_INTERVAL, MIN_SAMPLE_INTERVAL, RepaintFn,
    clamp_sample_interval, spawn_monitor,
};
pub use nvml::{NvmlSource, init_error_from_nvml, merge_processes};
pub use snapshot::{
    DriverInfo, GpuProcess, GpuSample, GpuSnapshot, GpuStatus, MemorySnapshot, ProcessKind,
    short_uuid, sort_processes_by_vram,
};
pub use source::{GpuInitError, GpuSource, SampleError};

/// The environment variable that replaces NVML with `N` made-up GPUs, for demos, screenshots
/// and tests on machines without NVIDIA GPUs. Not meant for users.
pub const FAKE_GPUS_ENV: &str = "GPUSCRIBE_FAKE_GPUS";

/// Starts the monitor on the real driver, or on `GPUSCRIBE_FAKE_GPUS=N` fake GPUs when set.
pub fn spawn_default_monitor(
    interval: std::time::Duration,
    repaint: RepaintFn,
) -> std::io::Result<GpuFeed> {
    match fake_gpu_count_from_env() {
        Some(count) => spawn_monitor(move || Ok(FakeGpuSource::demo(count)), interval, repaint),
        None => spawn_monitor(NvmlSource::init, interval, repaint),
    }
}

/// `GPUSCRIBE_FAKE_GPUS` as a count (at most 64), if set to a number.
pub fn fake_gpu_count_from_env() -> Option<u32> {
    std::env::var(FAKE_GPUS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(|n| n.min(64))
}
