//! Voice activity → utterances: earshot's per-frame speech score, with an onset run, a hangover
//! and a pre-roll, turned into utterance boundaries on the stream's sample clock.
//!
//! Pure and synchronous: fed 16 kHz mono samples in chunks of any size, it returns the
//! boundaries found in them. It keeps no audio; [`super::session::LiveSession`] does.

use std::collections::VecDeque;
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
    /// From this length on, a pause of [`cut_pause_frames`](Self::cut_pause_frames) ends the
    /// utterance in the pause's middle (a final then never has to decode a very long clip).
    pub soft_max_frames: u32,
    /// Unvoiced frames in a row that end an utterance past the soft limit.
    pub cut_pause_frames: u32,
    /// Longest utterance: one still going is cut at the quietest frame of the last
    /// [`cut_search_frames`](Self::cut_search_frames) (SenseVoice's own segments are ≤30 s).
    pub max_utterance_frames: u32,
    /// How far back from the length limit the quietest frame is looked for.
    pub cut_search_frames: u32,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            onset_frames: 3,           // 48 ms
            hangover_frames: 20,       // 320 ms
            pre_roll_frames: 12,       // 192 ms
            soft_max_frames: 500,      // 8 s
            cut_pause_frames: 5,       // 80 ms
            max_utterance_frames: 750, // 12 s
            cut_search_frames: 62,     // ~1 s
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
    /// The utterance covering these samples is over (`forced`: cut for its length while speech
    /// went on, in a short pause or at the quietest frame before the limit; after a cut at the
    /// limit the next one starts at the cut).
    Ended {
        /// Its samples.
        range: Range<u64>,
        /// Cut for its length ([`SegmenterConfig::soft_max_frames`],
        /// [`SegmenterConfig::max_utterance_frames`]).
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
    /// Mean square of the last [`SegmenterConfig::cut_search_frames`] frames, newest last.
    energies: VecDeque<f32>,
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
            energies: VecDeque::with_capacity(config.cut_search_frames as usize + 1),
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

    /// Unvoiced samples at the end of the utterance in progress (0 while voiced or silent): the
    /// utterance ends once this reaches the hangover.
    pub fn unvoiced_samples(&self) -> u64 {
        match self.state {
            State::Speech { unvoiced_run, .. } => u64::from(unvoiced_run) * FRAME_SAMPLES as u64,
            State::Silence { .. } => 0,
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
                let energy = frame.iter().map(|v| v * v).sum::<f32>() / FRAME_SAMPLES as f32;
                if self.energies.len() >= self.config.cut_search_frames.max(1) as usize {
                    self.energies.pop_front();
                }
                self.energies.push_back(energy);
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
                let unvoiced = *unvoiced_run;
                let length = self.position - start;
                if unvoiced >= config.hangover_frames {
                    out.push(Boundary::Ended {
                        range: start..self.position,
                        forced: false,
                    });
                    self.last_end = self.position;
                    self.state = State::Silence { voiced_run: 0 };
                } else if length >= u64::from(config.soft_max_frames) * frame
                    && unvoiced >= config.cut_pause_frames.max(1)
                {
                    // A short pause past the soft limit: cut in its middle.
                    let cut = self.position - u64::from(unvoiced / 2) * frame;
                    self.cut(start, cut, unvoiced, out);
                } else if length >= u64::from(config.max_utterance_frames) * frame {
                    let cut = self.quietest_cut(start);
                    self.cut(start, cut, unvoiced, out);
                }
            }
        }
    }

    /// Ends the utterance `start..cut` for its length; what follows the cut is the next
    /// utterance, or silence if none of it is voiced.
    fn cut(&mut self, start: u64, cut: u64, unvoiced_run: u32, out: &mut Vec<Boundary>) {
        out.push(Boundary::Ended {
            range: start..cut,
            forced: true,
        });
        self.last_end = cut;
        let frames_after = (self.position - cut) / FRAME_SAMPLES as u64;
        if u64::from(unvoiced_run) >= frames_after {
            self.state = State::Silence { voiced_run: 0 };
        } else {
            out.push(Boundary::Started(cut));
            self.state = State::Speech {
                start: cut,
                unvoiced_run,
            };
        }
    }

    /// The start of the quietest frame (mean square over it and its neighbours) among the last
    /// [`SegmenterConfig::cut_search_frames`], after the utterance's first frame; the latest of
    /// equals.
    fn quietest_cut(&self, start: u64) -> u64 {
        let frame = FRAME_SAMPLES as u64;
        let n = self.energies.len();
        // Frames of this utterance in the window, its first frame excluded (the cut must leave
        // something before it).
        let in_utterance = ((self.position - start) / frame).saturating_sub(1) as usize;
        let from = n - n.min(in_utterance);
        let mut best: Option<(f32, usize)> = None;
        for i in from..n {
            let lo = i.saturating_sub(1).max(from);
            let hi = (i + 1).min(n - 1);
            let around = (lo..=hi).map(|j| self.energies[j]).sum::<f32>() / (hi - lo + 1) as f32;
            if best.is_none_or(|(quietest, _)| around <= quietest) {
                best = Some((around, i));
            }
        }
        match best {
            // Frame i of the window starts (n - i) frames before the current position.
            Some((_, i)) => self.position - (n - i) as u64 * frame,
            None => self.position,
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

    #[test]
    fn the_length_cut_takes_the_quietest_frame_of_the_search_window() {
        let config = SegmenterConfig {
            max_utterance_frames: 100,
            cut_search_frames: 62,
            ..SegmenterConfig::default()
        };
        let mut segmenter = Segmenter::new(config);
        // 100 loud frames with a quiet dip over frames 70–72, and a quieter single frame at 20
        // (outside the window) and a less quiet one at 90.
        let mut samples = Vec::new();
        for frame in 0..100 {
            let amplitude = match frame {
                20 => 0.0,
                70..=72 => 0.01,
                90 => 0.05,
                _ => 0.5,
            };
            samples.extend((0..FRAME_SAMPLES).map(|i| amplitude * ((i as f32) * 0.3).sin()));
        }
        let mut out = Vec::new();
        segmenter.push(&samples, &mut out);
        assert_eq!(segmenter.quietest_cut(0), 71 * FRAME_SAMPLES as u64);
        // The window never reaches before the utterance's second frame.
        assert_eq!(
            segmenter.quietest_cut(99 * FRAME_SAMPLES as u64),
            segmenter.position
        );
    }

    #[test]
    fn long_speech_is_cut_for_length_in_a_pause_or_before_the_limit() {
        // The three spoken fixtures back to back, without the silence between them.
        let mut samples = Vec::new();
        for name in ["en_short", "zh_mid", "ja_long"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/sensevoice/audio")
                .join(format!("{name}.wav"));
            let audio = crate::audio::decode_file(&path, &mut |_| {}).expect("fixture decodes");
            samples.extend(audio.samples);
        }
        let config = SegmenterConfig {
            soft_max_frames: 94,       // 1.5 s
            max_utterance_frames: 157, // 2.5 s
            ..SegmenterConfig::default()
        };
        let mut segmenter = Segmenter::new(config);
        let mut out = boundaries(&mut segmenter, &samples, 160);
        segmenter.finish(&mut out);
        let frame = FRAME_SAMPLES as u64;
        let ended: Vec<(Range<u64>, bool)> = out
            .iter()
            .filter_map(|b| match b {
                Boundary::Ended { range, forced } => Some((range.clone(), *forced)),
                Boundary::Started(_) => None,
            })
            .collect();
        assert!(ended.iter().any(|(_, forced)| *forced), "{out:?}");
        for (range, forced) in &ended {
            assert!(range.end - range.start <= 157 * frame, "{range:?}");
            if *forced {
                // Past the soft limit in a pause, or in the last second before the hard one.
                assert!(
                    range.end - range.start >= 94 * frame - 10 * frame,
                    "{range:?}"
                );
            }
        }
        // Starts and ends alternate, in order, without overlap.
        let mut open = None;
        let mut last_end = 0;
        for boundary in &out {
            match boundary {
                Boundary::Started(at) => {
                    assert!(open.is_none() && *at >= last_end, "{out:?}");
                    open = Some(*at);
                }
                Boundary::Ended { range, .. } => {
                    assert_eq!(open.take(), Some(range.start), "{out:?}");
                    last_end = range.end;
                }
            }
        }
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
