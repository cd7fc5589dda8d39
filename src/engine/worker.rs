//! The worker process's loop: reads [`WorkerRequest`]s, runs the model, writes [`WorkerEvent`]s.
//!
//! Runs on the main thread of `gpuscribe-worker`; a second thread ("worker-stdin") reads requests
//! so that a cancel arrives while a job runs. The model sits behind [`SpeechModel`], so the loop,
//! its batching and its out-of-memory handling are tested with a fake model and no device.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, bounded};

use super::protocol::{
    DecodeSettings, JobErrorKind, JobId, Precision, WorkerDevice, WorkerEvent, WorkerRequest,
    to_line,
};
use super::segment::{
    MAX_SEGMENT_SECS, MIN_SEGMENT_SECS, SAMPLE_RATE_HZ, plan_batches, split_at_pauses,
};
use super::transcript::{FileTranscript, Segment};

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
}

/// Why a forward pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The device ran out of memory; a smaller batch may fit.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
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
    fn restore(&mut self) -> Result<(), String>;
    /// Bytes of weights on the device now.
    fn weight_bytes(&self) -> u64;
    /// "bf16", "f32", …
    fn dtype_label(&self) -> String;
}

/// Loads a model: `(model_dir, device, precision)`.
pub type Loader = dyn Fn(&Path, &WorkerDevice, Precision) -> Result<Box<dyn SpeechModel>, RunError>;

/// Decodes an audio file to 16 kHz mono: `Ok((samples, warning))` or a message naming the file.
pub type Decoder = dyn Fn(&Path) -> Result<(Vec<f32>, Option<String>), String>;

/// Runs the worker until `Shutdown` or the end of `input`.
pub fn run_worker<R, W>(
    input: R,
    mut output: W,
    loader: &Loader,
    decoder: &Decoder,
    cuda_built: bool,
) where
    R: BufRead + Send + 'static,
    W: Write,
{
    let cancelled = Arc::new(AtomicU64::new(0));
    let requests = spawn_reader(input, Arc::clone(&cancelled));
    let mut send = |event: WorkerEvent| {
        // If the engine is gone there is nobody to tell; the read side will end the loop.
        output.write_all(to_line(&event).as_bytes()).ok();
        output.flush().ok();
    };
    send(WorkerEvent::Started {
        pid: std::process::id(),
        cuda_built,
    });
    let mut model: Option<Box<dyn SpeechModel>> = None;
    let mut device_label = String::new();
    for request in requests {
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
                        send(WorkerEvent::Loaded {
                            device: device_label.clone(),
                            dtype: loaded.dtype_label(),
                            load_ms: ms_since(started),
                            weight_bytes: loaded.weight_bytes(),
                        });
                        model = Some(loaded);
                    }
                    Err(err) => send(WorkerEvent::LoadFailed {
                        out_of_memory: matches!(err, RunError::OutOfMemory(_)),
                        message: err.to_string(),
                    }),
                }
            }
            WorkerRequest::Transcribe {
                job_id,
                path,
                settings,
                batch_budget_s,
            } => {
                let Some(model) = model.as_deref_mut() else {
                    send(WorkerEvent::JobFailed {
                        job_id,
                        kind: JobErrorKind::Model,
                        message: format!("no model loaded on {device_label}"),
                    });
                    continue;
                };
                let job = Job {
                    job_id,
                    path: &path,
                    settings: &settings,
                    batch_budget_s,
                    cancelled: &cancelled,
                };
                job.run(model, decoder, &mut send);
                model.end_job();
            }
            WorkerRequest::TranscribeSamples {
                job_id,
                label,
                pcm,
                settings,
                batch_budget_s,
            } => {
                let Some(model) = model.as_deref_mut() else {
                    send(WorkerEvent::JobFailed {
                        job_id,
                        kind: JobErrorKind::Model,
                        message: format!("no model loaded on {device_label}"),
                    });
                    continue;
                };
                // The clip is the job's "file": the same segmenting, batching and events.
                let clip = move |_: &Path| -> Result<(Vec<f32>, Option<String>), String> {
                    Ok((pcm.to_f32(), None))
                };
                let path = std::path::PathBuf::from(label);
                let job = Job {
                    job_id,
                    path: &path,
                    settings: &settings,
                    batch_budget_s,
                    cancelled: &cancelled,
                };
                job.run(model, &clip, &mut send);
                model.end_job();
            }
            WorkerRequest::Cancel { .. } => {}
            WorkerRequest::Offload => {
                let started = Instant::now();
                if let Some(model) = model.as_deref_mut() {
                    match model.offload() {
                        Ok(()) => send(WorkerEvent::Offloaded {
                            ms: ms_since(started),
                        }),
                        Err(message) => send(WorkerEvent::LoadFailed {
                            message,
                            out_of_memory: false,
                        }),
                    }
                }
            }
            WorkerRequest::Restore => {
                let started = Instant::now();
                if let Some(model) = model.as_deref_mut() {
                    match model.restore() {
                        Ok(()) => send(WorkerEvent::Restored {
                            ms: ms_since(started),
                        }),
                        Err(message) => send(WorkerEvent::LoadFailed {
                            out_of_memory: is_out_of_memory(&message),
                            message,
                        }),
                    }
                }
            }
            WorkerRequest::Shutdown => break,
        }
    }
}

/// Whether an error message is a device allocation failure: CUDA reports them as
/// `CUDA_ERROR_OUT_OF_MEMORY` or "out of memory".
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("out_of_memory") || lower.contains("out of memory")
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// Reads requests on their own thread; a `Cancel` also sets `cancelled` at once.
fn spawn_reader<R: BufRead + Send + 'static>(
    input: R,
    cancelled: Arc<AtomicU64>,
) -> Receiver<WorkerRequest> {
    let (tx, rx) = bounded(64);
    let spawned = std::thread::Builder::new()
        .name("worker-stdin".to_owned())
        .spawn(move || {
            for line in input.lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<WorkerRequest>(&line) {
                    Ok(request) => {
                        if let WorkerRequest::Cancel { job_id } = request {
                            cancelled.store(job_id, Ordering::SeqCst);
                        }
                        if tx.send(request).is_err() {
                            break;
                        }
                    }
                    Err(err) => tracing::warn!("ignoring a malformed request: {err}"),
                }
            }
        });
    if let Err(err) = spawned {
        tracing::error!("cannot start the request reader: {err}");
    }
    rx
}

struct Job<'a> {
    job_id: JobId,
    path: &'a Path,
    settings: &'a DecodeSettings,
    batch_budget_s: f64,
    cancelled: &'a AtomicU64,
}

impl Job<'_> {
    fn run(
        &self,
        model: &mut dyn SpeechModel,
        decoder: &Decoder,
        send: &mut dyn FnMut(WorkerEvent),
    ) {
        let started = Instant::now();
        let job_id = self.job_id;
        let fail = |kind, message| WorkerEvent::JobFailed {
            job_id,
            kind,
            message,
        };
        let (samples, warning) = match decoder(self.path) {
            Ok(decoded) => decoded,
            Err(message) => return send(fail(JobErrorKind::BadInput, message)),
        };
        let total_s = samples.len() as f64 / SAMPLE_RATE_HZ as f64;
        send(WorkerEvent::Decoded {
            job_id,
            duration_s: total_s,
            warning,
        });
        let ranges = split_at_pauses(&samples, MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
        let lens: Vec<usize> = ranges.iter().map(ExactSizeIterator::len).collect();
        let mut results: Vec<Option<SegmentText>> = vec![None; ranges.len()];
        let mut pending: Vec<Vec<usize>> = plan_batches(&lens, self.batch_budget_s);
        pending.reverse();
        let mut done_s = 0.0;
        while let Some(batch) = pending.pop() {
            if self.cancelled.load(Ordering::SeqCst) == job_id {
                return send(fail(
                    JobErrorKind::Cancelled,
                    format!("cancelled: {}", self.path.display()),
                ));
            }
            let clips_of = |batch: &[usize]| -> Vec<&[f32]> {
                batch.iter().map(|&i| &samples[ranges[i].clone()]).collect()
            };
            let clips = clips_of(&batch);
            let next = pending.last().map_or_else(Vec::new, |b| clips_of(b));
            match model.transcribe_batch(&clips, &next, self.settings) {
                Ok(texts) => {
                    let mut segments = Vec::with_capacity(batch.len());
                    for (&i, text) in batch.iter().zip(texts) {
                        done_s += lens[i] as f64 / SAMPLE_RATE_HZ as f64;
                        segments.push(segment_from(&ranges[i], &text));
                        results[i] = Some(text);
                    }
                    segments.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
                    send(WorkerEvent::Progress {
                        job_id,
                        done_s,
                        total_s,
                        segments,
                    });
                }
                Err(RunError::OutOfMemory(message)) if batch.len() > 1 => {
                    let half = batch.len() / 2;
                    send(WorkerEvent::BatchReduced {
                        job_id,
                        batch: batch.len(),
                        next_batch: half,
                    });
                    tracing::warn!("out of memory at batch {}: {message}", batch.len());
                    pending.push(batch[half..].to_vec());
                    pending.push(batch[..half].to_vec());
                }
                Err(RunError::OutOfMemory(message)) => {
                    return send(fail(
                        JobErrorKind::OutOfMemory,
                        format!("out of memory even for one segment: {message}"),
                    ));
                }
                Err(RunError::Other(message)) => {
                    return send(fail(
                        JobErrorKind::Model,
                        format!("{message}: {}", self.path.display()),
                    ));
                }
            }
        }
        let transcript = merge(self.path, total_s, &ranges, &results);
        send(WorkerEvent::Done {
            job_id,
            transcript,
            ms: ms_since(started),
        });
    }
}

fn segment_from(range: &std::ops::Range<usize>, text: &SegmentText) -> Segment {
    Segment {
        start_s: range.start as f64 / SAMPLE_RATE_HZ as f64,
        end_s: range.end as f64 / SAMPLE_RATE_HZ as f64,
        text: text.text.clone(),
        language: text.language.clone(),
        emotion: text.emotion.clone(),
        event: text.event.clone(),
    }
}

/// Joins segment results in time order, as FunASR joins VAD segments (raw texts with " ").
fn merge(
    path: &Path,
    duration_s: f64,
    ranges: &[std::ops::Range<usize>],
    results: &[Option<SegmentText>],
) -> FileTranscript {
    let pairs: Vec<(&std::ops::Range<usize>, &SegmentText)> = ranges
        .iter()
        .zip(results)
        .filter_map(|(range, text)| text.as_ref().map(|text| (range, text)))
        .collect();
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
    FileTranscript {
        path: path.to_path_buf(),
        duration_s,
        language: first.language,
        emotion: first.emotion,
        event: first.event,
        text: join(|t| t.text.as_str()),
        raw_text: join(|t| t.raw_text.as_str()),
        segments: pairs.iter().map(|(r, t)| segment_from(r, t)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

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
                })
                .collect())
        }
        fn offload(&mut self) -> Result<(), String> {
            self.offloaded = true;
            Ok(())
        }
        fn restore(&mut self) -> Result<(), String> {
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

    fn run(requests: &[WorkerRequest], max_batch: usize) -> Vec<WorkerEvent> {
        let input: String = requests.iter().map(to_line).collect();
        let mut out = Vec::new();
        let loader = move |_: &Path, _: &WorkerDevice, _: Precision| {
            Ok(Box::new(FakeModel {
                max_batch,
                offloaded: false,
            }) as Box<dyn SpeechModel>)
        };
        let decoder = |path: &Path| {
            let secs: f64 = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not audio: {}", path.display()))?;
            Ok((vec![0.0; (secs * 16_000.0) as usize], None))
        };
        run_worker(
            Cursor::new(input.into_bytes()),
            &mut out,
            &loader,
            &decoder,
            false,
        );
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("event"))
            .collect()
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
        let Some(WorkerEvent::Done { transcript, .. }) = events.last() else {
            panic!("{events:?}");
        };
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
        let texts: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Done { transcript, .. } => Some(transcript.raw_text.clone()),
                _ => None,
            })
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
                kind: JobErrorKind::Model,
                ..
            }
        ));
    }

    #[test]
    fn a_clip_in_memory_is_transcribed_like_a_file_of_its_samples() {
        let clip = WorkerRequest::TranscribeSamples {
            job_id: 4,
            label: "live 1.0–1.5 s".into(),
            pcm: super::super::protocol::Pcm16::from_f32(&[0.25; 8000]),
            settings: DecodeSettings::default(),
            batch_budget_s: 30.0,
        };
        let events = run(&[load(), clip, WorkerRequest::Shutdown], 8);
        let Some(WorkerEvent::Done {
            job_id, transcript, ..
        }) = events.last()
        else {
            panic!("{events:?}");
        };
        assert_eq!(*job_id, 4);
        assert_eq!(transcript.text, "n8000");
        assert_eq!(transcript.path, Path::new("live 1.0–1.5 s"));
        assert!((transcript.duration_s - 0.5).abs() < 1e-9);
    }
}
