//! Plain data that the `gpu-monitor` thread sends to the UI and the CLI: no NVML types, no egui.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::GpuInitError;

/// One GPU as seen in one sample.
///
/// Every metric is an `Option`: `None` means the GPU or driver does not support that query
/// (NVML `NotSupported`) or that reading it failed this time (then [`Self::error`] says why).
/// The UI shows `None` as "n/a".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuSnapshot {
    /// NVML's index of the GPU. It can differ from the CUDA ordinal: see [`super::cuda_ordinal`].
    pub nvml_index: u32,
    /// NVML's UUID, e.g. `GPU-8a5d3c1e-…`: the stable identity used everywhere in the app.
    pub uuid: String,
    /// The marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The PCI bus id as NVML prints it, e.g. `00000000:3B:00.0`.
    pub pci_bus_id: String,
    /// VRAM figures from `nvmlDeviceGetMemoryInfo_v2`.
    pub memory: Option<MemorySnapshot>,
    /// Percent of time over the driver's last sample period that a kernel was running.
    pub gpu_util_percent: Option<u32>,
    /// Percent of time over the driver's last sample period that memory was read or written.
    pub memory_util_percent: Option<u32>,
    /// GPU core temperature.
    pub temperature_c: Option<u32>,
    /// Power draw of the whole board.
    pub power_draw_mw: Option<u32>,
    /// The power limit the driver enforces.
    pub power_limit_mw: Option<u32>,
    /// Current streaming-multiprocessor clock.
    pub sm_clock_mhz: Option<u32>,
    /// Current memory clock.
    pub memory_clock_mhz: Option<u32>,
    /// Speed of fan 0 as a percent of its maximum; `None` on passively cooled boards.
    pub fan_speed_percent: Option<u32>,
    /// Processes with a context on this GPU, largest VRAM first.
    pub processes: Vec<GpuProcess>,
    /// Why some fields are missing in this sample (not set for `NotSupported`); `None` when the
    /// sample is complete. The next sample starts afresh, so a transient error clears itself.
    pub error: Option<String>,
}

impl GpuSnapshot {
    /// A snapshot with identity only and every metric unknown, e.g. to carry an error.
    pub fn identity_only(nvml_index: u32, uuid: String, name: String, pci_bus_id: String) -> Self {
        Self {
            nvml_index,
            uuid,
            name,
            pci_bus_id,
            memory: None,
            gpu_util_percent: None,
            memory_util_percent: None,
            temperature_c: None,
            power_draw_mw: None,
            power_limit_mw: None,
            sm_clock_mhz: None,
            memory_clock_mhz: None,
            fan_speed_percent: None,
            processes: Vec::new(),
            error: None,
        }
    }

    /// Free VRAM in bytes, if known.
    pub fn free_bytes(&self) -> Option<u64> {
        self.memory.map(|m| m.free_bytes)
    }

    /// The first 8 hex digits of the UUID (`GPU-8a5d3c1e`), as `nvidia-smi -L` users know it.
    pub fn short_uuid(&self) -> &str {
        short_uuid(&self.uuid)
    }
}

/// `GPU-8a5d3c1e-…` → `GPU-8a5d3c1e`; anything else is returned whole.
pub fn short_uuid(uuid: &str) -> &str {
    match uuid.char_indices().filter(|(_, c)| *c == '-').nth(1) {
        Some((end, _)) => &uuid[..end],
        None => uuid,
    }
}

/// VRAM in bytes, with NVML v2 semantics: `used_bytes` **excludes** `reserved_bytes` (memory the
/// driver and firmware set aside), so `used + free + reserved = total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemorySnapshot {
    /// Installed VRAM.
    pub total_bytes: u64,
    /// Allocated by processes (excludes `reserved_bytes`).
    pub used_bytes: u64,
    /// Available for new allocations.
    pub free_bytes: u64,
    /// Held by the driver and firmware.
    pub reserved_bytes: u64,
}

/// Which NVML process lists a process appeared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    /// CUDA/compute context only ("C" in nvidia-smi).
    Compute,
    /// Graphics context only ("G").
    Graphics,
    /// Both ("C+G"); NVML reports the same memory figure in both lists, so it is not summed.
    ComputeAndGraphics,
}

impl ProcessKind {
    /// The nvidia-smi style short label.
    pub fn short_label(self) -> &'static str {
        match self {
            Self::Compute => "C",
            Self::Graphics => "G",
            Self::ComputeAndGraphics => "C+G",
        }
    }
}

/// One process with memory on a GPU (compute and graphics lists merged by pid).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    /// Process id (as seen from this PID namespace).
    pub pid: u32,
    /// The process name NVML reports; `None` when it cannot see the process (other container).
    pub name: Option<String>,
    /// VRAM held by the process; `None` when the driver does not report it (e.g. WDDM, MIG).
    pub used_bytes: Option<u64>,
    /// Compute, graphics or both.
    pub kind: ProcessKind,
    /// `true` for this very process (GPU Scribe itself).
    pub is_self: bool,
}

/// Sorts processes by VRAM, largest first; unknown sizes last, then by pid for a stable order.
pub fn sort_processes_by_vram(processes: &mut [GpuProcess]) {
    processes.sort_by(|a, b| {
        b.used_bytes
            .cmp(&a.used_bytes)
            .then_with(|| a.pid.cmp(&b.pid))
    });
}

/// Facts about the driver, read once at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DriverInfo {
    /// e.g. `580.159.04`.
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, as NVML encodes it (`13000` = CUDA 13.0).
    pub cuda_driver_version: Option<i32>,
}

/// One round of readings over every GPU.
#[derive(Clone, Debug, Serialize)]
pub struct GpuSample {
    /// When the sample was taken (monotonic; for history and plots).
    #[serde(skip)]
    pub taken_at: Instant,
    /// When the sample was taken, as Unix time in milliseconds.
    pub taken_at_unix_ms: u64,
    /// Every GPU NVML reports, in NVML index order. Empty when the machine has none.
    pub gpus: Vec<GpuSnapshot>,
    /// How long reading all GPUs took, in microseconds (the monitor's own cost).
    pub sample_cost_us: u64,
    /// Driver facts, repeated in every sample so a late consumer has them.
    pub driver: DriverInfo,
}

impl GpuSample {
    /// A sample taken now.
    pub fn now(gpus: Vec<GpuSnapshot>, sample_cost_us: u64, driver: DriverInfo) -> Self {
        let taken_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            taken_at: Instant::now(),
            taken_at_unix_ms,
            gpus,
            sample_cost_us,
            driver,
        }
    }
}

/// What the monitor sends over its channel.
#[derive(Clone, Debug)]
pub enum GpuStatus {
    /// NVML could not start: sent once, then the monitor thread ends.
    Unavailable(GpuInitError),
    /// A fresh sample.
    Sample(GpuSample),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, used_bytes: Option<u64>) -> GpuProcess {
        GpuProcess {
            pid,
            name: None,
            used_bytes,
            kind: ProcessKind::Compute,
            is_self: false,
        }
    }

    #[test]
    fn processes_sort_largest_first_unknown_last() {
        let mut list = vec![
            process(1, None),
            process(2, Some(10)),
            process(3, Some(30)),
            process(4, Some(10)),
        ];
        sort_processes_by_vram(&mut list);
        let pids: Vec<u32> = list.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [3, 2, 4, 1]);
    }

    #[test]
    fn short_uuid_keeps_prefix_and_first_group() {
        assert_eq!(
            short_uuid("GPU-8a5d3c1e-1111-2222-3333-444455556666"),
            "GPU-8a5d3c1e"
        );
        assert_eq!(short_uuid("odd"), "odd");
    }
}
