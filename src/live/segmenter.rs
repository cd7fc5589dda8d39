//! Voice activity → utterances: earshot's per-frame speech score, with an onset run, a hangover
//! and a pre-roll, turned into utterance boundaries on the stream's sample clock.
//!
//! Pure and synchronous: fed 16 kHz mono samples in chunks of any size, it returns the
//! boundaries found in them. It keeps no audio; [`super::session::LiveSession`] does.

use std::ops::Range;

/// Samples per VAD frame (earshot's fixed 16 ms at 16 kHz).
pub const FRAME_SAMPLES: usize = 256;

/// Samples per second of the stream.
const RATE: u64 = crate::audio::MODEL_SAMPLE_RATE_HZ as u64;

/// How utterances are cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmenterConfig {
    /// A frame whose earshot score reaches this is voiced (earshot suggests 0.5).
    pub threshold: f32,
    /// Voiced frames in a row that start an utterance (filters clicks).
    pub onset_frames: u32,
    /// Unvoiced frames in a row that end one (the hangover: pauses between words stay inside).
    pub hangover_frames: u32,
    /// Frames before the onset included in the utterance (soft consonants before the score rises).
    pub pre_roll_frames: u32,
    /// Longest utterance; one still going is cut here (SenseVoice's own segments are ≤30 s).
    pub max_utterance_frames: u32,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            onset_frames: 3,            // 48 ms
            hangover_frames: 20,        // 320 ms
            pre_roll_frames: 12,        // 192 ms
            max_utterance_frames: 1250, // 20 s
        }
    }
}

impl SegmenterConfig {
    /// The hangover in samples: how long after the last voiced frame an utterance ends.
    pub fn hangover_samples(&self) -> u64 {
        u64::from(self.hangover_frames) * FRAME_SAMPLES as u64
    }
}

/// A boundary, in samples from the stream's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// Speech began at this sample (pre-roll included).
    Started(u64),
    /// The utterance covering these samples is over (`forced`: cut at the length limit while
    /// speech went on; the next one starts at once).
    Ended {
        /// Its samples.
        range: Range<u64>,
        /// Cut at [`SegmenterConfig::max_utterance_frames`].
        forced: bool,
    },
}

enum State {
    Silence { voiced_run: u32 },
    Speech { start: u64, unvoiced_run: u32 },
}

/// The detector and its state.
pub struct Segmenter {
    config: SegmenterConfig,
    detector: Box<earshot::Detector>,
    /// Less than one frame, waiting for more.
    pending: Vec<f32>,
    /// Samples consumed into whole frames.
    position: u64,
    /// Where the last utterance ended: the next one's pre-roll does not reach back past it.
    last_end: u64,
    state: State,
}

impl Segmenter {
    /// A segmenter at sample 0.
    pub fn new(config: SegmenterConfig) -> Self {
        Self {
            config,
            detector: earshot::Detector::default_boxed(),
            pending: Vec::with_capacity(FRAME_SAMPLES),
            position: 0,
            last_end: 0,
            state: State::Silence { voiced_run: 0 },
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }

    /// Samples taken so far (whole frames and the pending part).
    pub fn samples_seen(&self) -> u64 {
        self.position + self.pending.len() as u64
    }

    /// Where the utterance in progress started, if one is.
    pub fn utterance_start(&self) -> Option<u64> {
        match self.state {
            State::Speech { start, .. } => Some(start),
            State::Silence { .. } => None,
        }
    }

    /// Feeds samples; appends the boundaries they complete to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<Boundary>) {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (FRAME_SAMPLES - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == FRAME_SAMPLES {
                // earshot wants [-1, 1]; a clipping device may go beyond.
                let mut frame = [0.0f32; FRAME_SAMPLES];
                for (dst, src) in frame.iter_mut().zip(&self.pending) {
                    *dst = src.clamp(-1.0, 1.0);
                }
                self.pending.clear();
                let voiced = self.detector.predict_f32(&frame) >= self.config.threshold;
                self.on_frame(voiced, out);
            }
        }
    }

    /// The stream ended: closes an utterance in progress (up to the last sample seen).
    pub fn finish(&mut self, out: &mut Vec<Boundary>) {
        if let State::Speech { start, .. } = self.state {
            let end = self.samples_seen();
            out.push(Boundary::Ended {
                range: start..end,
                forced: false,
            });
            self.last_end = end;
        }
        self.state = State::Silence { voiced_run: 0 };
    }

    fn on_frame(&mut self, voiced: bool, out: &mut Vec<Boundary>) {
        let frame = FRAME_SAMPLES as u64;
        let frame_start = self.position;
        self.position += frame;
        let config = self.config;
        match &mut self.state {
            State::Silence { voiced_run } => {
                if !voiced {
                    *voiced_run = 0;
                    return;
                }
                *voiced_run += 1;
                if *voiced_run >= config.onset_frames {
                    let onset = frame_start + frame - u64::from(*voiced_run) * frame;
                    let start = onset
                        .saturating_sub(u64::from(config.pre_roll_frames) * frame)
                        .max(self.last_end);
                    out.push(Boundary::Started(start));
                    self.state = State::Speech {
                        start,
                        unvoiced_run: 0,
                    };
                }
            }
            State::Speech {
                start,
                unvoiced_run,
            } => {
                let start = *start;
                if voiced {
                    *unvoiced_run = 0;
                } else {
                    *unvoiced_run += 1;
                }
                if *unvoiced_run >= config.hangover_frames {
                    out.push(Boundary::Ended {
                        range: start..self.position,
                        forced: false,
                    });
                    self.last_end = self.position;
                    self.state = State::Silence { voiced_run: 0 };
                } else if self.position - start >= u64::from(config.max_utterance_frames) * frame {
                    out.push(Boundary::Ended {
                        range: start..self.position,
                        forced: true,
                    });
                    out.push(Boundary::Started(self.position));
                    self.last_end = self.position;
                    self.state = State::Speech {
                        start: self.position,
                        unvoiced_run: 0,
                    };
                }
            }
        }
    }
}

/// Seconds of a sample position.
pub fn secs(sample: u64) -> f64 {
    sample as f64 / RATE as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boundaries(segmenter: &mut Segmenter, samples: &[f32], chunk: usize) -> Vec<Boundary> {
        let mut out = Vec::new();
        for piece in samples.chunks(chunk) {
            segmenter.push(piece, &mut out);
        }
        out
    }

    #[test]
    fn silence_gives_no_utterance_and_counts_samples() {
        let mut segmenter = Segmenter::new(SegmenterConfig::default());
        let out = boundaries(&mut segmenter, &vec![0.0; 16_000 * 3 + 100], 333);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(segmenter.samples_seen(), 16_000 * 3 + 100);
        let mut end = Vec::new();
        segmenter.finish(&mut end);
        assert!(end.is_empty());
    }

    #[test]
    fn chunking_does_not_change_the_boundaries() {
        let mut samples = vec![0.0f32; 16_000];
        samples.extend(speech_like(24_000));
        samples.extend(vec![0.0; 16_000]);
        let mut a = Segmenter::new(SegmenterConfig::default());
        let mut b = Segmenter::new(SegmenterConfig::default());
        assert_eq!(
            boundaries(&mut a, &samples, 160),
            boundaries(&mut b, &samples, 4096)
        );
    }

    /// A crude voiced sound: a 140 Hz pulse train through a few formant-ish sines, syllables
    /// of 200 ms with short gaps. Only for properties that do not depend on the score.
    fn speech_like(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let syllable = (t * 5.0).fract() < 0.8;
                let f0 = 140.0 * std::f32::consts::TAU * t;
                let v = f0.sin() * 0.3 + (f0 * 5.0).sin() * 0.2 + (f0 * 17.0).sin() * 0.1;
                if syllable { v * 0.8 } else { 0.0 }
            })
            .collect()
    }
}
