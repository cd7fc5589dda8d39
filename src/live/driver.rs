//! The live session on the engine: jobs go out as [`Request::TranscribeSamples`], their
//! `JobDone`/`JobFailed` events come back as caption lines. The owner of the engine handle
//! (the window's `logic()`, the `listen` loop) feeds events to [`LiveDriver::on_event`]; events
//! of other jobs pass through untouched.

use std::time::{Duration, Instant};

use crate::engine::{DecodeSettings, EngineHandle, Event, JobId, Pcm16, Request};

use super::session::{JobKind, LiveConfig, LiveSession, LiveStats, LiveText, LiveUpdate};

/// One job's timing, for the latency report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobTiming {
    /// Partial or final.
    pub kind: JobKind,
    /// The clip's end in the stream, seconds.
    pub audio_end_s: f64,
    /// Seconds of audio in the clip.
    pub clip_s: f64,
    /// When it was sent.
    pub sent: Instant,
    /// Sent to answered.
    pub took: Duration,
    /// The job's own time in the worker (its `JobDone`), ms; `None` for a failed job.
    pub worker_ms: Option<f64>,
}

/// Whether an engine event was the live job's.
#[derive(Debug, PartialEq)]
pub enum Handled {
    /// Not a live job: the caller handles it.
    NotLive,
    /// The live job's; maybe a line came of it.
    Live(Option<LiveUpdate>),
}

struct Out {
    job_id: JobId,
    /// The session's number for the job.
    id: u64,
    kind: JobKind,
    audio_end_s: f64,
    clip_s: f64,
    sent: Instant,
    /// Another job of ours was out when this one was sent: it waited in the engine's queue.
    behind: bool,
}

/// A [`LiveSession`] driven through an [`EngineHandle`].
pub struct LiveDriver {
    session: LiveSession,
    settings: DecodeSettings,
    /// Jobs out: at most a final and a partial whose utterance ended.
    out: Vec<Out>,
    timings: Vec<JobTiming>,
}

impl LiveDriver {
    /// A driver at the start of a stream.
    pub fn new(config: LiveConfig, settings: DecodeSettings) -> Self {
        Self {
            session: LiveSession::new(config),
            settings,
            out: Vec::new(),
            timings: Vec::new(),
        }
    }

    /// The session (counters, pending work).
    pub fn session(&self) -> &LiveSession {
        &self.session
    }

    /// Counters so far.
    pub fn stats(&self) -> LiveStats {
        self.session.stats()
    }

    /// Every answered job's timing, in order.
    pub fn timings(&self) -> &[JobTiming] {
        &self.timings
    }

    /// Takes 16 kHz samples.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<LiveUpdate>) {
        self.session.push(samples, out);
    }

    /// The stream ended.
    pub fn finish(&mut self, out: &mut Vec<LiveUpdate>) {
        self.session.finish(out);
    }

    /// True once finished and every utterance is answered.
    pub fn is_idle(&self) -> bool {
        self.session.is_idle()
    }

    /// Times the model on a few clips of silence (a forward costs the same whatever the audio
    /// says), so the first partials are timed by this machine's speed rather than a guess; it
    /// also leaves the worker's buffers sized for utterances. Run after [`warm_up`], before
    /// audio flows. Returns each clip's `(seconds of audio, seconds taken)`.
    pub fn calibrate(
        &mut self,
        engine: &EngineHandle,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Vec<(f64, f64)>, String> {
        let mut measured = Vec::new();
        for clip_s in CALIBRATION_CLIPS_S {
            let samples = vec![0.0; (clip_s * 16_000.0) as usize];
            let took = run_clip(
                engine,
                &self.settings,
                &samples,
                "live calibration",
                on_event,
            )?;
            self.session
                .observe_decode(samples.len(), took.as_secs_f64());
            measured.push((clip_s, took.as_secs_f64()));
        }
        Ok(measured)
    }

    /// True while a job of ours is out.
    pub fn is_busy(&self) -> bool {
        !self.out.is_empty()
    }

    /// Sends what the session has to send now: a due partial when nothing is out, a final also
    /// while a stale partial is still running (the engine puts it first in line).
    pub fn pump(&mut self, engine: &EngineHandle) {
        while let Some(job) = self.session.next_job() {
            let label = job.label();
            let pcm = Pcm16::from_f32(&job.samples);
            let job_id = engine.transcribe_samples(label, pcm, self.settings.clone());
            let behind = !self.out.is_empty();
            self.out.push(Out {
                job_id,
                id: job.id,
                kind: job.kind,
                audio_end_s: super::segmenter::secs(job.range.end),
                clip_s: job.samples.len() as f64 / 16_000.0,
                sent: Instant::now(),
                behind,
            });
        }
    }

    /// Routes an engine event: the live job's answer becomes a line.
    pub fn on_event(&mut self, event: &Event) -> Handled {
        let ours = |id: &JobId| self.out.iter().position(|o| o.job_id == *id);
        let at = match event {
            Event::JobDone { job_id, .. }
            | Event::JobFailed { job_id, .. }
            | Event::JobStarted { job_id, .. }
            | Event::JobDecoded { job_id, .. }
            | Event::JobProgress { job_id, .. } => ours(job_id),
            _ => None,
        };
        let Some(at) = at else {
            return Handled::NotLive;
        };
        let out = &self.out[at];
        let mut worker_ms = None;
        let result = match event {
            Event::JobDone {
                job_id,
                transcript,
                ms,
            } if *job_id == out.job_id => Ok({
                worker_ms = Some(*ms);
                LiveText {
                    text: transcript.text.clone(),
                    raw_text: transcript.raw_text.clone(),
                    language: transcript.language.clone(),
                    emotion: transcript.emotion.clone(),
                    event: transcript.event.clone(),
                }
            }),
            Event::JobFailed {
                job_id, message, ..
            } if *job_id == out.job_id => Err(message.clone()),
            Event::JobStarted { job_id, .. }
            | Event::JobDecoded { job_id, .. }
            | Event::JobProgress { job_id, .. }
                if *job_id == out.job_id =>
            {
                return Handled::Live(None);
            }
            _ => return Handled::NotLive,
        };
        let out = self.out.remove(at);
        let took = out.sent.elapsed();
        self.timings.push(JobTiming {
            kind: out.kind,
            audio_end_s: out.audio_end_s,
            clip_s: out.clip_s,
            sent: out.sent,
            took,
            worker_ms,
        });
        // A job that waited for another (a final behind a stale partial) says nothing of the
        // model's speed by its round trip; the worker's own time does.
        let took_s = match worker_ms {
            Some(ms) if out.behind => ms / 1000.0,
            _ => took.as_secs_f64(),
        };
        if result.is_ok() {
            self.session
                .observe_decode((out.clip_s * 16_000.0).round() as usize, took_s);
        }
        Handled::Live(self.session.on_result(out.id, result))
    }

    /// The job ids of the clips out now (the window ignores their events elsewhere).
    pub fn jobs_out(&self) -> Vec<JobId> {
        self.out.iter().map(|o| o.job_id).collect()
    }
}

/// Loads the model before audio flows, with a short silent clip, so the first utterance does
/// not wait for a cold load. Returns the load's wall time, or the engine's message.
/// `on_event` sees every other event meanwhile (notices of a fallback device, …).
pub fn warm_up(
    engine: &EngineHandle,
    settings: &DecodeSettings,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Duration, String> {
    engine.send(Request::Recording(true));
    run_clip(engine, settings, &[0.0; 8_000], "live warm-up", on_event)
}

/// Clip lengths [`LiveDriver::calibrate`] times, seconds: a short and a longer utterance.
const CALIBRATION_CLIPS_S: [f64; 3] = [1.0, 4.0, 1.0];

/// Transcribes one clip and waits for it (600 s at most); its wall time, or the engine's message.
fn run_clip(
    engine: &EngineHandle,
    settings: &DecodeSettings,
    samples: &[f32],
    label: &str,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Duration, String> {
    let started = Instant::now();
    let job_id =
        engine.transcribe_samples(label.to_owned(), Pcm16::from_f32(samples), settings.clone());
    loop {
        let Some(event) = engine.recv_timeout(Duration::from_secs(600)) else {
            return Err("the engine did not answer within 600 s".to_owned());
        };
        match event {
            Event::JobDone { job_id: id, .. } if id == job_id => return Ok(started.elapsed()),
            Event::JobFailed {
                job_id: id,
                message,
                ..
            } if id == job_id => return Err(message),
            other => on_event(&other),
        }
    }
}
