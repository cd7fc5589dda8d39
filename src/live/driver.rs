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
    kind: JobKind,
    audio_end_s: f64,
    clip_s: f64,
    sent: Instant,
}

/// A [`LiveSession`] driven through an [`EngineHandle`].
pub struct LiveDriver {
    session: LiveSession,
    settings: DecodeSettings,
    out: Option<Out>,
    timings: Vec<JobTiming>,
}

impl LiveDriver {
    /// A driver at the start of a stream.
    pub fn new(config: LiveConfig, settings: DecodeSettings) -> Self {
        Self {
            session: LiveSession::new(config),
            settings,
            out: None,
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

    /// Sends the next job if the engine has none of ours.
    pub fn pump(&mut self, engine: &EngineHandle) {
        if self.out.is_some() {
            return;
        }
        let Some(job) = self.session.next_job() else {
            return;
        };
        let label = job.label();
        let pcm = Pcm16::from_f32(&job.samples);
        let job_id = engine.transcribe_samples(label, pcm, self.settings.clone());
        self.out = Some(Out {
            job_id,
            kind: job.kind,
            audio_end_s: super::segmenter::secs(job.range.end),
            clip_s: job.samples.len() as f64 / 16_000.0,
            sent: Instant::now(),
        });
    }

    /// Routes an engine event: the live job's answer becomes a line.
    pub fn on_event(&mut self, event: &Event) -> Handled {
        let Some(out) = &self.out else {
            return Handled::NotLive;
        };
        let result = match event {
            Event::JobDone {
                job_id, transcript, ..
            } if *job_id == out.job_id => Ok(LiveText {
                text: transcript.text.clone(),
                raw_text: transcript.raw_text.clone(),
                language: transcript.language.clone(),
                emotion: transcript.emotion.clone(),
                event: transcript.event.clone(),
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
        self.timings.push(JobTiming {
            kind: out.kind,
            audio_end_s: out.audio_end_s,
            clip_s: out.clip_s,
            sent: out.sent,
            took: out.sent.elapsed(),
        });
        self.out = None;
        Handled::Live(self.session.on_result(result))
    }

    /// The job id of the clip out now, if any (the window ignores its events elsewhere).
    pub fn job_out(&self) -> Option<JobId> {
        self.out.as_ref().map(|o| o.job_id)
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
    let started = Instant::now();
    let job_id = engine.transcribe_samples(
        "live warm-up".to_owned(),
        Pcm16::from_f32(&[0.0; 8_000]),
        settings.clone(),
    );
    engine.send(Request::Recording(true));
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
