//! The window's side of the library: a `library` thread that owns the [`Library`] and takes
//! [`LibraryRequest`]s over a bounded channel, so no SQLite call runs on the UI thread. Replies
//! come back over another bounded channel and wake the UI.
//!
//! Writes are never dropped: when the request channel is full, [`LibraryService::send`] keeps
//! them in order in a local queue that [`LibraryService::flush`] (called every frame) moves on.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::{HistoryEntry, JobRecorder, Library, NewJob, StoredJob};
use crate::engine::{Event, JobId};

/// Requests in flight before the UI queues them locally.
const REQUEST_CAPACITY: usize = 1024;
/// Replies in flight.
const REPLY_CAPACITY: usize = 64;

/// What the window asks of the library.
#[derive(Debug)]
pub enum LibraryRequest {
    /// A job was queued with the engine under `job_id`.
    Queued {
        /// The engine's id.
        job_id: JobId,
        /// What to record.
        job: NewJob,
    },
    /// A recording's parts were queued with the engine under `job_ids` (in order), one job
    /// in the library: the one made at [`LibraryRequest::RecordingStarted`] of `token`, or a new
    /// one.
    QueuedRecording {
        /// The engine's ids, one per part.
        job_ids: Vec<JobId>,
        /// What to record (`parts` the files; `recording` is filled in from the token).
        job: NewJob,
        /// The recording's token.
        token: Option<u64>,
    },
    /// Put a stored job back in the queue; answered with [`LibraryReply::Resume`].
    Resume(i64),
    /// The resumed job `library_id` (or its `part`) was queued with the engine under `job_id`.
    Attach {
        /// The engine's id.
        job_id: JobId,
        /// The library's id.
        library_id: i64,
        /// The recording part, for a job of several.
        part: Option<u32>,
    },
    /// These engine jobs were stopped unfinished (the engine was replaced).
    Interrupted(Vec<JobId>),
    /// An engine event (job events are written, others ignored).
    Event(Event),
    /// List the history (the newest request wins; older ones still waiting are skipped).
    List {
        /// Full-text search, or everything.
        search: Option<String>,
        /// Most rows.
        limit: usize,
        /// Echoed in the reply.
        generation: u64,
    },
    /// Load one job for the transcript view.
    Get(i64),
    /// Hide a job (undo with [`LibraryRequest::Undelete`]).
    Delete(i64),
    /// Bring a deleted job back.
    Undelete(i64),
    /// A recording started; `token` names it until the library has an id. Its job is made
    /// now (state recording, with `job`'s settings), so that a crash leaves it listed.
    RecordingStarted {
        /// The UI's name for it.
        token: u64,
        /// The job that will transcribe it (`path`: the first part).
        job: NewJob,
        /// The first part's file.
        path: PathBuf,
        /// The input device's name.
        input_device: String,
        /// The device's rate.
        sample_rate_hz: u32,
    },
    /// A recording stopped.
    RecordingFinished {
        /// The UI's name for it.
        token: u64,
        /// Seconds in all parts.
        duration_s: f64,
        /// Frames lost.
        dropped_frames: u64,
        /// Files written.
        parts: u32,
        /// It stopped normally.
        ok: bool,
    },
}

/// What the library thread answers.
#[derive(Debug)]
pub enum LibraryReply {
    /// The history (or search result) asked for.
    Listed {
        /// The request's generation.
        generation: u64,
        /// Rows, newest first.
        entries: Vec<HistoryEntry>,
        /// How long the query took.
        took: Duration,
    },
    /// One job, for the transcript view (`None`: gone).
    Loaded(i64, Option<Box<StoredJob>>),
    /// A stored job to queue again; for a recording in several files, each part's offset
    /// from its start.
    Resume(i64, NewJob, Vec<f64>),
    /// The library is open; the lines say what the user should know (a damaged file kept
    /// aside, interrupted jobs).
    Opened(Vec<String>),
    /// The library cannot be used; nothing will be recorded.
    Unavailable(String),
    /// Something was written: lists shown may be stale.
    Changed,
    /// A write or read failed (the message names the library file).
    Error(String),
}

/// The UI's handle on the library thread.
pub struct LibraryService {
    tx: Option<Sender<LibraryRequest>>,
    rx: Receiver<LibraryReply>,
    backlog: VecDeque<LibraryRequest>,
    thread: Option<JoinHandle<()>>,
}

impl LibraryService {
    /// Starts the `library` thread, which opens the library at `path` (the window does not wait
    /// for it) and answers [`LibraryReply::Opened`] or [`LibraryReply::Unavailable`] first;
    /// `waker` is called after each batch of replies.
    pub fn spawn(path: PathBuf, waker: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<Self> {
        let (tx, request_rx) = bounded(REQUEST_CAPACITY);
        let (reply_tx, rx) = bounded(REPLY_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("library".to_owned())
            .spawn(move || {
                let library = match Library::open(&path) {
                    Ok((library, report)) => {
                        let _ = reply_tx.send(LibraryReply::Opened(report.messages(&path)));
                        library
                    }
                    Err(err) => {
                        let _ = reply_tx.send(LibraryReply::Unavailable(err.to_string()));
                        waker();
                        return;
                    }
                };
                waker();
                serve(library, &request_rx, &reply_tx, &*waker);
            })?;
        Ok(Self {
            tx: Some(tx),
            rx,
            backlog: VecDeque::new(),
            thread: Some(thread),
        })
    }

    /// Sends a request without blocking; if the channel is full it waits in order locally.
    pub fn send(&mut self, request: LibraryRequest) {
        self.backlog.push_back(request);
        self.flush();
    }

    /// Moves locally queued requests into the channel while there is room.
    pub fn flush(&mut self) {
        let Some(tx) = &self.tx else {
            self.backlog.clear();
            return;
        };
        while let Some(request) = self.backlog.pop_front() {
            match tx.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(request)) => {
                    self.backlog.push_front(request);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    tracing::warn!("the library thread has stopped; history is not recorded");
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Replies that arrived, without blocking.
    pub fn drain(&self) -> Vec<LibraryReply> {
        self.rx.try_iter().collect()
    }

    /// Requests not yet handed to the thread.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }
}

impl Drop for LibraryService {
    /// Hands over what is still queued (blocking: this is shutdown), then lets the thread finish
    /// its writes and close the library.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            for request in self.backlog.drain(..) {
                if tx.send(request).is_err() {
                    break;
                }
            }
        }
        if let Some(thread) = self.thread.take() {
            // Replies nobody reads must not block the thread's exit.
            while !thread.is_finished() {
                let _ = self.rx.recv_timeout(Duration::from_millis(10));
            }
            let _ = thread.join();
        }
    }
}

struct Server {
    library: Library,
    recorder: JobRecorder,
    /// Recording token → (recording id, its job's id).
    recordings: std::collections::HashMap<u64, (i64, i64)>,
}

fn serve(
    library: Library,
    requests: &Receiver<LibraryRequest>,
    replies: &Sender<LibraryReply>,
    waker: &(dyn Fn() + Send + Sync),
) {
    let mut server = Server {
        library,
        recorder: JobRecorder::new(),
        recordings: std::collections::HashMap::new(),
    };
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while let Ok(request) = requests.try_recv() {
            batch.push(request);
        }
        // Only the newest list request of a batch is answered.
        let last_list = batch
            .iter()
            .rposition(|r| matches!(r, LibraryRequest::List { .. }));
        let mut changed = false;
        let mut replied = false;
        for (i, request) in batch.into_iter().enumerate() {
            if matches!(request, LibraryRequest::List { .. }) && Some(i) != last_list {
                continue;
            }
            match server.handle(request) {
                Ok(Some(reply)) => {
                    replied = true;
                    if replies.send(reply).is_err() {
                        return;
                    }
                }
                Ok(None) => changed = true,
                Err(message) => {
                    replied = true;
                    let _ = replies.try_send(LibraryReply::Error(message));
                }
            }
        }
        if changed {
            replied |= replies.try_send(LibraryReply::Changed).is_ok();
        }
        if replied {
            waker();
        }
    }
}

impl Server {
    /// `Ok(None)`: a write was done.
    fn handle(&mut self, request: LibraryRequest) -> Result<Option<LibraryReply>, String> {
        let lib = &mut self.library;
        let err = |e: super::LibraryError| e.to_string();
        match request {
            LibraryRequest::Queued { job_id, job } => {
                self.recorder.queued(lib, job_id, &job).map_err(err)?;
            }
            LibraryRequest::QueuedRecording {
                job_ids,
                mut job,
                token,
            } => {
                let known = token.and_then(|t| self.recordings.get(&t)).copied();
                job.recording = known.map(|(recording, _)| (recording, 0));
                self.recorder
                    .queued_parts(lib, &job_ids, &job, known.map(|(_, id)| id))
                    .map_err(err)?;
            }
            LibraryRequest::Resume(id) => {
                let job = lib.requeue(id).map_err(err)?;
                let offsets = lib.part_offsets(id).map_err(err)?;
                return Ok(Some(LibraryReply::Resume(id, job, offsets)));
            }
            LibraryRequest::Attach {
                job_id,
                library_id,
                part,
            } => {
                self.recorder.resumed(job_id, library_id, part);
            }
            LibraryRequest::Interrupted(job_ids) => {
                for job_id in job_ids {
                    self.recorder.interrupted(lib, job_id).map_err(err)?;
                }
            }
            LibraryRequest::Event(event) => self.recorder.on_event(lib, &event).map_err(err)?,
            LibraryRequest::List {
                search,
                limit,
                generation,
            } => {
                let started = Instant::now();
                let entries = lib.list(search.as_deref(), limit).map_err(err)?;
                return Ok(Some(LibraryReply::Listed {
                    generation,
                    entries,
                    took: started.elapsed(),
                }));
            }
            LibraryRequest::Get(id) => {
                let job = lib.get(id).map_err(err)?;
                return Ok(Some(LibraryReply::Loaded(id, job.map(Box::new))));
            }
            LibraryRequest::Delete(id) => lib.delete(id).map_err(err)?,
            LibraryRequest::Undelete(id) => lib.undelete(id).map_err(err)?,
            LibraryRequest::RecordingStarted {
                token,
                mut job,
                path,
                input_device,
                sample_rate_hz,
            } => {
                let recording = lib
                    .add_recording(&path, &input_device, sample_rate_hz)
                    .map_err(err)?;
                job.recording = Some((recording, 0));
                let id = lib.recording_job(&job).map_err(err)?;
                self.recordings.insert(token, (recording, id));
            }
            LibraryRequest::RecordingFinished {
                token,
                duration_s,
                dropped_frames,
                parts,
                ok,
            } => {
                if let Some(&(recording, job)) = self.recordings.get(&token) {
                    lib.recording_finished(recording, duration_s, dropped_frames, parts, ok)
                        .map_err(err)?;
                    if parts == 0 {
                        lib.job_failed(job, "nothing was recorded", false)
                            .map_err(err)?;
                    }
                }
            }
        }
        Ok(None)
    }
}
