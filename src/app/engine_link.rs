//! The app's side of the engine: what to send it (GPU free memory, the target device) and what it
//! said last (device slots, worker pids, VRAM markers, notices). UI thread only; no egui here.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::engine::{DeviceTarget, GpuFree, MarkerKind, SlotStatus};
use crate::gpu::{DeviceChoice, GpuSample, GpuSnapshot, cuda_ordinal};

/// The engine's view of the GPUs in `sample`: the ones CUDA can see, with readable memory.
pub fn gpu_free_list(sample: &GpuSample, cuda_visible_devices: Option<&str>) -> Vec<GpuFree> {
    sample
        .gpus
        .iter()
        .filter_map(|gpu| {
            let memory = gpu.memory?;
            let ordinal = cuda_ordinal(&gpu.uuid, &sample.gpus, cuda_visible_devices)?;
            Some(GpuFree {
                uuid: gpu.uuid.clone(),
                index: gpu.nvml_index,
                cuda_ordinal: usize::try_from(ordinal).ok()?,
                free_bytes: memory.free_bytes,
                total_bytes: memory.total_bytes,
            })
        })
        .collect()
}

/// The engine target for the device picker's choice.
pub fn target_for(choice: &DeviceChoice) -> DeviceTarget {
    DeviceTarget::from_choice(choice)
}

/// VRAM our worker `pid` uses on `gpu`, as NVML lists it (`None` if NVML does not list it).
pub fn worker_vram_bytes(gpu: &GpuSnapshot, pid: u32) -> Option<u64> {
    gpu.processes
        .iter()
        .filter(|p| p.pid == pid)
        .filter_map(|p| p.used_bytes)
        .reduce(|a, b| a + b)
}

/// A residency event on one GPU's time line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// What happened.
    pub kind: MarkerKind,
    /// When, on the monotonic clock the plots use.
    pub at: Instant,
}

/// The plot label of a marker.
pub fn marker_label(kind: MarkerKind) -> &'static str {
    match kind {
        MarkerKind::Load => "Load",
        MarkerKind::Offload => "Offload",
        MarkerKind::Restore => "Restore",
        MarkerKind::Release => "Release",
        MarkerKind::OutOfMemory => "OOM",
        MarkerKind::LiveStart => "Live",
        MarkerKind::LiveStop => "Live end",
    }
}

/// Markers per GPU UUID, oldest first, kept as long as the plot history.
#[derive(Debug, Default)]
pub struct MarkerLog {
    by_uuid: HashMap<String, VecDeque<Marker>>,
}

impl MarkerLog {
    /// Records a marker whose wall-clock time is `at`; `now` pairs the two clocks.
    pub fn record(&mut self, uuid: String, kind: MarkerKind, at: SystemTime, now: Instant) {
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        let at = now.checked_sub(age).unwrap_or(now);
        self.by_uuid
            .entry(uuid)
            .or_default()
            .push_back(Marker { kind, at });
    }

    /// Drops markers older than `retention` before `now`.
    pub fn trim(&mut self, now: Instant, retention: Duration) {
        for markers in self.by_uuid.values_mut() {
            while markers
                .front()
                .is_some_and(|m| now.saturating_duration_since(m.at) > retention)
            {
                markers.pop_front();
            }
        }
        self.by_uuid.retain(|_, markers| !markers.is_empty());
    }

    /// The markers of one GPU, oldest first.
    pub fn for_gpu(&self, uuid: &str) -> impl Iterator<Item = &Marker> {
        self.by_uuid.get(uuid).into_iter().flatten()
    }
}

/// What the engine last said about its device slots.
#[derive(Debug, Default)]
pub struct EngineView {
    /// Every device slot, as in the last `Event::Status`.
    pub slots: Vec<SlotStatus>,
    /// VRAM markers.
    pub markers: MarkerLog,
}

impl EngineView {
    /// Pids of our running worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.slots.iter().filter_map(|s| s.pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DriverInfo, fake_gpu, fake_process};

    #[test]
    fn hidden_gpus_are_not_offered_to_the_engine() {
        let sample = GpuSample::now(vec![fake_gpu(0), fake_gpu(1)], 1, DriverInfo::default());
        let all = gpu_free_list(&sample, None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].cuda_ordinal, 1);
        let only_second = gpu_free_list(&sample, Some("1"));
        assert_eq!(only_second.len(), 1);
        assert_eq!(only_second[0].uuid, fake_gpu(1).uuid);
        assert_eq!(only_second[0].cuda_ordinal, 0);
        assert_eq!(only_second[0].index, 1);
    }

    #[test]
    fn markers_are_trimmed_with_the_history() {
        let now = Instant::now();
        let mut log = MarkerLog::default();
        let wall = SystemTime::now();
        log.record("a".into(), MarkerKind::Load, wall, now);
        log.record(
            "a".into(),
            MarkerKind::Offload,
            wall,
            now + Duration::from_secs(100),
        );
        log.trim(now + Duration::from_secs(150), Duration::from_secs(60));
        let kinds: Vec<MarkerKind> = log.for_gpu("a").map(|m| m.kind).collect();
        assert_eq!(kinds, vec![MarkerKind::Offload]);
        assert_eq!(log.for_gpu("b").count(), 0);
    }

    #[test]
    fn worker_vram_sums_its_entries() {
        let mut gpu = fake_gpu(0);
        gpu.processes = vec![
            fake_process(7, "w", 5, false),
            fake_process(8, "x", 9, false),
        ];
        assert_eq!(worker_vram_bytes(&gpu, 7), Some(5));
        assert_eq!(worker_vram_bytes(&gpu, 9), None);
    }
}
