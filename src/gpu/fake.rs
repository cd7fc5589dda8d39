//! A [`GpuSource`] that makes up GPUs: for tests, and for demos on machines without NVIDIA GPUs
//! (`GPUSCRIBE_FAKE_GPUS=N gpuscribe`). Runs on the `gpu-monitor` thread like the real source.

use std::sync::{Arc, Mutex, PoisonError};

use super::{
    DriverInfo, GpuProcess, GpuSnapshot, GpuSource, MemorySnapshot, ProcessKind, SampleError,
    sort_processes_by_vram,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// PCI buses of the eight GPUs of a DGX H100, so demos look like a real machine.
const DEMO_PCI_BUSES: [u8; 8] = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB];

#[derive(Debug, Default)]
struct FakeState {
    gpus: Vec<GpuSnapshot>,
    /// Errors returned by the next samples, front first.
    failures: Vec<SampleError>,
    /// When set, GPUs are regenerated each sample with moving demo readings.
    demo_tick: Option<u64>,
    driver: DriverInfo,
}

/// The fake source; the monitor thread owns it.
pub struct FakeGpuSource {
    state: Arc<Mutex<FakeState>>,
}

/// Changes what a [`FakeGpuSource`] reports, from the test thread while the monitor runs.
#[derive(Clone)]
pub struct FakeGpuControl {
    state: Arc<Mutex<FakeState>>,
}

fn lock(state: &Mutex<FakeState>) -> std::sync::MutexGuard<'_, FakeState> {
    // A test that panicked while holding the lock must not hide its own failure behind ours.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeGpuSource {
    /// A source that reports exactly `gpus` until told otherwise through the control.
    pub fn new(gpus: Vec<GpuSnapshot>) -> (Self, FakeGpuControl) {
        let state = Arc::new(Mutex::new(FakeState {
            gpus,
            driver: DriverInfo {
                driver_version: Some("580.159.04 (fake)".to_owned()),
                cuda_driver_version: Some(13000),
            },
            ..FakeState::default()
        }));
        (
            Self {
                state: Arc::clone(&state),
            },
            FakeGpuControl { state },
        )
    }

    /// `gpu_count` made-up H100s whose load moves over time (for `GPUSCRIBE_FAKE_GPUS`).
    pub fn demo(gpu_count: u32) -> Self {
        let (source, control) = Self::new(demo_gpus(gpu_count, 0));
        lock(&control.state).demo_tick = Some(0);
        source
    }
}

impl FakeGpuControl {
    /// Replaces the GPUs reported from the next sample on.
    pub fn set_gpus(&self, gpus: Vec<GpuSnapshot>) {
        lock(&self.state).gpus = gpus;
    }

    /// Edits the GPUs reported from the next sample on.
    pub fn update(&self, edit: impl FnOnce(&mut Vec<GpuSnapshot>)) {
        edit(&mut lock(&self.state).gpus);
    }

    /// Makes the next sample fail as a whole (as if the GPU count could not be read).
    pub fn fail_next_sample(&self, message: &str) {
        lock(&self.state)
            .failures
            .push(SampleError(message.to_owned()));
    }
}

impl GpuSource for FakeGpuSource {
    fn driver_info(&mut self) -> DriverInfo {
        lock(&self.state).driver.clone()
    }

    fn sample(&mut self) -> Result<Vec<GpuSnapshot>, SampleError> {
        let mut state = lock(&self.state);
        if !state.failures.is_empty() {
            return Err(state.failures.remove(0));
        }
        if let Some(tick) = state.demo_tick.as_mut() {
            *tick += 1;
            let tick = *tick;
            let count = u32::try_from(state.gpus.len()).unwrap_or(u32::MAX);
            state.gpus = demo_gpus(count, tick);
        }
        Ok(state.gpus.clone())
    }
}

/// A made-up UUID that is stable per index and looks like NVML's.
pub fn fake_uuid(index: u32) -> String {
    let seed = u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        seed >> 32,
        (seed >> 16) & 0xFFFF,
        seed & 0xFFFF,
        (seed >> 48) & 0xFFFF,
        seed & 0xFFFF_FFFF_FFFF
    )
}

/// An idle 80 GB H100 at NVML index `index`, with every field filled in and no processes.
pub fn fake_gpu(index: u32) -> GpuSnapshot {
    let bus = DEMO_PCI_BUSES
        .get(usize::try_from(index).unwrap_or(usize::MAX))
        .copied()
        .unwrap_or(0xE0);
    let mut gpu = GpuSnapshot::identity_only(
        index,
        fake_uuid(index),
        "NVIDIA H100 80GB HBM3".to_owned(),
        format!("00000000:{bus:02X}:00.0"),
    );
    let total_bytes = 85_520_809_984; // An H100 80GB as NVML reports it.
    let reserved_bytes = 503_316_480;
    let used_bytes = 0;
    gpu.memory = Some(MemorySnapshot {
        total_bytes,
        used_bytes,
        free_bytes: total_bytes - reserved_bytes - used_bytes,
        reserved_bytes,
    });
    gpu.gpu_util_percent = Some(0);
    gpu.memory_util_percent = Some(0);
    gpu.temperature_c = Some(31);
    gpu.power_draw_mw = Some(72_000);
    gpu.power_limit_mw = Some(700_000);
    gpu.sm_clock_mhz = Some(345);
    gpu.memory_clock_mhz = Some(2619);
    gpu.fan_speed_percent = None; // Passively cooled, like a real H100.
    gpu
}

/// Sets a fake GPU's used VRAM and keeps `free` consistent with NVML's v2 arithmetic.
pub fn set_fake_used_bytes(gpu: &mut GpuSnapshot, used_bytes: u64) {
    if let Some(memory) = gpu.memory.as_mut() {
        memory.used_bytes = used_bytes.min(memory.total_bytes - memory.reserved_bytes);
        memory.free_bytes = memory.total_bytes - memory.reserved_bytes - memory.used_bytes;
    }
}

/// A fake process entry.
pub fn fake_process(pid: u32, name: &str, used_bytes: u64, is_self: bool) -> GpuProcess {
    GpuProcess {
        pid,
        name: Some(name.to_owned()),
        used_bytes: Some(used_bytes),
        kind: ProcessKind::Compute,
        is_self,
    }
}

/// The demo machine at time step `tick`: loads follow slow waves with a phase per GPU.
fn demo_gpus(count: u32, tick: u64) -> Vec<GpuSnapshot> {
    (0..count)
        .map(|index| {
            let mut gpu = fake_gpu(index);
            let phase = tick as f64 / 40.0 + f64::from(index) * 0.9;
            let wave = 0.5 + 0.5 * phase.sin();
            let mut processes = match index {
                0 => vec![
                    fake_process(std::process::id(), "gpuscribe", 1_450 * MIB, true),
                    fake_process(4012, "转写服务", 3 * GIB + 200 * MIB, false),
                    fake_process(3921, "python3", 21 * GIB, false),
                ],
                1 => vec![fake_process(5120, "vllm-server", 68 * GIB, false)],
                2 => Vec::new(),
                _ => vec![fake_process(
                    6000 + index,
                    "train.py",
                    (20 + u64::from(index) * 5) * GIB,
                    false,
                )],
            };
            sort_processes_by_vram(&mut processes);
            let used: u64 = processes.iter().filter_map(|p| p.used_bytes).sum();
            set_fake_used_bytes(&mut gpu, used);
            // `wave` is in 0..=1, so the cast cannot overflow.
            let util = if processes.is_empty() {
                0
            } else {
                (wave * 95.0) as u32
            };
            gpu.gpu_util_percent = Some(util);
            gpu.memory_util_percent = Some(util / 3);
            gpu.temperature_c = Some(31 + util / 3);
            gpu.power_draw_mw = Some(72_000 + util * 6_000);
            gpu.sm_clock_mhz = Some(if util > 0 { 1980 } else { 345 });
            gpu.processes = processes;
            gpu
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_uuids_are_distinct_and_nvml_shaped() {
        let uuids: Vec<String> = (0..8).map(fake_uuid).collect();
        for uuid in &uuids {
            assert_eq!(uuid.len(), "GPU-".len() + 36, "{uuid}");
            assert!(uuid.starts_with("GPU-"));
        }
        let mut unique = uuids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), uuids.len());
    }

    #[test]
    fn demo_memory_adds_up() {
        for gpu in demo_gpus(8, 17) {
            let m = gpu.memory.expect("demo GPUs report memory");
            assert_eq!(
                m.used_bytes + m.free_bytes + m.reserved_bytes,
                m.total_bytes
            );
        }
    }
}
