//! Where a job's segments come from: a file streamed through the decode → cut → batch pipeline
//! ([`StreamSource`], what file jobs use), or audio held whole in memory ([`WholeSource`]: a
//! clip from live transcription, and the whole-file way of decoding that the tests compare the
//! stream against).
//!
//! Both cut at the same points ([`SegmentCutter`](crate::engine::segment::SegmentCutter) gives
//! the cuts of [`split_at_pauses`]); they differ only in which segments share a batch: the stream
//! plans batches among [`DEFAULT_WINDOW`] segments at a time, the whole buffer among all.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::audio::DecodedAudio;
use crate::engine::pipeline::{DEFAULT_WINDOW, SegmentBatches};
use crate::engine::segment::{
    MAX_SEGMENT_SECS, MIN_SEGMENT_SECS, SAMPLE_RATE_HZ, StreamSegment, plan_batches,
    split_at_pauses,
};

/// What a job learns at the end of decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeSummary {
    /// Length of the decoded audio, seconds.
    pub duration_s: f64,
    /// What was skipped or cut short while decoding, naming the file; `None` when clean.
    pub warning: Option<String>,
}

/// A job's audio, cut into segments and planned into batches.
pub trait SegmentSource {
    /// The next batch; `None` at the end, or when `tick` (called about every 100 ms while
    /// waiting for the decoder: heartbeats, cancel checks) breaks.
    fn next_batch(
        &mut self,
        tick: &mut dyn FnMut() -> ControlFlow<()>,
    ) -> Option<Vec<StreamSegment>>;
    /// The batch that comes next, without taking it (so the model can prepare it).
    fn peek(&mut self, tick: &mut dyn FnMut() -> ControlFlow<()>) -> Option<&[StreamSegment]>;
    /// The audio's length in seconds as far as it can be told now: exact once decoding ended,
    /// else from the container's duration when it states one, else from the bytes read.
    fn estimated_total_s(&self) -> Option<f64>;
    /// How decoding ended (call after `next_batch` returned `None`): its summary, or the error
    /// naming the file.
    fn finish(self: Box<Self>) -> Result<DecodeSummary, String>;
}

/// Opens a job's file: `(path, batch budget in seconds)`.
pub type Opener = dyn Fn(&Path, f64) -> Result<Box<dyn SegmentSource>, String>;

/// A file streamed through [`SegmentBatches`]: memory for audio bounded whatever its length.
pub struct StreamSource {
    path: PathBuf,
    batches: SegmentBatches,
}

impl StreamSource {
    /// Starts decoding `path` on its own thread.
    pub fn open(path: &Path, budget_s: f64) -> Result<Box<dyn SegmentSource>, String> {
        let batches = SegmentBatches::spawn(path, budget_s, DEFAULT_WINDOW)
            .map_err(|err| format!("cannot start decoding ({err}): {}", path.display()))?;
        Ok(Box::new(Self {
            path: path.to_owned(),
            batches,
        }))
    }
}

impl SegmentSource for StreamSource {
    fn next_batch(
        &mut self,
        tick: &mut dyn FnMut() -> ControlFlow<()>,
    ) -> Option<Vec<StreamSegment>> {
        self.batches.next_batch_with(tick)
    }

    fn peek(&mut self, tick: &mut dyn FnMut() -> ControlFlow<()>) -> Option<&[StreamSegment]> {
        self.batches.peek_with(tick)
    }

    fn estimated_total_s(&self) -> Option<f64> {
        if let Some(exact) = self.batches.decoded_s() {
            return Some(exact);
        }
        self.batches.progress()?.estimated_total_s()
    }

    fn finish(self: Box<Self>) -> Result<DecodeSummary, String> {
        let audio = self.batches.finish().map_err(|err| err.to_string())?;
        Ok(DecodeSummary {
            duration_s: audio.duration_s,
            warning: decode_warning(&self.path, &audio),
        })
    }
}

/// Audio held whole in memory, cut and planned all at once.
pub struct WholeSource {
    batches: VecDeque<Vec<StreamSegment>>,
    summary: DecodeSummary,
}

impl WholeSource {
    /// Cuts `samples` (16 kHz mono) and plans batches under `budget_s` among all segments.
    pub fn new(samples: &[f32], budget_s: f64, warning: Option<String>) -> Self {
        let ranges = split_at_pauses(samples, MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
        let lens: Vec<usize> = ranges.iter().map(ExactSizeIterator::len).collect();
        let batches = plan_batches(&lens, budget_s)
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|i| StreamSegment {
                        start: ranges[i].start,
                        samples: samples[ranges[i].clone()].to_vec(),
                    })
                    .collect()
            })
            .collect();
        Self {
            batches,
            summary: DecodeSummary {
                duration_s: samples.len() as f64 / SAMPLE_RATE_HZ as f64,
                warning,
            },
        }
    }

    /// Decodes the whole file first, then cuts it: memory grows with the file's length. Kept
    /// to check the stream against.
    pub fn open_file(path: &Path, budget_s: f64) -> Result<Box<dyn SegmentSource>, String> {
        let audio = crate::audio::decode_file(path, &mut |_| {}).map_err(|err| err.to_string())?;
        let warning = decode_warning(path, &audio);
        Ok(Box::new(Self::new(&audio.samples, budget_s, warning)))
    }
}

impl SegmentSource for WholeSource {
    fn next_batch(&mut self, _: &mut dyn FnMut() -> ControlFlow<()>) -> Option<Vec<StreamSegment>> {
        self.batches.pop_front()
    }

    fn peek(&mut self, _: &mut dyn FnMut() -> ControlFlow<()>) -> Option<&[StreamSegment]> {
        self.batches.front().map(Vec::as_slice)
    }

    fn estimated_total_s(&self) -> Option<f64> {
        Some(self.summary.duration_s)
    }

    fn finish(self: Box<Self>) -> Result<DecodeSummary, String> {
        Ok(self.summary)
    }
}

/// What went wrong on the way (skipped stretches, an early end), naming the file.
pub fn decode_warning(path: &Path, audio: &DecodedAudio) -> Option<String> {
    (!audio.is_clean()).then(|| {
        let mut parts = Vec::new();
        if !audio.skipped.is_empty() {
            parts.push(format!(
                "{} corrupt stretch(es) skipped",
                audio.skipped.len()
            ));
        }
        if let Some(early) = &audio.ended_early {
            parts.push(format!(
                "ended early at {:.1} s: {}",
                early.at_s, early.reason
            ));
        }
        format!("{}: {}", path.display(), parts.join("; "))
    })
}
