//! What the app does with commands, engine events and task results. UI thread, called from
//! `logic()` and after drawing in `ui()`; nothing here blocks (slow work goes to [`Tasks`]).

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use super::command::Command;
use super::engine_link::{gpu_free_list, target_for};
use super::inputs::{expand_paths, recording_file_name};
use super::model_bar::ModelGate;
use super::recording::{KeptLive, RecordState};
use super::tasks::{self, DialogAnswer, TaskResult};
use super::{GpuScribeApp, LogLine};
use crate::audio::{DeviceList, RecordError, RecordEvent};
use crate::engine::{EngineConfig, Event, JobId, Request};
use crate::gpu::{GpuStatus, MAX_PLOT_WINDOW};
use crate::library::service::{LibraryReply, LibraryRequest};
use crate::library::{NewJob, device_request_text, model_text};
use crate::live::Handled;

/// Shown when no file dialog could open.
const NO_DIALOG: &str =
    "no file dialog could be shown: install xdg-desktop-portal-gtk (or -kde) or zenity";

impl GpuScribeApp {
    /// Applies one user command.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::SetDevice(device) => {
                self.device_from_cli = None;
                self.settings.device = device;
                self.sync_target();
            }
            Command::SetPlotWindow(window) => self.settings.plot_window = window,
            Command::SetSampleInterval(interval) => {
                self.settings.sample_interval_ms =
                    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                self.sync_sample_interval();
            }
            Command::AddPaths(paths) => self.queue_files(&expand_paths(&paths)),
            Command::OpenFiles => self.open_dialog("file-dialog", tasks::open_files),
            Command::ChooseModelDir => self.open_dialog("file-dialog", tasks::pick_model_folder),
            Command::Export(format) => {
                if let Some(transcript) = self
                    .jobs
                    .selected_row()
                    .and_then(|row| row.transcript.clone())
                {
                    self.open_dialog("export", move || tasks::save_export(&transcript, format));
                }
            }
            Command::Cancel(job_id) => {
                let ids = self
                    .jobs
                    .row(job_id)
                    .map_or_else(|| vec![job_id], super::jobs::JobRow::engine_ids);
                for id in ids {
                    self.send(Request::Cancel(id));
                }
            }
            Command::Select(job_id) => self.jobs.selected = Some(job_id),
            Command::ClearFinished => self.jobs.clear_finished(),
            Command::SetDecode(decode) => self.settings.decode = decode,
            Command::StartRecording => self.start_recording(),
            Command::StopRecording => self.stop_recording(),
            Command::SetInputDevice(id) => self.settings.input_device = id,
            Command::RefreshInputDevices => {
                self.recording.devices = None;
                let spawned = self.tasks.spawn("audio-devices", || {
                    TaskResult::InputDevices(DeviceList::scan())
                });
                if let Err(err) = spawned {
                    self.recording.devices = Some(DeviceList::default());
                    self.log_line(format!("cannot list input devices: {err}"), true);
                }
            }
            Command::UnloadNow => self.send(Request::UnloadNow),
            Command::SetKeepLoaded(on) => {
                self.keep_loaded = on;
                self.send(Request::KeepLoaded(on));
            }
            Command::SetResidency(residency) => {
                self.settings.residency = residency;
                self.send(Request::SetResidency(residency));
            }
            Command::SetModelDir(dir) => {
                self.model_dir_text = dir
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                if dir != self.settings.model_dir {
                    self.settings.model_dir = dir;
                    self.restart_engine();
                    if self.settings.model_dir.is_some() {
                        self.flush_waiting();
                    }
                }
            }
            Command::DownloadModel => {
                if let Some(gate) = &mut self.model {
                    gate.start_download();
                }
            }
            Command::CancelModelDownload => {
                if let Some(gate) = &self.model {
                    gate.cancel();
                }
            }
            Command::SetEngine(engine) => {
                if engine != self.settings.engine {
                    self.settings.engine = engine;
                    self.restart_engine();
                    self.switch_model_store();
                }
            }
            Command::ClearLog => self.log.clear(),
            Command::SetTab(tab) => {
                self.tab = tab;
                if tab == super::LeftTab::History
                    && let Some(library) = &mut self.library
                {
                    self.history.request_list(library, Instant::now());
                }
            }
            Command::HistorySearch(text) => {
                self.history.search = text;
                if let Some(library) = &mut self.library {
                    self.history.request_list(library, Instant::now());
                }
            }
            Command::HistoryOpen(id) => {
                if let Some(library) = &mut self.library {
                    self.history.request_open(library, id);
                }
            }
            Command::HistoryClose => {
                self.history.open = None;
                self.history.opening = None;
            }
            Command::HistoryDelete(id) => {
                if let Some(library) = &mut self.library {
                    library.send(LibraryRequest::Delete(id));
                    let entry = self
                        .history
                        .entries
                        .iter()
                        .find(|e| e.id == id)
                        .cloned()
                        .or_else(|| self.history.open.as_ref().map(|o| o.entry.clone()));
                    self.history.entries.retain(|e| e.id != id);
                    if self.history.open.as_ref().is_some_and(|o| o.entry.id == id) {
                        self.history.open = None;
                    }
                    self.history.deleted = entry;
                }
            }
            Command::HistoryUndoDelete => {
                if let (Some(library), Some(entry)) =
                    (&mut self.library, self.history.deleted.take())
                {
                    library.send(LibraryRequest::Undelete(entry.id));
                    self.history.request_list(library, Instant::now());
                }
            }
            Command::TranscribeParts { parts, offsets_s } => {
                self.queue_recording(&parts, &offsets_s, None, None);
            }
            Command::HistoryResume(id) => {
                if let Some(library) = &mut self.library {
                    library.send(LibraryRequest::Resume(id));
                }
            }
            Command::HistoryExport(format) => {
                if let Some(transcript) = self.history.open.as_ref().map(|o| o.transcript.clone()) {
                    self.open_dialog("export", move || tasks::save_export(&transcript, format));
                }
            }
            Command::ShowFile(path) => {
                if let Err(err) = self
                    .tasks
                    .spawn("show-file", move || tasks::show_file(&path))
                {
                    self.log_line(format!("cannot open the file manager: {err}"), true);
                }
            }
        }
    }

    /// A store for the newly chosen model's release files; files that waited for the old
    /// model wait for this one.
    fn switch_model_store(&mut self) {
        let waiting = self
            .model
            .as_mut()
            .map(ModelGate::take_waiting)
            .unwrap_or_default();
        match super::spawn_gate(
            self.store_base.as_ref(),
            &self.settings.engine,
            &self.store_waker,
        ) {
            Ok(gate) => self.model = gate,
            Err(err) => {
                self.model = None;
                self.log_line(err, true);
            }
        }
        if !waiting.is_empty() {
            self.queue_files(&waiting);
        }
    }

    /// Takes the model store's events; once the model is ready (or a folder is chosen), the
    /// files that waited for it go to the engine.
    pub(super) fn drain_model(&mut self) {
        let Some(gate) = &mut self.model else { return };
        let (lines, became_ready) = gate.drain();
        for (text, is_error) in lines {
            self.log_line(text, is_error);
        }
        if became_ready {
            self.flush_waiting();
        }
    }

    fn flush_waiting(&mut self) {
        let files = self
            .model
            .as_mut()
            .map(ModelGate::take_waiting)
            .unwrap_or_default();
        if !files.is_empty() {
            self.queue_files(&files);
        }
    }

    /// What a new job is recorded with in the library.
    fn library_job(&self, path: PathBuf) -> NewJob {
        NewJob {
            path,
            settings: self.settings.decode.clone(),
            device_request: device_request_text(&target_for(self.device_choice())),
            model: model_text(self.settings.model_dir.as_deref()),
            // Found on the library thread (a folder's fingerprint reads files).
            model_revision: None,
            recording: None,
            parts: Vec::new(),
        }
    }

    /// Takes the library thread's replies; returns when a history refresh is due next.
    pub(super) fn drain_library(&mut self) -> Option<std::time::Duration> {
        let library = self.library.as_mut()?;
        library.flush();
        let mut lines = Vec::new();
        let mut resumes = Vec::new();
        for reply in library.drain() {
            if let LibraryReply::Resume(id, job, offsets) = reply {
                resumes.push((id, job, offsets));
            } else {
                lines.extend(self.history.apply(reply));
            }
        }
        let now = Instant::now();
        let wait = if self.tab == super::LeftTab::History {
            self.history.reload_if_changed(library);
            self.history.refresh_if_due(library, now)
        } else {
            None
        };
        for (text, is_error) in lines {
            self.log_line(text, is_error);
        }
        for (id, job, offsets) in resumes {
            self.resume(id, &job, &offsets);
        }
        wait
    }

    /// Queues a stored job again, under its library row.
    fn resume(&mut self, library_id: i64, job: &NewJob, offsets: &[f64]) {
        let Some(engine) = &self.engine else {
            self.log_line(
                "the transcription engine is not running; nothing was queued".to_owned(),
                true,
            );
            return;
        };
        if job.parts.is_empty() {
            let job_id = engine.transcribe(job.path.clone(), job.settings.clone());
            self.jobs.push(job_id, job.path.clone(), Instant::now());
            if let Some(library) = &mut self.library {
                library.send(LibraryRequest::Attach {
                    job_id,
                    library_id,
                    part: None,
                });
            }
        } else {
            // A recording in several files: its parts again, one row (offsets from the files'
            // headers, read by the library thread).
            let ids: Vec<JobId> = job
                .parts
                .iter()
                .map(|p| engine.transcribe(p.clone(), job.settings.clone()))
                .collect();
            let parts: Vec<(JobId, f64)> =
                ids.iter().copied().zip(offsets.iter().copied()).collect();
            self.jobs
                .push_parts(&parts, job.path.clone(), None, Instant::now());
            if let Some(library) = &mut self.library {
                for (&job_id, part) in ids.iter().zip(0u32..) {
                    library.send(LibraryRequest::Attach {
                        job_id,
                        library_id,
                        part: Some(part),
                    });
                }
            }
        }
        self.log_line(format!("resumed: {}", job.path.display()), false);
    }

    fn send(&self, request: Request) {
        if let Some(engine) = &self.engine {
            engine.send(request);
        }
    }

    /// Starts the engine with the current settings.
    pub(super) fn start_engine(&mut self) {
        let config = EngineConfig {
            model_dir: self.settings.model_dir.clone(),
            engine: self.settings.engine.clone(),
            residency: self.settings.residency,
            target: target_for(self.device_choice()),
            ..EngineConfig::default()
        };
        self.sent_target = Some(config.target.clone());
        match (self.engine_factory)(config) {
            Ok(engine) => {
                if !self.sent_gpus.is_empty() {
                    engine.send(Request::Gpus(self.sent_gpus.clone()));
                }
                if self.keep_loaded {
                    engine.send(Request::KeepLoaded(true));
                }
                self.engine = Some(engine);
            }
            Err(err) => self.log_line(
                format!("the transcription engine did not start: {err}"),
                true,
            ),
        }
    }

    /// A new engine for a new model folder; the old one shuts down on its own thread (its
    /// workers get a grace period to exit, which the window must not wait for).
    fn restart_engine(&mut self) {
        if let Some(old) = self.engine.take() {
            let stopped = std::thread::Builder::new()
                .name("engine-stop".to_owned())
                .spawn(move || drop(old));
            if let Err(err) = stopped {
                tracing::warn!("cannot stop the old engine in the background: {err}");
            }
        }
        let unfinished: Vec<JobId> = self
            .jobs
            .rows()
            .iter()
            .filter(|r| !r.status.is_finished())
            .flat_map(super::jobs::JobRow::engine_ids)
            .collect();
        if let Some(library) = &mut self.library
            && !unfinished.is_empty()
        {
            // Kept as interrupted in History, with Resume.
            library.send(LibraryRequest::Interrupted(unfinished));
        }
        self.jobs
            .fail_unfinished("stopped: the model or its folder was changed (Resume it in History)");
        self.engine_view.slots.clear();
        self.start_engine();
        let source = self.settings.model_dir.as_ref().map_or_else(
            || "the release model (downloaded on first use)".to_owned(),
            |p| p.display().to_string(),
        );
        self.log_line(
            format!("model: {}, {source}", self.settings.engine.label()),
            false,
        );
    }

    fn open_dialog(&mut self, name: &str, work: impl FnOnce() -> TaskResult + Send + 'static) {
        if self.dialog_open {
            return;
        }
        match self.tasks.spawn(name, work) {
            Ok(()) => self.dialog_open = true,
            Err(err) => self.log_line(format!("cannot open the dialog: {err}"), true),
        }
    }

    /// Queues each file with the current options.
    fn queue_files(&mut self, files: &[PathBuf]) {
        // The release model not ready yet: the files wait for the store (which starts fetching).
        if self.settings.model_dir.is_none()
            && let Some(gate) = &mut self.model
            && !gate.is_ready()
        {
            for path in files {
                gate.wait_for_model(path.clone());
            }
            return;
        }
        if let Some(queued) = self.send_jobs(files, "nothing was queued") {
            self.record_queued(files, &queued);
        }
    }

    /// Sends each file to the engine with the current options and lists it in the queue; `None`
    /// (said in the log, with `unqueued`) when the engine is not running.
    fn send_jobs(&mut self, files: &[PathBuf], unqueued: &str) -> Option<Vec<JobId>> {
        let Some(engine) = &self.engine else {
            self.log_line(
                format!("the transcription engine is not running; {unqueued}"),
                true,
            );
            return None;
        };
        let now = Instant::now();
        let mut queued = Vec::with_capacity(files.len());
        for path in files {
            let job_id = engine.transcribe(path.clone(), self.settings.decode.clone());
            self.jobs.push(job_id, path.clone(), now);
            queued.push(job_id);
        }
        Some(queued)
    }

    /// Records queued jobs in the library.
    fn record_queued(&mut self, files: &[PathBuf], job_ids: &[JobId]) {
        let jobs: Vec<NewJob> = files.iter().map(|p| self.library_job(p.clone())).collect();
        let Some(library) = &mut self.library else {
            return;
        };
        for (job, &job_id) in jobs.into_iter().zip(job_ids) {
            library.send(LibraryRequest::Queued { job_id, job });
        }
    }

    /// Queues a recording's parts as one job: one row in the queue, one in the library, times
    /// counted from the recording's start.
    fn queue_recording(
        &mut self,
        parts: &[PathBuf],
        offsets_s: &[f64],
        recorded_s: Option<f64>,
        token: Option<u64>,
    ) -> Vec<JobId> {
        let Some(first) = parts.first().cloned() else {
            return Vec::new();
        };
        let Some(engine) = &self.engine else {
            self.log_line(
                "the transcription engine is not running; the recording was kept but not queued"
                    .to_owned(),
                true,
            );
            return Vec::new();
        };
        let job_ids: Vec<JobId> = parts
            .iter()
            .map(|p| engine.transcribe(p.clone(), self.settings.decode.clone()))
            .collect();
        let rows: Vec<(JobId, f64)> = job_ids
            .iter()
            .copied()
            .zip(offsets_s.iter().copied().chain(std::iter::repeat(0.0)))
            .collect();
        self.jobs
            .push_parts(&rows, first.clone(), recorded_s, Instant::now());
        let job = NewJob {
            parts: parts.to_vec(),
            ..self.library_job(first)
        };
        if let Some(library) = &mut self.library {
            library.send(LibraryRequest::QueuedRecording {
                job_ids: job_ids.clone(),
                job,
                token,
            });
        }
        job_ids
    }

    pub(super) fn drain_gpu_feed(&mut self) {
        for status in self.gpu_feed.drain() {
            if let GpuStatus::Sample(sample) = &status {
                let gpus = gpu_free_list(sample, self.cuda_visible_devices.as_deref());
                self.send(Request::Gpus(gpus.clone()));
                self.sent_gpus = gpus;
            }
            self.gpus.apply(status);
        }
    }

    /// Tells the engine where to run when the choice changed (and once at start).
    pub(super) fn sync_target(&mut self) {
        let target = target_for(self.device_choice());
        if self.sent_target.as_ref() != Some(&target) {
            self.send(Request::SetTarget(target.clone()));
            self.sent_target = Some(target);
        }
    }

    pub(super) fn drain_engine(&mut self) {
        let events: Vec<Event> = self
            .engine
            .as_ref()
            .map(|e| e.try_events().collect())
            .unwrap_or_default();
        let now = Instant::now();
        for event in events {
            match event {
                Event::Status(slots) => {
                    // A device slot made after "Keep loaded" was set does not know about it.
                    if slots.iter().any(|s| s.keep_loaded != self.keep_loaded) {
                        self.send(Request::KeepLoaded(self.keep_loaded));
                    }
                    self.engine_view.slots = slots;
                }
                // The engine has already written it to the tracing log. A fallback notice comes
                // with every live clip: the window says it once per recording.
                Event::Notice(text) => {
                    let repeated = self
                        .recording
                        .live
                        .as_mut()
                        .is_some_and(|live| !live.first_notice(&text));
                    if !repeated {
                        self.log.push(LogLine {
                            at: SystemTime::now(),
                            text,
                            is_error: false,
                        });
                    }
                }
                Event::Marker { uuid, kind, at } => {
                    if let Some(uuid) = uuid {
                        self.engine_view.markers.record(uuid, kind, at, now);
                    }
                }
                job_event
                    if self.recording.live.as_mut().is_some_and(|live| {
                        match live.driver.on_event(&job_event) {
                            Handled::Live(update) => {
                                if let Some(update) = update {
                                    live.apply(update);
                                }
                                true
                            }
                            Handled::NotLive => false,
                        }
                    }) => {}
                job_event => {
                    if let Some(library) = &mut self.library {
                        library.send(LibraryRequest::Event(job_event.clone()));
                    }
                    if let Event::JobFailed {
                        message,
                        cancelled: false,
                        ..
                    } = &job_event
                    {
                        tracing::warn!("{message}");
                    }
                    self.jobs.apply(job_event);
                }
            }
        }
        let plot_now = self.gpus.now().map_or(now, |t| t.max(now));
        self.engine_view.markers.trim(plot_now, MAX_PLOT_WINDOW);
    }

    pub(super) fn on_task(&mut self, result: TaskResult) {
        match result {
            TaskResult::OpenedFiles(answer) => {
                self.dialog_open = false;
                match answer {
                    DialogAnswer::Chosen(paths) => self.apply(Command::AddPaths(paths)),
                    DialogAnswer::Cancelled => {}
                    DialogAnswer::Unavailable => self.log_line(NO_DIALOG.to_owned(), true),
                }
            }
            TaskResult::ModelFolder(answer) => {
                self.dialog_open = false;
                match answer {
                    DialogAnswer::Chosen(dir) => self.apply(Command::SetModelDir(Some(dir))),
                    DialogAnswer::Cancelled => {}
                    DialogAnswer::Unavailable => self.log_line(NO_DIALOG.to_owned(), true),
                }
            }
            TaskResult::Exported(answer) => {
                self.dialog_open = false;
                match answer {
                    DialogAnswer::Chosen(Ok(path)) => {
                        self.log_line(format!("exported: {}", path.display()), false);
                    }
                    DialogAnswer::Chosen(Err(err)) => self.log_line(format!("{err:#}"), true),
                    DialogAnswer::Cancelled => {}
                    DialogAnswer::Unavailable => self.log_line(NO_DIALOG.to_owned(), true),
                }
            }
            TaskResult::RecordingStarted(Ok(handle)) => {
                if matches!(self.recording.state, RecordState::Starting) {
                    let token = self.next_recording_token;
                    self.next_recording_token += 1;
                    self.recording_rate_hz = handle.sample_rate_hz();
                    let job = self.library_job(handle.wav_path().to_owned());
                    if let Some(library) = &mut self.library {
                        library.send(LibraryRequest::RecordingStarted {
                            token,
                            job,
                            path: handle.wav_path().to_owned(),
                            input_device: handle.device_name().to_owned(),
                            sample_rate_hz: handle.sample_rate_hz(),
                        });
                    }
                    self.recording_token = Some(token);
                    self.recording.state = RecordState::Recording(handle);
                    self.send(Request::Recording(true));
                    self.mark_live_start();
                }
            }
            TaskResult::RecordingStarted(Err(err)) => {
                self.recording.state = RecordState::Idle;
                self.recording.live = None;
                self.record_error(&err);
            }
            TaskResult::RecordingStopped(result, dropped_frames) => {
                self.recording.state = RecordState::Idle;
                // The saved file is transcribed as a whole next; the live lines stay until its
                // transcript is done and takes their place.
                let mut live_lines = Vec::new();
                if let Some(live) = self.recording.live.take() {
                    for problem in &live.problems {
                        self.log_line(problem.clone(), true);
                    }
                    live_lines = live.into_lines();
                }
                self.send(Request::Recording(false));
                self.mark_live_stop();
                let token = self.recording_token.take();
                let dropped = if dropped_frames > 0 {
                    format!(" ({dropped_frames} frames dropped: the disk could not keep up)")
                } else {
                    String::new()
                };
                let (parts, recorded_s, ok) = match result {
                    Ok(recorded) => {
                        self.log_line(
                            format!("recorded: {}{dropped}", recorded.path().display()),
                            dropped_frames > 0,
                        );
                        (recorded.parts, recorded.recorded_s, true)
                    }
                    Err(err) => {
                        self.record_error(&err);
                        // What was written before the failure is valid WAV: transcribe it.
                        let kept = match err {
                            RecordError::DeviceLost {
                                parts, recorded_s, ..
                            } => (parts, recorded_s),
                            RecordError::WriteWav { path, .. } if path.is_file() => {
                                (vec![path], 0.0)
                            }
                            _ => (Vec::new(), 0.0),
                        };
                        (kept.0, kept.1, false)
                    }
                };
                self.recording.last_dropped_frames = dropped_frames;
                if let (Some(library), Some(token)) = (&mut self.library, token) {
                    library.send(LibraryRequest::RecordingFinished {
                        token,
                        duration_s: recorded_s,
                        dropped_frames,
                        parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
                        ok,
                    });
                }
                let jobs = if parts.is_empty() {
                    Vec::new()
                } else {
                    let offsets = crate::audio::wav_sink::part_offsets_s(
                        parts.len(),
                        self.recording_rate_hz,
                        crate::audio::wav_sink::part_limit_bytes(),
                    );
                    let known = (recorded_s > 0.0).then_some(recorded_s);
                    self.queue_recording(&parts, &offsets, known, token)
                };
                if !live_lines.is_empty() {
                    self.recording.kept_live = Some(KeptLive {
                        lines: live_lines,
                        jobs,
                    });
                }
            }
            TaskResult::ShowFile(Err(message)) => self.log_line(message, true),
            TaskResult::ShowFile(Ok(())) => {}
            TaskResult::InputDevices(devices) => self.recording.devices = Some(devices),
            TaskResult::Panicked { task, message } => {
                match task.as_str() {
                    "file-dialog" | "export" => self.dialog_open = false,
                    "record-start" | "record-stop" => {
                        self.recording.state = RecordState::Idle;
                        self.send(Request::Recording(false));
                        self.mark_live_stop();
                    }
                    "audio-devices" => self.recording.devices = Some(DeviceList::default()),
                    _ => {}
                }
                self.log_line(format!("the {task} task failed: {message}"), true);
            }
        }
    }

    /// Notices an engine thread that is gone (it restarts itself after a panic, so this is the
    /// last resort): says so and starts a new one; unfinished jobs are marked failed.
    pub(super) fn check_engine(&mut self) {
        if self.engine.as_ref().is_none_or(|e| e.is_running()) {
            return;
        }
        self.log_line(
            "the transcription engine stopped unexpectedly; starting it again".to_owned(),
            true,
        );
        if let Some(old) = self.engine.take() {
            let stopped = std::thread::Builder::new()
                .name("engine-stop".to_owned())
                .spawn(move || drop(old));
            if let Err(err) = stopped {
                tracing::warn!("cannot stop the old engine in the background: {err}");
            }
        }
        self.jobs
            .fail_unfinished("stopped: the transcription engine stopped unexpectedly");
        self.engine_view.slots.clear();
        self.start_engine();
    }

    fn record_error(&mut self, err: &RecordError) {
        let text = format!("recording: {err}");
        self.recording.error = Some(text.clone());
        self.log_line(text, true);
    }

    fn start_recording(&mut self) {
        if self.recording.is_active() {
            return;
        }
        self.recording.error = None;
        self.recording.last_dropped_frames = 0;
        self.recording.kept_live = None;
        let path = self
            .recordings_dir
            .join(recording_file_name(SystemTime::now()));
        let source = match &self.capture_file {
            Some(file) => crate::audio::CaptureSource::File(file.clone()),
            None => crate::audio::CaptureSource::Device(self.settings.input_device.clone()),
        };
        let (tap, live) = crate::audio::SampleTap::new(crate::audio::TapPolicy::Drop);
        self.recording.live = Some(super::recording::LiveView::new(
            live,
            self.settings.decode.clone(),
        ));
        let spawned = self.tasks.spawn("record-start", move || {
            tasks::start_recording(source, path, Some(tap))
        });
        match spawned {
            Ok(()) => self.recording.state = RecordState::Starting,
            Err(err) => self.log_line(format!("cannot start recording: {err}"), true),
        }
    }

    fn stop_recording(&mut self) {
        let RecordState::Recording(handle) = std::mem::take(&mut self.recording.state) else {
            return;
        };
        self.recording.state = RecordState::Stopping;
        let spawned = self.tasks.spawn("record-stop", move || {
            let dropped = handle.dropped_frames();
            let result = handle.stop();
            TaskResult::RecordingStopped(result, dropped)
        });
        if let Err(err) = spawned {
            self.recording.state = RecordState::Idle;
            self.log_line(format!("cannot stop recording: {err}"), true);
        }
    }

    /// Feeds the live captions: the audio captured since the last frame, the next clip out.
    /// Once a stopped recording's transcript is done, its live lines go.
    pub(super) fn drain_live(&mut self) {
        if let (Some(live), Some(engine)) = (self.recording.live.as_mut(), self.engine.as_ref()) {
            live.feed(engine);
        }
        let replaced = self.recording.kept_live.as_ref().is_some_and(|kept| {
            !kept.jobs.is_empty()
                && kept.jobs.iter().all(|&id| {
                    self.jobs
                        .row(id)
                        .is_some_and(|row| row.status == super::JobStatus::Done)
                })
        });
        if replaced {
            self.recording.kept_live = None;
        }
    }

    /// Takes the recorder's events; a failure stops the recording (the file is kept).
    pub(super) fn drain_recorder(&mut self) {
        let RecordState::Recording(handle) = &self.recording.state else {
            return;
        };
        let failed = handle
            .events()
            .try_iter()
            .any(|event| matches!(event, RecordEvent::Failed(_)));
        if failed {
            // stop() hands back the same error, with the kept file.
            self.stop_recording();
        }
    }
}
