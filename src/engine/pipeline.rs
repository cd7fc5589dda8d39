//! Streaming a file into the model: decode → resample → cut into ≤30 s segments → batches, with
//! bounded buffers, so host memory for audio does not grow with the file's length.
//!
//! A named thread decodes the file ([`crate::audio::decode_file_to`]) and feeds a
//! [`SegmentCutter`] (same cut points as [`super::segment::split_at_pauses`]); finished segments
//! cross a bounded channel. [`SegmentBatches`] reads up to `window` segments at a time and plans
//! batches among them with [`plan_batches`]. The latest decoding progress is shared beside the
//! channel, so it never takes a segment's place.
//!
//! Memory bound for audio, in 16 kHz f32 samples (64 kB per second): the decoder's chunk and
//! resampler (~2 s), the cutter (≤ 30 s), the channel (`CHANNEL_SEGMENTS` × 30 s) and the window
//! (`window` × 30 s): with the defaults (24 and 16), 41 × 30 s ≈ 79 MB whatever the file's
//! length. A consumer that also holds the batch it is running while it looks at the next window
//! ([`SegmentBatches::peek_with`]) adds at most one more window: 57 × 30 s ≈ 110 MB.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::segment::{
    MAX_SEGMENT_SECS, MIN_SEGMENT_SECS, SegmentCutter, StreamSegment, plan_batches,
};
use crate::audio::{DecodeError, DecodeProgress, DecodedAudio};

/// Segments in flight between the decoding thread and the consumer: more than a window, so
/// the decoder cuts the next window while the model runs this one (with 4, a 1-hour file on a
/// GPU waited ~350 ms for its decoder; with 24, ~70–110 ms: BENCHMARKS.md, "The 1-hour
/// command").
pub const CHANNEL_SEGMENTS: usize = 24;

/// Segments considered together when planning batches (sorted by length inside the window).
pub const DEFAULT_WINDOW: usize = 16;

/// How long a consumer waits for the decoder before its `tick` runs again.
const TICK: Duration = Duration::from_millis(100);

/// The latest decoding progress, shared between the decoding thread and the consumer.
type SharedProgress = Arc<Mutex<Option<DecodeProgress>>>;

/// What the decoding thread sends.
#[derive(Debug)]
pub enum StreamItem {
    /// The next segment, in time order.
    Segment(StreamSegment),
    /// The end: the decode summary (without samples) or the error.
    End(Result<DecodedAudio, DecodeError>),
}

/// Decodes and cuts `path` on a named thread; read the items from [`SegmentStream::recv`].
/// Dropping the stream stops the decoder at its next chunk.
#[derive(Debug)]
pub struct SegmentStream {
    rx: Receiver<StreamItem>,
    progress: SharedProgress,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SegmentStream {
    /// Starts decoding `path`.
    pub fn spawn(path: &Path) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_SEGMENTS);
        let path = path.to_owned();
        let progress = SharedProgress::default();
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("decode-stream".to_owned())
            .spawn(move || decode_into(&path, &tx, &shared))?;
        Ok(Self {
            rx,
            progress,
            thread: Some(thread),
        })
    }

    /// The next item; `None` once the thread has ended and everything was read.
    pub fn recv(&self) -> Option<StreamItem> {
        self.rx.recv().ok()
    }

    /// The next item, waiting at most `timeout`: `Err(true)` when nothing came in time,
    /// `Err(false)` once the thread has ended and everything was read.
    fn recv_timeout(&self, timeout: Duration) -> Result<StreamItem, bool> {
        self.rx
            .recv_timeout(timeout)
            .map_err(|e| matches!(e, RecvTimeoutError::Timeout))
    }

    /// The latest decoding progress (from the container's duration when it has one, and the
    /// bytes read).
    pub fn progress(&self) -> Option<DecodeProgress> {
        *self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for SegmentStream {
    fn drop(&mut self) {
        // Unblock the thread (its sends fail once the receiver is gone), then wait for it.
        let (_, dead) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn decode_into(path: &Path, tx: &Sender<StreamItem>, progress: &Mutex<Option<DecodeProgress>>) {
    let mut cutter = SegmentCutter::new(MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
    let open = Cell::new(true);
    let mut emit = |s: StreamSegment| {
        if open.get() && tx.send(StreamItem::Segment(s)).is_err() {
            open.set(false);
        }
    };
    let publish = |p: DecodeProgress| {
        *progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p);
    };
    let result = crate::audio::decode_file_to(path, &mut |p| publish(p), &mut |chunk| {
        cutter.push(chunk, &mut emit);
        if open.get() {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    if result.is_ok() {
        cutter.finish(&mut emit);
    }
    let _ = tx.send(StreamItem::End(result));
}

/// Batches of segments from a [`SegmentStream`], planned `window` segments at a time.
#[derive(Debug)]
pub struct SegmentBatches {
    path: PathBuf,
    stream: SegmentStream,
    window: usize,
    budget_s: f64,
    ready: std::collections::VecDeque<Vec<StreamSegment>>,
    end: Option<Result<DecodedAudio, DecodeError>>,
    /// Segments read from the stream but not planned yet (a window being filled).
    partial: Vec<StreamSegment>,
}

impl SegmentBatches {
    /// Batches of `path` under `budget_s` seconds of padded audio each.
    pub fn spawn(path: &Path, budget_s: f64, window: usize) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            stream: SegmentStream::spawn(path)?,
            window: window.max(1),
            budget_s,
            ready: Default::default(),
            end: None,
            partial: Vec::new(),
        })
    }

    /// The latest decoding progress.
    pub fn progress(&self) -> Option<DecodeProgress> {
        self.stream.progress()
    }

    /// The file's length in seconds once decoding has ended (what was decoded), else `None`.
    pub fn decoded_s(&self) -> Option<f64> {
        match &self.end {
            Some(Ok(summary)) => Some(summary.duration_s),
            _ => None,
        }
    }

    /// The next batch; `None` at the end (then [`SegmentBatches::finish`] says how it ended).
    pub fn next_batch(&mut self) -> Option<Vec<StreamSegment>> {
        self.next_batch_with(&mut || ControlFlow::Continue(()))
    }

    /// [`SegmentBatches::next_batch`], calling `tick` about every 100 ms while it waits for the
    /// decoder; `None` also when `tick` breaks (the segments read so far are kept, so a later
    /// call carries on).
    pub fn next_batch_with(
        &mut self,
        tick: &mut dyn FnMut() -> ControlFlow<()>,
    ) -> Option<Vec<StreamSegment>> {
        if self.ready.is_empty() && self.end.is_none() {
            self.fill(tick);
        }
        self.ready.pop_front()
    }

    /// The batch [`SegmentBatches::next_batch_with`] will return next, without taking it (it may
    /// read the next window from the decoder to know); `tick` as there.
    pub fn peek_with(
        &mut self,
        tick: &mut dyn FnMut() -> ControlFlow<()>,
    ) -> Option<&[StreamSegment]> {
        if self.ready.is_empty() && self.end.is_none() {
            self.fill(tick);
        }
        self.ready.front().map(Vec::as_slice)
    }

    /// How decoding ended (the summary without samples, or the error). Call after
    /// [`SegmentBatches::next_batch`] returned `None`.
    pub fn finish(mut self) -> Result<DecodedAudio, DecodeError> {
        while self.end.is_none() {
            match self.stream.recv() {
                Some(StreamItem::End(r)) => self.end = Some(r),
                Some(StreamItem::Segment(_)) => {}
                None => break,
            }
        }
        let path = self.path;
        self.end.unwrap_or_else(|| Err(thread_lost(path)))
    }

    fn fill(&mut self, tick: &mut dyn FnMut() -> ControlFlow<()>) {
        while self.partial.len() < self.window {
            match self.stream.recv_timeout(TICK) {
                Ok(StreamItem::Segment(s)) => self.partial.push(s),
                Ok(StreamItem::End(r)) => {
                    self.end = Some(r);
                    break;
                }
                Err(true) => {
                    if tick().is_break() {
                        return;
                    }
                }
                Err(false) => {
                    // The thread ended without its last word (it cannot, short of a panic).
                    self.end = Some(Err(thread_lost(self.path.clone())));
                    break;
                }
            }
        }
        let window = std::mem::take(&mut self.partial);
        if matches!(self.end, Some(Err(_))) {
            // A failed decode transcribes nothing.
            return;
        }
        let lens: Vec<usize> = window.iter().map(|s| s.samples.len()).collect();
        let mut slots: Vec<Option<StreamSegment>> = window.into_iter().map(Some).collect();
        for batch in plan_batches(&lens, self.budget_s) {
            self.ready
                .push_back(batch.iter().filter_map(|&i| slots[i].take()).collect());
        }
    }
}

fn thread_lost(path: PathBuf) -> DecodeError {
    DecodeError::Truncated {
        path,
        reason: "the decoding thread ended without a result".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::segment::{SAMPLE_RATE_HZ, split_at_pauses};

    fn write_wav(path: &Path, samples: &[f32]) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for &s in samples {
            w.write_sample((s * 32767.0) as i16).unwrap();
        }
        w.finalize().unwrap();
    }

    /// Tones with pauses of varying length and level.
    fn speechlike(total_s: f64) -> Vec<f32> {
        let n = (total_s * SAMPLE_RATE_HZ as f64) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / SAMPLE_RATE_HZ as f64;
                let gap = (t * 0.37).sin() > 0.93 || (t % 11.3) < 0.15;
                let level = if gap {
                    0.001
                } else {
                    0.4 + 0.3 * (t * 0.05).sin()
                };
                (level * (2.0 * std::f64::consts::PI * 180.0 * t).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn streamed_segments_equal_the_whole_file_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        write_wav(&path, &speechlike(700.0));
        let whole = crate::audio::decode_file(&path, &mut |_| {}).unwrap();
        let want = split_at_pauses(&whole.samples, MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
        assert!(want.len() >= 24, "{}", want.len());

        let mut batches = SegmentBatches::spawn(&path, 120.0, 8).unwrap();
        let mut got: Vec<StreamSegment> = Vec::new();
        while let Some(b) = batches.next_batch() {
            let longest = b.iter().map(|s| s.samples.len()).max().unwrap_or(0);
            assert!(b.len() == 1 || longest * b.len() <= 120 * SAMPLE_RATE_HZ);
            got.extend(b);
        }
        let summary = batches.finish().unwrap();
        assert!(summary.samples.is_empty());
        assert_eq!(
            (summary.duration_s * SAMPLE_RATE_HZ as f64).round() as usize,
            whole.samples.len()
        );
        got.sort_by_key(|s| s.start);
        let ranges: Vec<_> = got.iter().map(StreamSegment::range).collect();
        assert_eq!(ranges, want);
        for (s, r) in got.iter().zip(&want) {
            assert_eq!(s.samples.as_slice(), &whole.samples[r.clone()]);
        }
    }

    #[test]
    fn a_bad_file_ends_with_its_error_and_dropping_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("notes.wav");
        std::fs::write(&bad, b"not audio at all, just text").unwrap();
        let mut b = SegmentBatches::spawn(&bad, 60.0, 4).unwrap();
        assert!(b.next_batch().is_none());
        let e = b.finish().unwrap_err().to_string();
        assert!(e.contains("notes.wav"), "{e}");
        // Dropped after the first batch of a long file: returns promptly, no hang.
        let long = dir.path().join("long.wav");
        write_wav(&long, &speechlike(300.0));
        let mut b = SegmentBatches::spawn(&long, 60.0, 2).unwrap();
        assert!(b.next_batch().is_some());
        drop(b);
    }
}
