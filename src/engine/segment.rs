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
