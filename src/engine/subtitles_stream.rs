//! Subtitle cues built as a transcript's results come in, with exactly the cues
//! [`transcript_cues`](super::subtitles::transcript_cues) makes of the whole transcript.
//!
//! Cues of words before a *safe* word are final once that word is known: a word that starts a
//! phrase (after a sentence end or a pause) whose first cue lasts at least the minimum, and where
//! the cues of the words so far do not join across it. Short cues are only ever joined to a
//! neighbour (or held longer) across such a boundary when one side is short, so the cues before
//! it do not depend on any word after it but its start time. What is held is the words since the
//! last safe word: speech with pauses or sentences lets go of them every few seconds; a stream
//! of words without either (a model that emits a token every frame) is held until the end.
//!
//! A transcript without any token times gets its cues from its segments' text
//! ([`segment_cues`]): those segments are held until the first token comes, or the end.

use super::subtitles::{
    Cue, CueRules, WordBuilder, build_cues_within, cue_ranges, ends_sentence, is_long, segment_cues,
};
use super::transcript::{Segment, SegmentResult};

/// Words added between two looks for a safe word (each look goes over the words held).
const LOOK_EVERY: usize = 32;

/// Cues of a transcript built from its results in time order.
#[derive(Clone, Debug)]
pub struct CueStream {
    rules: CueRules,
    words: WordBuilder,
    /// Where the cues given out so far end (no later cue starts before it).
    floor_s: f64,
    /// Words held at the last look.
    looked_at: usize,
    any_tokens: bool,
    /// The segments, while no result had tokens.
    segments: Vec<Segment>,
}

impl CueStream {
    /// A stream of cues cut by `rules`.
    pub fn new(rules: CueRules) -> Self {
        Self {
            rules,
            words: WordBuilder::default(),
            floor_s: 0.0,
            looked_at: 0,
            any_tokens: false,
            segments: Vec::new(),
        }
    }

    /// Words held now (not in a cue yet).
    pub fn held_words(&self) -> usize {
        self.words.words.len()
    }

    /// Takes the next result; returns the cues that are final now, in order.
    pub fn push(&mut self, result: &SegmentResult) -> Vec<Cue> {
        if !result.tokens.is_empty() && !self.any_tokens {
            self.any_tokens = true;
            self.segments = Vec::new();
        }
        if !self.any_tokens {
            self.segments.extend(result.segments.iter().cloned());
            return Vec::new();
        }
        result.tokens.iter().for_each(|t| self.words.push(t));
        if self.held_words() < self.looked_at + LOOK_EVERY {
            return Vec::new();
        }
        self.looked_at = self.held_words();
        let Some(cut) = self.safe_word() else {
            return Vec::new();
        };
        let words = &mut self.words.words;
        let cues = build_cues_within(
            &words[..cut],
            &self.rules,
            self.floor_s,
            Some(words[cut].start_s),
        );
        if let Some(last) = cues.last() {
            self.floor_s = last.end_s;
        }
        words.drain(..cut);
        self.looked_at = words.len();
        cues
    }

    /// The cues left, given the audio's length (as the whole transcript's `duration_s`).
    pub fn finish(self, duration_s: f64) -> Vec<Cue> {
        let limit = (duration_s > 0.0).then_some(duration_s);
        if self.any_tokens {
            build_cues_within(&self.words.words, &self.rules, self.floor_s, limit)
        } else {
            segment_cues(&self.segments, &self.rules, limit)
        }
    }

    /// The latest word before which the cues are final, if there is one.
    fn safe_word(&self) -> Option<usize> {
        let words = &self.words.words;
        let rules = self.rules.sanitized();
        // Phrases that are complete: their end is told by a word that is final (not the last,
        // which may still grow) and the one after it.
        let mut phrases = Vec::new();
        let mut start = 0;
        for i in 0..words.len().saturating_sub(2) {
            let pause = words[i + 1].start_s - words[i].end_s > rules.pause_s;
            if pause || ends_sentence(&words[i].text) {
                phrases.push(start..i + 1);
                start = i + 1;
            }
        }
        let end = phrases.last()?.end;
        let (initial, merged) = cue_ranges(&words[..end], &rules);
        phrases.iter().skip(1).rev().map(|p| p.start).find(|&b| {
            merged.iter().any(|r| r.start == b)
                && initial
                    .iter()
                    .find(|r| r.start == b)
                    .is_some_and(|r| is_long(&words[r.clone()], &rules))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::subtitles::transcript_cues;
    use crate::engine::transcript::{FileTranscript, TokenTime};

    /// A small deterministic generator (no dependency, the same run every time).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Results of random tokens: words and CJK pieces, punctuation, tags, short and long gaps.
    fn random_results(seed: u64, count: usize) -> Vec<SegmentResult> {
        let mut rng = Lcg(seed);
        let pieces = [
            "\u{2581}the",
            "\u{2581}cat",
            "s",
            "\u{2581}sat",
            ",",
            ".",
            "?",
            "你",
            "好",
            "。",
            "\u{2581}on",
            "<|en|>",
            "\u{2581}",
            "'s",
            "\u{2581}mat",
            "！",
            "\u{2581}a",
        ];
        let mut t = 0.0f64;
        (0..count)
            .map(|i| {
                let start_s = i as f64 * 20.0;
                let mut tokens = Vec::new();
                t = t.max(start_s);
                while t < start_s + 19.0 {
                    let gap = match rng.next(20) {
                        0 => 0.8 + rng.next(30) as f64 * 0.1,
                        1..=3 => 0.2 + rng.next(5) as f64 * 0.1,
                        _ => 0.0,
                    };
                    let len = 0.04 + rng.next(30) as f64 * 0.01;
                    let token = pieces[rng.next(pieces.len() as u64) as usize];
                    tokens.push(TokenTime {
                        token: token.into(),
                        start_s: t + gap,
                        end_s: t + gap + len,
                    });
                    t += gap + len;
                }
                SegmentResult {
                    start_s,
                    end_s: start_s + 20.0,
                    segments: vec![Segment {
                        start_s,
                        end_s: start_s + 20.0,
                        text: format!("segment {i}"),
                        ..Segment::default()
                    }],
                    tokens,
                    ..SegmentResult::default()
                }
            })
            .collect()
    }

    fn whole(results: &[SegmentResult], duration_s: f64) -> FileTranscript {
        let mut assembler = crate::engine::transcript::TranscriptAssembler::default();
        results.iter().for_each(|r| assembler.push(r.clone()));
        assembler.finish("a.wav".into(), duration_s)
    }

    fn streamed(results: &[SegmentResult], rules: &CueRules, duration_s: f64) -> Vec<Cue> {
        let mut stream = CueStream::new(*rules);
        let mut cues = Vec::new();
        for result in results {
            cues.extend(stream.push(result));
        }
        cues.extend(stream.finish(duration_s));
        cues
    }

    fn shown(cues: &[Cue]) -> Vec<(f64, f64, Vec<String>)> {
        cues.iter()
            .map(|c| (c.start_s, c.end_s, c.lines.clone()))
            .collect()
    }

    #[test]
    fn streamed_cues_are_exactly_the_whole_transcript_cues() {
        let rule_sets = [
            CueRules::default(),
            CueRules {
                min_duration_s: 2.5,
                pause_s: 0.3,
                ..CueRules::default()
            },
            CueRules {
                max_duration_s: 2.0,
                max_lines: 1,
                max_line_chars: 12,
                ..CueRules::default()
            },
        ];
        let mut let_go = false;
        for seed in 0..40 {
            let results = random_results(seed, 12);
            let duration = 240.0;
            for rules in &rule_sets {
                let want = transcript_cues(&whole(&results, duration), rules);
                let got = streamed(&results, rules, duration);
                assert_eq!(shown(&got), shown(&want), "seed {seed}, {rules:?}");
            }
            let mut stream = CueStream::new(CueRules::default());
            let mut given = 0;
            for result in &results {
                given += stream.push(result).len();
            }
            let_go |= given > 0 && stream.held_words() < 200;
        }
        assert!(let_go, "cues went out before the end, holding few words");
    }

    #[test]
    fn without_token_times_the_cues_come_from_the_segments() {
        let results: Vec<SegmentResult> = (0..3)
            .map(|i| {
                let start_s = f64::from(i) * 5.0;
                SegmentResult {
                    start_s,
                    end_s: start_s + 5.0,
                    segments: vec![Segment {
                        start_s,
                        end_s: start_s + 5.0,
                        text: format!("words of segment number {i} spread over its time"),
                        ..Segment::default()
                    }],
                    ..SegmentResult::default()
                }
            })
            .collect();
        let rules = CueRules::default();
        let want = transcript_cues(&whole(&results, 15.0), &rules);
        assert!(!want.is_empty());
        assert_eq!(shown(&streamed(&results, &rules, 15.0)), shown(&want));
    }
}
