//! The engine thread: job queues per device, routing with VRAM fit checks and out-of-memory
//! fallback, residency actions, and the worker processes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded, select};

use super::fit::{ModelShape, max_batch_that_fits, usable_bytes};
use super::process::{Inbox, WorkerProcess};
use super::protocol::{
    DecodeSettings, JobErrorKind, JobId, Pcm16, Precision, WorkerDevice, WorkerEvent, WorkerRequest,
};
use super::residency::{Action, Residency, ResidencyEvent, ResidencyMachine};
use super::segment::MAX_SEGMENT_SECS;
use super::{DeviceTarget, EngineConfig, Event, GpuFree, MarkerKind, Request, SlotStatus, Waker};

/// How often the idle timers are checked.
const TICK: Duration = Duration::from_millis(500);

/// How long a worker gets to exit before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

struct Job {
    id: JobId,
    /// The file, or a clip's label.
    path: PathBuf,
    /// A clip held in memory (live transcription) instead of a file.
    pcm: Option<Pcm16>,
    settings: DecodeSettings,
    /// Devices that already failed this job (UUID, or "cpu").
    tried: Vec<String>,
}

struct Slot {
    device: WorkerDevice,
    residency: ResidencyMachine,
    process: Option<WorkerProcess>,
    queue: VecDeque<Job>,
    running: Option<Job>,
    dtype: String,
    weight_bytes: u64,
    load_ms: Option<f64>,
    restore_ms: Option<f64>,
    unavailable: Option<String>,
}

impl Slot {
    fn key(&self) -> String {
        device_key(&self.device)
    }

    fn uuid(&self) -> Option<String> {
        match &self.device {
            WorkerDevice::Cpu => None,
            WorkerDevice::Cuda { uuid, .. } => Some(uuid.clone()),
        }
    }
}

fn device_key(device: &WorkerDevice) -> String {
    match device {
        WorkerDevice::Cpu => "cpu".to_owned(),
        WorkerDevice::Cuda { uuid, .. } => uuid.clone(),
    }
}

pub(super) struct Scheduler {
    config: EngineConfig,
    events: Sender<Event>,
    waker: Waker,
    inbox_tx: Sender<Inbox>,
    inbox_rx: Receiver<Inbox>,
    gpus: Vec<GpuFree>,
    slots: Vec<Slot>,
    next_generation: u64,
    last_status: Vec<SlotStatus>,
    keep_loaded: bool,
}

impl Scheduler {
    pub(super) fn new(config: EngineConfig, events: Sender<Event>, waker: Waker) -> Self {
        let (inbox_tx, inbox_rx) = bounded(1024);
        Self {
            config,
            events,
            waker,
            inbox_tx,
            inbox_rx,
            gpus: Vec::new(),
            slots: Vec::new(),
            next_generation: 1,
            last_status: Vec::new(),
            keep_loaded: false,
        }
    }

    pub(super) fn run(mut self, requests: &Receiver<Request>) {
        let inbox = self.inbox_rx.clone();
        loop {
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
                default(TICK) => {},
            }
            self.tick();
        }
        for slot in &mut self.slots {
            if let Some(process) = slot.process.take() {
                process.shutdown(SHUTDOWN_GRACE);
            }
        }
    }

    fn emit(&self, event: Event) {
        if self.events.send(event).is_ok() {
            (self.waker)();
        }
    }

    fn notice(&self, message: String) {
        tracing::info!("{message}");
        self.emit(Event::Notice(message));
    }

    fn marker(&self, slot: usize, kind: MarkerKind) {
        self.emit(Event::Marker {
            uuid: self.slots[slot].uuid(),
            kind,
            at: SystemTime::now(),
        });
    }

    fn on_request(&mut self, request: Request) {
        let now = Instant::now();
        match request {
            Request::Transcribe {
                job_id,
                path,
                settings,
            } => self.route(Job {
                id: job_id,
                path,
                pcm: None,
                settings,
                tried: Vec::new(),
            }),
            Request::TranscribeSamples {
                job_id,
                label,
                pcm,
                settings,
            } => self.route(Job {
                id: job_id,
                path: PathBuf::from(label),
                pcm: Some(pcm),
                settings,
                tried: Vec::new(),
            }),
            Request::Cancel(job_id) => self.cancel(job_id),
            Request::UnloadNow => {
                for i in 0..self.slots.len() {
                    let action = self.slots[i]
                        .residency
                        .on_event(ResidencyEvent::UnloadNow, now);
                    self.apply(i, action);
                }
            }
            Request::ReleaseNow => {
                for i in 0..self.slots.len() {
                    if self.slots[i].process.is_some() && self.slots[i].running.is_none() {
                        self.apply(i, Some(Action::Release));
                    }
                }
            }
            Request::KeepLoaded(on) => {
                self.keep_loaded = on;
                for i in 0..self.slots.len() {
                    let action = self.slots[i]
                        .residency
                        .on_event(ResidencyEvent::KeepLoaded(on), now);
                    self.apply(i, action);
                }
            }
            Request::SetTarget(target) => {
                self.config.target = target;
                // Idle slots the new target will not use give their memory back now.
                for i in 0..self.slots.len() {
                    let slot = &self.slots[i];
                    if slot.running.is_none() && slot.queue.is_empty() && !self.target_uses(i) {
                        let action = self.slots[i]
                            .residency
                            .on_event(ResidencyEvent::DeviceChanged, now);
                        self.apply(i, action);
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
                for i in 0..self.slots.len() {
                    let action = self.slots[i]
                        .residency
                        .on_event(ResidencyEvent::Recording(on), now);
                    self.apply(i, action);
                }
            }
            Request::Gpus(gpus) => self.gpus = gpus,
            Request::Shutdown => {}
        }
    }

    fn target_uses(&self, slot: usize) -> bool {
        let key = self.slots[slot].key();
        match &self.config.target {
            DeviceTarget::Cpu => key == "cpu",
            DeviceTarget::Gpu { uuid } => &key == uuid,
            DeviceTarget::Auto | DeviceTarget::All => key != "cpu",
        }
    }

    /// Bytes per element at the configured precision on `device`.
    fn dtype_bytes(&self, device: &WorkerDevice) -> u64 {
        match (self.config.precision, device) {
            (Precision::F32, _) | (Precision::Auto, WorkerDevice::Cpu) => 4,
            _ => 2,
        }
    }

    /// Whether a job fits on `gpu` now, and if not, why.
    fn fits(&self, gpu: &GpuFree) -> Result<(), String> {
        let device = WorkerDevice::Cuda {
            ordinal: gpu.cuda_ordinal,
            uuid: gpu.uuid.clone(),
        };
        let shape = ModelShape::sensevoice_small(self.dtype_bytes(&device));
        let resident = self.slots.iter().any(|s| {
            s.key() == gpu.uuid
                && matches!(
                    s.residency.state(),
                    Residency::Ready | Residency::Loading | Residency::Offloading
                )
        });
        let available = usable_bytes(gpu.free_bytes, self.config.vram_margin);
        if max_batch_that_fits(&shape, MAX_SEGMENT_SECS, available, resident, 1) >= 1 {
            return Ok(());
        }
        let needed = if resident {
            shape.activation_bytes(1, MAX_SEGMENT_SECS)
        } else {
            shape.job_bytes(1, MAX_SEGMENT_SECS)
        };
        Err(format!(
            "GPU {} has {} MiB free ({} MiB after the {:.0}% margin); the model needs about {} MiB",
            gpu.index,
            gpu.free_bytes >> 20,
            available >> 20,
            self.config.vram_margin * 100.0,
            needed >> 20
        ))
    }

    /// Chooses a device for `job` and queues it there.
    fn route(&mut self, job: Job) {
        let mut reasons = Vec::new();
        let mut gpus: Vec<&GpuFree> = self
            .gpus
            .iter()
            .filter(|g| !job.tried.contains(&g.uuid))
            .filter(|g| {
                let unavailable = self
                    .slots
                    .iter()
                    .find(|s| s.key() == g.uuid)
                    .and_then(|s| s.unavailable.clone());
                if let Some(why) = &unavailable {
                    reasons.push(format!("GPU {}: {why}", g.index));
                }
                unavailable.is_none()
            })
            .collect();
        // Most free memory first; ties to the lowest index.
        gpus.sort_by_key(|g| (std::cmp::Reverse(g.free_bytes), g.index));
        if matches!(self.config.target, DeviceTarget::All) {
            // Spread: the GPU with the shortest queue first.
            gpus.sort_by_key(|g| {
                self.slots
                    .iter()
                    .find(|s| s.key() == g.uuid)
                    .map_or(0, |s| s.queue.len() + usize::from(s.running.is_some()))
            });
        }
        if let DeviceTarget::Gpu { uuid } = &self.config.target
            && let Some(pos) = gpus.iter().position(|g| &g.uuid == uuid)
        {
            let chosen = gpus.remove(pos);
            gpus.insert(0, chosen);
        }
        // A build without CUDA has no GPU worker to start: say so once per job, run on the CPU.
        let wants_gpu = !matches!(self.config.target, DeviceTarget::Cpu);
        if wants_gpu && !cfg!(feature = "cuda") && !self.gpus.is_empty() {
            reasons.push("this build has no CUDA support (build with --features cuda)".to_owned());
        }
        let wants_gpu = wants_gpu && cfg!(feature = "cuda");
        let mut device = WorkerDevice::Cpu;
        if wants_gpu {
            for gpu in gpus {
                match self.fits(gpu) {
                    Ok(()) => {
                        device = WorkerDevice::Cuda {
                            ordinal: gpu.cuda_ordinal,
                            uuid: gpu.uuid.clone(),
                        };
                        break;
                    }
                    Err(why) => reasons.push(why),
                }
            }
        }
        if job.tried.iter().any(|t| t == "cpu") && device == WorkerDevice::Cpu {
            return self.emit(Event::JobFailed {
                job_id: job.id,
                message: format!("no device left to try for {}", job.path.display()),
                cancelled: false,
            });
        }
        if !reasons.is_empty() {
            self.notice(format!(
                "{}: running on {} ({})",
                job.path.display(),
                device.label(),
                reasons.join("; ")
            ));
        }
        let slot = self.slot_for(device);
        let action = self.slots[slot]
            .residency
            .on_event(ResidencyEvent::JobQueued, Instant::now());
        if job.pcm.is_some() {
            // Live audio is waited for by someone speaking: ahead of queued files.
            self.slots[slot].queue.push_front(job);
        } else {
            self.slots[slot].queue.push_back(job);
        }
        self.apply(slot, action);
        self.dispatch(slot);
    }

    fn slot_for(&mut self, device: WorkerDevice) -> usize {
        let key = device_key(&device);
        if let Some(i) = self.slots.iter().position(|s| s.key() == key) {
            return i;
        }
        let mut residency = ResidencyMachine::new(self.config.residency);
        // A device used for the first time follows the current "keep loaded" choice.
        residency.on_event(ResidencyEvent::KeepLoaded(self.keep_loaded), Instant::now());
        self.slots.push(Slot {
            device,
            residency,
            process: None,
            queue: VecDeque::new(),
            running: None,
            dtype: String::new(),
            weight_bytes: 0,
            load_ms: None,
            restore_ms: None,
            unavailable: None,
        });
        self.slots.len() - 1
    }

    /// Seconds of padded audio per forward pass on this slot.
    fn batch_budget_s(&self, slot: usize) -> f64 {
        let device = &self.slots[slot].device;
        let WorkerDevice::Cuda { uuid, .. } = device else {
            // On the CPU one segment at a time, as FunASR does.
            return MAX_SEGMENT_SECS;
        };
        let Some(gpu) = self.gpus.iter().find(|g| &g.uuid == uuid) else {
            return MAX_SEGMENT_SECS;
        };
        let shape = ModelShape::sensevoice_small(self.dtype_bytes(device));
        let available = usable_bytes(gpu.free_bytes, self.config.vram_margin);
        let batch = max_batch_that_fits(
            &shape,
            MAX_SEGMENT_SECS,
            available,
            true,
            self.config.max_batch,
        );
        batch.max(1) as f64 * MAX_SEGMENT_SECS
    }

    fn dispatch(&mut self, slot: usize) {
        if self.slots[slot].running.is_some()
            || self.slots[slot].residency.state() != Residency::Ready
        {
            return;
        }
        let Some(job) = self.slots[slot].queue.pop_front() else {
            return;
        };
        let batch_budget_s = self.batch_budget_s(slot);
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
        let device = self.slots[slot].device.label();
        let sent = self.slots[slot]
            .process
            .as_mut()
            .map(|p| p.send(&request).is_ok())
            .unwrap_or(false);
        let job_id = job.id;
        self.slots[slot].running = Some(job);
        if sent {
            self.emit(Event::JobStarted { job_id, device });
        }
        // If the send failed the worker is gone; its Exited message re-routes the job.
    }

    fn send(&mut self, slot: usize, request: &WorkerRequest) -> bool {
        self.slots[slot]
            .process
            .as_mut()
            .is_some_and(|p| p.send(request).is_ok())
    }

    /// Carries out a residency action.
    fn apply(&mut self, slot: usize, action: Option<Action>) {
        let Some(action) = action else { return };
        match action {
            Action::Load => self.load(slot),
            Action::Restore => {
                if !self.send(slot, &WorkerRequest::Restore) {
                    self.load(slot);
                }
            }
            Action::Offload => {
                self.send(slot, &WorkerRequest::Offload);
            }
            Action::Release => {
                if let Some(process) = self.slots[slot].process.take() {
                    process.shutdown(SHUTDOWN_GRACE);
                }
                self.slots[slot]
                    .residency
                    .on_event(ResidencyEvent::WorkerExited, Instant::now());
                self.slots[slot].weight_bytes = 0;
                self.marker(slot, MarkerKind::Release);
            }
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
                    self.emit(Event::JobFailed {
                        job_id: job.id,
                        message: message.clone(),
                        cancelled: false,
                    });
                }
                return;
            }
        };
        if self.slots[slot].process.is_none() {
            let generation = self.next_generation;
            self.next_generation += 1;
            let command = super::process::worker_command(self.config.worker_exe.as_deref());
            let cpu_only = self.slots[slot].device == WorkerDevice::Cpu;
            match WorkerProcess::spawn(&command, cpu_only, slot, generation, self.inbox_tx.clone())
            {
                Ok(process) => self.slots[slot].process = Some(process),
                Err(err) => return self.load_failed(slot, &err.to_string(), false, true),
            }
        }
        let request = WorkerRequest::Load {
            model_dir,
            device: self.slots[slot].device.clone(),
            precision: self.config.precision,
        };
        if !self.send(slot, &request) {
            self.load_failed(slot, "the worker closed its input", false, true);
        }
    }

    fn model_dir(&self) -> Result<PathBuf, String> {
        match &self.config.model_dir {
            Some(dir) => Ok(dir.clone()),
            None => super::model_dir::resolve().map_err(|err| format!("{err:#}")),
        }
    }

    /// A load failed: the device is out for these jobs; they go elsewhere.
    fn load_failed(&mut self, slot: usize, message: &str, out_of_memory: bool, unavailable: bool) {
        let label = self.slots[slot].device.label();
        self.slots[slot]
            .residency
            .on_event(ResidencyEvent::LoadFinished { ok: false }, Instant::now());
        if let Some(process) = self.slots[slot].process.take() {
            process.shutdown(SHUTDOWN_GRACE);
        }
        if out_of_memory {
            self.marker(slot, MarkerKind::OutOfMemory);
        }
        if unavailable {
            self.slots[slot].unavailable = Some(message.to_owned());
        }
        self.notice(format!("cannot load the model on {label}: {message}"));
        let key = self.slots[slot].key();
        let jobs: Vec<Job> = self.slots[slot].queue.drain(..).collect();
        for mut job in jobs {
            job.tried.push(key.clone());
            self.route(job);
        }
    }

    fn cancel(&mut self, job_id: JobId) {
        for i in 0..self.slots.len() {
            if let Some(pos) = self.slots[i].queue.iter().position(|j| j.id == job_id) {
                self.slots[i].queue.remove(pos);
                self.emit(Event::JobFailed {
                    job_id,
                    message: "cancelled".to_owned(),
                    cancelled: true,
                });
                self.maybe_drained(i);
                return;
            }
            if self.slots[i]
                .running
                .as_ref()
                .is_some_and(|j| j.id == job_id)
            {
                self.send(i, &WorkerRequest::Cancel { job_id });
                return;
            }
        }
    }

    fn maybe_drained(&mut self, slot: usize) {
        if self.slots[slot].running.is_none() && self.slots[slot].queue.is_empty() {
            let action = self.slots[slot]
                .residency
                .on_event(ResidencyEvent::QueueDrained, Instant::now());
            self.apply(slot, action);
        }
    }

    fn on_inbox(&mut self, message: Inbox) {
        let (slot, generation) = match &message {
            Inbox::Event {
                slot, generation, ..
            }
            | Inbox::Exited {
                slot, generation, ..
            } => (*slot, *generation),
        };
        let current = self.slots[slot].process.as_ref().map(|p| p.generation);
        if current != Some(generation) {
            // A line from a worker that was already released.
            return;
        }
        match message {
            Inbox::Event { event, .. } => self.on_worker_event(slot, event),
            Inbox::Exited { detail, .. } => self.on_worker_exit(slot, &detail),
        }
    }

    fn on_worker_event(&mut self, slot: usize, event: WorkerEvent) {
        let now = Instant::now();
        match event {
            WorkerEvent::Started { .. } => {}
            WorkerEvent::Loaded {
                dtype,
                load_ms,
                weight_bytes,
                ..
            } => {
                let s = &mut self.slots[slot];
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
                s.residency
                    .on_event(ResidencyEvent::LoadFinished { ok: true }, now);
                s.restore_ms = Some(ms);
                self.marker(slot, MarkerKind::Restore);
                self.dispatch(slot);
            }
            WorkerEvent::LoadFailed {
                message,
                out_of_memory,
            } => self.load_failed(slot, &message, out_of_memory, !out_of_memory),
            WorkerEvent::Offloaded { .. } => {
                self.slots[slot].weight_bytes = 0;
                self.marker(slot, MarkerKind::Offload);
                // A job queued while offloading gets the weights back at once.
                let action = self.slots[slot]
                    .residency
                    .on_event(ResidencyEvent::Offloaded, now);
                self.apply(slot, action);
            }
            WorkerEvent::Decoded {
                job_id,
                duration_s,
                warning,
            } => self.emit(Event::JobDecoded {
                job_id,
                duration_s,
                warning,
            }),
            WorkerEvent::Progress {
                job_id,
                done_s,
                total_s,
                segments,
            } => self.emit(Event::JobProgress {
                job_id,
                done_s,
                total_s,
                segments,
            }),
            WorkerEvent::BatchReduced {
                batch, next_batch, ..
            } => {
                self.marker(slot, MarkerKind::OutOfMemory);
                self.notice(format!(
                    "out of memory on {} with {batch} segments at once: retrying with {next_batch}",
                    self.slots[slot].device.label()
                ));
            }
            WorkerEvent::Done {
                job_id,
                transcript,
                ms,
            } => {
                self.slots[slot].running = None;
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
                let job = self.slots[slot].running.take();
                if kind == JobErrorKind::OutOfMemory
                    && let Some(mut job) = job
                {
                    self.marker(slot, MarkerKind::OutOfMemory);
                    self.notice(format!(
                        "{}: out of memory on {} even one segment at a time: trying the next device",
                        job.path.display(),
                        self.slots[slot].device.label()
                    ));
                    job.tried.push(self.slots[slot].key());
                    // Free the device for the other process before retrying elsewhere.
                    self.apply(slot, Some(Action::Release));
                    self.route(job);
                } else {
                    self.emit(Event::JobFailed {
                        job_id,
                        message,
                        cancelled: kind == JobErrorKind::Cancelled,
                    });
                }
                self.dispatch(slot);
                self.maybe_drained(slot);
            }
        }
    }

    fn on_worker_exit(&mut self, slot: usize, detail: &str) {
        let was_loading = self.slots[slot].residency.state() == Residency::Loading;
        self.slots[slot].process = None;
        self.slots[slot]
            .residency
            .on_event(ResidencyEvent::WorkerExited, Instant::now());
        self.slots[slot].weight_bytes = 0;
        self.marker(slot, MarkerKind::Release);
        let label = self.slots[slot].device.label();
        let reason = if let Some(library) = super::cuda_stubs::is_missing_library_error(detail) {
            format!(
                "GPU transcription unavailable: {library} cannot be loaded (the NVIDIA driver \
                 or the CUDA runtime libraries are missing)"
            )
        } else if detail.is_empty() {
            "the worker exited".to_owned()
        } else {
            format!("the worker exited: {detail}")
        };
        if let Some(mut job) = self.slots[slot].running.take() {
            self.notice(format!(
                "{} on {label}: {reason}; trying the next device",
                job.path.display()
            ));
            job.tried.push(self.slots[slot].key());
            self.route(job);
        }
        if was_loading {
            self.load_failed(slot, &reason, false, true);
        } else if !self.slots[slot].queue.is_empty() {
            let action = self.slots[slot]
                .residency
                .on_event(ResidencyEvent::JobQueued, Instant::now());
            self.apply(slot, action);
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let action = self.slots[i].residency.tick(now);
            self.apply(i, action);
        }
        let status: Vec<SlotStatus> = self
            .slots
            .iter()
            .map(|s| SlotStatus {
                device: s.device.label(),
                uuid: s.uuid(),
                residency: s.residency.state(),
                dtype: s.dtype.clone(),
                weight_bytes: s.weight_bytes,
                pid: s.process.as_ref().map(|p| p.pid),
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
            self.last_status = status.clone();
            self.emit(Event::Status(status));
        }
    }
}
