//! What the UI knows about the GPUs: the latest sample, the history, and GPUs that vanished.
//! Updated in `App::logic` from the monitor feed; read by the drawing code. UI thread only.

use std::time::{Duration, Instant};

use crate::gpu::{DriverInfo, GpuHistory, GpuInitError, GpuSample, GpuSnapshot, GpuStatus};

/// The monitor's state as the UI presents it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MonitorState {
    /// No word from the monitor yet.
    #[default]
    Starting,
    /// NVML could not start; the message explains why.
    Unavailable(GpuInitError),
    /// Samples are arriving.
    Running,
    /// No word from the monitor for longer than start-up may take (NVML hangs); samples may
    /// still come.
    NotAnswering,
}

/// How long the window waits for the monitor's first word before it says it is not answering.
pub const MONITOR_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// A GPU that was in an earlier sample but not in the latest one.
#[derive(Clone, Debug)]
pub struct VanishedGpu {
    /// Its last reading.
    pub last: GpuSnapshot,
    /// When it was last reported.
    pub last_seen: Instant,
}

/// The GPU side of the app state.
#[derive(Debug, Default)]
pub struct GpuView {
    /// Whether samples arrive.
    pub state: MonitorState,
    /// The most recent sample.
    pub latest: Option<GpuSample>,
    /// Readings per GPU UUID.
    pub history: GpuHistory,
    /// GPUs the driver stopped reporting, kept on screen until their history runs out.
    pub vanished: Vec<VanishedGpu>,
    /// When the view started waiting for the monitor.
    waiting_since: Option<Instant>,
}

impl GpuView {
    /// Takes in one status from the feed.
    pub fn apply(&mut self, status: GpuStatus) {
        match status {
            GpuStatus::Unavailable(err) => {
                self.state = MonitorState::Unavailable(err);
                self.latest = None;
            }
            GpuStatus::Sample(sample) => {
                self.state = MonitorState::Running;
                self.note_vanished(&sample);
                self.history.record(&sample);
                let retention = self.history.retention();
                self.vanished.retain(|v| {
                    sample.taken_at.saturating_duration_since(v.last_seen) <= retention
                });
                self.latest = Some(sample);
            }
        }
    }

    /// Marks the monitor as not answering once it has been silent since start-up for longer
    /// than `patience`.
    pub fn check_silence(&mut self, now: Instant, patience: std::time::Duration) {
        let since = *self.waiting_since.get_or_insert(now);
        if self.state == MonitorState::Starting && now.saturating_duration_since(since) > patience {
            self.state = MonitorState::NotAnswering;
        }
    }

    /// How long ago the latest sample was taken, if there is one.
    pub fn sample_age(&self, now: Instant) -> Option<std::time::Duration> {
        self.now().map(|at| now.saturating_duration_since(at))
    }

    fn note_vanished(&mut self, sample: &GpuSample) {
        let present = |uuid: &str| sample.gpus.iter().any(|g| g.uuid == uuid);
        self.vanished.retain(|v| !present(&v.last.uuid));
        if let Some(previous) = &self.latest {
            for gpu in previous.gpus.iter().filter(|g| !present(&g.uuid)) {
                self.vanished.push(VanishedGpu {
                    last: gpu.clone(),
                    last_seen: previous.taken_at,
                });
            }
        }
    }

    /// The GPUs of the latest sample (empty before the first one).
    pub fn gpus(&self) -> &[GpuSnapshot] {
        self.latest.as_ref().map_or(&[], |s| s.gpus.as_slice())
    }

    /// Driver facts from the latest sample.
    pub fn driver(&self) -> Option<&DriverInfo> {
        self.latest.as_ref().map(|s| &s.driver)
    }

    /// The time the plots count back from: the latest sample, so drawing does not depend on
    /// the wall clock and a still window stays still.
    pub fn now(&self) -> Option<Instant> {
        self.latest.as_ref().map(|s| s.taken_at)
    }

    /// How long ago `vanished` was last seen, relative to the latest sample.
    pub fn vanished_for(&self, vanished: &VanishedGpu) -> Duration {
        self.now().map_or(Duration::ZERO, |now| {
            now.saturating_duration_since(vanished.last_seen)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake_gpu;

    fn sample(at: Instant, gpus: Vec<GpuSnapshot>) -> GpuStatus {
        let mut sample = GpuSample::now(gpus, 10, DriverInfo::default());
        sample.taken_at = at;
        GpuStatus::Sample(sample)
    }

    #[test]
    fn a_silent_monitor_is_not_answering_until_its_first_sample() {
        let start = Instant::now();
        let mut view = GpuView::default();
        view.check_silence(start, MONITOR_PATIENCE);
        assert_eq!(view.state, MonitorState::Starting);
        view.check_silence(start + Duration::from_secs(4), MONITOR_PATIENCE);
        assert_eq!(view.state, MonitorState::NotAnswering);
        view.apply(sample(start + Duration::from_secs(5), vec![fake_gpu(0)]));
        assert_eq!(view.state, MonitorState::Running);
        view.check_silence(start + Duration::from_secs(50), MONITOR_PATIENCE);
        assert_eq!(view.state, MonitorState::Running);
    }

    #[test]
    fn vanished_gpu_is_kept_then_dropped() {
        let start = Instant::now();
        let mut view = GpuView::default();
        view.apply(sample(start, vec![fake_gpu(0), fake_gpu(1)]));
        view.apply(sample(start + Duration::from_secs(1), vec![fake_gpu(0)]));
        assert_eq!(view.gpus().len(), 1);
        assert_eq!(view.vanished.len(), 1);
        assert_eq!(view.vanished[0].last.uuid, fake_gpu(1).uuid);
        assert_eq!(view.vanished_for(&view.vanished[0]), Duration::from_secs(1));
        // It comes back: no longer listed as vanished.
        view.apply(sample(
            start + Duration::from_secs(2),
            vec![fake_gpu(0), fake_gpu(1)],
        ));
        assert!(view.vanished.is_empty());
        // It goes again and stays away longer than the history.
        view.apply(sample(start + Duration::from_secs(3), vec![fake_gpu(0)]));
        let later = start + view.history.retention() + Duration::from_secs(10);
        view.apply(sample(later, vec![fake_gpu(0)]));
        assert!(view.vanished.is_empty());
    }

    #[test]
    fn unavailable_clears_the_sample() {
        let mut view = GpuView::default();
        view.apply(sample(Instant::now(), vec![fake_gpu(0)]));
        view.apply(GpuStatus::Unavailable(GpuInitError::NoPermission));
        assert!(view.gpus().is_empty());
        assert_eq!(
            view.state,
            MonitorState::Unavailable(GpuInitError::NoPermission)
        );
    }
}
