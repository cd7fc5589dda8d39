//! Live transcription's start and stop on the VRAM plots: the window marks them itself (it is
//! the one that starts the live session), on the GPUs holding the model, or, before it loads,
//! on those the device choice may use. UI thread.

use std::time::{Instant, SystemTime};

use super::GpuScribeApp;
use super::engine_link::target_for;
use crate::engine::{DeviceTarget, MarkerKind};

impl GpuScribeApp {
    /// The GPUs a live marker goes on now.
    fn live_marker_gpus(&self) -> Vec<String> {
        let holding: Vec<String> = self
            .engine_view
            .slots
            .iter()
            .filter(|slot| slot.pid.is_some())
            .filter_map(|slot| slot.uuid.clone())
            .collect();
        if !holding.is_empty() {
            return holding;
        }
        match target_for(self.device_choice()) {
            DeviceTarget::Gpu { uuid } => vec![uuid],
            DeviceTarget::Cpu => Vec::new(),
            DeviceTarget::Auto | DeviceTarget::All => {
                self.sent_gpus.iter().map(|gpu| gpu.uuid.clone()).collect()
            }
        }
    }

    /// Marks live transcription starting; remembers where, so the stop goes there too.
    pub(super) fn mark_live_start(&mut self) {
        let gpus = self.live_marker_gpus();
        self.mark(&gpus, MarkerKind::LiveStart);
        self.live_marked = Some(gpus);
    }

    /// Marks live transcription stopping, where it was marked starting and where the model is
    /// now. Nothing if no start was marked.
    pub(super) fn mark_live_stop(&mut self) {
        let Some(mut gpus) = self.live_marked.take() else {
            return;
        };
        for gpu in self.live_marker_gpus() {
            if !gpus.contains(&gpu) {
                gpus.push(gpu);
            }
        }
        self.mark(&gpus, MarkerKind::LiveStop);
    }

    fn mark(&mut self, gpus: &[String], kind: MarkerKind) {
        let (at, now) = (SystemTime::now(), Instant::now());
        for uuid in gpus {
            self.engine_view.markers.record(uuid.clone(), kind, at, now);
        }
    }
}
