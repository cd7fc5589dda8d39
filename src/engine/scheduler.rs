//! The engine thread: the I/O shell around [`super::policy`] and [`super::residency`]. It keeps
//! the job queues and one slot per device, starts workers through a [`WorkerPort`], feeds the
//! pure machines what happened and carries out what they decide.
//!
//! It never blocks: requests to workers go through [`WorkerLink`]s (a full queue is a stuck
//! worker), events to the UI through a local backlog flushed with `try_send`, and it wakes at
//! the earliest of its tick and the watchdog's deadlines:
//! - a load, restore or offload must finish within `watchdog.load`;
//! - a running job's worker must say something (an event or a heartbeat) within
//!   [`silence_bound`] (before the job's first batch: `max(min_silence, first_pass)`; then
//!   `max(min_silence, 3 × the device's longest pass)`);
//! - a cancelled job must stop within `watchdog.cancel_grace`;
//! - a worker that closed its output must exit within a second.
//!
//! A worker that misses one, crashes, is killed (e.g. by the OOM killer) or writes garbage is
//! killed if needed and reaped; its job is retried once on a fresh worker, then fails with the
//! reason (exit status or signal, and the last lines of stderr). Routing is a loop over a list
//! of jobs to place, not a recursion.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select};

use super::policy::{
    self, DeviceKey, JobStep, LossStep, Placement, PolicyInput, SlotView, silence_bound,
};
use super::process::{Inbox, SendError, WorkerLink, WorkerPort};
use super::protocol::{
    DecodeSettings, JobErrorKind, JobId, LoadErrorKind, Pcm16, WorkerDevice, WorkerEvent,
    WorkerRequest,
};
use super::residency::{Action, Residency, ResidencyEvent, ResidencyMachine};
use super::transcript::{FileTranscript, FirstTags, SegmentResult, TranscriptAssembler};
use super::{DeviceTarget, EngineConfig, Event, GpuFree, MarkerKind, Request, SlotStatus, Waker};

/// Events kept for a UI that does not drain them; beyond this, progress and status are dropped
/// (a job's end never is).
const BACKLOG_CAP: usize = 8192;

/// How long a worker that closed its output gets to exit before it is killed.
const CLOSED_GRACE: Duration = Duration::from_secs(1);

/// Panics after which the engine stops restarting and fails what is left.
const MAX_RESTARTS: u32 = 5;

/// The GPUs as the monitor last reported them: a latest-value slot, so samples never queue.
#[derive(Default)]
pub(super) struct LatestGpus(Mutex<Option<Vec<GpuFree>>>);

impl LatestGpus {
    pub(super) fn put(&self, gpus: Vec<GpuFree>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(gpus);
        }
    }

    fn take(&self) -> Option<Vec<GpuFree>> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A job the engine knows about.
#[derive(Clone, Debug)]
pub(super) struct Job {
    id: JobId,
    /// The file, or a clip's label.
    path: PathBuf,
    /// A clip held in memory (live transcription) instead of a file.
    pcm: Option<Pcm16>,
    settings: DecodeSettings,
    /// Devices that already failed this job (out of memory, unusable).
    tried: Vec<DeviceKey>,
    /// Workers lost while running (or loading for) this job.
    losses: u32,
    /// Why it last had to move to another device.
    moved_because: Option<String>,
    /// What of its transcript came so far (kept when it moves to another device).
    results: JobResults,
}

/// A job's results so far: the end of the last one (a job that moves to another device starts
/// again from the beginning there; what was done before is kept, not repeated), the file's
/// tags, and the transcript being assembled (not with [`EngineConfig::stream_transcripts`]).
#[derive(Clone, Debug, Default)]
struct JobResults {
    until_s: Option<f64>,
    tags: FirstTags,
    assembled: TranscriptAssembler,
}

impl JobResults {
    /// The results that follow those taken before; the assembler takes them unless `stream`.
    fn take(&mut self, results: Vec<SegmentResult>, stream: bool) -> Vec<SegmentResult> {
        let mut fresh = Vec::with_capacity(results.len());
        for result in results {
            if self
                .until_s
                .is_some_and(|until| result.start_s < until - 1e-9)
            {
                continue;
            }
            self.until_s = Some(result.end_s);
            self.tags.see(&result);
            if stream {
                fresh.push(result);
            } else {
                self.assembled.push(result);
            }
        }
        fresh
    }

    /// The transcript for `JobDone`: assembled, or (streaming) only what is global.
    fn finish(self, head: FileTranscript, stream: bool) -> FileTranscript {
        if stream {
            let (language, emotion, event) = self.tags.get();
            FileTranscript {
                language,
                emotion,
                event,
                ..head
            }
        } else {
            self.assembled.finish(head.path, head.duration_s)
        }
    }
}

struct Running {
    job: Job,
    last_heard: Instant,
    /// When the last batch (or the decode) finished; `None` until the decode did.
    last_mark: Option<Instant>,
    /// A batch has finished.
    progressed: bool,
    /// A cancel was sent; the worker must stop by then.
    cancel_by: Option<Instant>,
}

struct Waiting {
    what: &'static str,
    deadline: Instant,
}

struct Live {
    link: WorkerLink,
    closed_at: Option<Instant>,
}

struct Slot {
    device: WorkerDevice,
    key: DeviceKey,
    residency: ResidencyMachine,
    worker: Option<Live>,
    queue: VecDeque<Job>,
    running: Option<Running>,
    waiting: Option<Waiting>,
    dtype: String,
    weight_bytes: u64,
    load_ms: Option<f64>,
    restore_ms: Option<f64>,
    unavailable: Option<String>,
    longest_pass: Option<Duration>,
    /// "Release now" came while the worker was busy: release once it is idle.
    release_requested: bool,
}

impl Slot {
    fn uuid(&self) -> Option<String> {
        match &self.key {
            DeviceKey::Cpu => None,
            DeviceKey::Gpu(uuid) => Some(uuid.clone()),
        }
    }

    fn generation(&self) -> Option<u64> {
        self.worker.as_ref().map(|w| w.link.generation)
    }
}

/// Events to the UI, never blocking: what the channel cannot take waits here.
struct EventOut {
    tx: Sender<Event>,
    waker: Waker,
    backlog: VecDeque<Event>,
}

impl EventOut {
    fn emit(&mut self, event: Event) {
        self.backlog.push_back(event);
        if self.backlog.len() > BACKLOG_CAP {
            self.backlog.retain(|e| {
                !matches!(
                    e,
                    Event::Status(_) | Event::Marker { .. } | Event::JobProgress { .. }
                )
            });
        }
        self.flush();
    }

    fn flush(&mut self) {
        let mut sent = false;
        while let Some(event) = self.backlog.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    break;
                }
            }
        }
        if sent {
            (self.waker)();
        }
    }
}

pub(super) struct Scheduler {
    config: EngineConfig,
    port: Box<dyn WorkerPort>,
    out: EventOut,
    inbox_tx: Sender<Inbox>,
    inbox_rx: Receiver<Inbox>,
    latest_gpus: Arc<LatestGpus>,
    gpus: Vec<GpuFree>,
    slots: Vec<Slot>,
    /// Jobs waiting to be placed (routing is a loop over this, never a recursion).
    to_place: VecDeque<Job>,
    /// Workers told to exit, killed at their deadline.
    retiring: Vec<(WorkerLink, Instant)>,
    next_generation: u64,
    last_status: Vec<SlotStatus>,
    keep_loaded: bool,
    /// A recording (live transcription) is on: slots made meanwhile start with their idle
    /// timer paused too.
    recording: bool,
    restarts: u32,
}

impl Scheduler {
    pub(super) fn new(
        config: EngineConfig,
        port: Box<dyn WorkerPort>,
        events: Sender<Event>,
        waker: Waker,
        latest_gpus: Arc<LatestGpus>,
    ) -> Self {
        let (inbox_tx, inbox_rx) = bounded(1024);
        Self {
            config,
            port,
            out: EventOut {
                tx: events,
                waker,
                backlog: VecDeque::new(),
            },
            inbox_tx,
            inbox_rx,
            latest_gpus,
            gpus: Vec::new(),
            slots: Vec::new(),
            to_place: VecDeque::new(),
            retiring: Vec::new(),
            next_generation: 1,
            last_status: Vec::new(),
            keep_loaded: false,
            recording: false,
            restarts: 0,
        }
    }

    /// Serves requests until `Shutdown` (or the handle is gone), then stops every worker.
    pub(super) fn run(&mut self, requests: &Receiver<Request>) {
        let inbox = self.inbox_rx.clone();
        loop {
            let wait = self.next_wake(Instant::now());
            select! {
                recv(requests) -> request => match request {
                    Ok(Request::Shutdown) | Err(_) => break,
                    Ok(request) => self.on_request(request),
                },
                recv(inbox) -> message => {
                    if let Ok(message) = message {
                        self.on_inbox(message);
                    }
                },
                default(wait) => {},
            }
            self.place_waiting();
            self.tick();
        }
        self.shutdown();
    }

    /// After a panic inside [`Self::run`]: every worker is stopped, the device slots start
    /// afresh, and the jobs that were queued or running are placed again (a running job counts
    /// a lost worker, so a job that makes the engine panic twice fails).
    pub(super) fn restart_after_panic(&mut self, panic: &str) {
        self.restarts += 1;
        let mut jobs: Vec<Job> = self.to_place.drain(..).collect();
        for slot in &mut self.slots {
            if let Some(running) = slot.running.take() {
                let mut job = running.job;
                job.losses += 1;
                jobs.push(job);
            }
            jobs.extend(slot.queue.drain(..));
        }
        self.slots.clear();
        self.retiring.clear();
        self.last_status.clear();
        jobs.sort_by_key(|j| j.id);
        let kept = jobs.len();
        tracing::error!("the engine panicked: {panic}");
        if self.restarts > MAX_RESTARTS {
            self.emit(Event::Notice(format!(
                "the engine stopped unexpectedly ({panic}) {} times; giving up on {kept} job(s)",
                self.restarts
            )));
            for job in jobs {
                self.fail(
                    &job,
                    format!("{}: the engine keeps failing", job.path.display()),
                );
            }
            return;
        }
        self.emit(Event::Notice(format!(
            "the engine stopped unexpectedly ({panic}); restarted with {kept} job(s) kept"
        )));
        for job in jobs {
            if policy::after_worker_loss(job.losses) == LossStep::Fail {
                let message = format!(
                    "{}: the engine stopped unexpectedly while running it ({panic})",
                    job.path.display()
                );
                self.fail(&job, message);
            } else {
                self.to_place.push_back(job);
            }
        }
        self.place_waiting();
    }

    /// Asks every worker to exit, waits up to the shutdown grace for them, kills the rest.
    fn shutdown(&mut self) {
        let deadline = Instant::now() + self.config.watchdog.shutdown_grace;
        for slot in &mut self.slots {
            if let Some(live) = slot.worker.take() {
                live.link.send(&WorkerRequest::Shutdown).ok();
                self.retiring.push((live.link, deadline));
            }
        }
        while !self.retiring.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox_rx.recv_timeout(left) {
                Ok(Inbox::Exited { generation, .. }) => {
                    self.retiring
                        .retain(|(link, _)| link.generation != generation);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Dropping a link kills its worker; its reaper collects it.
        self.retiring.clear();
        self.out.flush();
    }

    fn emit(&mut self, event: Event) {
        self.out.emit(event);
    }

    fn notice(&mut self, message: String) {
        tracing::info!("{message}");
        self.emit(Event::Notice(message));
    }

    fn fail(&mut self, job: &Job, message: String) {
        self.emit(Event::JobFailed {
            job_id: job.id,
            message,
            cancelled: false,
        });
    }

    fn marker(&mut self, slot: usize, kind: MarkerKind) {
        let uuid = self.slots[slot].uuid();
        self.emit(Event::Marker {
            uuid,
            kind,
            at: SystemTime::now(),
        });
    }

    fn residency(&mut self, slot: usize, event: ResidencyEvent) {
        let action = self.slots[slot].residency.on_event(event, Instant::now());
        self.apply(slot, action);
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Transcribe {
                job_id,
                path,
                settings,
            } => self.to_place.push_back(Job {
                id: job_id,
                path,
                pcm: None,
                settings,
                tried: Vec::new(),
                losses: 0,
                moved_because: None,
                results: JobResults::default(),
            }),
            Request::TranscribeSamples {
                job_id,
                label,
                pcm,
                settings,
            } => self.to_place.push_back(Job {
                id: job_id,
                path: PathBuf::from(label),
                pcm: Some(pcm),
                settings,
                tried: Vec::new(),
                losses: 0,
                moved_because: None,
                results: JobResults::default(),
            }),
            Request::Cancel(job_id) => self.cancel(job_id),
            Request::UnloadNow => {
                for i in 0..self.slots.len() {
                    self.residency(i, ResidencyEvent::UnloadNow);
                }
            }
            Request::ReleaseNow => {
                for i in 0..self.slots.len() {
                    if self.slots[i].worker.is_some() {
                        self.slots[i].release_requested = true;
                        self.release_if_requested(i);
                    }
                }
            }
            Request::KeepLoaded(on) => {
                self.keep_loaded = on;
                for i in 0..self.slots.len() {
                    self.residency(i, ResidencyEvent::KeepLoaded(on));
                }
            }
            Request::SetTarget(target) => {
                self.config.target = target;
                // Idle slots the new target will not use give their memory back now.
                for i in 0..self.slots.len() {
                    let slot = &self.slots[i];
                    if slot.running.is_none() && slot.queue.is_empty() && !self.target_uses(i) {
                        self.residency(i, ResidencyEvent::DeviceChanged);
                    }
                }
            }
            Request::SetResidency(residency) => {
                self.config.residency = residency;
                for slot in &mut self.slots {
                    slot.residency.set_config(residency);
                }
            }
            Request::Recording(on) => {
                self.recording = on;
                for i in 0..self.slots.len() {
                    self.residency(i, ResidencyEvent::Recording(on));
                }
            }
            Request::Gpus(gpus) => self.gpus = gpus,
            Request::Shutdown => {}
        }
    }

    fn target_uses(&self, slot: usize) -> bool {
        let key = &self.slots[slot].key;
        match &self.config.target {
            DeviceTarget::Cpu => *key == DeviceKey::Cpu,
            DeviceTarget::Gpu { uuid } => *key == DeviceKey::Gpu(uuid.clone()),
            DeviceTarget::Auto | DeviceTarget::All => *key != DeviceKey::Cpu,
        }
    }

    /// Places every job waiting to be placed.
    fn place_waiting(&mut self) {
        if let Some(gpus) = self.latest_gpus.take() {
            self.gpus = gpus;
        }
        while let Some(job) = self.to_place.pop_front() {
            let views: Vec<SlotView> = self
                .slots
                .iter()
                .map(|s| SlotView {
                    key: s.key.clone(),
                    residency: s.residency.state(),
                    unavailable: s.unavailable.clone(),
                    jobs: s.queue.len() + usize::from(s.running.is_some()),
                })
                .collect();
            let input = PolicyInput {
                target: &self.config.target,
                pinned_fallback: self.config.pinned_fallback,
                gpus: &self.gpus,
                slots: &views,
                cuda_built: self.port.gpu_capable(),
                vram_margin: self.config.vram_margin,
                precision: self.config.precision,
                engine: &self.config.engine,
            };
            match policy::place(&job.path, &job.tried, &input) {
                Placement::Fail { message } => {
                    let message = match &job.moved_because {
                        Some(why) => format!("{message}; last: {why}"),
                        None => message,
                    };
                    self.fail(&job, message);
                }
                Placement::Run { device, notice } => {
                    if let Some(notice) = notice {
                        self.notice(notice);
                    }
                    let slot = self.slot_for(device);
                    if job.pcm.is_some() {
                        // Live audio is waited for by someone speaking: ahead of queued files.
                        self.slots[slot].queue.push_front(job);
                    } else {
                        self.slots[slot].queue.push_back(job);
                    }
                    self.residency(slot, ResidencyEvent::JobQueued);
                    self.dispatch(slot);
                }
            }
        }
    }

    fn slot_for(&mut self, device: WorkerDevice) -> usize {
        let key = DeviceKey::of(&device);
        if let Some(i) = self.slots.iter().position(|s| s.key == key) {
            // The ordinal may have changed (CUDA_VISIBLE_DEVICES); the UUID did not.
            self.slots[i].device = device;
            return i;
        }
        let mut residency = ResidencyMachine::new(self.config.residency);
        // A device used for the first time follows the current "keep loaded" choice.
        residency.on_event(ResidencyEvent::KeepLoaded(self.keep_loaded), Instant::now());
        if self.recording {
            residency.on_event(ResidencyEvent::Recording(true), Instant::now());
        }
        self.slots.push(Slot {
            device,
            key,
            residency,
            worker: None,
            queue: VecDeque::new(),
            running: None,
            waiting: None,
            dtype: String::new(),
            weight_bytes: 0,
            load_ms: None,
            restore_ms: None,
            unavailable: None,
            longest_pass: None,
            release_requested: false,
        });
        self.slots.len() - 1
    }

    fn dispatch(&mut self, slot: usize) {
        let s = &self.slots[slot];
        if s.running.is_some()
            || s.waiting.is_some()
            || s.worker.is_none()
            || s.residency.state() != Residency::Ready
        {
            return;
        }
        let Some(job) = self.slots[slot].queue.pop_front() else {
            return;
        };
        let batch_budget_s = policy::batch_budget_s(
            &self.slots[slot].device,
            &self.gpus,
            self.config.precision,
            self.config.vram_margin,
            self.config.max_batch,
        );
        let request = match &job.pcm {
            None => WorkerRequest::Transcribe {
                job_id: job.id,
                path: job.path.clone(),
                settings: job.settings.clone(),
                batch_budget_s,
            },
            Some(pcm) => WorkerRequest::TranscribeSamples {
                job_id: job.id,
                label: job.path.display().to_string(),
                pcm: pcm.clone(),
                settings: job.settings.clone(),
                batch_budget_s,
            },
        };
        match self.send(slot, &request) {
            Ok(()) => {
                let now = Instant::now();
                let job_id = job.id;
                self.slots[slot].running = Some(Running {
                    job,
                    last_heard: now,
                    last_mark: None,
                    progressed: false,
                    cancel_by: None,
                });
                let device = self.slots[slot].device.label();
                self.emit(Event::JobStarted { job_id, device });
            }
            Err(SendError::Encode(err)) => {
                let message = format!("{}: cannot send the job: {err}", job.path.display());
                self.fail(&job, message);
                self.dispatch(slot);
                self.maybe_drained(slot);
            }
            Err(err) => {
                self.slots[slot].queue.push_front(job);
                self.on_send_error(slot, &err);
            }
        }
    }

    fn send(&self, slot: usize, request: &WorkerRequest) -> Result<(), SendError> {
        match &self.slots[slot].worker {
            Some(live) => live.link.send(request),
            None => Err(SendError::Gone),
        }
    }

    /// A request could not be handed over: a stuck worker is killed; a gone one will be
    /// reported by its reaper.
    fn on_send_error(&mut self, slot: usize, err: &SendError) {
        match err {
            SendError::Stuck => {
                self.lose_worker(slot, "stopped reading its requests; killed");
            }
            SendError::Gone => {
                if self.slots[slot].worker.is_none() {
                    // No worker at all (never started): start one for what is queued.
                    self.slots[slot].waiting = None;
                    self.residency(slot, ResidencyEvent::WorkerExited);
                    if !self.slots[slot].queue.is_empty() {
                        self.residency(slot, ResidencyEvent::JobQueued);
                    }
                }
            }
            SendError::Encode(err) => tracing::error!("cannot encode a request: {err}"),
        }
    }

    fn request(&mut self, slot: usize, request: &WorkerRequest, what: &'static str) {
        match self.send(slot, request) {
            Ok(()) => {
                self.slots[slot].waiting = Some(Waiting {
                    what,
                    deadline: Instant::now() + self.config.watchdog.load,
                });
            }
            Err(err) => self.on_send_error(slot, &err),
        }
    }

    /// Carries out a residency action.
    fn apply(&mut self, slot: usize, action: Option<Action>) {
        let Some(action) = action else { return };
        match action {
            Action::Load => self.load(slot),
            Action::Restore => self.request(slot, &WorkerRequest::Restore, "restore"),
            Action::Offload => self.request(slot, &WorkerRequest::Offload, "offload"),
            Action::Release => {
                self.retire(slot);
                self.slots[slot]
                    .residency
                    .on_event(ResidencyEvent::WorkerExited, Instant::now());
                self.slots[slot].weight_bytes = 0;
                self.marker(slot, MarkerKind::Release);
            }
        }
    }

    /// Tells the slot's worker to exit; it is killed if it has not by the shutdown grace.
    fn retire(&mut self, slot: usize) {
        self.slots[slot].release_requested = false;
        self.slots[slot].waiting = None;
        if let Some(live) = self.slots[slot].worker.take() {
            live.link.send(&WorkerRequest::Shutdown).ok();
            let deadline = Instant::now() + self.config.watchdog.shutdown_grace;
            self.retiring.push((live.link, deadline));
        }
    }

    fn load(&mut self, slot: usize) {
        let model_dir = match self.model_dir() {
            Ok(dir) => dir,
            Err(message) => {
                self.slots[slot]
                    .residency
                    .on_event(ResidencyEvent::LoadFinished { ok: false }, Instant::now());
                let jobs: Vec<Job> = self.slots[slot].queue.drain(..).collect();
                for job in jobs {
                    self.fail(&job, message.clone());
                }
                return;
            }
        };
        if self.slots[slot].worker.is_none() {
            let generation = self.next_generation;
            self.next_generation += 1;
            let started = self
                .port
                .start(&self.slots[slot].device)
                .and_then(|io| WorkerLink::open(io, slot, generation, &self.inbox_tx));
            match started {
                Ok(link) => {
                    self.slots[slot].worker = Some(Live {
                        link,
                        closed_at: None,
                    });
                }
                Err(err) => {
                    let message = format!("cannot start a worker: {err}");
                    return self.load_failed(slot, LoadErrorKind::DeviceUnavailable, &message);
                }
            }
        }
        let request = WorkerRequest::Load {
            model_dir,
            device: self.slots[slot].device.clone(),
            precision: self.config.precision,
        };
        self.request(slot, &request, "load");
    }

    fn model_dir(&self) -> Result<PathBuf, String> {
        match self
            .config
            .engine
            .model_dir(self.config.model_dir.as_deref())?
        {
            Some(dir) => Ok(dir),
            None => {
                super::model_dir::resolve(&self.config.engine).map_err(|err| format!("{err:#}"))
            }
        }
    }

    /// A load or restore failed: the policy says whether the jobs fail or move on, and
    /// whether the device stays usable.
    fn load_failed(&mut self, slot: usize, kind: LoadErrorKind, message: &str) {
        let step = policy::after_load_failure(kind);
        let label = self.slots[slot].device.label();
        self.retire(slot);
        self.slots[slot]
            .residency
            .on_event(ResidencyEvent::LoadFinished { ok: false }, Instant::now());
        self.slots[slot].weight_bytes = 0;
        if step.out_of_memory {
            self.marker(slot, MarkerKind::OutOfMemory);
        }
        if step.mark_unavailable {
            self.slots[slot].unavailable = Some(message.to_owned());
        }
        self.notice(format!("cannot load the model on {label}: {message}"));
        let key = self.slots[slot].key.clone();
        let jobs: Vec<Job> = self.slots[slot].queue.drain(..).collect();
        for mut job in jobs {
            if step.fail_jobs {
                let text = format!("{}: cannot load the model: {message}", job.path.display());
                self.fail(&job, text);
            } else {
                job.tried.push(key.clone());
                job.moved_because = Some(format!("cannot load the model on {label}: {message}"));
                self.to_place.push_back(job);
            }
        }
    }

    /// The slot's worker is gone (or is being killed now): its job is retried once, then fails.
    fn lose_worker(&mut self, slot: usize, reason: &str) {
        let label = self.slots[slot].device.label();
        // Dropping the link kills the process if it still runs; the reaper collects it.
        drop(self.slots[slot].worker.take());
        let waiting = self.slots[slot].waiting.take();
        self.slots[slot]
            .residency
            .on_event(ResidencyEvent::WorkerExited, Instant::now());
        self.slots[slot].weight_bytes = 0;
        self.marker(slot, MarkerKind::Release);
        if let Some(library) = super::cuda_stubs::is_missing_library_error(reason)
            && self.slots[slot].key != DeviceKey::Cpu
        {
            let message = format!(
                "GPU transcription unavailable: {library} cannot be loaded (the NVIDIA driver \
                 or the CUDA runtime libraries are missing)"
            );
            if let Some(running) = self.slots[slot].running.take() {
                self.slots[slot].queue.push_front(running.job);
            }
            return self.load_failed(slot, LoadErrorKind::DeviceUnavailable, &message);
        }
        let what = format!("the worker on {label} {reason}");
        let charged = match self.slots[slot].running.take() {
            Some(running) if running.cancel_by.is_some() => {
                self.emit(Event::JobFailed {
                    job_id: running.job.id,
                    message: format!("cancelled: {}", running.job.path.display()),
                    cancelled: true,
                });
                None
            }
            Some(running) => Some(running.job),
            // A worker lost while loading for the first queued job counts against that job.
            None if waiting.is_some_and(|w| w.what != "offload") => {
                self.slots[slot].queue.pop_front()
            }
            None => None,
        };
        if let Some(mut job) = charged {
            job.losses += 1;
            match policy::after_worker_loss(job.losses) {
                LossStep::Retry => {
                    self.notice(format!("{}: {what}; trying again", job.path.display()));
                    self.slots[slot].queue.push_front(job);
                }
                LossStep::Fail => {
                    let message = format!("{}: {what} (twice)", job.path.display());
                    self.fail(&job, message);
                }
            }
        } else {
            tracing::warn!("{what}");
        }
        if self.slots[slot].queue.is_empty() {
            self.maybe_drained(slot);
        } else {
            self.residency(slot, ResidencyEvent::JobQueued);
        }
    }

    fn cancel(&mut self, job_id: JobId) {
        if let Some(pos) = self.to_place.iter().position(|j| j.id == job_id) {
            self.to_place.remove(pos);
            return self.emit_cancelled(job_id, None);
        }
        for i in 0..self.slots.len() {
            if let Some(pos) = self.slots[i].queue.iter().position(|j| j.id == job_id) {
                let job = self.slots[i].queue.remove(pos);
                self.emit_cancelled(job_id, job.map(|j| j.path));
                self.maybe_drained(i);
                return;
            }
            let running = self.slots[i]
                .running
                .as_ref()
                .is_some_and(|r| r.job.id == job_id && r.cancel_by.is_none());
            if running {
                let grace = self.config.watchdog.cancel_grace;
                if let Some(r) = self.slots[i].running.as_mut() {
                    r.cancel_by = Some(Instant::now() + grace);
                }
                if let Err(err) = self.send(i, &WorkerRequest::Cancel { job_id }) {
                    self.on_send_error(i, &err);
                }
                return;
            }
        }
    }

    fn emit_cancelled(&mut self, job_id: JobId, path: Option<PathBuf>) {
        let message = path.map_or_else(
            || "cancelled".to_owned(),
            |p| format!("cancelled: {}", p.display()),
        );
        self.emit(Event::JobFailed {
            job_id,
            message,
            cancelled: true,
        });
    }

    fn maybe_drained(&mut self, slot: usize) {
        if self.slots[slot].running.is_none() && self.slots[slot].queue.is_empty() {
            self.residency(slot, ResidencyEvent::QueueDrained);
        }
    }

    fn on_inbox(&mut self, message: Inbox) {
        let (slot, generation) = message.source();
        if let Inbox::Exited { generation, .. } = &message {
            self.retiring
                .retain(|(link, _)| link.generation != *generation);
        }
        if slot >= self.slots.len() || self.slots[slot].generation() != Some(generation) {
            // A worker that was already released or replaced.
            return;
        }
        match message {
            Inbox::Event { event, .. } => {
                if let Some(running) = self.slots[slot].running.as_mut() {
                    running.last_heard = Instant::now();
                }
                self.on_worker_event(slot, event);
            }
            Inbox::Garbage { detail, .. } => {
                self.lose_worker(slot, &format!("wrote {detail}; killed"));
            }
            Inbox::Closed { .. } => {
                if let Some(live) = self.slots[slot].worker.as_mut() {
                    live.closed_at = Some(Instant::now());
                }
            }
            Inbox::Exited {
                exit, stderr_tail, ..
            } => {
                let reason = if stderr_tail.is_empty() {
                    exit.to_string()
                } else {
                    format!("{exit}: {stderr_tail}")
                };
                self.lose_worker(slot, &reason);
            }
        }
    }

    /// A "Release now" that waited for the worker to finish what it was doing.
    fn release_if_requested(&mut self, slot: usize) {
        let s = &self.slots[slot];
        if s.release_requested
            && s.worker.is_some()
            && s.running.is_none()
            && s.waiting.is_none()
            && s.queue.is_empty()
        {
            self.slots[slot].release_requested = false;
            self.apply(slot, Some(Action::Release));
        }
    }

    fn on_worker_event(&mut self, slot: usize, event: WorkerEvent) {
        self.handle_worker_event(slot, event);
        if slot < self.slots.len() {
            self.release_if_requested(slot);
        }
    }

    fn handle_worker_event(&mut self, slot: usize, event: WorkerEvent) {
        let now = Instant::now();
        match event {
            WorkerEvent::Started { .. } | WorkerEvent::Heartbeat { .. } => {}
            WorkerEvent::Loaded {
                dtype,
                load_ms,
                weight_bytes,
                ..
            } => {
                let s = &mut self.slots[slot];
                s.waiting = None;
                s.residency
                    .on_event(ResidencyEvent::LoadFinished { ok: true }, now);
                s.dtype = dtype;
                s.weight_bytes = weight_bytes;
                s.load_ms = Some(load_ms);
                s.unavailable = None;
                self.marker(slot, MarkerKind::Load);
                self.dispatch(slot);
            }
            WorkerEvent::Restored { ms } => {
                let s = &mut self.slots[slot];
                s.waiting = None;
                s.residency
                    .on_event(ResidencyEvent::LoadFinished { ok: true }, now);
                s.restore_ms = Some(ms);
                self.marker(slot, MarkerKind::Restore);
                self.dispatch(slot);
            }
            WorkerEvent::LoadFailed { kind, message } => self.load_failed(slot, kind, &message),
            WorkerEvent::Offloaded { .. } => {
                self.slots[slot].waiting = None;
                self.slots[slot].weight_bytes = 0;
                self.marker(slot, MarkerKind::Offload);
                // A job queued while offloading gets the weights back at once.
                self.residency(slot, ResidencyEvent::Offloaded);
            }
            WorkerEvent::OffloadFailed { message } => {
                self.slots[slot].waiting = None;
                let label = self.slots[slot].device.label();
                self.notice(format!(
                    "cannot offload the model on {label}: {message}; it stays loaded"
                ));
                self.slots[slot]
                    .residency
                    .on_event(ResidencyEvent::LoadFinished { ok: true }, now);
                self.dispatch(slot);
            }
            WorkerEvent::Decoded {
                job_id,
                duration_s,
                warning,
            } => {
                if let Some(running) = self.running_job(slot, job_id) {
                    running.last_mark = Some(now);
                }
                self.emit(Event::JobDecoded {
                    job_id,
                    duration_s,
                    warning,
                });
            }
            WorkerEvent::Progress {
                job_id,
                done_s,
                total_s,
                segments,
            } => {
                let pass = self.running_job(slot, job_id).and_then(|running| {
                    let pass = running
                        .last_mark
                        .map(|mark| now.saturating_duration_since(mark));
                    running.last_mark = Some(now);
                    running.progressed = true;
                    pass
                });
                if let Some(pass) = pass {
                    let longest = &mut self.slots[slot].longest_pass;
                    *longest = Some(longest.map_or(pass, |l| l.max(pass)));
                }
                self.emit(Event::JobProgress {
                    job_id,
                    done_s,
                    total_s,
                    segments,
                });
            }
            WorkerEvent::BatchReduced {
                batch, next_batch, ..
            } => {
                self.marker(slot, MarkerKind::OutOfMemory);
                let label = self.slots[slot].device.label();
                self.notice(format!(
                    "out of memory on {label} with {batch} segments at once: retrying with {next_batch}"
                ));
            }
            WorkerEvent::Transcribed { job_id, results } => {
                let stream = self.config.stream_transcripts;
                let Some(running) = self.running_job(slot, job_id) else {
                    return;
                };
                let results = running.job.results.take(results, stream);
                if !results.is_empty() {
                    self.emit(Event::JobTranscribed { job_id, results });
                }
            }
            WorkerEvent::Done {
                job_id,
                mut transcript,
                ms,
                streamed,
            } => {
                let stream = self.config.stream_transcripts;
                let Some(running) = self.take_running(slot, job_id) else {
                    return;
                };
                let mut job = running.job;
                if !streamed {
                    // A worker that sends the whole transcript at the end: its text, segments,
                    // tokens and words as one result.
                    let whole = std::mem::take(&mut transcript);
                    transcript.path = whole.path.clone();
                    transcript.duration_s = whole.duration_s;
                    let results = job.results.take(vec![whole.into_result()], stream);
                    if !results.is_empty() {
                        self.emit(Event::JobTranscribed { job_id, results });
                    }
                }
                // The worker's copy of the path is only a label; this one is exact.
                transcript.path = job.path;
                let transcript = job.results.finish(transcript, stream);
                self.emit(Event::JobDone {
                    job_id,
                    transcript,
                    ms,
                });
                self.dispatch(slot);
                self.maybe_drained(slot);
            }
            WorkerEvent::JobFailed {
                job_id,
                kind,
                message,
            } => {
                let Some(running) = self.take_running(slot, job_id) else {
                    return;
                };
                let mut job = running.job;
                let step = if running.cancel_by.is_some() && kind != JobErrorKind::BadInput {
                    JobStep::Cancelled
                } else {
                    policy::after_job_failure(kind)
                };
                match step {
                    JobStep::NextDevice => {
                        self.marker(slot, MarkerKind::OutOfMemory);
                        let label = self.slots[slot].device.label();
                        self.notice(format!(
                            "{}: out of memory on {label} even one segment at a time: trying the next device",
                            job.path.display()
                        ));
                        job.tried.push(self.slots[slot].key.clone());
                        job.moved_because = Some(format!("out of memory on {label}"));
                        // Free the device for the other process before retrying elsewhere.
                        self.apply(slot, Some(Action::Release));
                        self.to_place.push_back(job);
                        // The rest of the queue needs the model back.
                        if !self.slots[slot].queue.is_empty() {
                            self.residency(slot, ResidencyEvent::JobQueued);
                        }
                    }
                    JobStep::Cancelled => self.emit(Event::JobFailed {
                        job_id,
                        message,
                        cancelled: true,
                    }),
                    JobStep::Fail => self.fail(&job, message),
                }
                self.dispatch(slot);
                self.maybe_drained(slot);
            }
        }
    }

    fn running_job(&mut self, slot: usize, job_id: JobId) -> Option<&mut Running> {
        self.slots[slot]
            .running
            .as_mut()
            .filter(|r| r.job.id == job_id)
    }

    fn take_running(&mut self, slot: usize, job_id: JobId) -> Option<Running> {
        if self.slots[slot]
            .running
            .as_ref()
            .is_some_and(|r| r.job.id == job_id)
        {
            self.slots[slot].running.take()
        } else {
            tracing::warn!("an event for job {job_id}, which is not running there");
            None
        }
    }

    /// The watchdog's deadline for a slot: when its worker must have said something.
    fn deadline(&self, slot: &Slot) -> Option<(Instant, String)> {
        let live = slot.worker.as_ref()?;
        let watchdog = &self.config.watchdog;
        let mut due: Vec<(Instant, String)> = Vec::new();
        if let Some(closed) = live.closed_at {
            due.push((
                closed + CLOSED_GRACE,
                "closed its output but did not exit; killed".into(),
            ));
        }
        if let Some(waiting) = &slot.waiting {
            due.push((
                waiting.deadline,
                format!(
                    "did not finish the {} within {:.1} s; killed",
                    waiting.what,
                    watchdog.load.as_secs_f64()
                ),
            ));
        }
        if let Some(running) = &slot.running {
            let bound = silence_bound(
                watchdog,
                running.progressed.then_some(()).and(slot.longest_pass),
            );
            due.push((
                running.last_heard + bound,
                format!("sent nothing for {:.1} s; killed", bound.as_secs_f64()),
            ));
            if let Some(by) = running.cancel_by {
                due.push((
                    by,
                    format!(
                        "did not stop within {:.1} s of the cancel; killed",
                        watchdog.cancel_grace.as_secs_f64()
                    ),
                ));
            }
        }
        due.into_iter().min_by_key(|(at, _)| *at)
    }

    fn next_wake(&self, now: Instant) -> Duration {
        let tick = self.config.watchdog.tick;
        self.slots
            .iter()
            .filter_map(|s| self.deadline(s))
            .map(|(at, _)| at.saturating_duration_since(now))
            .chain(
                self.retiring
                    .iter()
                    .map(|(_, at)| at.saturating_duration_since(now)),
            )
            .fold(tick, Duration::min)
    }

    fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if let Some((at, reason)) = self.deadline(&self.slots[i])
                && at <= now
            {
                self.lose_worker(i, &reason);
            }
        }
        // Retired workers past their grace are killed (dropping the link does it).
        self.retiring.retain(|(_, deadline)| *deadline > now);
        for i in 0..self.slots.len() {
            let action = self.slots[i].residency.tick(now);
            self.apply(i, action);
        }
        self.place_waiting();
        let status: Vec<SlotStatus> = self
            .slots
            .iter()
            .map(|s| SlotStatus {
                device: s.device.label(),
                uuid: s.uuid(),
                residency: s.residency.state(),
                dtype: s.dtype.clone(),
                weight_bytes: s.weight_bytes,
                pid: s.worker.as_ref().map(|w| w.link.pid),
                // Whole seconds, so the status only changes once a second.
                countdown: s
                    .residency
                    .pending(now)
                    .map(|(a, d)| (a, Duration::from_secs(d.as_secs_f64().ceil() as u64))),
                keep_loaded: s.residency.keep_loaded(),
                load_ms: s.load_ms,
                restore_ms: s.restore_ms,
                unavailable: s.unavailable.clone(),
            })
            .collect();
        if status != self.last_status {
            self.last_status.clone_from(&status);
            self.emit(Event::Status(status));
        }
        self.out.flush();
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
