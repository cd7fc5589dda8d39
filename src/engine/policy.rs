//! Where jobs go and what happens after a failure, as pure functions: no threads, no clocks of
//! their own, no processes. The engine thread ([`super::scheduler`]) hands in the jobs, the GPUs'
//! free memory and its slots' states, and carries out the decisions that come back, the same
//! way it runs [`super::residency`].
//!
//! Decisions, in short:
//! - **Placement** ([`place`]): Auto takes the GPU with the most free memory on which the model
//!   and one 30 s segment fit (ties to the lowest index), else the next, else the CPU, and every
//!   step down is told. A pinned GPU goes first; a pinned GPU that is no longer listed is told,
//!   then the user's [`PinnedFallback`] applies. `All` spreads jobs over the GPUs by queue length.
//!   Devices a job already failed on, and devices marked unavailable, are skipped.
//! - **After a job failed** ([`after_job_failure`]): out of memory even at one segment → the next
//!   device; bad input, bad model or an internal error → the job fails; cancelled → cancelled.
//! - **After a load failed** ([`after_load_failure`]): a bad model fails the jobs waiting for it
//!   but leaves the device usable (the files may be fixed); out of memory moves them to the next
//!   device; an unusable device is marked unavailable and its jobs move on.
//! - **After a worker was lost** ([`after_worker_loss`]: crashed, killed, hung, wrote garbage):
//!   the job is retried once on a fresh worker, then fails with the reason.
//! - **The watchdog's bound** ([`silence_bound`]).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SpeechEngine;
use super::fit::{ModelShape, max_batch_that_fits, usable_bytes};
use super::protocol::{JobErrorKind, LoadErrorKind, Precision, WorkerDevice};
use super::residency::Residency;
use super::segment::MAX_SEGMENT_SECS;
use super::{DeviceTarget, GpuFree};

/// A device slot's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKey {
    /// The CPU.
    Cpu,
    /// A GPU, by UUID.
    Gpu(String),
}

impl DeviceKey {
    /// The key of a worker device.
    pub fn of(device: &WorkerDevice) -> Self {
        match device {
            WorkerDevice::Cpu => Self::Cpu,
            WorkerDevice::Cuda { uuid, .. } => Self::Gpu(uuid.clone()),
        }
    }
}

/// What happens to jobs pinned to a GPU that is no longer listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PinnedFallback {
    /// Run where Auto would (another GPU, else the CPU), and say so.
    #[default]
    Auto,
    /// Run on the CPU, and say so.
    Cpu,
    /// Fail the job with the reason.
    Fail,
}

/// The watchdog's bounds. A busy worker that says nothing for longer than its bound is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchdogConfig {
    /// Least silence allowed during a job (10 s).
    pub min_silence: Duration,
    /// Silence allowed before a job's first batch is done (decoding and the first pass; the
    /// worker sends heartbeats while it decodes) (30 s).
    pub first_pass: Duration,
    /// Time allowed for a load, restore or offload (180 s).
    pub load: Duration,
    /// Time a running job gets to stop after a cancel before its worker is killed (800 ms).
    pub cancel_grace: Duration,
    /// Time workers get to exit at shutdown before they are killed (500 ms).
    pub shutdown_grace: Duration,
    /// How often timers and the watchdog are checked (500 ms).
    pub tick: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            min_silence: Duration::from_secs(10),
            first_pass: Duration::from_secs(30),
            load: Duration::from_secs(180),
            cancel_grace: Duration::from_millis(800),
            shutdown_grace: Duration::from_millis(500),
            tick: Duration::from_millis(500),
        }
    }
}

/// How long a running job's worker may stay silent: before its first batch is done,
/// `max(min_silence, first_pass)`; after that `max(min_silence, 3 × the longest pass seen)`.
pub fn silence_bound(config: &WatchdogConfig, longest_pass: Option<Duration>) -> Duration {
    match longest_pass {
        None => config.min_silence.max(config.first_pass),
        Some(pass) => config.min_silence.max(pass.saturating_mul(3)),
    }
}

/// A device slot as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// The device.
    pub key: DeviceKey,
    /// Where the model is.
    pub residency: Residency,
    /// Why the device cannot be used, if it cannot.
    pub unavailable: Option<String>,
    /// Jobs queued or running there.
    pub jobs: usize,
}

/// Everything placement depends on.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// Where the user wants jobs to run.
    pub target: &'a DeviceTarget,
    /// What to do when the pinned GPU is gone.
    pub pinned_fallback: PinnedFallback,
    /// The GPUs the monitor lists now, with their free memory.
    pub gpus: &'a [GpuFree],
    /// The engine's device slots.
    pub slots: &'a [SlotView],
    /// Whether GPU workers exist in this build.
    pub cuda_built: bool,
    /// Fraction of free VRAM left alone.
    pub vram_margin: f64,
    /// Weight precision.
    pub precision: Precision,
    /// The speech engine, whose size decides what fits.
    pub engine: &'a SpeechEngine,
}

/// Where a job goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// Queue it on `device`; `notice`, if any, says why it is not where it would normally go.
    Run {
        /// The device.
        device: WorkerDevice,
        /// The steps taken to get there, for the user.
        notice: Option<String>,
    },
    /// No device is left to try.
    Fail {
        /// What to tell the user (names the file).
        message: String,
    },
}

impl PolicyInput<'_> {
    fn slot(&self, key: &DeviceKey) -> Option<&SlotView> {
        self.slots.iter().find(|s| &s.key == key)
    }

    /// Bytes per element at the configured precision on a GPU or the CPU.
    fn dtype_bytes(&self, gpu: bool) -> u64 {
        match (self.precision, gpu) {
            (Precision::F32, _) | (Precision::Auto, false) => 4,
            _ => 2,
        }
    }

    /// Whether the model (if not already resident there) and one segment fit on `gpu` now.
    fn fits(&self, gpu: &GpuFree) -> Result<(), String> {
        let shape = ModelShape::sensevoice_small(self.dtype_bytes(true));
        let resident = self
            .slot(&DeviceKey::Gpu(gpu.uuid.clone()))
            .is_some_and(|s| {
                matches!(
                    s.residency,
                    Residency::Ready | Residency::Loading | Residency::Offloading
                )
            });
        let available = usable_bytes(gpu.free_bytes, self.vram_margin);
        // Whisper runs `auto` in f32 (`worker::whisper::load`).
        let whisper_bytes = match self.precision {
            Precision::F16 | Precision::Bf16 => 2,
            Precision::F32 | Precision::Auto => 4,
        };
        let whisper_need = self.engine.whisper_need_bytes(resident, whisper_bytes);
        let fits = match whisper_need {
            Some(need) => need <= available,
            None => max_batch_that_fits(&shape, MAX_SEGMENT_SECS, available, resident, 1) >= 1,
        };
        if fits {
            return Ok(());
        }
        let needed = if let Some(need) = whisper_need {
            need
        } else if resident {
            shape.activation_bytes(1, MAX_SEGMENT_SECS)
        } else {
            shape.job_bytes(1, MAX_SEGMENT_SECS)
        };
        Err(format!(
            "GPU {} has {} MiB free ({} MiB after the {:.0}% margin); the model needs about {} MiB",
            gpu.index,
            gpu.free_bytes >> 20,
            available >> 20,
            self.vram_margin * 100.0,
            needed >> 20
        ))
    }
}

fn cuda(gpu: &GpuFree) -> WorkerDevice {
    WorkerDevice::Cuda {
        ordinal: gpu.cuda_ordinal,
        uuid: gpu.uuid.clone(),
    }
}

/// Chooses a device for the job on `path` that already failed on `tried`.
pub fn place(path: &Path, tried: &[DeviceKey], input: &PolicyInput<'_>) -> Placement {
    let mut reasons = Vec::new();
    let mut gpus: Vec<&GpuFree> = input
        .gpus
        .iter()
        .filter(|g| !tried.contains(&DeviceKey::Gpu(g.uuid.clone())))
        .filter(|g| {
            let why = input
                .slot(&DeviceKey::Gpu(g.uuid.clone()))
                .and_then(|s| s.unavailable.as_ref());
            if let Some(why) = why {
                reasons.push(format!("GPU {}: {why}", g.index));
            }
            why.is_none()
        })
        .collect();
    // Most free memory first; ties to the lowest index.
    gpus.sort_by_key(|g| (std::cmp::Reverse(g.free_bytes), g.index));
    let mut cpu_only = matches!(input.target, DeviceTarget::Cpu);
    match input.target {
        DeviceTarget::All => {
            // Spread: the GPU with the fewest jobs first (stable: most free memory breaks ties).
            gpus.sort_by_key(|g| {
                input
                    .slot(&DeviceKey::Gpu(g.uuid.clone()))
                    .map_or(0, |s| s.jobs)
            });
        }
        DeviceTarget::Gpu { uuid } => {
            if let Some(pos) = gpus.iter().position(|g| &g.uuid == uuid) {
                let chosen = gpus.remove(pos);
                gpus.insert(0, chosen);
            } else if !input.gpus.iter().any(|g| &g.uuid == uuid) {
                let gone = format!("the chosen GPU {uuid} is not present any more");
                match input.pinned_fallback {
                    PinnedFallback::Auto => reasons.push(gone),
                    PinnedFallback::Cpu => {
                        reasons.push(gone);
                        cpu_only = true;
                    }
                    PinnedFallback::Fail => {
                        return Placement::Fail {
                            message: format!("{}: {gone}", path.display()),
                        };
                    }
                }
            }
        }
        DeviceTarget::Auto | DeviceTarget::Cpu => {}
    }
    let mut device = WorkerDevice::Cpu;
    if !cpu_only {
        // A build without CUDA has no GPU worker to start: say so, run on the CPU.
        if !input.cuda_built && !input.gpus.is_empty() {
            reasons.push("this build has no CUDA support (build with --features cuda)".to_owned());
        } else if input.cuda_built {
            for gpu in gpus {
                match input.fits(gpu) {
                    Ok(()) => {
                        device = cuda(gpu);
                        break;
                    }
                    Err(why) => reasons.push(why),
                }
            }
        }
    }
    if device == WorkerDevice::Cpu {
        let cpu = input.slot(&DeviceKey::Cpu);
        let why_not = if tried.contains(&DeviceKey::Cpu) {
            Some("it already failed on the CPU".to_owned())
        } else {
            cpu.and_then(|s| s.unavailable.clone())
                .map(|why| format!("the CPU cannot be used: {why}"))
        };
        if let Some(why_not) = why_not {
            reasons.push(why_not);
            return Placement::Fail {
                message: format!(
                    "{}: no device left to try ({})",
                    path.display(),
                    reasons.join("; ")
                ),
            };
        }
    }
    let notice = (!reasons.is_empty()).then(|| {
        format!(
            "{}: running on {} ({})",
            path.display(),
            device.label(),
            reasons.join("; ")
        )
    });
    Placement::Run { device, notice }
}

/// Seconds of padded audio per forward pass on `device`: as many 30 s segments as fit in the
/// GPU's free memory (the model being resident), at most `max_batch`; one on the CPU.
pub fn batch_budget_s(
    device: &WorkerDevice,
    gpus: &[GpuFree],
    precision: Precision,
    vram_margin: f64,
    max_batch: u64,
) -> f64 {
    let WorkerDevice::Cuda { uuid, .. } = device else {
        // On the CPU one segment at a time, as FunASR does.
        return MAX_SEGMENT_SECS;
    };
    let Some(gpu) = gpus.iter().find(|g| &g.uuid == uuid) else {
        return MAX_SEGMENT_SECS;
    };
    let dtype_bytes = if precision == Precision::F32 { 4 } else { 2 };
    let shape = ModelShape::sensevoice_small(dtype_bytes);
    let available = usable_bytes(gpu.free_bytes, vram_margin);
    let batch = max_batch_that_fits(&shape, MAX_SEGMENT_SECS, available, true, max_batch);
    batch.max(1) as f64 * MAX_SEGMENT_SECS
}

/// What to do with a job its worker reported as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStep {
    /// Report it failed.
    Fail,
    /// Report it cancelled.
    Cancelled,
    /// Release this device and place the job again, not here.
    NextDevice,
}

/// The step after a job failed with `kind`.
pub fn after_job_failure(kind: JobErrorKind) -> JobStep {
    match kind {
        JobErrorKind::OutOfMemory => JobStep::NextDevice,
        JobErrorKind::Cancelled => JobStep::Cancelled,
        JobErrorKind::BadInput | JobErrorKind::BadModel | JobErrorKind::Internal => JobStep::Fail,
    }
}

/// What to do after a load (or restore) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadStep {
    /// Fail the jobs that waited for this load (else place them again, not here).
    pub fail_jobs: bool,
    /// Mark the device unavailable until the engine restarts.
    pub mark_unavailable: bool,
    /// Draw an out-of-memory marker.
    pub out_of_memory: bool,
}

/// The step after a load failed with `kind`.
pub fn after_load_failure(kind: LoadErrorKind) -> LoadStep {
    match kind {
        // The same files would fail anywhere; the device is fine and a fixed file loads.
        LoadErrorKind::BadModel => LoadStep {
            fail_jobs: true,
            mark_unavailable: false,
            out_of_memory: false,
        },
        LoadErrorKind::OutOfMemory => LoadStep {
            fail_jobs: false,
            mark_unavailable: false,
            out_of_memory: true,
        },
        LoadErrorKind::DeviceUnavailable | LoadErrorKind::Internal => LoadStep {
            fail_jobs: false,
            mark_unavailable: true,
            out_of_memory: false,
        },
    }
}

/// How many times a job may lose its worker (crash, kill, hang, garbage) before it fails.
pub const MAX_WORKER_LOSSES: u32 = 2;

/// What to do with a job whose worker was lost, the `losses`-th time (counting this one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossStep {
    /// Run it again on a fresh worker on the same device.
    Retry,
    /// Report it failed with the reason.
    Fail,
}

/// The step after a job lost its worker for the `losses`-th time.
pub fn after_worker_loss(losses: u32) -> LossStep {
    if losses < MAX_WORKER_LOSSES {
        LossStep::Retry
    } else {
        LossStep::Fail
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
