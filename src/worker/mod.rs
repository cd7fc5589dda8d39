//! The worker process: reads [`WorkerRequest`]s, runs the model, writes [`WorkerEvent`]s.
//!
//! Runs on the main thread of `gpuscribe-worker`; a second thread ("worker-stdin") reads requests
//! so that a cancel arrives while a job runs: it sets a flag that the job checks between batches
//! and every 100 ms while it waits for the decoder.
//!
//! A file job streams its audio ([`source::StreamSource`]: decode → resample → cut → batch on a
//! decoding thread, bounded buffers), so host memory for audio does not grow with the file's
//! length; batches run as soon as their segments are cut, while the decoder reads on. A clip held
//! in memory goes through [`source::WholeSource`], with the same cut points.
//!
//! While it works the worker sends a [`WorkerEvent::Heartbeat`] at most every
//! [`HEARTBEAT_EVERY`], so the engine's watchdog can tell slow from hung. The model sits behind [`SpeechModel`], so the loop, its batching and
//! its out-of-memory handling are tested with a fake model and no device.
//!
//! A request line that cannot be read (not UTF-8, not a request) is a broken engine or pipe:
//! the worker says so on stderr and exits with [`EXIT_BAD_REQUEST`], and the engine's
//! watchdog takes it from there.

pub mod sensevoice;
pub mod source;
pub mod whisper;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};

use crate::audio::decode::SteadyFraction;
use crate::engine::protocol::{
    DecodeSettings, JobErrorKind, JobId, LoadErrorKind, Precision, WorkerDevice, WorkerEvent,
    WorkerRequest, from_line,
};
use crate::engine::segment::{SAMPLE_RATE_HZ, StreamSegment};
use crate::engine::transcript::{
    FileTranscript, FirstTags, Segment, SegmentResult, TokenTime, WordTime,
};
use source::{Opener, SegmentSource, WholeSource};

/// Bytes an event is written in (a transcript goes out in pieces of this size).
const SEND_BUFFER: usize = 64 * 1024;

/// Longest time between heartbeats while the worker is busy.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(1000);

/// The worker's exit status when a request line could not be read.
pub const EXIT_BAD_REQUEST: i32 = 3;

/// No job is cancelled (job ids start at 1).
const NO_CANCEL: u64 = 0;

/// One segment's result from the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SegmentText {
    /// Exactly what FunASR's `generate` returns as text for this segment (tags included).
    pub raw_text: String,
    /// Text without tags (rich form if asked for).
    pub text: String,
    /// Language tag without brackets.
    pub language: String,
    /// Emotion tag.
    pub emotion: String,
    /// Event tag.
    pub event: String,
    /// Token times, seconds from the segment's start.
    pub tokens: Vec<TokenTime>,
    /// FunASR's words, ms from the segment's start.
    pub words: Vec<WordTime>,
    /// Timed pieces inside the segment (Whisper's timestamps), seconds from the segment's
    /// start; empty: the segment is one piece.
    pub pieces: Vec<TimedPiece>,
}

/// A timed piece of a segment's text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimedPiece {
    /// Start, seconds from the segment's start.
    pub start_s: f64,
    /// End, seconds from the segment's start.
    pub end_s: f64,
    /// Its text.
    pub text: String,
}

/// Why loading or a forward pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The device ran out of memory; a smaller batch may fit.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// The model's files are unusable.
    #[error("{0}")]
    BadModel(String),
    /// The device cannot be used.
    #[error("{0}")]
    DeviceUnavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl RunError {
    fn load_kind(&self) -> LoadErrorKind {
        match self {
            Self::OutOfMemory(_) => LoadErrorKind::OutOfMemory,
            Self::BadModel(_) => LoadErrorKind::BadModel,
            Self::DeviceUnavailable(_) => LoadErrorKind::DeviceUnavailable,
            Self::Other(_) => LoadErrorKind::Internal,
        }
    }
}

/// A loaded model, as the worker needs it.
pub trait SpeechModel {
    /// Transcribes a batch of 16 kHz mono clips. `next` is the batch that will most likely
    /// come next (empty at the end of a job): a model may prepare it while the device works
    /// on this one.
    fn transcribe_batch(
        &mut self,
        clips: &[&[f32]],
        next: &[&[f32]],
        settings: &DecodeSettings,
    ) -> Result<Vec<SegmentText>, RunError>;
    /// The job whose batches came so far is over (done, failed or cancelled): anything
    /// prepared for its `next` batch is stale.
    fn end_job(&mut self) {}
    /// Moves the weights to host RAM, freeing device memory.
    fn offload(&mut self) -> Result<(), String>;
    /// Moves the weights back to the device.
    fn restore(&mut self) -> Result<(), RunError>;
    /// Bytes of weights on the device now.
    fn weight_bytes(&self) -> u64;
    /// "bf16", "f32", …
    fn dtype_label(&self) -> String;
}

/// Loads a model: `(model_dir, device, precision)`.
pub type Loader = dyn Fn(&Path, &WorkerDevice, Precision) -> Result<Box<dyn SpeechModel>, RunError>;

/// Writes events, one line each, and heartbeats no more often than [`HEARTBEAT_EVERY`].
struct Outbox<W: Write> {
    output: W,
    last_sent: Instant,
}

impl<W: Write> Outbox<W> {
    /// Writes the event as one line, encoded straight into the pipe: a long file's transcript
    /// is not copied into a string first.
    fn send(&mut self, event: &WorkerEvent) {
        let mut line = std::io::BufWriter::with_capacity(SEND_BUFFER, &mut self.output);
        let written = serde_json::to_writer(&mut line, event)
            .map_err(std::io::Error::from)
            .and_then(|()| line.write_all(b"\n"))
            .and_then(|()| line.flush());
        // If the engine is gone there is nobody to tell; the read side ends the loop.
        if let Err(err) = written {
            tracing::error!("cannot send an event: {err}");
        }
        drop(line);
        self.output.flush().ok();
        self.last_sent = Instant::now();
    }

    fn beat(&mut self, job_id: Option<JobId>) {
        if self.last_sent.elapsed() >= HEARTBEAT_EVERY {
            self.send(&WorkerEvent::Heartbeat { job_id });
        }
    }
}

/// Runs the worker until `Shutdown` or the end of `input`. Returns the process's exit status:
/// 0, or [`EXIT_BAD_REQUEST`] after a request that could not be read.
pub fn run_worker<R, W>(
    input: R,
    output: W,
    loader: &Loader,
    opener: &Opener,
    cuda_built: bool,
) -> i32
where
    R: BufRead + Send + 'static,
    W: Write,
{
    let cancelled = Arc::new(AtomicU64::new(NO_CANCEL));
    let requests = spawn_reader(input, Arc::clone(&cancelled));
    let mut out = Outbox {
        output,
        last_sent: Instant::now(),
    };
    out.send(&WorkerEvent::Started {
        pid: std::process::id(),
        cuda_built,
    });
    let mut model: Option<Box<dyn SpeechModel>> = None;
    let mut device_label = String::new();
    for request in requests {
        let request = match request {
            Ok(request) => request,
            Err(message) => {
                tracing::error!("{message}; exiting");
                return EXIT_BAD_REQUEST;
            }
        };
        match request {
            WorkerRequest::Load {
                model_dir,
                device,
                precision,
            } => {
                model = None;
                let started = Instant::now();
                match loader(&model_dir, &device, precision) {
                    Ok(loaded) => {
                        device_label = device.label();
                        out.send(&WorkerEvent::Loaded {
                            device: device_label.clone(),
                            dtype: loaded.dtype_label(),
                            load_ms: ms_since(started),
                            weight_bytes: loaded.weight_bytes(),
                        });
                        model = Some(loaded);
                    }
                    Err(err) => out.send(&WorkerEvent::LoadFailed {
                        kind: err.load_kind(),
                        message: err.to_string(),
                    }),
                }
            }
            request @ (WorkerRequest::Transcribe { .. }
            | WorkerRequest::TranscribeSamples { .. }) => {
                // A clip held in memory (live transcription) is its job's "file": the same
                // segmenting, batching and events, with a decoder that hands the clip over.
                let (job_id, path, settings, batch_budget_s, pcm) = match request {
                    WorkerRequest::TranscribeSamples {
                        job_id,
                        label,
                        pcm,
                        settings,
                        batch_budget_s,
                    } => (
                        job_id,
                        PathBuf::from(label),
                        settings,
                        batch_budget_s,
                        Some(pcm),
                    ),
                    WorkerRequest::Transcribe {
                        job_id,
                        path,
                        settings,
                        batch_budget_s,
                    } => (job_id, path, settings, batch_budget_s, None),
                    _ => continue,
                };
                let Some(model) = model.as_deref_mut() else {
                    out.send(&WorkerEvent::JobFailed {
                        job_id,
                        kind: JobErrorKind::BadModel,
                        message: format!(
                            "no model loaded on {device_label} for {}",
                            path.display()
                        ),
                    });
                    continue;
                };
                let source: Result<Box<dyn SegmentSource>, String> = match pcm {
                    Some(pcm) => Ok(Box::new(WholeSource::new(
                        &pcm.to_f32(),
                        batch_budget_s,
                        None,
                    ))),
                    None => opener(&path, batch_budget_s),
                };
                let job = Job {
                    job_id,
                    path: &path,
                    settings: &settings,
                    cancelled: &cancelled,
                };
                let event = job.run(model, source, &mut out);
                model.end_job();
                out.send(&event);
            }
            WorkerRequest::Cancel { .. } => {}
            WorkerRequest::Offload => {
                let started = Instant::now();
                if let Some(model) = model.as_deref_mut() {
                    match model.offload() {
                        Ok(()) => out.send(&WorkerEvent::Offloaded {
                            ms: ms_since(started),
                        }),
                        Err(message) => out.send(&WorkerEvent::OffloadFailed { message }),
                    }
                }
            }
            WorkerRequest::Restore => {
                let started = Instant::now();
                match model.as_deref_mut().map(|m| m.restore()) {
                    Some(Ok(())) => out.send(&WorkerEvent::Restored {
                        ms: ms_since(started),
                    }),
                    Some(Err(err)) => out.send(&WorkerEvent::LoadFailed {
                        kind: err.load_kind(),
                        message: err.to_string(),
                    }),
                    None => out.send(&WorkerEvent::LoadFailed {
                        kind: LoadErrorKind::Internal,
                        message: "nothing to restore: no model was loaded".to_owned(),
                    }),
                }
            }
            WorkerRequest::Shutdown => break,
        }
    }
    0
}

/// Whether an error message is a device allocation failure: CUDA reports them as
/// `CUDA_ERROR_OUT_OF_MEMORY` or "out of memory". Used only where candle hands back an error
/// as text; across the protocol the kind is typed.
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("out_of_memory") || lower.contains("out of memory")
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// Reads requests on their own thread; a `Cancel` also sets `cancelled` at once. A line that is
/// not a request is passed on as an error (and ends the reader).
fn spawn_reader<R: BufRead + Send + 'static>(
    mut input: R,
    cancelled: Arc<AtomicU64>,
) -> Receiver<Result<WorkerRequest, String>> {
    let (tx, rx) = bounded(64);
    let spawned = std::thread::Builder::new()
        .name("worker-stdin".to_owned())
        .spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                match input.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) => {
                        tx.send(Err(format!("cannot read a request: {err}"))).ok();
                        break;
                    }
                }
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                match from_line::<WorkerRequest>(trimmed) {
                    Ok(request) => {
                        if let WorkerRequest::Cancel { job_id } = request {
                            cancelled.store(job_id, Ordering::SeqCst);
                        }
                        if tx.send(Ok(request)).is_err() {
                            break;
                        }
                    }
                    Err(err) => {
                        tx.send(Err(format!("the engine sent {err}"))).ok();
                        break;
                    }
                }
            }
        });
    if let Err(err) = spawned {
        tracing::error!("cannot start the request reader: {err}");
    }
    rx
}

/// Where a file job's time went, said at debug level when it ends (`RUST_LOG=debug`).
#[derive(Default)]
struct JobClock {
    /// Waiting for the decoder: the next batch and the one after it.
    decoder: Duration,
    /// The model's batches (features, network, text and timestamps).
    model: Duration,
    /// Encoding and writing the progress and result events (and waiting for the pipe).
    send: Duration,
    batches: usize,
}

impl JobClock {
    fn report(&self, job_id: JobId, audio_s: f64, started: Instant) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            "job {job_id}: {audio_s:.1} s of audio in {:.1} ms, {} batches: waiting for the \
             decoder {:.1} ms, model {:.1} ms, sending results {:.1} ms",
            ms(started.elapsed()),
            self.batches,
            ms(self.decoder),
            ms(self.model),
            ms(self.send),
        );
    }
}

struct Job<'a> {
    job_id: JobId,
    path: &'a Path,
    settings: &'a DecodeSettings,
    cancelled: &'a AtomicU64,
}

impl Job<'_> {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) == self.job_id
    }

    /// Heartbeats while waiting for the decoder, and a stop once the job is cancelled.
    fn tick<W: Write>(&self, out: &mut Outbox<W>) -> ControlFlow<()> {
        out.beat(Some(self.job_id));
        if self.is_cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Runs the job over its segments as they come; returns its last event (done or failed).
    fn run<W: Write>(
        &self,
        model: &mut dyn SpeechModel,
        source: Result<Box<dyn SegmentSource>, String>,
        out: &mut Outbox<W>,
    ) -> WorkerEvent {
        let started = Instant::now();
        let job_id = self.job_id;
        let fail = |kind, message| WorkerEvent::JobFailed {
            job_id,
            kind,
            message,
        };
        let cancelled = || {
            fail(
                JobErrorKind::Cancelled,
                format!("cancelled: {}", self.path.display()),
            )
        };
        if self.is_cancelled() {
            return cancelled();
        }
        let mut source = match source {
            Ok(source) => source,
            Err(message) => return fail(JobErrorKind::BadInput, message),
        };
        // Results wait here until every segment before them is done (batches are planned by
        // length within a window, so they finish out of order): at most a window's worth.
        let mut waiting: BTreeMap<usize, (Range<usize>, SegmentText)> = BTreeMap::new();
        let mut next_start = 0usize;
        let mut tags = FirstTags::default();
        // The halves of a batch that ran out of memory, the next one to run last.
        let mut pending: Vec<Vec<StreamSegment>> = Vec::new();
        let mut done_s = 0.0;
        // Progress never goes back, nor reaches the end early, when the estimate of the
        // file's length changes (a header that states the wrong length).
        let mut steady = SteadyFraction::up_to(1.0);
        let mut clock = JobClock::default();
        loop {
            if self.is_cancelled() {
                return cancelled();
            }
            let waited = Instant::now();
            let batch = match pending.pop() {
                Some(batch) => batch,
                None => match source.next_batch(&mut || self.tick(out)) {
                    Some(batch) => batch,
                    None if self.is_cancelled() => return cancelled(),
                    None => break,
                },
            };
            let clips: Vec<&[f32]> = batch.iter().map(|s| s.samples.as_slice()).collect();
            let result = {
                let next_batch = match pending.last() {
                    Some(half) => Some(half.as_slice()),
                    None => source.peek(&mut || self.tick(out)),
                };
                let next: Vec<&[f32]> = next_batch
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.samples.as_slice())
                    .collect();
                clock.decoder += waited.elapsed();
                let ran = Instant::now();
                let result = model.transcribe_batch(&clips, &next, self.settings);
                clock.model += ran.elapsed();
                clock.batches += 1;
                result
            };
            let sent = Instant::now();
            match result {
                Ok(texts) => {
                    let mut segments = Vec::with_capacity(batch.len());
                    for (segment, text) in batch.iter().zip(texts) {
                        done_s += segment.samples.len() as f64 / SAMPLE_RATE_HZ as f64;
                        segments.extend(segments_from(&segment.range(), &text));
                        waiting.insert(segment.start, (segment.range(), text));
                    }
                    segments.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
                    let total_s = match source.estimated_total_s() {
                        Some(estimate) => {
                            let estimate = estimate.max(done_s);
                            let fraction = steady.update(done_s, estimate);
                            if fraction > 0.0 && done_s / estimate < fraction {
                                done_s / fraction
                            } else {
                                estimate
                            }
                        }
                        None => done_s,
                    };
                    out.send(&WorkerEvent::Progress {
                        job_id,
                        done_s,
                        total_s,
                        segments,
                    });
                    let mut results = Vec::new();
                    while let Some((range, text)) = waiting.remove(&next_start) {
                        next_start = range.end;
                        results.push(segment_result(&range, &text));
                    }
                    self.send_results(results, &mut tags, out);
                    clock.send += sent.elapsed();
                }
                Err(RunError::OutOfMemory(message)) if batch.len() > 1 => {
                    let half = batch.len() / 2;
                    out.send(&WorkerEvent::BatchReduced {
                        job_id,
                        batch: batch.len(),
                        next_batch: half,
                    });
                    tracing::warn!("out of memory at batch {}: {message}", batch.len());
                    let mut first = batch;
                    let second = first.split_off(half);
                    pending.push(second);
                    pending.push(first);
                }
                Err(RunError::OutOfMemory(message)) => {
                    return fail(
                        JobErrorKind::OutOfMemory,
                        format!("out of memory even for one segment: {message}"),
                    );
                }
                Err(RunError::BadModel(message)) => {
                    return fail(
                        JobErrorKind::BadModel,
                        format!("{message}: {}", self.path.display()),
                    );
                }
                Err(RunError::DeviceUnavailable(message) | RunError::Other(message)) => {
                    return fail(
                        JobErrorKind::Internal,
                        format!("{message}: {}", self.path.display()),
                    );
                }
            }
        }
        // Whatever did not follow on (segments that are not contiguous), in time order.
        let rest = std::mem::take(&mut waiting)
            .into_values()
            .map(|(range, text)| segment_result(&range, &text))
            .collect();
        self.send_results(rest, &mut tags, out);
        let summary = match source.finish() {
            Ok(summary) => summary,
            Err(message) => return fail(JobErrorKind::BadInput, message),
        };
        out.send(&WorkerEvent::Decoded {
            job_id,
            duration_s: summary.duration_s,
            warning: summary.warning,
        });
        clock.report(job_id, summary.duration_s, started);
        let (language, emotion, event) = tags.get();
        WorkerEvent::Done {
            job_id,
            transcript: FileTranscript {
                // Only a label on the wire (a non-UTF-8 name cannot be a JSON string); the
                // engine puts back the job's own path.
                path: PathBuf::from(self.path.to_string_lossy().into_owned()),
                duration_s: summary.duration_s,
                language,
                emotion,
                event,
                ..FileTranscript::default()
            },
            ms: ms_since(started),
            streamed: true,
        }
    }

    /// Sends finished results (in time order) and forgets them.
    fn send_results<W: Write>(
        &self,
        results: Vec<SegmentResult>,
        tags: &mut FirstTags,
        out: &mut Outbox<W>,
    ) {
        if results.is_empty() {
            return;
        }
        results.iter().for_each(|r| tags.see(r));
        out.send(&WorkerEvent::Transcribed {
            job_id: self.job_id,
            results,
        });
    }
}

/// One segment's result with times from the file's start, as the file's transcript holds it.
fn segment_result(range: &Range<usize>, text: &SegmentText) -> SegmentResult {
    let offset_ms = (range.start * 1000 / SAMPLE_RATE_HZ) as i64;
    let offset_s = range.start as f64 / SAMPLE_RATE_HZ as f64;
    SegmentResult {
        start_s: offset_s,
        end_s: range.end as f64 / SAMPLE_RATE_HZ as f64,
        text: text.text.clone(),
        raw_text: text.raw_text.clone(),
        language: text.language.clone(),
        emotion: text.emotion.clone(),
        event: text.event.clone(),
        segments: segments_from(range, text),
        tokens: text
            .tokens
            .iter()
            .map(|t| TokenTime {
                token: t.token.clone(),
                start_s: round_ms(t.start_s + offset_s),
                end_s: round_ms(t.end_s + offset_s),
            })
            .collect(),
        words: text
            .words
            .iter()
            .map(|w| WordTime {
                word: w.word.clone(),
                start_ms: w.start_ms + offset_ms,
                end_ms: w.end_ms + offset_ms,
            })
            .collect(),
    }
}

fn segment_from(range: &Range<usize>, text: &SegmentText) -> Segment {
    Segment {
        start_s: range.start as f64 / SAMPLE_RATE_HZ as f64,
        end_s: range.end as f64 / SAMPLE_RATE_HZ as f64,
        text: text.text.clone(),
        language: text.language.clone(),
        emotion: text.emotion.clone(),
        event: text.event.clone(),
    }
}

/// The segment, or its timed pieces (clamped to the segment) when the model gave some.
fn segments_from(range: &Range<usize>, text: &SegmentText) -> Vec<Segment> {
    let whole = segment_from(range, text);
    if text.pieces.is_empty() {
        return vec![whole];
    }
    text.pieces
        .iter()
        .map(|p| Segment {
            start_s: (whole.start_s + p.start_s).min(whole.end_s),
            end_s: (whole.start_s + p.end_s).clamp(whole.start_s, whole.end_s),
            text: p.text.clone(),
            ..whole.clone()
        })
        .collect()
}

/// Joins segment results in time order, as FunASR joins VAD segments (raw texts with " "): the
/// whole-transcript merge that the streamed results are checked against.
#[cfg(test)]
fn merge(path: &Path, duration_s: f64, results: &[(Range<usize>, SegmentText)]) -> FileTranscript {
    let pairs: Vec<(&Range<usize>, &SegmentText)> =
        results.iter().map(|(range, text)| (range, text)).collect();
    let first = pairs
        .iter()
        .find(|(_, t)| !t.text.trim().is_empty())
        .or(pairs.first())
        .map(|(_, t)| (*t).clone())
        .unwrap_or_default();
    let join = |f: fn(&SegmentText) -> &str| {
        pairs
            .iter()
            .map(|(_, t)| f(t))
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut tokens = Vec::new();
    let mut words = Vec::new();
    for (range, text) in &pairs {
        let offset_ms = (range.start * 1000 / SAMPLE_RATE_HZ) as i64;
        let offset_s = range.start as f64 / SAMPLE_RATE_HZ as f64;
        tokens.extend(text.tokens.iter().map(|t| TokenTime {
            token: t.token.clone(),
            start_s: round_ms(t.start_s + offset_s),
            end_s: round_ms(t.end_s + offset_s),
        }));
        words.extend(text.words.iter().map(|w| WordTime {
            word: w.word.clone(),
            start_ms: w.start_ms + offset_ms,
            end_ms: w.end_ms + offset_ms,
        }));
    }
    FileTranscript {
        path: path.to_path_buf(),
        duration_s,
        language: first.language,
        emotion: first.emotion,
        event: first.event,
        text: join(|t| t.text.as_str()),
        raw_text: join(|t| t.raw_text.as_str()),
        segments: pairs
            .iter()
            .flat_map(|(r, t)| segments_from(r, t))
            .collect(),
        tokens,
        words,
    }
}

/// Seconds rounded to whole milliseconds (token times are multiples of 10 ms; this keeps
/// float noise out of the JSON).
fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// A job's transcript from the worker's events, assembled as the engine does: its `Transcribed`
/// results, then its `Done` event's path and length. `None` when the job did not finish; panics
/// when the `Done` event itself carries segments, or results come out of order.
#[cfg(test)]
pub(crate) fn assembled(events: &[WorkerEvent], job: JobId) -> Option<FileTranscript> {
    let mut assembler = crate::engine::TranscriptAssembler::default();
    let mut until = 0.0;
    for event in events {
        match event {
            WorkerEvent::Transcribed { job_id, results } if *job_id == job => {
                for result in results {
                    assert!(result.start_s >= until - 1e-9, "out of order: {results:?}");
                    until = result.end_s;
                    assembler.push(result.clone());
                }
            }
            WorkerEvent::Done {
                job_id,
                transcript,
                streamed,
                ..
            } if *job_id == job => {
                assert!(*streamed);
                assert!(
                    transcript.segments.is_empty()
                        && transcript.tokens.is_empty()
                        && transcript.words.is_empty()
                        && transcript.text.is_empty(),
                    "{transcript:?}"
                );
                let whole = assembler.finish(transcript.path.clone(), transcript.duration_s);
                assert_eq!(
                    (&whole.language, &whole.emotion, &whole.event),
                    (&transcript.language, &transcript.emotion, &transcript.event)
                );
                return Some(whole);
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::engine::protocol::to_line;

    /// Answers each clip with its length; fails with OOM above `max_batch` clips.
    struct FakeModel {
        max_batch: usize,
        offloaded: bool,
    }

    impl SpeechModel for FakeModel {
        fn transcribe_batch(
            &mut self,
            clips: &[&[f32]],
            _next: &[&[f32]],
            settings: &DecodeSettings,
        ) -> Result<Vec<SegmentText>, RunError> {
            if self.offloaded {
                return Err(RunError::Other("weights are offloaded".into()));
            }
            if clips.len() > self.max_batch {
                return Err(RunError::OutOfMemory("CUDA_ERROR_OUT_OF_MEMORY".into()));
            }
            Ok(clips
                .iter()
                .map(|c| SegmentText {
                    raw_text: format!(
                        "<|{}|><|NEUTRAL|><|Speech|><|woitn|>n{}",
                        settings.language,
                        c.len()
                    ),
                    text: format!("n{}", c.len()),
                    language: settings.language.clone(),
                    emotion: "NEUTRAL".into(),
                    event: "Speech".into(),
                    tokens: vec![TokenTime {
                        token: format!("\u{2581}n{}", c.len()),
                        start_s: 0.51,
                        end_s: 0.57,
                    }],
                    words: vec![WordTime {
                        word: format!("n{}", c.len()),
                        start_ms: 510,
                        end_ms: 570,
                    }],
                    pieces: Vec::new(),
                })
                .collect())
        }
        fn offload(&mut self) -> Result<(), String> {
            self.offloaded = true;
            Ok(())
        }
        fn restore(&mut self) -> Result<(), RunError> {
            self.offloaded = false;
            Ok(())
        }
        fn weight_bytes(&self) -> u64 {
            if self.offloaded { 0 } else { 1000 }
        }
        fn dtype_label(&self) -> String {
            "f32".into()
        }
    }

    /// A source that takes `steps` × 100 ms before its first batch, ticking as it waits.
    struct SlowSource {
        steps: u32,
        inner: WholeSource,
    }

    impl SegmentSource for SlowSource {
        fn next_batch(
            &mut self,
            tick: &mut dyn FnMut() -> ControlFlow<()>,
        ) -> Option<Vec<StreamSegment>> {
            while self.steps > 0 {
                std::thread::sleep(Duration::from_millis(100));
                self.steps -= 1;
                if tick().is_break() {
                    return None;
                }
            }
            self.inner.next_batch(tick)
        }
        fn peek(&mut self, tick: &mut dyn FnMut() -> ControlFlow<()>) -> Option<&[StreamSegment]> {
            self.inner.peek(tick)
        }
        fn estimated_total_s(&self) -> Option<f64> {
            self.inner.estimated_total_s()
        }
        fn finish(self: Box<Self>) -> Result<source::DecodeSummary, String> {
            Box::new(self.inner).finish()
        }
    }

    fn run(requests: &[WorkerRequest], max_batch: usize) -> Vec<WorkerEvent> {
        run_with(requests, max_batch, Duration::ZERO).1
    }

    /// Runs the worker over `requests`; each batch takes `pass` (so a cancel can land mid-job).
    fn run_with(
        requests: &[WorkerRequest],
        max_batch: usize,
        pass: Duration,
    ) -> (i32, Vec<WorkerEvent>) {
        let input: String = requests
            .iter()
            .map(|r| to_line(r).expect("encodes"))
            .collect();
        run_input(input.into_bytes(), max_batch, pass)
    }

    fn run_input(input: Vec<u8>, max_batch: usize, pass: Duration) -> (i32, Vec<WorkerEvent>) {
        struct Slow(FakeModel, Duration);
        impl SpeechModel for Slow {
            fn transcribe_batch(
                &mut self,
                clips: &[&[f32]],
                next: &[&[f32]],
                settings: &DecodeSettings,
            ) -> Result<Vec<SegmentText>, RunError> {
                std::thread::sleep(self.1);
                self.0.transcribe_batch(clips, next, settings)
            }
            fn offload(&mut self) -> Result<(), String> {
                self.0.offload()
            }
            fn restore(&mut self) -> Result<(), RunError> {
                self.0.restore()
            }
            fn weight_bytes(&self) -> u64 {
                self.0.weight_bytes()
            }
            fn dtype_label(&self) -> String {
                self.0.dtype_label()
            }
        }
        let mut out = Vec::new();
        let loader = move |_: &Path, _: &WorkerDevice, _: Precision| {
            Ok(Box::new(Slow(
                FakeModel {
                    max_batch,
                    offloaded: false,
                },
                pass,
            )) as Box<dyn SpeechModel>)
        };
        let opener = |path: &Path, budget_s: f64| -> Result<Box<dyn SegmentSource>, String> {
            if path.is_file() {
                // A real file: the worker's own streaming source.
                return source::StreamSource::open(path, budget_s);
            }
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            // "slow-N": a decoder that works for N × 100 ms before its first segment.
            if let Some(steps) = stem.strip_prefix("slow-").and_then(|n| n.parse().ok()) {
                return Ok(Box::new(SlowSource {
                    steps,
                    inner: WholeSource::new(&[0.0; 16_000], budget_s, None),
                }));
            }
            let secs: f64 = stem
                .parse()
                .map_err(|_| format!("not audio: {}", path.display()))?;
            let samples = vec![0.0; (secs * 16_000.0) as usize];
            Ok(Box::new(WholeSource::new(&samples, budget_s, None)))
        };
        let status = run_worker(Cursor::new(input), &mut out, &loader, &opener, false);
        let events = String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("event"))
            .collect();
        (status, events)
    }

    fn load() -> WorkerRequest {
        WorkerRequest::Load {
            model_dir: "/m".into(),
            device: WorkerDevice::Cpu,
            precision: Precision::F32,
        }
    }

    fn job(job_id: JobId, path: &str, budget: f64) -> WorkerRequest {
        WorkerRequest::Transcribe {
            job_id,
            path: path.into(),
            settings: DecodeSettings::default(),
            batch_budget_s: budget,
        }
    }

    #[test]
    fn long_file_is_split_batched_and_merged_in_order() {
        let events = run(
            &[load(), job(1, "/x/95.wav", 1000.0), WorkerRequest::Shutdown],
            64,
        );
        assert!(matches!(events.last(), Some(WorkerEvent::Done { .. })));
        let transcript = assembled(&events, 1).expect("done");
        assert!((transcript.duration_s - 95.0).abs() < 1e-9);
        assert!(transcript.segments.len() >= 4);
        let starts: Vec<f64> = transcript.segments.iter().map(|s| s.start_s).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
        let covered: f64 = transcript
            .segments
            .iter()
            .map(|s| s.end_s - s.start_s)
            .sum();
        assert!((covered - 95.0).abs() < 1e-6);
        assert!(transcript.raw_text.starts_with("<|auto|>"));
        assert_eq!(
            transcript.raw_text.matches("<|woitn|>").count(),
            transcript.segments.len()
        );
        // Token and word times move by their segment's start.
        assert_eq!(transcript.tokens.len(), transcript.segments.len());
        assert_eq!(transcript.words.len(), transcript.segments.len());
        for ((segment, token), word) in transcript
            .segments
            .iter()
            .zip(&transcript.tokens)
            .zip(&transcript.words)
        {
            assert!((token.start_s - (segment.start_s + 0.51)).abs() < 1e-9);
            assert!((token.end_s - (segment.start_s + 0.57)).abs() < 1e-9);
            assert_eq!(
                word.start_ms,
                (segment.start_s * 1000.0).round() as i64 + 510
            );
            assert_eq!(word.end_ms, word.start_ms + 60);
        }
    }

    #[test]
    fn out_of_memory_halves_the_batch_and_completes() {
        let events = run(
            &[
                load(),
                job(1, "/x/200.wav", 10_000.0),
                WorkerRequest::Shutdown,
            ],
            2,
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::BatchReduced { .. }))
        );
        assert!(
            matches!(events.last(), Some(WorkerEvent::Done { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn out_of_memory_at_batch_one_fails_the_job_and_bad_input_names_the_file() {
        let events = run(
            &[
                load(),
                job(1, "/x/40.wav", 1000.0),
                job(2, "/x/bad.txt", 100.0),
                job(3, "/x/1.wav", 100.0),
            ],
            0,
        );
        let failures: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::JobFailed {
                    job_id,
                    kind,
                    message,
                } => Some((*job_id, *kind, message.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(failures[0].1, JobErrorKind::OutOfMemory);
        assert_eq!(failures[1].0, 2);
        assert_eq!(failures[1].1, JobErrorKind::BadInput);
        assert!(failures[1].2.contains("/x/bad.txt"));
    }

    #[test]
    fn offload_restore_gives_the_same_text() {
        let events = run(
            &[
                load(),
                job(1, "/x/3.wav", 100.0),
                WorkerRequest::Offload,
                WorkerRequest::Restore,
                job(2, "/x/3.wav", 100.0),
                WorkerRequest::Shutdown,
            ],
            8,
        );
        let texts: Vec<String> = [1, 2]
            .iter()
            .filter_map(|&job| assembled(&events, job).map(|t| t.raw_text))
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0], texts[1]);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::Offloaded { .. }))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::Restored { .. }))
        );
    }

    #[test]
    fn a_job_without_a_model_fails_cleanly() {
        let events = run(&[job(1, "/x/3.wav", 100.0)], 8);
        assert!(matches!(events[0], WorkerEvent::Started { .. }));
        assert!(matches!(
            events[1],
            WorkerEvent::JobFailed {
                kind: JobErrorKind::BadModel,
                ..
            }
        ));
    }

    #[test]
    fn a_cancel_stops_a_running_job_between_batches() {
        // 600 s of audio at one 30 s segment per 50 ms pass: about a second if not cancelled.
        let started = Instant::now();
        let (_, events) = run_with(
            &[
                load(),
                job(1, "/x/600.wav", 30.0),
                WorkerRequest::Cancel { job_id: 1 },
                job(2, "/x/3.wav", 30.0),
                WorkerRequest::Shutdown,
            ],
            8,
            Duration::from_millis(50),
        );
        let cancelled = events.iter().position(|e| {
            matches!(
                e,
                WorkerEvent::JobFailed {
                    job_id: 1,
                    kind: JobErrorKind::Cancelled,
                    ..
                }
            )
        });
        let progress = events
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Progress { job_id: 1, .. }))
            .count();
        assert!(cancelled.is_some(), "{events:?}");
        assert!(progress < 5, "{progress} batches ran after the cancel");
        assert!(
            matches!(events.last(), Some(WorkerEvent::Done { job_id: 2, .. })),
            "the next job still runs: {events:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
    }

    #[test]
    fn slow_decoding_sends_heartbeats() {
        let (status, events) = run_with(
            &[
                load(),
                job(1, "/x/slow-14.wav", 30.0),
                WorkerRequest::Shutdown,
            ],
            8,
            Duration::ZERO,
        );
        assert_eq!(status, 0);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::Heartbeat { job_id: Some(1) })),
            "{events:?}"
        );
        assert!(matches!(events.last(), Some(WorkerEvent::Done { .. })));
    }

    #[test]
    fn a_request_that_cannot_be_read_ends_the_worker_with_its_status() {
        let mut input = to_line(&load()).expect("encodes").into_bytes();
        input.extend_from_slice(b"\xff\xfe not a request\n");
        input.extend_from_slice(
            to_line(&job(1, "/x/3.wav", 30.0))
                .expect("encodes")
                .as_bytes(),
        );
        let (status, events) = run_input(input, 8, Duration::ZERO);
        assert_eq!(status, EXIT_BAD_REQUEST);
        assert!(
            !events.iter().any(|e| matches!(e, WorkerEvent::Done { .. })),
            "{events:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_non_utf8_file_name_is_transcribed_and_named() {
        use std::os::unix::ffi::OsStrExt as _;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/3.w\xe9v"));
        let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/caf\xe9.wav"));
        let (_, events) = run_with(
            &[
                load(),
                WorkerRequest::Transcribe {
                    job_id: 1,
                    path,
                    settings: DecodeSettings::default(),
                    batch_budget_s: 30.0,
                },
                WorkerRequest::Transcribe {
                    job_id: 2,
                    path: bad,
                    settings: DecodeSettings::default(),
                    batch_budget_s: 30.0,
                },
                WorkerRequest::Shutdown,
            ],
            8,
            Duration::ZERO,
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::Done { job_id: 1, .. })),
            "{events:?}"
        );
        let failed = events.iter().find_map(|e| match e {
            WorkerEvent::JobFailed {
                job_id: 2,
                kind,
                message,
            } => Some((*kind, message.clone())),
            _ => None,
        });
        let (kind, message) = failed.expect("the bad file fails");
        assert_eq!(kind, JobErrorKind::BadInput);
        assert!(message.contains("caf\u{fffd}.wav"), "{message}");
    }

    #[test]
    fn a_clip_in_memory_is_transcribed_like_a_file_of_its_samples() {
        let clip = WorkerRequest::TranscribeSamples {
            job_id: 4,
            label: "live 1.0–1.5 s".into(),
            pcm: crate::engine::protocol::Pcm16::from_f32(&[0.25; 8000]),
            settings: DecodeSettings::default(),
            batch_budget_s: 30.0,
        };
        let events = run(&[load(), clip, WorkerRequest::Shutdown], 8);
        assert!(matches!(
            events.last(),
            Some(WorkerEvent::Done { job_id: 4, .. })
        ));
        let transcript = assembled(&events, 4).expect("done");
        assert_eq!(transcript.text, "n8000");
        assert_eq!(transcript.path, Path::new("live 1.0–1.5 s"));
        assert!((transcript.duration_s - 0.5).abs() < 1e-9);
    }

    /// A real WAV of `minutes` of tone with a pause every 7 s, so the cutter finds its cuts.
    fn tone_wav(dir: &Path, minutes: u32) -> PathBuf {
        let path = dir.join(format!("tone-{minutes}.wav"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("test setup");
        for i in 0..u64::from(minutes) * 60 * 16_000 {
            let t = i as f64 / 16_000.0;
            let level = if t % 7.0 > 6.7 { 0.001 } else { 0.3 };
            let v = level * (2.0 * std::f64::consts::PI * 200.0 * t).sin();
            w.write_sample((v * 32767.0) as i16).expect("test setup");
        }
        w.finalize().expect("test setup");
        path
    }

    fn done_transcript(events: &[WorkerEvent], job: JobId) -> FileTranscript {
        assembled(events, job).unwrap_or_else(|| panic!("job {job} not done: {events:?}"))
    }

    #[test]
    fn results_go_out_in_time_order_as_they_follow_on_and_reassemble_to_the_whole_merge() {
        // Batches of up to 3 × 30 s among all segments of a 10-minute clip, planned by length:
        // they finish out of time order, and results wait only until those before them are in.
        // A tone with short silent gaps at irregular places: segments of different lengths.
        let tone: Vec<f32> = (0..600 * 16_000)
            .map(|i| {
                let t = i as f64 / 16_000.0;
                let gap = (t % 17.3) < 0.2 || (t % 23.9) < 0.2;
                if gap {
                    0.0
                } else {
                    (0.3 * (t * 1_000.0).sin()) as f32
                }
            })
            .collect();
        let pcm = crate::engine::protocol::Pcm16::from_f32(&tone);
        let samples = pcm.to_f32();
        let clip = WorkerRequest::TranscribeSamples {
            job_id: 1,
            label: "/x/600.wav".into(),
            pcm,
            settings: DecodeSettings::default(),
            batch_budget_s: 90.0,
        };
        let events = run(&[load(), clip, WorkerRequest::Shutdown], 64);
        let ranges = crate::engine::segment::split_at_pauses(
            &samples,
            crate::engine::segment::MAX_SEGMENT_SECS,
            crate::engine::segment::MIN_SEGMENT_SECS,
        );
        assert!(ranges.len() >= 20, "{}", ranges.len());
        let mut model = FakeModel {
            max_batch: 64,
            offloaded: false,
        };
        let results: Vec<(Range<usize>, SegmentText)> = ranges
            .iter()
            .map(|r| {
                let text = model
                    .transcribe_batch(&[&samples[r.clone()]], &[], &DecodeSettings::default())
                    .expect("fake model")
                    .remove(0);
                (r.clone(), text)
            })
            .collect();
        let want = merge(Path::new("/x/600.wav"), 600.0, &results);
        assert_eq!(done_transcript(&events, 1), want);
        // The batches did finish out of time order.
        let progress_starts: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Progress { segments, .. } => segments.first().map(|s| s.start_s),
                _ => None,
            })
            .collect();
        assert!(
            progress_starts.windows(2).any(|w| w[1] < w[0]),
            "{progress_starts:?}"
        );
        // Several pieces, none holding the whole file, the Done line without segments.
        let pieces: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Transcribed { results, .. } => Some(results.len()),
                _ => None,
            })
            .collect();
        assert!(pieces.len() >= 3, "{pieces:?}");
        assert_eq!(pieces.iter().sum::<usize>(), ranges.len());
        assert!(pieces.iter().all(|&n| n < ranges.len()), "{pieces:?}");
    }

    #[test]
    fn a_streamed_file_steps_down_on_out_of_memory_to_the_same_transcript() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = tone_wav(dir.path(), 12);
        let path = path.to_str().expect("test setup");
        // A budget that puts a whole window (16 segments) in one batch.
        let requests = [load(), job(1, path, 10_000.0), WorkerRequest::Shutdown];
        let roomy = run(&requests, 64);
        let tight = run(&requests, 3);
        let reduced: Vec<(usize, usize)> = tight
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::BatchReduced {
                    batch, next_batch, ..
                } => Some((*batch, *next_batch)),
                _ => None,
            })
            .collect();
        assert!(reduced.contains(&(16, 8)), "{reduced:?}");
        assert!(
            !roomy
                .iter()
                .any(|e| matches!(e, WorkerEvent::BatchReduced { .. }))
        );
        let want = done_transcript(&roomy, 1);
        assert_eq!(done_transcript(&tight, 1), want);
        assert!(
            (want.duration_s - 720.0).abs() < 1e-9,
            "{}",
            want.duration_s
        );
        assert!(want.segments.len() > 20, "{}", want.segments.len());
        // The decode summary comes once, before the end, with the exact length.
        let decoded: Vec<f64> = tight
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Decoded { duration_s, .. } => Some(*duration_s),
                _ => None,
            })
            .collect();
        assert_eq!(decoded, vec![720.0]);
    }

    #[test]
    fn a_streamed_file_job_is_cancelled_within_a_second() {
        let dir = tempfile::tempdir().expect("test setup");
        let path = tone_wav(dir.path(), 20);
        let path = path.to_str().expect("test setup");
        // 40 one-segment batches of 50 ms each: 2 s if not cancelled.
        let started = Instant::now();
        let (_, events) = run_with(
            &[
                load(),
                job(1, path, 30.0),
                WorkerRequest::Cancel { job_id: 1 },
                job(2, "/x/3.wav", 30.0),
                WorkerRequest::Shutdown,
            ],
            8,
            Duration::from_millis(50),
        );
        let cancelled: Vec<JobId> = events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::JobFailed {
                    job_id,
                    kind: JobErrorKind::Cancelled,
                    ..
                } => Some(*job_id),
                _ => None,
            })
            .collect();
        assert_eq!(cancelled, vec![1], "{events:?}");
        let progress = events
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Progress { job_id: 1, .. }))
            .count();
        assert!(progress < 5, "{progress} batches ran after the cancel");
        assert!(
            matches!(events.last(), Some(WorkerEvent::Done { job_id: 2, .. })),
            "the next job still runs: {events:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
}
