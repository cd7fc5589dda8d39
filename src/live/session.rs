//! The live pipeline's core: audio in, transcription jobs out, results in, caption lines out.
//!
//! [`LiveSession`] is a pure state machine with no threads, no clock and no engine: the caller
//! pushes 16 kHz samples, asks for the next job when the model is free, and hands back each
//! job's text. Time is the stream's own sample clock, so a WAV fed as fast as it can go behaves
//! like the same WAV spoken at real time, only with fewer partials.
//!
//! Policy:
//! - one job in flight at a time (the worker runs one anyway); finished utterances first, in
//!   order; then, if the utterance in progress has grown by at least
//!   [`LiveConfig::partial_interval_s`] since its last partial, one partial of all of it so far;
//! - a partial never waits in a queue: it is cut from the newest audio when the model is free,
//!   so partials that would have been due meanwhile are skipped (counted), never queued;
//! - finished utterances wait in a bounded queue; past [`LiveConfig::max_pending_finals`] the
//!   oldest is dropped and reported as [`LiveUpdate::Skipped`] (the recording on disk keeps it).

use std::collections::VecDeque;
use std::ops::Range;

use serde::Serialize;

use super::segmenter::{Boundary, FRAME_SAMPLES, Segmenter, SegmenterConfig, secs};

/// Samples per second of the stream.
const RATE: f64 = crate::audio::MODEL_SAMPLE_RATE_HZ as f64;

/// How the live pipeline cuts and schedules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiveConfig {
    /// Utterance cutting.
    pub segmenter: SegmenterConfig,
    /// Audio an utterance must grow by between two partials, in seconds.
    pub partial_interval_s: f64,
    /// Finished utterances waiting for the model before the oldest is dropped.
    pub max_pending_finals: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            segmenter: SegmenterConfig::default(),
            partial_interval_s: 0.8,
            max_pending_finals: 32,
        }
    }
}

/// Whether a job is a finished utterance or the one in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// The utterance in progress, so far.
    Partial,
    /// A finished utterance.
    Final,
}

/// Audio to transcribe.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveJob {
    /// Partial or final.
    pub kind: JobKind,
    /// The utterance's number (0, 1, … in the stream).
    pub utterance: u64,
    /// Its samples' positions in the stream.
    pub range: Range<u64>,
    /// The samples (16 kHz mono).
    pub samples: Vec<f32>,
}

impl LiveJob {
    /// "live audio 3.20–5.10 s", for messages.
    pub fn label(&self) -> String {
        format!(
            "live audio {:.2}–{:.2} s",
            secs(self.range.start),
            secs(self.range.end)
        )
    }
}

/// A job's result from the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveText {
    /// Text without tags.
    pub text: String,
    /// FunASR's text with tags.
    pub raw_text: String,
    /// Language tag.
    pub language: String,
    /// Emotion tag.
    pub emotion: String,
    /// Audio-event tag.
    pub event: String,
}

/// One caption line (also the `listen --json` line).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveLine {
    /// The utterance's number; a partial is replaced by the next line with the same number.
    pub utterance: u64,
    /// Start, seconds from the start of the stream.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text without tags.
    pub text: String,
    /// True for the utterance still being spoken.
    pub partial: bool,
    /// Language tag.
    pub language: String,
    /// Emotion tag.
    pub emotion: String,
    /// Audio-event tag.
    pub event: String,
    /// FunASR's text with tags.
    pub raw_text: String,
}

/// What the session tells its owner.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveUpdate {
    /// A caption line, partial or final.
    Line(LiveLine),
    /// An utterance's transcription failed.
    Failed {
        /// The utterance.
        utterance: u64,
        /// Its start, seconds.
        start: f64,
        /// Its end, seconds.
        end: f64,
        /// Why.
        message: String,
    },
    /// A finished utterance was dropped because the model fell too far behind.
    Skipped {
        /// The utterance.
        utterance: u64,
        /// Its start, seconds.
        start: f64,
        /// Its end, seconds.
        end: f64,
    },
}

/// Counters for the report and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Utterances found.
    pub utterances: u64,
    /// Partial jobs handed out.
    pub partials_sent: u64,
    /// Partials that came due while the model was busy and were never sent.
    pub partials_skipped: u64,
    /// Partial results thrown away because their utterance had ended meanwhile.
    pub partials_stale: u64,
    /// Finished utterances dropped from a full queue.
    pub finals_skipped: u64,
}

struct Current {
    utterance: u64,
    start: u64,
    /// Where the last partial (or the start) ended.
    last_partial_end: u64,
}

struct InFlight {
    kind: JobKind,
    utterance: u64,
    range: Range<u64>,
}

struct Finished {
    utterance: u64,
    range: Range<u64>,
    samples: Vec<f32>,
}

/// The live pipeline's state (see the module docs).
pub struct LiveSession {
    config: LiveConfig,
    segmenter: Segmenter,
    /// Audio from `buffer_start` on: the utterance in progress, or the pre-roll while silent.
    buffer: Vec<f32>,
    buffer_start: u64,
    current: Option<Current>,
    finished: VecDeque<Finished>,
    in_flight: Option<InFlight>,
    next_utterance: u64,
    stats: LiveStats,
    boundaries: Vec<Boundary>,
}

impl LiveSession {
    /// A session at the start of a stream.
    pub fn new(config: LiveConfig) -> Self {
        Self {
            config,
            segmenter: Segmenter::new(config.segmenter),
            buffer: Vec::new(),
            buffer_start: 0,
            current: None,
            finished: VecDeque::new(),
            in_flight: None,
            next_utterance: 0,
            stats: LiveStats::default(),
            boundaries: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LiveStats {
        self.stats
    }

    /// Seconds of audio taken so far.
    pub fn audio_s(&self) -> f64 {
        secs(self.segmenter.samples_seen())
    }

    /// Finished utterances waiting for the model.
    pub fn pending_finals(&self) -> usize {
        self.finished.len()
    }

    /// True while a job is out.
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// True when nothing is in progress, queued or out (after [`finish`](Self::finish): done).
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.finished.is_empty() && self.current.is_none()
    }

    /// Takes 16 kHz mono samples; appends what they caused (dropped utterances) to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<LiveUpdate>) {
        self.buffer.extend_from_slice(samples);
        let mut boundaries = std::mem::take(&mut self.boundaries);
        self.segmenter.push(samples, &mut boundaries);
        self.apply(&mut boundaries, out);
        self.boundaries = boundaries;
        self.trim();
    }

    /// The stream ended: the utterance in progress is finished as it is.
    pub fn finish(&mut self, out: &mut Vec<LiveUpdate>) {
        let mut boundaries = std::mem::take(&mut self.boundaries);
        self.segmenter.finish(&mut boundaries);
        self.apply(&mut boundaries, out);
        self.boundaries = boundaries;
        self.trim();
    }

    /// The next job, when none is out: the oldest finished utterance, else a due partial.
    pub fn next_job(&mut self) -> Option<LiveJob> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(done) = self.finished.pop_front() {
            self.in_flight = Some(InFlight {
                kind: JobKind::Final,
                utterance: done.utterance,
                range: done.range.clone(),
            });
            return Some(LiveJob {
                kind: JobKind::Final,
                utterance: done.utterance,
                range: done.range,
                samples: done.samples,
            });
        }
        let interval = self.partial_interval();
        let end = self.segmenter.samples_seen();
        let current = self.current.as_mut()?;
        let grown = end.saturating_sub(current.last_partial_end);
        if grown < interval {
            return None;
        }
        // Every interval that passed beyond the first while the model was busy is a skipped partial.
        self.stats.partials_skipped += grown / interval - 1;
        self.stats.partials_sent += 1;
        current.last_partial_end = end;
        let range = current.start..end;
        let utterance = current.utterance;
        let samples = self.slice(&range).to_vec();
        self.in_flight = Some(InFlight {
            kind: JobKind::Partial,
            utterance,
            range: range.clone(),
        });
        Some(LiveJob {
            kind: JobKind::Partial,
            utterance,
            range,
            samples,
        })
    }

    /// The job that was out finished: its caption line, or nothing for a stale partial.
    pub fn on_result(&mut self, result: Result<LiveText, String>) -> Option<LiveUpdate> {
        let job = self.in_flight.take()?;
        let (start, end) = (secs(job.range.start), secs(job.range.end));
        if job.kind == JobKind::Partial
            && self.current.as_ref().map(|c| c.utterance) != Some(job.utterance)
        {
            // The utterance ended while this ran; its final line is coming.
            self.stats.partials_stale += 1;
            return None;
        }
        match result {
            Ok(text) => Some(LiveUpdate::Line(LiveLine {
                utterance: job.utterance,
                start,
                end,
                text: text.text,
                partial: job.kind == JobKind::Partial,
                language: text.language,
                emotion: text.emotion,
                event: text.event,
                raw_text: text.raw_text,
            })),
            Err(message) if job.kind == JobKind::Final => Some(LiveUpdate::Failed {
                utterance: job.utterance,
                start,
                end,
                message,
            }),
            Err(message) => {
                tracing::warn!("a live partial failed: {message}");
                None
            }
        }
    }

    /// [`LiveConfig::partial_interval_s`] in samples.
    fn partial_interval(&self) -> u64 {
        (self.config.partial_interval_s * RATE).round().max(1.0) as u64
    }

    fn slice(&self, range: &Range<u64>) -> &[f32] {
        let from = (range.start.saturating_sub(self.buffer_start) as usize).min(self.buffer.len());
        let to = (range.end.saturating_sub(self.buffer_start) as usize).min(self.buffer.len());
        &self.buffer[from..to.max(from)]
    }

    fn apply(&mut self, boundaries: &mut Vec<Boundary>, out: &mut Vec<LiveUpdate>) {
        for boundary in boundaries.drain(..) {
            match boundary {
                Boundary::Started(start) => {
                    self.current = Some(Current {
                        utterance: self.next_utterance,
                        start,
                        last_partial_end: start,
                    });
                    self.next_utterance += 1;
                    self.stats.utterances += 1;
                }
                Boundary::Ended { range, .. } => {
                    let Some(current) = self.current.take() else {
                        continue;
                    };
                    // Partials that came due while the model was busy and can no longer be sent.
                    let interval = self.partial_interval();
                    self.stats.partials_skipped +=
                        range.end.saturating_sub(current.last_partial_end) / interval;
                    let samples = self.slice(&range).to_vec();
                    self.finished.push_back(Finished {
                        utterance: current.utterance,
                        range,
                        samples,
                    });
                    if self.finished.len() > self.config.max_pending_finals
                        && let Some(dropped) = self.finished.pop_front()
                    {
                        self.stats.finals_skipped += 1;
                        out.push(LiveUpdate::Skipped {
                            utterance: dropped.utterance,
                            start: secs(dropped.range.start),
                            end: secs(dropped.range.end),
                        });
                    }
                }
            }
        }
    }

    /// Drops audio no utterance can still need: while silent, all but the pre-roll.
    fn trim(&mut self) {
        let keep_from = match &self.current {
            Some(current) => current.start,
            None => {
                let config = self.segmenter.config();
                let frames = u64::from(config.pre_roll_frames + config.onset_frames + 2);
                self.segmenter
                    .samples_seen()
                    .saturating_sub(frames * FRAME_SAMPLES as u64)
            }
        };
        if keep_from > self.buffer_start {
            let cut = ((keep_from - self.buffer_start) as usize).min(self.buffer.len());
            self.buffer.drain(..cut);
            self.buffer_start += cut as u64;
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
