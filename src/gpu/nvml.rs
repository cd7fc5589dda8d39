//! The real [`GpuSource`]: NVML through nvml-wrapper. Created and used on the `gpu-monitor` thread.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::{Device, Nvml};

use super::{
    DriverInfo, GpuInitError, GpuProcess, GpuSnapshot, GpuSource, MemorySnapshot, ProcessKind,
    SampleError, sort_processes_by_vram,
};

/// Where else to look for the library when the loader's search path does not have it (e.g. a
/// desktop session started without the driver's directory in `ld.so.conf`).
const FALLBACK_LIB_PATHS: [&str; 4] = [
    "libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/lib/wsl/lib/libnvidia-ml.so.1",
];

/// Longest process name NVML is asked for.
const PROCESS_NAME_MAX_LEN: usize = 256;

/// NVML, initialised once for the life of the monitor thread.
pub struct NvmlSource {
    nvml: Nvml,
    own_pid: u32,
    /// Identity of each index seen so far, so a device that fails to open still shows its name.
    identities: HashMap<u32, (String, String, String)>,
}

impl NvmlSource {
    /// `Nvml::init()`, then the fallback library paths. Returns the most specific error seen.
    pub fn init() -> Result<Self, GpuInitError> {
        let first = match Nvml::init() {
            Ok(nvml) => return Ok(Self::from_nvml(nvml)),
            Err(err) => err,
        };
        let mut best = first;
        for path in FALLBACK_LIB_PATHS {
            match Nvml::builder().lib_path(OsStr::new(path)).init() {
                Ok(nvml) => return Ok(Self::from_nvml(nvml)),
                // A library that loaded but failed later says more than "not found".
                Err(err) if !matches!(err, NvmlError::LibloadingError(_)) => best = err,
                Err(_) => {}
            }
        }
        Err(init_error_from_nvml(best))
    }

    /// Loads NVML from exactly `lib_path` (tests use a path that does not exist).
    pub fn init_from(lib_path: &OsStr) -> Result<Self, GpuInitError> {
        Nvml::builder()
            .lib_path(lib_path)
            .init()
            .map(Self::from_nvml)
            .map_err(init_error_from_nvml)
    }

    fn from_nvml(nvml: Nvml) -> Self {
        Self {
            nvml,
            own_pid: std::process::id(),
            identities: HashMap::new(),
        }
    }

    fn read_device(&mut self, index: u32) -> GpuSnapshot {
        let device = match self.nvml.device_by_index(index) {
            Ok(device) => device,
            Err(err) => {
                let (uuid, name, pci_bus_id) =
                    self.identities.get(&index).cloned().unwrap_or_else(|| {
                        (
                            format!("nvml-index-{index}"),
                            "unknown GPU".to_owned(),
                            String::new(),
                        )
                    });
                let mut snapshot = GpuSnapshot::identity_only(index, uuid, name, pci_bus_id);
                snapshot.error = Some(format!("opening the device failed: {err}"));
                return snapshot;
            }
        };
        let mut errors = Vec::new();
        let cached = self.identities.get(&index);
        let uuid = field(device.uuid(), "uuid", &mut errors)
            .or_else(|| cached.map(|c| c.0.clone()))
            .unwrap_or_else(|| format!("nvml-index-{index}"));
        let name = field(device.name(), "name", &mut errors)
            .or_else(|| cached.map(|c| c.1.clone()))
            .unwrap_or_else(|| "unknown GPU".to_owned());
        let pci_bus_id = field(device.pci_info(), "PCI info", &mut errors)
            .map(|p| p.bus_id)
            .or_else(|| cached.map(|c| c.2.clone()))
            .unwrap_or_default();
        self.identities
            .insert(index, (uuid.clone(), name.clone(), pci_bus_id.clone()));

        let mut snapshot = GpuSnapshot::identity_only(index, uuid, name, pci_bus_id);
        snapshot.memory =
            field(device.memory_info(), "memory", &mut errors).map(|m| MemorySnapshot {
                total_bytes: m.total,
                used_bytes: m.used,
                free_bytes: m.free,
                reserved_bytes: m.reserved,
            });
        if let Some(u) = field(device.utilization_rates(), "utilisation", &mut errors) {
            snapshot.gpu_util_percent = Some(u.gpu);
            snapshot.memory_util_percent = Some(u.memory);
        }
        snapshot.temperature_c = field(
            device.temperature(TemperatureSensor::Gpu),
            "temperature",
            &mut errors,
        );
        snapshot.power_draw_mw = field(device.power_usage(), "power draw", &mut errors);
        snapshot.power_limit_mw = field(device.enforced_power_limit(), "power limit", &mut errors);
        snapshot.sm_clock_mhz = field(device.clock_info(Clock::SM), "SM clock", &mut errors);
        snapshot.memory_clock_mhz = field(
            device.clock_info(Clock::Memory),
            "memory clock",
            &mut errors,
        );
        // Passively cooled boards (H100, A100, …) have no fan: NVML answers fan 0 with
        // InvalidArg, which is "n/a", not an error.
        snapshot.fan_speed_percent = match device.num_fans() {
            Ok(0) => None,
            _ => field(device.fan_speed(0), "fan", &mut errors),
        };
        snapshot.processes = self.read_processes(&device, &mut errors);
        if !errors.is_empty() {
            snapshot.error = Some(errors.join("; "));
        }
        snapshot
    }

    fn read_processes(&self, device: &Device<'_>, errors: &mut Vec<String>) -> Vec<GpuProcess> {
        let compute = field(
            device.running_compute_processes(),
            "compute processes",
            errors,
        )
        .unwrap_or_default();
        let graphics = field(
            device.running_graphics_processes(),
            "graphics processes",
            errors,
        )
        .unwrap_or_default();
        let mut processes = merge_processes(&compute, &graphics, self.own_pid);
        for process in &mut processes {
            // Processes in another PID namespace have no name here; that is not an error.
            process.name = self
                .nvml
                .sys_process_name(process.pid, PROCESS_NAME_MAX_LEN)
                .ok();
        }
        processes
    }
}

impl GpuSource for NvmlSource {
    fn driver_info(&mut self) -> DriverInfo {
        DriverInfo {
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_driver_version: self.nvml.sys_cuda_driver_version().ok(),
        }
    }

    fn sample(&mut self) -> Result<Vec<GpuSnapshot>, SampleError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|err| SampleError(err.to_string()))?;
        Ok((0..count).map(|index| self.read_device(index)).collect())
    }
}

/// Maps NVML's start-up errors to the cases the UI explains differently.
pub fn init_error_from_nvml(err: NvmlError) -> GpuInitError {
    match err {
        NvmlError::LibloadingError(e) => GpuInitError::NoDriver {
            detail: e.to_string(),
        },
        NvmlError::LibraryNotFound => GpuInitError::NoDriver {
            detail: err.to_string(),
        },
        NvmlError::DriverNotLoaded => GpuInitError::DriverNotLoaded,
        NvmlError::NoPermission => GpuInitError::NoPermission,
        NvmlError::FailedToLoadSymbol(symbol) => GpuInitError::DriverTooOld { detail: symbol },
        other => GpuInitError::Other {
            detail: other.to_string(),
        },
    }
}

/// One field: `NotSupported` (and a symbol an older driver lacks) is "n/a", not an error.
fn field<T>(result: Result<T, NvmlError>, what: &str, errors: &mut Vec<String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => None,
        Err(err) => {
            errors.push(format!("{what}: {err}"));
            None
        }
    }
}

/// Merges NVML's compute and graphics lists by pid.
///
/// Within one list a pid can repeat (one entry per MIG instance): those sizes add up. Across the
/// two lists NVML reports the same per-process figure, so the larger one is kept, not the sum.
pub fn merge_processes(
    compute: &[ProcessInfo],
    graphics: &[ProcessInfo],
    own_pid: u32,
) -> Vec<GpuProcess> {
    fn sum_by_pid(list: &[ProcessInfo]) -> BTreeMap<u32, Option<u64>> {
        let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
        for info in list {
            let bytes = match info.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            };
            let entry = by_pid.entry(info.pid).or_insert(None);
            *entry = match (*entry, bytes) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                (a, b) => a.or(b),
            };
        }
        by_pid
    }
    let compute = sum_by_pid(compute);
    let graphics = sum_by_pid(graphics);
    let mut merged: BTreeMap<u32, GpuProcess> = BTreeMap::new();
    for (pid, used_bytes) in &compute {
        merged.insert(
            *pid,
            GpuProcess {
                pid: *pid,
                name: None,
                used_bytes: *used_bytes,
                kind: ProcessKind::Compute,
                is_self: *pid == own_pid,
            },
        );
    }
    for (pid, used_bytes) in &graphics {
        merged
            .entry(*pid)
            .and_modify(|p| {
                p.kind = ProcessKind::ComputeAndGraphics;
                p.used_bytes = p.used_bytes.max(*used_bytes);
            })
            .or_insert(GpuProcess {
                pid: *pid,
                name: None,
                used_bytes: *used_bytes,
                kind: ProcessKind::Graphics,
                is_self: *pid == own_pid,
            });
    }
    let mut list: Vec<GpuProcess> = merged.into_values().collect();
    sort_processes_by_vram(&mut list);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, used: UsedGpuMemory) -> ProcessInfo {
        ProcessInfo {
            pid,
            used_gpu_memory: used,
            gpu_instance_id: None,
            compute_instance_id: None,
        }
    }

    #[test]
    fn missing_library_is_no_driver() {
        // Reproduces the no-driver case even on a machine that has a driver.
        let err = NvmlSource::init_from(OsStr::new("/nonexistent/libnvidia-ml.so.1"))
            .err()
            .expect("loading a library that does not exist must fail");
        assert_eq!(err.code(), "no_driver");
        assert!(err.to_string().starts_with("No NVIDIA driver found"));
        assert!(err.detail().is_some_and(|d| d.contains("/nonexistent")));
    }

    #[test]
    fn init_errors_map_to_distinct_cases() {
        assert_eq!(
            init_error_from_nvml(NvmlError::DriverNotLoaded),
            GpuInitError::DriverNotLoaded
        );
        assert_eq!(
            init_error_from_nvml(NvmlError::NoPermission),
            GpuInitError::NoPermission
        );
        assert_eq!(
            init_error_from_nvml(NvmlError::FailedToLoadSymbol("nvmlInit_v2".into())).code(),
            "driver_too_old"
        );
        assert_eq!(
            init_error_from_nvml(NvmlError::Unknown).code(),
            "driver_error"
        );
    }

    #[test]
    fn not_supported_is_none_without_error() {
        let mut errors = Vec::new();
        assert_eq!(
            field::<u32>(Err(NvmlError::NotSupported), "fan", &mut errors),
            None
        );
        assert!(errors.is_empty());
        assert_eq!(
            field::<u32>(Err(NvmlError::GpuLost), "fan", &mut errors),
            None
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("fan: "));
    }

    #[test]
    fn compute_and_graphics_merge_by_pid() {
        let compute = [
            info(10, UsedGpuMemory::Used(100)),
            info(20, UsedGpuMemory::Used(500)),
            // Same pid on two MIG instances: sizes add up.
            info(30, UsedGpuMemory::Used(50)),
            info(30, UsedGpuMemory::Used(70)),
        ];
        let graphics = [
            info(10, UsedGpuMemory::Used(100)),
            info(40, UsedGpuMemory::Unavailable),
        ];
        let merged = merge_processes(&compute, &graphics, 20);
        let summary: Vec<(u32, Option<u64>, ProcessKind, bool)> = merged
            .iter()
            .map(|p| (p.pid, p.used_bytes, p.kind, p.is_self))
            .collect();
        assert_eq!(
            summary,
            [
                (20, Some(500), ProcessKind::Compute, true),
                (30, Some(120), ProcessKind::Compute, false),
                (10, Some(100), ProcessKind::ComputeAndGraphics, false),
                (40, None, ProcessKind::Graphics, false),
            ]
        );
    }
}
