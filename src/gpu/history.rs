//! Recent readings per GPU, keyed by UUID and trimmed by age. Owned by the UI thread, which feeds
//! it every [`GpuSample`] it drains from the monitor.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{GpuSample, GpuSnapshot};

/// The longest window the UI plots.
pub const MAX_PLOT_WINDOW: Duration = Duration::from_secs(10 * 60);

/// One reading of the plotted metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPoint {
    /// When the sample was taken.
    pub at: Instant,
    /// VRAM used (NVML v2: excludes reserved), if it was read.
    pub used_bytes: Option<u64>,
    /// VRAM installed, if it was read.
    pub total_bytes: Option<u64>,
    /// GPU utilisation, if it was read.
    pub gpu_util_percent: Option<u32>,
    /// Memory-controller utilisation, if it was read.
    pub memory_util_percent: Option<u32>,
}

impl HistoryPoint {
    fn from_snapshot(at: Instant, gpu: &GpuSnapshot) -> Self {
        Self {
            at,
            used_bytes: gpu.memory.map(|m| m.used_bytes),
            total_bytes: gpu.memory.map(|m| m.total_bytes),
            gpu_util_percent: gpu.gpu_util_percent,
            memory_util_percent: gpu.memory_util_percent,
        }
    }
}

/// Readings per GPU UUID, oldest first, none older than `retention`.
#[derive(Debug)]
pub struct GpuHistory {
    retention: Duration,
    per_gpu: HashMap<String, VecDeque<HistoryPoint>>,
}

impl Default for GpuHistory {
    fn default() -> Self {
        // A little more than the widest plot so the plot is full up to its left edge.
        Self::new(MAX_PLOT_WINDOW + Duration::from_secs(30))
    }
}

impl GpuHistory {
    /// Keeps readings for `retention` (at least [`MAX_PLOT_WINDOW`]).
    pub fn new(retention: Duration) -> Self {
        Self {
            retention: retention.max(MAX_PLOT_WINDOW),
            per_gpu: HashMap::new(),
        }
    }

    /// How long readings are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Appends a sample's readings and drops what has become too old.
    pub fn record(&mut self, sample: &GpuSample) {
        for gpu in &sample.gpus {
            self.per_gpu
                .entry(gpu.uuid.clone())
                .or_default()
                .push_back(HistoryPoint::from_snapshot(sample.taken_at, gpu));
        }
        self.trim(sample.taken_at);
    }

    /// Drops readings older than the retention as of `now`, and GPUs with no reading left.
    pub fn trim(&mut self, now: Instant) {
        let retention = self.retention;
        self.per_gpu.retain(|_, points| {
            while points
                .front()
                .is_some_and(|p| now.saturating_duration_since(p.at) > retention)
            {
                points.pop_front();
            }
            !points.is_empty()
        });
    }

    /// The readings of one GPU, oldest first.
    pub fn points(&self, uuid: &str) -> impl Iterator<Item = &HistoryPoint> {
        self.per_gpu.get(uuid).into_iter().flatten()
    }

    /// The readings of one GPU taken within `window` before `now`, oldest first.
    pub fn window(
        &self,
        uuid: &str,
        now: Instant,
        window: Duration,
    ) -> impl Iterator<Item = &HistoryPoint> {
        self.points(uuid)
            .filter(move |p| now.saturating_duration_since(p.at) <= window)
    }

    /// The UUIDs with at least one reading.
    pub fn uuids(&self) -> impl Iterator<Item = &str> {
        self.per_gpu.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DriverInfo, fake_gpu};

    fn sample_at(at: Instant, gpus: Vec<GpuSnapshot>) -> GpuSample {
        let mut sample = GpuSample::now(gpus, 0, DriverInfo::default());
        sample.taken_at = at;
        sample
    }

    #[test]
    fn trims_by_time_not_count() {
        let start = Instant::now();
        let mut history = GpuHistory::new(MAX_PLOT_WINDOW);
        let uuid = fake_gpu(0).uuid;
        // 12 minutes of samples every 500 ms.
        for step in 0..=(12 * 60 * 2) {
            let at = start + Duration::from_millis(500 * step);
            history.record(&sample_at(at, vec![fake_gpu(0)]));
        }
        let now = start + Duration::from_secs(12 * 60);
        let points: Vec<&HistoryPoint> = history.points(&uuid).collect();
        let oldest_age = now.saturating_duration_since(points[0].at);
        assert!(oldest_age <= MAX_PLOT_WINDOW, "{oldest_age:?}");
        // Exactly 10 minutes at 2 Hz, both ends included.
        assert_eq!(points.len(), 10 * 60 * 2 + 1);
        assert_eq!(oldest_age, MAX_PLOT_WINDOW);
    }

    #[test]
    fn retention_never_below_the_widest_plot() {
        assert_eq!(
            GpuHistory::new(Duration::from_secs(1)).retention(),
            MAX_PLOT_WINDOW
        );
    }

    #[test]
    fn keyed_by_uuid_and_gone_gpus_expire() {
        let start = Instant::now();
        let mut history = GpuHistory::new(MAX_PLOT_WINDOW);
        history.record(&sample_at(start, vec![fake_gpu(0), fake_gpu(1)]));
        // GPU 1 vanishes; its readings stay until they age out.
        history.record(&sample_at(
            start + Duration::from_secs(60),
            vec![fake_gpu(0)],
        ));
        assert_eq!(history.uuids().count(), 2);
        assert_eq!(history.points(&fake_gpu(1).uuid).count(), 1);
        history.trim(start + MAX_PLOT_WINDOW + Duration::from_secs(1));
        assert_eq!(history.points(&fake_gpu(1).uuid).count(), 0);
        assert_eq!(history.points(&fake_gpu(0).uuid).count(), 1);
        assert_eq!(history.uuids().count(), 1);
    }

    #[test]
    fn window_selects_recent_points() {
        let start = Instant::now();
        let mut history = GpuHistory::default();
        for minute in 0..10 {
            let at = start + Duration::from_secs(60 * minute);
            history.record(&sample_at(at, vec![fake_gpu(0)]));
        }
        let now = start + Duration::from_secs(9 * 60);
        let uuid = fake_gpu(0).uuid;
        assert_eq!(
            history.window(&uuid, now, Duration::from_secs(60)).count(),
            2
        );
        assert_eq!(
            history.window(&uuid, now, Duration::from_secs(300)).count(),
            6
        );
        assert_eq!(history.window(&uuid, now, MAX_PLOT_WINDOW).count(), 10);
    }
}
