//! The engine: runs transcription jobs in the background and decides where the model lives.
//!
//! The engine thread ("engine", in the app's process) owns the job queues, one residency state
//! machine per device and one worker process per device. Only a worker process
//! (`gpuscribe-worker`) owns a candle device and the model's weights, so:
//! - a full release is the worker's exit, and NVML then lists nothing of ours on that GPU;
//! - a CUDA fault or an abort in the model cannot take the window down;
//! - the app's own binary never calls into candle, so a `cuda` build still starts where the CUDA
//!   libraries are missing, and only GPU transcription is then unavailable;
//! - "all GPUs" is one worker per GPU.
//!
//! The UI talks to the engine through [`EngineHandle`]: [`Request`]s in, [`Event`]s out, over
//! bounded channels; the engine calls the waker after every event.

pub mod batch;
pub mod cuda_stubs;
pub mod fit;
mod model_dir;
pub mod pipeline;
pub mod process;
pub mod protocol;
pub mod residency;
mod scheduler;
pub mod segment;
pub mod sensevoice_worker;
pub mod transcript;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::{Deserialize, Serialize};

pub use protocol::{DecodeSettings, JobId, Precision};
pub use residency::{Action, IdlePolicy, Residency, ResidencyConfig};
pub use transcript::{ExportFormat, FileTranscript, Segment};

/// Where jobs run, as the user chose it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceTarget {
    /// The GPU with the most free VRAM that fits the job, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// This GPU, by UUID.
    Gpu {
        /// The GPU's UUID.
        uuid: String,
    },
    /// Every GPU, one worker each, jobs spread over them.
    All,
}

/// What the engine needs to know about a GPU (from the GPU monitor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuFree {
    /// UUID.
    pub uuid: String,
    /// Index as NVML lists it (for labels).
    pub index: u32,
    /// CUDA ordinal in PCI-bus order.
    pub cuda_ordinal: usize,
    /// Free bytes, as NVML reports.
    pub free_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
}

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// A local model folder; `None` resolves the Hugging Face model (downloading on first use).
    pub model_dir: Option<PathBuf>,
    /// Weight precision.
    pub precision: Precision,
    /// When to offload and release.
    pub residency: ResidencyConfig,
    /// Fraction of free VRAM left alone (default 0.1).
    pub vram_margin: f64,
    /// Where jobs run.
    pub target: DeviceTarget,
    /// Largest batch of segments on a GPU.
    pub max_batch: u64,
    /// The worker executable; `None` looks next to the running executable (see
    /// [`process::worker_command`]).
    #[serde(skip)]
    pub worker_exe: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            precision: Precision::Auto,
            residency: ResidencyConfig::default(),
            vram_margin: 0.1,
            target: DeviceTarget::Auto,
            max_batch: 16,
            worker_exe: None,
        }
    }
}

/// Requests to the engine.
#[derive(Clone, Debug)]
pub enum Request {
    /// Queue a file (the id comes from [`EngineHandle::transcribe`]).
    Transcribe {
        /// The job's id.
        job_id: JobId,
        /// The audio file.
        path: PathBuf,
        /// Decode options.
        settings: DecodeSettings,
    },
    /// Cancel a queued or running job.
    Cancel(JobId),
    /// Offload now (or release, if already offloaded).
    UnloadNow,
    /// Release every worker now: VRAM back to 0.
    ReleaseNow,
    /// Pin or unpin the model.
    KeepLoaded(bool),
    /// Change where jobs run.
    SetTarget(DeviceTarget),
    /// Change the idle policy.
    SetResidency(ResidencyConfig),
    /// A recording started or stopped (pauses the idle timer).
    Recording(bool),
    /// The GPUs as the monitor sees them now.
    Gpus(Vec<GpuFree>),
    /// Stop every worker and the engine thread.
    Shutdown,
}

/// What happened on the VRAM plot's time line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarkerKind {
    /// Weights loaded.
    Load,
    /// Weights offloaded to host RAM.
    Offload,
    /// Weights restored from host RAM.
    Restore,
    /// Worker exited: fully released.
    Release,
    /// Out of memory.
    OutOfMemory,
}

/// One device's model state, for the badge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// "GPU 0" or "CPU".
    pub device: String,
    /// The GPU's UUID.
    pub uuid: Option<String>,
    /// Where the model is.
    pub residency: Residency,
    /// "bf16", "f32", or empty before the first load.
    pub dtype: String,
    /// Bytes of weights on the device.
    pub weight_bytes: u64,
    /// The worker's pid, while it runs.
    pub pid: Option<u32>,
    /// The next timed residency action and when.
    pub countdown: Option<(Action, Duration)>,
    /// "Keep loaded" is on.
    pub keep_loaded: bool,
    /// Last cold load, ms.
    pub load_ms: Option<f64>,
    /// Last restore from host RAM, ms.
    pub restore_ms: Option<f64>,
    /// Why this device cannot be used, if it cannot.
    pub unavailable: Option<String>,
}

/// Events from the engine.
#[derive(Clone, Debug)]
pub enum Event {
    /// The state of every device slot.
    Status(Vec<SlotStatus>),
    /// A job will run on `device`.
    JobStarted {
        /// The job.
        job_id: JobId,
        /// "GPU 0" or "CPU".
        device: String,
    },
    /// The job's audio is decoded.
    JobDecoded {
        /// The job.
        job_id: JobId,
        /// Decoded length.
        duration_s: f64,
        /// Skipped corrupt frames, if any.
        warning: Option<String>,
    },
    /// Some segments are done.
    JobProgress {
        /// The job.
        job_id: JobId,
        /// Seconds done.
        done_s: f64,
        /// Seconds in the file.
        total_s: f64,
        /// New segments.
        segments: Vec<Segment>,
    },
    /// The job finished.
    JobDone {
        /// The job.
        job_id: JobId,
        /// Its transcript.
        transcript: FileTranscript,
        /// Wall time.
        ms: f64,
    },
    /// The job failed or was cancelled.
    JobFailed {
        /// The job.
        job_id: JobId,
        /// What to tell the user.
        message: String,
        /// It was cancelled by the user.
        cancelled: bool,
    },
    /// Something the user should know (a fallback path taken, a device unavailable).
    Notice(String),
    /// A mark for the VRAM plot.
    Marker {
        /// The GPU (None: the CPU).
        uuid: Option<String>,
        /// What happened.
        kind: MarkerKind,
        /// When.
        at: SystemTime,
    },
}

/// Wakes the UI after an event (e.g. `egui::Context::request_repaint`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The UI's side of the engine.
pub struct EngineHandle {
    requests: Sender<Request>,
    events: Receiver<Event>,
    next_job_id: AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread. Nothing is loaded and no worker starts before the first job.
    pub fn spawn(config: EngineConfig, waker: Waker) -> std::io::Result<Self> {
        let (requests, request_rx) = bounded(256);
        let (event_tx, events) = bounded(4096);
        let thread = std::thread::Builder::new()
            .name("engine".to_owned())
            .spawn(move || scheduler::Scheduler::new(config, event_tx, waker).run(&request_rx))?;
        Ok(Self {
            requests,
            events,
            next_job_id: AtomicU64::new(1),
            thread: Some(thread),
        })
    }

    /// A handle over channels the caller owns, with no engine thread behind it: the seam that
    /// lets UI tests read the requests the UI sends and answer with events of their choosing.
    pub fn from_channels(requests: Sender<Request>, events: Receiver<Event>) -> Self {
        Self {
            requests,
            events,
            next_job_id: AtomicU64::new(1),
            thread: None,
        }
    }

    /// Queues a file; returns its job id.
    pub fn transcribe(&self, path: PathBuf, settings: DecodeSettings) -> JobId {
        let job_id = self.next_job_id.fetch_add(1, Ordering::Relaxed);
        self.send(Request::Transcribe {
            job_id,
            path,
            settings,
        });
        job_id
    }

    /// Sends a request (dropped with a log line if the engine is gone).
    pub fn send(&self, request: Request) {
        if self.requests.send(request).is_err() {
            tracing::error!("the engine thread has stopped");
        }
    }

    /// Events received so far, without blocking.
    pub fn try_events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.try_iter()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.requests.send(Request::Shutdown).ok();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}
