//! The live pipeline's core: audio in, transcription jobs out, results in, caption lines out.
//!
//! [`LiveSession`] is a pure state machine with no threads, no clock and no engine: the caller
//! pushes 16 kHz samples, asks for the next job when the model is free, and hands back each
//! job's text. Time is the stream's own sample clock, so a WAV fed as fast as it can go behaves
//! like the same WAV spoken at real time, only with fewer partials.
//!
//! Policy:
//! - finished utterances first, in order, one at a time; a final never waits for the answer to
//!   a partial whose utterance has ended meanwhile (that answer is dropped), it goes out at once;
//! - otherwise, with nothing out, a partial of the utterance in progress, timed so that its line
//!   arrives [`LiveConfig::partial_interval_s`] after the utterance's last line (or its start):
//!   sent when the stream position plus its expected decode time reaches that;
//! - the decode time is learned from the answers ([`DecodeCost`]); a partial decodes at most
//!   the newest audio that fits [`LiveConfig::partial_budget_s`], and none is sent when its
//!   decode could push the utterance's final past [`LiveConfig::final_target_s`] (the final is
//!   due a hangover after the last voiced frame, and a running decode cannot be stopped);
//! - with [`LiveConfig::lockstep`] (a file fed as fast as it can go, the stream waiting for
//!   every answer) decoding takes no stream time, so the lines come on the audio's own clock;
//! - a partial never waits in a queue: it is cut from the newest audio when the model is free,
//!   so partials that would have been due meanwhile are skipped (counted), never queued;
//! - finished utterances wait in a bounded queue; past [`LiveConfig::max_pending_finals`] the
//!   oldest is dropped and reported as [`LiveUpdate::Skipped`] (the recording on disk keeps it).

use std::collections::VecDeque;
use std::ops::Range;

use serde::Serialize;

use super::cost::DecodeCost;
use super::segmenter::{Boundary, FRAME_SAMPLES, Segmenter, SegmenterConfig, secs};

/// Samples per second of the stream.
const RATE: f64 = crate::audio::MODEL_SAMPLE_RATE_HZ as f64;

/// How the live pipeline cuts and schedules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiveConfig {
    /// Utterance cutting.
    pub segmenter: SegmenterConfig,
    /// Aimed time between two lines of the utterance being spoken (its start, its partials),
    /// seconds; the goal is at most 1 s.
    pub partial_interval_s: f64,
    /// New audio a partial needs beyond the last one's, seconds.
    pub partial_min_new_s: f64,
    /// Longest a partial's decode is expected to take, seconds: a longer utterance's partial
    /// decodes only its newest audio that fits.
    pub partial_budget_s: f64,
    /// A partial's clip is never cut shorter than this (seconds); if even that does not fit the
    /// budget, no partial is sent.
    pub partial_min_clip_s: f64,
    /// Aimed time from an utterance's end (the voice detector's) to its final line, seconds: no
    /// partial is sent whose expected decode, run when the utterance may end, and then the
    /// final's would exceed it.
    pub final_target_s: f64,
    /// Decode time before the first answer: `(fixed seconds, seconds per second of audio)`.
    pub cost_prior: (f64, f64),
    /// The stream waits for every answer (a file fed as fast as it can go): decoding takes no
    /// stream time.
    pub lockstep: bool,
    /// Finished utterances waiting for the model before the oldest is dropped.
    pub max_pending_finals: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            segmenter: SegmenterConfig::default(),
            partial_interval_s: 0.8,
            partial_min_new_s: 0.25,
            partial_budget_s: 0.9,
            partial_min_clip_s: 1.0,
            final_target_s: 1.5,
            // A 2-core CPU with the release-size model, a little pessimistic.
            cost_prior: (0.3, 0.1),
            lockstep: false,
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
    /// The job's number in the session (answers name it: [`LiveSession::on_result`]).
    pub id: u64,
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
    /// Partials cut to the newest audio because all of it would not fit the decode budget.
    pub partials_windowed: u64,
    /// Times a partial was due but held back, because its decode could have delayed a final.
    pub partials_held: u64,
    /// Finals sent while a partial whose utterance had ended was still out.
    pub finals_past_stale_partial: u64,
}

struct Current {
    utterance: u64,
    start: u64,
    /// Where the last partial (or the start) ended.
    last_partial_end: u64,
    /// The stream position when its last line was shown (or its start).
    last_shown: u64,
    /// A partial was held back since the last one went out (counted once).
    held: bool,
}

struct InFlight {
    id: u64,
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
    /// At most a final and a stale partial.
    in_flight: Vec<InFlight>,
    next_utterance: u64,
    next_job: u64,
    cost: DecodeCost,
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
            in_flight: Vec::new(),
            next_utterance: 0,
            next_job: 0,
            cost: DecodeCost::new(config.cost_prior.0, config.cost_prior.1),
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
        !self.in_flight.is_empty()
    }

    /// True when nothing is in progress, queued or out (after [`finish`](Self::finish): done).
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.finished.is_empty() && self.current.is_none()
    }

    /// The configuration.
    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// The decode-time estimate.
    pub fn cost(&self) -> &DecodeCost {
        &self.cost
    }

    /// A job of `clip_samples` samples took `took_s` seconds from sent to answered.
    pub fn observe_decode(&mut self, clip_samples: usize, took_s: f64) {
        self.cost.observe(clip_samples as f64 / RATE, took_s);
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

    /// The next job: the oldest finished utterance (also while only a stale partial is out),
    /// else, with nothing out, a partial that is due (see the module docs).
    pub fn next_job(&mut self) -> Option<LiveJob> {
        if self.in_flight.iter().any(|j| j.kind == JobKind::Final) {
            return None;
        }
        if !self.finished.is_empty() {
            let current = self.current.as_ref().map(|c| c.utterance);
            // A partial out now is of an utterance that has ended (none is sent while finals
            // wait): its answer will be dropped, so the final does not wait for it.
            if self.in_flight.iter().any(|j| Some(j.utterance) == current) {
                return None;
            }
            let done = self.finished.pop_front()?;
            if !self.in_flight.is_empty() {
                self.stats.finals_past_stale_partial += 1;
            }
            return Some(self.send(JobKind::Final, done.utterance, done.range, done.samples));
        }
        if !self.in_flight.is_empty() {
            return None;
        }
        let range = self.due_partial()?;
        let interval = self.partial_interval();
        let current = self.current.as_mut()?;
        // Every interval that passed beyond the first since the last partial is a skipped one.
        let grown = range.end.saturating_sub(current.last_partial_end);
        self.stats.partials_skipped += (grown / interval).saturating_sub(1);
        self.stats.partials_sent += 1;
        current.last_partial_end = range.end;
        current.held = false;
        let utterance = current.utterance;
        let samples = self.slice(&range).to_vec();
        Some(self.send(JobKind::Partial, utterance, range, samples))
    }

    /// The stretch a partial would decode now, if one is due.
    fn due_partial(&mut self) -> Option<Range<u64>> {
        let config = self.config;
        let now = self.segmenter.samples_seen();
        let current = self.current.as_mut()?;
        let min_new = (config.partial_min_new_s * RATE) as u64;
        if now.saturating_sub(current.last_partial_end) < min_new.max(1) {
            return None;
        }
        let aimed = current.last_shown + (config.partial_interval_s * RATE) as u64;
        if config.lockstep {
            // No stream time passes while the model works: due on the audio's clock.
            return (now >= aimed).then_some(current.start..now);
        }
        let whole_s = secs(now - current.start);
        // The final may be due a hangover after the last voiced frame; a partial started now
        // must be done in time for the final's own decode to land within the target.
        let hangover_left = secs(
            config
                .segmenter
                .hangover_samples()
                .saturating_sub(self.segmenter.unvoiced_samples()),
        );
        let final_s = self.cost.seconds(whole_s + hangover_left);
        let wait_allowed = (config.final_target_s - final_s).max(0.0);
        let budget = config.partial_budget_s.min(hangover_left + wait_allowed);
        let clip_s = whole_s.min(self.cost.longest_within(budget));
        if clip_s < whole_s.min(config.partial_min_clip_s) {
            if !current.held && now + (self.cost.seconds(whole_s) * RATE) as u64 >= aimed {
                current.held = true;
                self.stats.partials_held += 1;
            }
            return None;
        }
        let expected = (self.cost.seconds(clip_s) * RATE) as u64;
        if now + expected < aimed {
            return None;
        }
        if clip_s < whole_s {
            self.stats.partials_windowed += 1;
        }
        let from = now - ((clip_s * RATE) as u64).min(now - current.start);
        Some(from..now)
    }

    fn send(
        &mut self,
        kind: JobKind,
        utterance: u64,
        range: Range<u64>,
        samples: Vec<f32>,
    ) -> LiveJob {
        let id = self.next_job;
        self.next_job += 1;
        self.in_flight.push(InFlight {
            id,
            kind,
            utterance,
            range: range.clone(),
        });
        LiveJob {
            id,
            kind,
            utterance,
            range,
            samples,
        }
    }

    /// Job `id` was answered: its caption line, or nothing for a stale or failed partial (or
    /// an id that is not out).
    pub fn on_result(&mut self, id: u64, result: Result<LiveText, String>) -> Option<LiveUpdate> {
        let at = self.in_flight.iter().position(|j| j.id == id)?;
        let job = self.in_flight.remove(at);
        let (start, end) = (secs(job.range.start), secs(job.range.end));
        if job.kind == JobKind::Partial {
            let now = self.segmenter.samples_seen();
            match self.current.as_mut() {
                Some(current) if current.utterance == job.utterance => {
                    if result.is_ok() {
                        current.last_shown = now;
                    }
                }
                _ => {
                    // The utterance ended while this ran; its final line is coming.
                    self.stats.partials_stale += 1;
                    return None;
                }
            }
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
                        last_shown: start,
                        held: false,
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
