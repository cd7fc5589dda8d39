//! The `gpu-monitor` thread: owns a [`GpuSource`], samples every GPU at a fixed interval, and
//! sends [`GpuStatus`] over a bounded channel, calling a repaint callback after each send.

use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use super::{GpuInitError, GpuSample, GpuSnapshot, GpuSource, GpuStatus};

/// Default time between samples.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// Fastest sampling the settings allow.
pub const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Slowest sampling the settings allow.
pub const MAX_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples waiting for the UI. A few are enough: the UI drains them every frame, and when it
/// does not (window hidden) dropping samples is better than growing memory.
const FEED_CAPACITY: usize = 16;

/// Called after every send so the UI wakes up (e.g. `egui::Context::request_repaint`). A plain
/// closure keeps this module free of egui.
pub type RepaintFn = Box<dyn Fn() + Send>;

/// Clamps a requested interval to [`MIN_SAMPLE_INTERVAL`]..=[`MAX_SAMPLE_INTERVAL`].
pub fn clamp_sample_interval(interval: Duration) -> Duration {
    interval.clamp(MIN_SAMPLE_INTERVAL, MAX_SAMPLE_INTERVAL)
}

enum MonitorCommand {
    SetInterval(Duration),
}

/// The receiving end of the monitor, held by the UI (or the CLI).
///
/// Dropping it stops the thread: the control channel disconnects, which ends its wait at once.
pub struct GpuFeed {
    rx: Receiver<GpuStatus>,
    control: Option<Sender<MonitorCommand>>,
    thread: Option<JoinHandle<()>>,
    /// Statuses already taken off the channel by [`Self::wait_first`], handed out again first.
    replay: VecDeque<GpuStatus>,
}

impl GpuFeed {
    /// A feed with no thread behind it: tests and demos push [`GpuStatus`] into `rx`'s sender.
    pub fn from_receiver(rx: Receiver<GpuStatus>) -> Self {
        Self {
            rx,
            control: None,
            thread: None,
            replay: VecDeque::new(),
        }
    }

    /// Everything received since the last call, oldest first. Never blocks.
    pub fn drain(&mut self) -> Vec<GpuStatus> {
        let mut out: Vec<GpuStatus> = self.replay.drain(..).collect();
        out.extend(self.rx.try_iter());
        out
    }

    /// Blocks up to `timeout` for the next status (CLI and tests; the UI uses [`Self::drain`]).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<GpuStatus> {
        self.replay
            .pop_front()
            .or_else(|| self.rx.recv_timeout(timeout).ok())
    }

    /// Blocks up to `timeout` for the first status (start-up validation and `gpuscribe gpus`),
    /// and keeps it so that [`Self::drain`] still returns it.
    pub fn wait_first(&mut self, timeout: Duration) -> Option<&GpuStatus> {
        if self.replay.is_empty() {
            let status = self.rx.recv_timeout(timeout).ok()?;
            self.replay.push_back(status);
        }
        self.replay.front()
    }

    /// Asks the monitor to sample every `interval` (clamped). Returns `false` when the request
    /// could not be queued (try again later); a thread-less feed accepts and ignores it.
    pub fn set_sample_interval(&self, interval: Duration) -> bool {
        let Some(control) = &self.control else {
            return true;
        };
        match control.try_send(MonitorCommand::SetInterval(clamp_sample_interval(interval))) {
            Ok(()) => true,
            // Gone means the monitor has ended (no driver): nothing left to configure.
            Err(TrySendError::Disconnected(_)) => true,
            Err(TrySendError::Full(_)) => false,
        }
    }
}

impl Drop for GpuFeed {
    fn drop(&mut self) {
        self.control = None;
        if let Some(thread) = self.thread.take() {
            // The thread exits as soon as it sees the disconnect, unless it is stuck inside the
            // driver (NVML that does not answer): then closing must not wait for it.
            let deadline = Instant::now() + Duration::from_millis(200);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                // A panic there was reported by the panic hook already.
                let _ = thread.join();
            } else {
                tracing::warn!("the GPU monitor is stuck in the driver; not waiting for it");
            }
        }
    }
}

/// Starts the `gpu-monitor` thread.
///
/// `make_source` runs on that thread, so NVML is initialised and used on one thread only. If it
/// fails, the feed receives one [`GpuStatus::Unavailable`] and the thread ends.
pub fn spawn_monitor<S, F>(
    make_source: F,
    interval: Duration,
    repaint: RepaintFn,
) -> std::io::Result<GpuFeed>
where
    S: GpuSource,
    F: FnOnce() -> Result<S, GpuInitError> + Send + 'static,
{
    let (tx, rx) = bounded(FEED_CAPACITY);
    let (control_tx, control_rx) = bounded(4);
    let interval = clamp_sample_interval(interval);
    let thread = std::thread::Builder::new()
        .name("gpu-monitor".to_owned())
        .spawn(move || match make_source() {
            Ok(source) => run_monitor(source, interval, &tx, &control_rx, &repaint),
            Err(err) => {
                tracing::info!("GPU monitor unavailable: {err} ({:?})", err.detail());
                let _ = tx.try_send(GpuStatus::Unavailable(err));
                repaint();
            }
        })?;
    Ok(GpuFeed {
        rx,
        control: Some(control_tx),
        thread: Some(thread),
        replay: VecDeque::new(),
    })
}

fn run_monitor<S: GpuSource>(
    mut source: S,
    mut interval: Duration,
    tx: &Sender<GpuStatus>,
    control: &Receiver<MonitorCommand>,
    repaint: &RepaintFn,
) {
    let driver = source.driver_info();
    let mut last_gpus: Vec<GpuSnapshot> = Vec::new();
    loop {
        let started = Instant::now();
        let result = source.sample();
        let sample_cost_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let gpus = match result {
            Ok(gpus) => {
                last_gpus.clone_from(&gpus);
                gpus
            }
            Err(err) => {
                tracing::warn!("GPU sample failed: {err}");
                // Show the error on every panel we know of rather than making them vanish.
                last_gpus
                    .iter()
                    .map(|g| {
                        let mut snapshot = GpuSnapshot::identity_only(
                            g.nvml_index,
                            g.uuid.clone(),
                            g.name.clone(),
                            g.pci_bus_id.clone(),
                        );
                        snapshot.error = Some(err.to_string());
                        snapshot
                    })
                    .collect()
            }
        };
        let sample = GpuSample::now(gpus, sample_cost_us, driver.clone());
        match tx.try_send(GpuStatus::Sample(sample)) {
            Ok(()) => repaint(),
            Err(TrySendError::Full(_)) => {
                tracing::trace!("GPU feed full; dropping a sample");
                repaint();
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        // Sleep until the next tick, waking at once on a command or when the feed is dropped.
        loop {
            let next_tick = started + interval;
            match control.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                // A zero timeout left is a timeout, so a shorter interval takes effect at once.
                Ok(MonitorCommand::SetInterval(new_interval)) => interval = new_interval,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_clamped() {
        assert_eq!(
            clamp_sample_interval(Duration::from_millis(10)),
            MIN_SAMPLE_INTERVAL
        );
        assert_eq!(
            clamp_sample_interval(Duration::from_secs(60)),
            MAX_SAMPLE_INTERVAL
        );
        assert_eq!(
            clamp_sample_interval(Duration::from_millis(750)),
            Duration::from_millis(750)
        );
    }
}
