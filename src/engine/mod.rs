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
//! bounded channels; the engine calls the waker after every event. No call on the handle
//! blocks: requests the channel cannot take wait in the handle and go with the next call, GPU
//! samples replace each other in a latest-value slot, and dropping the handle returns within
//! about a second whatever the workers do.
//!
//! The engine thread runs [`scheduler`] (the I/O shell) over [`policy`] and [`residency`] (pure
//! decisions), and starts workers through a [`process::WorkerPort`] ([`process::ProcessPort`]
//! in the app; scripted fakes from [`fake_worker`] in tests). A panic in it is caught: the
//! engine starts afresh with its queue kept and says so.

pub mod batch;
pub mod cuda_stubs;
pub mod fake_worker;
pub mod fit;
mod model_dir;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod protocol;
pub mod residency;
mod scheduler;
pub mod segment;
pub mod speech_engine;
pub mod subtitles;
pub mod subtitles_stream;
pub mod transcript;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::{Deserialize, Serialize};

pub use policy::{DeviceKey, PinnedFallback, WatchdogConfig};
pub use protocol::{DecodeSettings, JobId, Pcm16, Precision};
pub use residency::{Action, IdlePolicy, Residency, ResidencyConfig};
pub use speech_engine::SpeechEngine;
pub use transcript::{
    ExportFormat, FileTranscript, Segment, SegmentResult, TokenTime, TranscriptAssembler, WordTime,
};

use crate::gpu::DeviceChoice;

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

impl DeviceTarget {
    /// The target for a device choice (the window's picker, `--device`).
    pub fn from_choice(choice: &DeviceChoice) -> Self {
        match choice {
            DeviceChoice::Auto => Self::Auto,
            DeviceChoice::Cpu => Self::Cpu,
            DeviceChoice::Gpu { uuid } => Self::Gpu { uuid: uuid.clone() },
            DeviceChoice::All => Self::All,
        }
    }
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
    /// The speech model (SenseVoice-Small or a Whisper size).
    pub engine: SpeechEngine,
    /// Weight precision.
    pub precision: Precision,
    /// When to offload and release.
    pub residency: ResidencyConfig,
    /// Fraction of free VRAM left alone (default 0.1).
    pub vram_margin: f64,
    /// Where jobs run.
    pub target: DeviceTarget,
    /// What jobs pinned to a GPU that is no longer listed do.
    pub pinned_fallback: PinnedFallback,
    /// The watchdog's bounds (short ones in tests).
    pub watchdog: WatchdogConfig,
    /// Largest batch of segments on a GPU.
    pub max_batch: u64,
    /// Hand transcripts out in pieces ([`Event::JobTranscribed`]) instead of whole in
    /// [`Event::JobDone`]: for a caller that writes them out as they come (the command line),
    /// so that nothing holds a long file's whole transcript.
    #[serde(default)]
    pub stream_transcripts: bool,
    /// The worker executable; `None` looks next to the running executable (see
    /// [`process::worker_command`]).
    #[serde(skip)]
    pub worker_exe: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            engine: SpeechEngine::SenseVoice,
            precision: Precision::Auto,
            residency: ResidencyConfig::default(),
            vram_margin: 0.1,
            target: DeviceTarget::Auto,
            pinned_fallback: PinnedFallback::Auto,
            watchdog: WatchdogConfig::default(),
            max_batch: 16,
            stream_transcripts: false,
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
    /// Transcribe a clip held in memory (live transcription; the id comes from
    /// [`EngineHandle::transcribe_samples`]). Answered with the same events as a file; it goes
    /// to the front of its device's queue.
    TranscribeSamples {
        /// The job's id.
        job_id: JobId,
        /// What messages call the clip, e.g. "live audio 3.2–5.0 s".
        label: String,
        /// 16 kHz mono audio.
        pcm: Pcm16,
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
    /// Live transcription started (the window marks it; the engine never sends it).
    LiveStart,
    /// Live transcription stopped (the window marks it; the engine never sends it).
    LiveStop,
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
    /// Results of the job's next segments, in time order (only with
    /// [`EngineConfig::stream_transcripts`]): the transcript in pieces as the file is done.
    JobTranscribed {
        /// The job.
        job_id: JobId,
        /// The results, with times from the file's start.
        results: Vec<SegmentResult>,
    },
    /// The job finished.
    JobDone {
        /// The job.
        job_id: JobId,
        /// Its transcript; with [`EngineConfig::stream_transcripts`] only what is global (path,
        /// length, the file's tags): text, segments, tokens and words came in
        /// [`Event::JobTranscribed`].
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

/// How long dropping an [`EngineHandle`] waits for the engine thread (which gives its workers
/// [`WatchdogConfig::shutdown_grace`], then kills them).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The UI's side of the engine.
pub struct EngineHandle {
    requests: Sender<Request>,
    events: Receiver<Event>,
    next_job_id: AtomicU64,
    /// Requests the channel could not take yet, oldest first.
    pending: Mutex<VecDeque<Request>>,
    /// Where GPU lists go (`None` for a handle over test channels: they go as requests).
    latest_gpus: Option<Arc<scheduler::LatestGpus>>,
    /// Ends when the engine thread does.
    stopped: Option<Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread with real worker processes. Nothing is loaded and no worker
    /// starts before the first job.
    pub fn spawn(config: EngineConfig, waker: Waker) -> std::io::Result<Self> {
        let port = process::ProcessPort::new(config.worker_exe.as_deref());
        Self::spawn_with_port(config, waker, Box::new(port))
    }

    /// Starts the engine thread with workers from `port` (tests: [`fake_worker::FakePort`]).
    pub fn spawn_with_port(
        config: EngineConfig,
        waker: Waker,
        port: Box<dyn process::WorkerPort>,
    ) -> std::io::Result<Self> {
        let (requests, request_rx) = bounded(256);
        let (event_tx, events) = bounded(4096);
        let (stopped_tx, stopped) = bounded::<()>(1);
        let latest_gpus = Arc::new(scheduler::LatestGpus::default());
        let gpus = Arc::clone(&latest_gpus);
        let thread = std::thread::Builder::new()
            .name("engine".to_owned())
            .spawn(move || {
                let mut engine = scheduler::Scheduler::new(config, port, event_tx, waker, gpus);
                loop {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        engine.run(&request_rx);
                    }));
                    match run {
                        Ok(()) => break,
                        Err(panic) => engine.restart_after_panic(&panic_message(&*panic)),
                    }
                }
                drop(stopped_tx);
            })?;
        Ok(Self {
            requests,
            events,
            next_job_id: AtomicU64::new(1),
            pending: Mutex::new(VecDeque::new()),
            latest_gpus: Some(latest_gpus),
            stopped: Some(stopped),
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
            pending: Mutex::new(VecDeque::new()),
            latest_gpus: None,
            stopped: None,
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

    /// Queues a clip of 16 kHz mono audio held in memory; returns its job id.
    pub fn transcribe_samples(&self, label: String, pcm: Pcm16, settings: DecodeSettings) -> JobId {
        let job_id = self.next_job_id.fetch_add(1, Ordering::Relaxed);
        self.send(Request::TranscribeSamples {
            job_id,
            label,
            pcm,
            settings,
        });
        job_id
    }

    /// Sends a request without blocking: what the engine cannot take yet waits here, in order,
    /// and goes with the next call. A GPU list replaces the previous one instead of queueing.
    pub fn send(&self, request: Request) {
        if let (Request::Gpus(gpus), Some(latest)) = (&request, &self.latest_gpus) {
            latest.put(gpus.clone());
            return;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        pending.push_back(request);
        self.flush(&mut pending);
    }

    fn flush(&self, pending: &mut VecDeque<Request>) {
        while let Some(request) = pending.pop_front() {
            match self.requests.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(request)) => {
                    pending.push_front(request);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!("the engine thread has stopped");
                    pending.clear();
                    return;
                }
            }
        }
    }

    /// Requests still waiting for room in the engine's channel.
    pub fn pending_requests(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    /// Events received so far, without blocking (and hands on waiting requests).
    pub fn try_events(&self) -> impl Iterator<Item = Event> + '_ {
        if let Ok(mut pending) = self.pending.lock() {
            self.flush(&mut pending);
        }
        self.events.try_iter()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let waiting = self.pending.lock().map_or(0, |mut pending| {
                self.flush(&mut pending);
                pending.len()
            });
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // With requests still waiting, look again soon to hand them on.
            let wait = if waiting > 0 {
                left.min(Duration::from_millis(20))
            } else {
                left
            };
            match self.events.recv_timeout(wait) {
                Ok(event) => return Some(event),
                Err(_) if left.is_zero() => return None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) if waiting == 0 => {
                    return None;
                }
                Err(_) => {}
            }
        }
    }

    /// Whether the engine thread is still running (always true for a handle over channels).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| !t.is_finished())
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Room for the shutdown is made by dropping what still waits: nothing more will run.
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
        let told = match self.requests.try_send(Request::Shutdown) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => true,
        };
        if !told {
            tracing::warn!("the engine's request queue is full; it stops when it is drained");
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        let ended = self.stopped.as_ref().is_none_or(|stopped| {
            stopped
                .recv_timeout(CLOSE_WAIT)
                .is_err_and(|e| e.is_disconnected())
        });
        if ended {
            thread.join().ok();
        } else {
            tracing::warn!("the engine thread did not stop within {CLOSE_WAIT:?}; leaving it");
        }
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
