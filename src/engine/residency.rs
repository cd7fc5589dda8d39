//! Where the model lives, as a pure state machine: no threads, no clocks of its own, no GPU.
//!
//! ```text
//!  Unloaded ──job──▶ Loading ──ok──▶ Ready(device) ──idle N s / unload now──▶ Offloaded (host RAM)
//!      ▲               │  └─error──▶ Unloaded            ▲        │ job                 │ idle M s more
//!      │               └──────────────────────────────── │ ◀──────┘ (restore)           ▼ / release now
//!      └──────────────────────────────────────────────── Released (no worker, no CUDA context) ◀──┘
//! ```
//!
//! The engine thread feeds it events and the current time and carries out the [`Action`]s it returns.
//! The idle timer runs only while nothing is queued or running and nothing is being recorded; a
//! recording pauses it (the time already idle is kept), a job resets it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When to move the model's weights out of VRAM after the last job (the user's setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdlePolicy {
    /// Keep the model on its device until the user unloads it.
    Never,
    /// Offload right after each job.
    Immediately,
    /// Offload after this many idle seconds.
    AfterSecs(u64),
}

impl Default for IdlePolicy {
    fn default() -> Self {
        Self::AfterSecs(DEFAULT_OFFLOAD_AFTER_SECS)
    }
}

/// Default idle time before the weights leave VRAM.
pub const DEFAULT_OFFLOAD_AFTER_SECS: u64 = 600;

/// Default extra idle time, once offloaded, before the worker process exits (VRAM back to 0 MiB).
pub const DEFAULT_RELEASE_AFTER_SECS: u64 = 1800;

/// The residency settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResidencyConfig {
    /// When to offload the weights to host RAM.
    pub offload: IdlePolicy,
    /// How long to stay offloaded before a full release; `None` keeps the host copy forever.
    pub release_after_secs: Option<u64>,
}

impl Default for ResidencyConfig {
    fn default() -> Self {
        Self {
            offload: IdlePolicy::default(),
            release_after_secs: Some(DEFAULT_RELEASE_AFTER_SECS),
        }
    }
}

/// Where the model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Residency {
    /// Never loaded: nothing has touched a GPU.
    Unloaded,
    /// The worker is reading the weights.
    Loading,
    /// Weights on the device, ready to run.
    Ready,
    /// The weights are being moved to host RAM.
    Offloading,
    /// Weights in host RAM; the worker (and its CUDA context) is still alive, so restore is a copy.
    Offloaded,
    /// The worker has exited: no weights, no CUDA context.
    Released,
}

/// What the engine must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Start a worker and load the weights.
    Load,
    /// Copy the host-RAM weights back to the device.
    Restore,
    /// Move the weights to host RAM.
    Offload,
    /// Stop the worker: every CUDA handle goes with the process.
    Release,
}

/// Inputs to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidencyEvent {
    /// A job was queued.
    JobQueued,
    /// The last queued job finished (successfully, cancelled or failed).
    QueueDrained,
    /// A load or restore finished.
    LoadFinished {
        /// Whether the model is now usable.
        ok: bool,
    },
    /// An offload finished.
    Offloaded,
    /// The worker is gone (released on purpose, or it died).
    WorkerExited,
    /// Recording started or stopped.
    Recording(bool),
    /// The user asked to unload now: offload, or release if already offloaded.
    UnloadNow,
    /// The user pinned ("keep loaded") or unpinned the model.
    KeepLoaded(bool),
    /// The device or settings changed; whatever is loaded must go.
    DeviceChanged,
}

/// The state machine.
#[derive(Clone, Debug)]
pub struct ResidencyMachine {
    config: ResidencyConfig,
    state: Residency,
    busy: bool,
    recording: bool,
    keep_loaded: bool,
    /// Idle time accumulated before the current run of the idle clock (kept over a recording).
    idle_banked: Duration,
    /// When the idle clock last started running; `None` while paused.
    idle_running_since: Option<Instant>,
}

impl ResidencyMachine {
    /// A machine in [`Residency::Unloaded`].
    pub fn new(config: ResidencyConfig) -> Self {
        Self {
            config,
            state: Residency::Unloaded,
            busy: false,
            recording: false,
            keep_loaded: false,
            idle_banked: Duration::ZERO,
            idle_running_since: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> Residency {
        self.state
    }

    /// The settings.
    pub fn config(&self) -> ResidencyConfig {
        self.config
    }

    /// Changes the settings; the idle clock keeps running.
    pub fn set_config(&mut self, config: ResidencyConfig) {
        self.config = config;
    }

    /// Whether "keep loaded" is on.
    pub fn keep_loaded(&self) -> bool {
        self.keep_loaded
    }

    /// Feeds one event; returns what to do now, if anything.
    pub fn on_event(&mut self, event: ResidencyEvent, now: Instant) -> Option<Action> {
        match event {
            ResidencyEvent::JobQueued => {
                self.busy = true;
                self.pause_idle(now, true);
                match self.state {
                    Residency::Unloaded | Residency::Released => {
                        self.state = Residency::Loading;
                        Some(Action::Load)
                    }
                    Residency::Offloaded => {
                        self.state = Residency::Loading;
                        Some(Action::Restore)
                    }
                    // Restored once the offload in flight is done.
                    Residency::Loading | Residency::Ready | Residency::Offloading => None,
                }
            }
            ResidencyEvent::QueueDrained => {
                self.busy = false;
                self.idle_banked = Duration::ZERO;
                self.resume_idle(now);
                self.tick(now)
            }
            ResidencyEvent::LoadFinished { ok } => {
                self.state = if ok {
                    Residency::Ready
                } else {
                    Residency::Released
                };
                None
            }
            ResidencyEvent::Offloaded => {
                if self.busy {
                    // A job came in while the weights were on their way out.
                    self.state = Residency::Loading;
                    return Some(Action::Restore);
                }
                self.state = Residency::Offloaded;
                // The release clock starts when the offload is done.
                self.idle_banked = Duration::ZERO;
                self.idle_running_since = None;
                self.resume_idle(now);
                None
            }
            ResidencyEvent::WorkerExited => {
                self.state = Residency::Released;
                None
            }
            ResidencyEvent::Recording(on) => {
                self.recording = on;
                if on {
                    self.pause_idle(now, false);
                } else {
                    self.resume_idle(now);
                }
                self.tick(now)
            }
            ResidencyEvent::UnloadNow => match self.state {
                Residency::Ready if !self.busy => {
                    self.state = Residency::Offloading;
                    Some(Action::Offload)
                }
                Residency::Offloaded => Some(Action::Release),
                _ => None,
            },
            ResidencyEvent::KeepLoaded(on) => {
                self.keep_loaded = on;
                self.idle_banked = Duration::ZERO;
                self.idle_running_since = None;
                self.resume_idle(now);
                self.tick(now)
            }
            ResidencyEvent::DeviceChanged => match self.state {
                Residency::Ready
                | Residency::Offloaded
                | Residency::Offloading
                | Residency::Loading => Some(Action::Release),
                Residency::Unloaded | Residency::Released => None,
            },
        }
    }

    /// Checks the idle clock; call it whenever time passes (e.g. once a second).
    pub fn tick(&mut self, now: Instant) -> Option<Action> {
        let (action, remaining) = self.pending(now)?;
        if !remaining.is_zero() {
            return None;
        }
        if action == Action::Offload {
            // Until the worker confirms, the weights are in flight: no second offload.
            self.state = Residency::Offloading;
        }
        Some(action)
    }

    /// The next timed action and the time left until it, for the countdown in the UI.
    pub fn pending(&self, now: Instant) -> Option<(Action, Duration)> {
        if self.busy || self.recording || self.keep_loaded {
            return None;
        }
        let limit_secs = match self.state {
            Residency::Ready => match self.config.offload {
                IdlePolicy::Never => return None,
                IdlePolicy::Immediately => 0,
                IdlePolicy::AfterSecs(secs) => secs,
            },
            Residency::Offloaded => self.config.release_after_secs?,
            Residency::Unloaded
            | Residency::Loading
            | Residency::Offloading
            | Residency::Released => return None,
        };
        let action = if self.state == Residency::Ready {
            Action::Offload
        } else {
            Action::Release
        };
        let remaining = Duration::from_secs(limit_secs).saturating_sub(self.idle_elapsed(now));
        Some((action, remaining))
    }

    fn idle_elapsed(&self, now: Instant) -> Duration {
        self.idle_banked
            + self
                .idle_running_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    fn pause_idle(&mut self, now: Instant, reset: bool) {
        if reset {
            self.idle_banked = Duration::ZERO;
        } else {
            self.idle_banked = self.idle_elapsed(now);
        }
        self.idle_running_since = None;
    }

    fn resume_idle(&mut self, now: Instant) {
        if !self.busy && !self.recording && self.idle_running_since.is_none() {
            self.idle_running_since = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn loaded(config: ResidencyConfig, t0: Instant) -> ResidencyMachine {
        let mut m = ResidencyMachine::new(config);
        assert_eq!(
            m.on_event(ResidencyEvent::JobQueued, t0),
            Some(Action::Load)
        );
        assert_eq!(m.state(), Residency::Loading);
        assert_eq!(
            m.on_event(ResidencyEvent::LoadFinished { ok: true }, t0),
            None
        );
        assert_eq!(m.state(), Residency::Ready);
        m
    }

    #[test]
    fn lazy_nothing_happens_before_the_first_job() {
        let t0 = Instant::now();
        let mut m = ResidencyMachine::new(ResidencyConfig::default());
        assert_eq!(m.state(), Residency::Unloaded);
        assert_eq!(m.tick(t0 + secs(100_000)), None);
        assert_eq!(m.on_event(ResidencyEvent::UnloadNow, t0), None);
        assert_eq!(m.pending(t0), None);
    }

    #[test]
    fn offload_after_idle_timeout_then_release_after_second_timeout() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::AfterSecs(600),
            release_after_secs: Some(1800),
        };
        let mut m = loaded(config, t0);
        // Busy: no countdown.
        assert_eq!(m.pending(t0 + secs(5000)), None);
        assert_eq!(m.on_event(ResidencyEvent::QueueDrained, t0), None);
        assert_eq!(m.pending(t0 + secs(1)), Some((Action::Offload, secs(599))));
        assert_eq!(m.tick(t0 + secs(599)), None);
        assert_eq!(m.tick(t0 + secs(600)), Some(Action::Offload));
        assert_eq!(m.state(), Residency::Offloading);
        // No second offload while the first is in flight.
        assert_eq!(m.tick(t0 + secs(601)), None);
        assert_eq!(m.on_event(ResidencyEvent::Offloaded, t0 + secs(600)), None);
        assert_eq!(m.state(), Residency::Offloaded);
        assert_eq!(
            m.pending(t0 + secs(600)),
            Some((Action::Release, secs(1800)))
        );
        assert_eq!(m.tick(t0 + secs(2399)), None);
        assert_eq!(m.tick(t0 + secs(2400)), Some(Action::Release));
        assert_eq!(m.on_event(ResidencyEvent::WorkerExited, t0), None);
        assert_eq!(m.state(), Residency::Released);
        // A new job loads again.
        assert_eq!(
            m.on_event(ResidencyEvent::JobQueued, t0),
            Some(Action::Load)
        );
    }

    #[test]
    fn immediately_offloads_when_the_queue_drains() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::Immediately,
            release_after_secs: None,
        };
        let mut m = loaded(config, t0);
        assert_eq!(
            m.on_event(ResidencyEvent::QueueDrained, t0),
            Some(Action::Offload)
        );
        m.on_event(ResidencyEvent::Offloaded, t0);
        // No release timeout: stays offloaded.
        assert_eq!(m.tick(t0 + secs(1_000_000)), None);
        // A job restores from host RAM instead of loading.
        assert_eq!(
            m.on_event(ResidencyEvent::JobQueued, t0),
            Some(Action::Restore)
        );
        assert_eq!(m.state(), Residency::Loading);
    }

    #[test]
    fn a_job_during_an_offload_restores_when_the_offload_lands() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::Immediately,
            release_after_secs: None,
        };
        let mut m = loaded(config, t0);
        assert_eq!(
            m.on_event(ResidencyEvent::QueueDrained, t0),
            Some(Action::Offload)
        );
        assert_eq!(m.on_event(ResidencyEvent::JobQueued, t0), None);
        assert_eq!(
            m.on_event(ResidencyEvent::Offloaded, t0),
            Some(Action::Restore)
        );
        assert_eq!(m.state(), Residency::Loading);
    }

    #[test]
    fn never_keeps_the_model() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::Never,
            release_after_secs: Some(1),
        };
        let mut m = loaded(config, t0);
        m.on_event(ResidencyEvent::QueueDrained, t0);
        assert_eq!(m.tick(t0 + secs(1_000_000)), None);
        assert_eq!(m.pending(t0), None);
        // But "unload now" still works, twice: offload, then release.
        assert_eq!(
            m.on_event(ResidencyEvent::UnloadNow, t0),
            Some(Action::Offload)
        );
        m.on_event(ResidencyEvent::Offloaded, t0);
        assert_eq!(
            m.on_event(ResidencyEvent::UnloadNow, t0),
            Some(Action::Release)
        );
    }

    #[test]
    fn recording_pauses_the_timer_and_keeps_elapsed_time() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::AfterSecs(100),
            release_after_secs: None,
        };
        let mut m = loaded(config, t0);
        m.on_event(ResidencyEvent::QueueDrained, t0);
        assert_eq!(
            m.on_event(ResidencyEvent::Recording(true), t0 + secs(60)),
            None
        );
        // Paused: a long recording does not offload.
        assert_eq!(m.tick(t0 + secs(10_000)), None);
        assert_eq!(m.pending(t0 + secs(10_000)), None);
        assert_eq!(
            m.on_event(ResidencyEvent::Recording(false), t0 + secs(10_000)),
            None
        );
        // 60 s were already idle: 40 s left.
        assert_eq!(
            m.pending(t0 + secs(10_000)),
            Some((Action::Offload, secs(40)))
        );
        assert_eq!(m.tick(t0 + secs(10_040)), Some(Action::Offload));
    }

    #[test]
    fn a_job_resets_the_timer() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::AfterSecs(100),
            release_after_secs: None,
        };
        let mut m = loaded(config, t0);
        m.on_event(ResidencyEvent::QueueDrained, t0);
        assert_eq!(m.on_event(ResidencyEvent::JobQueued, t0 + secs(90)), None);
        assert_eq!(m.tick(t0 + secs(500)), None);
        m.on_event(ResidencyEvent::QueueDrained, t0 + secs(500));
        assert_eq!(
            m.pending(t0 + secs(500)),
            Some((Action::Offload, secs(100)))
        );
    }

    #[test]
    fn keep_loaded_pins_until_unpinned() {
        let t0 = Instant::now();
        let config = ResidencyConfig {
            offload: IdlePolicy::AfterSecs(10),
            release_after_secs: None,
        };
        let mut m = loaded(config, t0);
        m.on_event(ResidencyEvent::QueueDrained, t0);
        assert_eq!(
            m.on_event(ResidencyEvent::KeepLoaded(true), t0 + secs(5)),
            None
        );
        assert!(m.keep_loaded());
        assert_eq!(m.tick(t0 + secs(1000)), None);
        assert_eq!(
            m.on_event(ResidencyEvent::KeepLoaded(false), t0 + secs(1000)),
            None
        );
        assert_eq!(m.tick(t0 + secs(1010)), Some(Action::Offload));
    }

    #[test]
    fn unload_now_is_refused_while_busy_and_failed_load_releases() {
        let t0 = Instant::now();
        let mut m = loaded(ResidencyConfig::default(), t0);
        assert_eq!(m.on_event(ResidencyEvent::UnloadNow, t0), None);
        let mut m2 = ResidencyMachine::new(ResidencyConfig::default());
        m2.on_event(ResidencyEvent::JobQueued, t0);
        m2.on_event(ResidencyEvent::LoadFinished { ok: false }, t0);
        assert_eq!(m2.state(), Residency::Released);
        assert_eq!(
            m.on_event(ResidencyEvent::DeviceChanged, t0),
            Some(Action::Release)
        );
        m.on_event(ResidencyEvent::WorkerExited, t0);
        assert_eq!(m.on_event(ResidencyEvent::DeviceChanged, t0), None);
    }

    #[test]
    fn worker_death_while_ready_is_released_and_reloads() {
        let t0 = Instant::now();
        let mut m = loaded(ResidencyConfig::default(), t0);
        m.on_event(ResidencyEvent::WorkerExited, t0);
        assert_eq!(m.state(), Residency::Released);
        assert_eq!(
            m.on_event(ResidencyEvent::JobQueued, t0),
            Some(Action::Load)
        );
    }
}
