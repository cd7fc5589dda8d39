//! Long audio: split into segments of at most 30 s at low-energy points, and group segments into
//! batches under a duration budget. Pure functions over 16 kHz samples.
//!
//! The model was trained on utterances and its attention grows with the square of the length, so
//! one forward pass never sees more than [`MAX_SEGMENT_SECS`]. Cuts fall on the quietest 100 ms in
//! the last half of each window: a pause between words, not the middle of one. Segments are
//! contiguous, so a segment's timestamps are offset by its start and nothing is dropped.

use std::ops::Range;

/// Samples per second of the model's input.
pub const SAMPLE_RATE_HZ: usize = 16_000;

/// The longest segment one forward pass sees.
pub const MAX_SEGMENT_SECS: f64 = 30.0;

/// Cuts are searched in the window's tail after this many seconds.
pub const MIN_SEGMENT_SECS: f64 = 15.0;

/// Energy is measured over frames of this many samples (10 ms).
const FRAME_SAMPLES: usize = 160;

/// The quietest run of this many frames (100 ms) is where a cut goes.
const SMOOTH_FRAMES: usize = 10;

/// Splits `samples` (16 kHz mono) into contiguous ranges of at most `max_secs`.
pub fn split_at_pauses(samples: &[f32], max_secs: f64, min_secs: f64) -> Vec<Range<usize>> {
    let max_len = (max_secs * SAMPLE_RATE_HZ as f64) as usize;
    let min_len = ((min_secs * SAMPLE_RATE_HZ as f64) as usize).min(max_len);
    let mut out = Vec::new();
    let mut start = 0;
    while samples.len() - start > max_len {
        let cut = quietest_point(samples, start + min_len, start + max_len);
        out.push(start..cut);
        start = cut;
    }
    if start < samples.len() || out.is_empty() {
        out.push(start..samples.len());
    }
    out
}

/// A segment cut from a stream: where it starts in the whole audio, and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSegment {
    /// Index of the first sample in the whole audio.
    pub start: usize,
    /// The samples (16 kHz mono).
    pub samples: Vec<f32>,
}

impl StreamSegment {
    /// The segment's range in the whole audio.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.samples.len()
    }
}

/// [`split_at_pauses`] over a stream: samples come in chunks of any size and segments go out as
/// soon as their cut is known, with the same cut points as the whole-buffer function.
///
/// A cut from `start` depends only on `samples[start + min_len .. start + max_len]` and on whether
/// more than `max_len` samples follow `start`, so the cutter never holds more than `max_len + 1`
/// samples plus the chunk being pushed (30 s ≈ 1.9 MB).
#[derive(Debug)]
pub struct SegmentCutter {
    max_len: usize,
    min_len: usize,
    buf: Vec<f32>,
    start: usize,
    emitted: bool,
}

impl SegmentCutter {
    /// A cutter with the same parameters as [`split_at_pauses`].
    pub fn new(max_secs: f64, min_secs: f64) -> Self {
        let max_len = ((max_secs * SAMPLE_RATE_HZ as f64) as usize).max(1);
        let min_len = ((min_secs * SAMPLE_RATE_HZ as f64) as usize).min(max_len);
        Self {
            max_len,
            min_len,
            buf: Vec::with_capacity(max_len + 1),
            start: 0,
            emitted: false,
        }
    }

    /// Samples held now (never more than `max_len` once `push` returns).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds samples; calls `emit` for every segment whose end is now known.
    pub fn push(&mut self, mut samples: &[f32], emit: &mut dyn FnMut(StreamSegment)) {
        while !samples.is_empty() {
            // Take only what is needed to decide the next cut, so the buffer stays bounded
            // however large the chunk.
            let room = (self.max_len + 1).saturating_sub(self.buf.len()).max(1);
            let (now, rest) = samples.split_at(room.min(samples.len()));
            self.buf.extend_from_slice(now);
            samples = rest;
            while self.buf.len() > self.max_len {
                let cut = quietest_point(&self.buf, self.min_len, self.max_len);
                let tail = self.buf.split_off(cut);
                let seg = std::mem::replace(&mut self.buf, tail);
                self.emit(seg, emit);
            }
        }
    }

    /// Ends the stream: emits the last segment (an empty one when the stream was empty, as
    /// [`split_at_pauses`] returns `0..0`).
    pub fn finish(mut self, emit: &mut dyn FnMut(StreamSegment)) {
        if !self.buf.is_empty() || !self.emitted {
            let seg = std::mem::take(&mut self.buf);
            self.emit(seg, emit);
        }
    }

    fn emit(&mut self, samples: Vec<f32>, emit: &mut dyn FnMut(StreamSegment)) {
        let start = self.start;
        self.start += samples.len();
        self.emitted = true;
        emit(StreamSegment { start, samples });
    }
}

/// The sample index in `[from, to]` that starts the quietest 100 ms, on a 10 ms grid.
fn quietest_point(samples: &[f32], from: usize, to: usize) -> usize {
    let frame_energy: Vec<f32> = samples[from..to]
        .chunks(FRAME_SAMPLES)
        .map(|frame| frame.iter().map(|s| s * s).sum::<f32>())
        .collect();
    if frame_energy.len() <= SMOOTH_FRAMES {
        return to;
    }
    let mut window: f32 = frame_energy[..SMOOTH_FRAMES].iter().sum();
    let mut best = (window, 0);
    for i in 1..=frame_energy.len() - SMOOTH_FRAMES {
        window += frame_energy[i + SMOOTH_FRAMES - 1] - frame_energy[i - 1];
        // `<=` prefers the later cut among equally quiet points: longer segments, fewer passes.
        if window <= best.0 {
            best = (window, i);
        }
    }
    // Cut in the middle of the quiet run.
    let cut = from + (best.1 + SMOOTH_FRAMES / 2) * FRAME_SAMPLES;
    cut.clamp(from, to)
}

/// Groups segment indices into batches: sorted by length (little padding), each batch's padded
/// size `longest × count` within `budget_secs`. A segment longer than the budget runs alone.
pub fn plan_batches(segment_lens: &[usize], budget_secs: f64) -> Vec<Vec<usize>> {
    let budget = (budget_secs * SAMPLE_RATE_HZ as f64) as usize;
    let mut order: Vec<usize> = (0..segment_lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(segment_lens[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = segment_lens[i];
        let new_longest = longest.max(len);
        if !current.is_empty() && new_longest * (current.len() + 1) > budget {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loud tone with a silent 200 ms gap every `gap_every_s` seconds.
    fn speech_with_pauses(total_s: f64, gap_every_s: f64) -> Vec<f32> {
        let n = (total_s * SAMPLE_RATE_HZ as f64) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / SAMPLE_RATE_HZ as f64;
                let in_gap = (t % gap_every_s) > gap_every_s - 0.2;
                if in_gap {
                    0.0
                } else {
                    (0.5 * (2.0 * std::f64::consts::PI * 220.0 * t).sin()) as f32
                }
            })
            .collect()
    }

    #[test]
    fn short_audio_is_one_segment() {
        let s = vec![0.1; 16_000 * 10];
        assert_eq!(split_at_pauses(&s, 30.0, 15.0), vec![0..s.len()]);
        assert_eq!(split_at_pauses(&[], 30.0, 15.0), vec![0..0]);
    }

    #[test]
    fn long_audio_is_cut_in_pauses_and_covers_everything() {
        let s = speech_with_pauses(95.0, 7.0);
        let segs = split_at_pauses(&s, 30.0, 15.0);
        assert!(segs.len() >= 4, "{segs:?}");
        assert_eq!(segs[0].start, 0);
        assert_eq!(segs.last().map(|r| r.end), Some(s.len()));
        for pair in segs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "contiguous");
        }
        for r in &segs {
            assert!(r.len() <= 30 * 16_000, "{r:?} too long");
        }
        for r in &segs[..segs.len() - 1] {
            // Each cut lands in a silent gap.
            assert!(r.len() >= 15 * 16_000);
            let around = &s[r.end - 400..r.end + 400];
            assert!(
                around.iter().all(|&x| x == 0.0),
                "cut at {} not in a pause",
                r.end
            );
        }
    }

    /// Speech-like noise with pauses at irregular places and levels, so cuts land everywhere.
    fn irregular(total_s: f64, seed: u64) -> Vec<f32> {
        let n = (total_s * SAMPLE_RATE_HZ as f64) as usize;
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let run = (next() * 9.0 * SAMPLE_RATE_HZ as f64) as usize + 1;
            let level = if next() < 0.3 { 0.001 * next() } else { next() };
            for _ in 0..run.min(n - out.len()) {
                out.push(((next() - 0.5) * level) as f32);
            }
        }
        out
    }

    fn cut_streaming(samples: &[f32], chunk: usize) -> Vec<StreamSegment> {
        let mut cutter = SegmentCutter::new(MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
        let mut out = Vec::new();
        let mut peak = 0;
        for c in samples.chunks(chunk.max(1)) {
            cutter.push(c, &mut |s| out.push(s));
            peak = peak.max(cutter.buffered());
        }
        assert!(peak <= 30 * SAMPLE_RATE_HZ, "cutter held {peak} samples");
        cutter.finish(&mut |s| out.push(s));
        out
    }

    #[test]
    fn streaming_cuts_equal_whole_buffer_cuts() {
        // About 40 minutes of audio in all, fed in chunk sizes from 1 sample to the whole file.
        for (seed, total_s, chunks) in [
            (1, 1500.0, vec![1152, 16_000 * 31, 7]),
            (2, 600.0, vec![480_001, 4096]),
            (3, 31.0, vec![1, 1000]),
            (4, 30.0, vec![333]),
            (5, 0.5, vec![10]),
        ] {
            let s = irregular(total_s, seed);
            let whole = split_at_pauses(&s, MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
            assert!(
                total_s < 100.0 || whole.len() > total_s as usize / 30,
                "{whole:?}"
            );
            for chunk in chunks.into_iter().chain([s.len()]) {
                let streamed = cut_streaming(&s, chunk);
                let ranges: Vec<Range<usize>> = streamed.iter().map(StreamSegment::range).collect();
                assert_eq!(ranges, whole, "seed {seed}, chunk {chunk}");
                for (seg, r) in streamed.iter().zip(&whole) {
                    assert_eq!(seg.samples.as_slice(), &s[r.clone()]);
                }
            }
        }
        // An empty stream is one empty segment, as before.
        assert_eq!(
            cut_streaming(&[], 10),
            vec![StreamSegment {
                start: 0,
                samples: vec![]
            }]
        );
    }

    #[test]
    fn batches_respect_the_budget_and_cover_each_segment_once() {
        let lens = [30, 10, 29, 5, 30, 1].map(|s| s * 16_000);
        let batches = plan_batches(&lens, 60.0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
        for b in &batches {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap_or(0);
            assert!(longest * b.len() <= 60 * 16_000 || b.len() == 1, "{b:?}");
        }
        // A segment over budget still runs, alone.
        assert_eq!(plan_batches(&[100 * 16_000], 10.0), vec![vec![0]]);
    }
}
