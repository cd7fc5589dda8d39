//! The recording's consumer side: drains the capture ring buffer into a WAV file.
//!
//! A recording never overwrites a file: [`WavSink::create`] takes the name asked for, or the
//! first free `<stem>-2.wav`, `<stem>-3.wav`, … (created with `create_new`). A WAV file's sizes
//! are 32-bit, so past [`DEFAULT_PART_LIMIT_BYTES`] of samples the recording goes on in a next
//! part, `<stem>-part2.wav`, … without losing a frame; [`WavSink::parts`] lists them in order.
//!
//! Runs on the `audio-capture` thread, next to the cpal stream it serves. It needs no device:
//! tests drive [`run_sink_loop`] with a ring buffer, a stop channel and a fault channel.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::record::{RecordError, RecordEvent};
use super::tap::SampleTap;

/// How long the loop sleeps when there is nothing to do.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Most sample bytes in one WAV part: below the format's 4 GiB limit with room for the header.
pub const DEFAULT_PART_LIMIT_BYTES: u64 = 4_000_000_000;

/// Environment variable that lowers the part size (bytes of samples per file) of recordings
/// made by [`super::Recorder`]: for tests, and for file systems with smaller files.
pub const PART_LIMIT_ENV: &str = "GPUSCRIBE_RECORDING_PART_BYTES";

/// The part size: [`PART_LIMIT_ENV`] when it is a number of bytes below the default, else
/// [`DEFAULT_PART_LIMIT_BYTES`].
pub fn part_limit_bytes() -> u64 {
    std::env::var(PART_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&b| b > 0)
        .map_or(DEFAULT_PART_LIMIT_BYTES, |b| {
            b.min(DEFAULT_PART_LIMIT_BYTES)
        })
}

/// Where each of a recording's `parts` starts, in seconds from its start: every part but the
/// last holds exactly `part_limit_bytes` of samples (see [`WavSink::with_part_limit`]).
pub fn part_offsets_s(parts: usize, sample_rate_hz: u32, part_limit_bytes: u64) -> Vec<f64> {
    let frames = (part_limit_bytes / FRAME_BYTES).max(1) as f64;
    let rate = f64::from(sample_rate_hz.max(1));
    (0..parts).map(|k| k as f64 * frames / rate).collect()
}

/// Bytes per frame: mono 16-bit.
const FRAME_BYTES: u64 = 2;

/// Most candidates tried for a free file name.
const MAX_NAME_TRIES: u32 = 10_000;

/// A failure reported by the stream's error callback (the device vanished, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFault {
    /// True when the device is gone for good (unplugged, server died).
    pub device_lost: bool,
    /// The host's message.
    pub message: String,
}

/// Writes mono 16-bit PCM to a WAV file, flushing (and rewriting the header) periodically so
/// that a crash loses at most the last flush interval.
pub struct WavSink {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    /// The part being written.
    path: PathBuf,
    /// Every part so far, the current one last.
    parts: Vec<PathBuf>,
    sample_rate_hz: u32,
    frames_written: u64,
    frames_in_part: u64,
    part_limit_frames: u64,
    last_flush: Instant,
    flush_interval: Duration,
    /// A copy of every sample written, for live transcription.
    tap: Option<SampleTap>,
}

fn spec(sample_rate_hz: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: sample_rate_hz,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// `dir/stem{suffix}.wav`.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "recording".into(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(|| "wav".into(), |e| e.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}{suffix}.{ext}"))
}

/// Creates a WAV file at `wanted`, or at the first free `<stem>-N` name; never truncates.
fn create_unique(
    wanted: &Path,
    sample_rate_hz: u32,
) -> Result<(hound::WavWriter<BufWriter<File>>, PathBuf), RecordError> {
    let mut candidate = wanted.to_owned();
    for n in 2..=MAX_NAME_TRIES + 1 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(file) => {
                let writer = hound::WavWriter::new(BufWriter::new(file), spec(sample_rate_hz))
                    .map_err(|source| RecordError::CreateWav {
                        path: candidate.clone(),
                        source,
                    })?;
                return Ok((writer, candidate));
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                candidate = with_suffix(wanted, &format!("-{n}"));
            }
            Err(err) => {
                return Err(RecordError::CreateWav {
                    path: candidate,
                    source: hound::Error::IoError(err),
                });
            }
        }
    }
    Err(RecordError::CreateWav {
        path: wanted.to_owned(),
        source: hound::Error::IoError(std::io::Error::other(
            "no free file name: too many recordings with this name",
        )),
    })
}

impl WavSink {
    /// Creates a new WAV file at `path`, or next to it under a free name if `path` exists (see
    /// [`WavSink::path`]); an existing file is never touched.
    pub fn create(
        path: &Path,
        sample_rate_hz: u32,
        flush_interval: Duration,
    ) -> Result<Self, RecordError> {
        let (writer, path) = create_unique(path, sample_rate_hz)?;
        Ok(Self {
            writer: Some(writer),
            parts: vec![path.clone()],
            path,
            sample_rate_hz,
            frames_written: 0,
            frames_in_part: 0,
            part_limit_frames: DEFAULT_PART_LIMIT_BYTES / FRAME_BYTES,
            last_flush: Instant::now(),
            flush_interval,
            tap: None,
        })
    }

    /// Also hands every sample written to `tap` (live transcription). A rate the tap cannot
    /// resample leaves the recording as it is, without the tap.
    pub fn set_tap(&mut self, mut tap: SampleTap) {
        match tap.set_rate(self.sample_rate_hz) {
            Ok(()) => self.tap = Some(tap),
            Err(err) => tracing::warn!("live transcription is off for this recording: {err}"),
        }
    }

    /// Starts a next part after `bytes` of samples in one (at least one frame).
    pub fn with_part_limit(mut self, bytes: u64) -> Self {
        self.part_limit_frames = (bytes / FRAME_BYTES).max(1);
        self
    }

    /// Every part written so far, in order (one unless the recording passed the part limit).
    pub fn parts(&self) -> &[PathBuf] {
        &self.parts
    }

    fn write_error(&self, source: hound::Error) -> RecordError {
        RecordError::WriteWav {
            path: self.path.clone(),
            source,
        }
    }

    /// Closes the current part and opens the next.
    fn next_part(&mut self) -> Result<(), RecordError> {
        if let Some(writer) = self.writer.take() {
            writer.finalize().map_err(|e| self.write_error(e))?;
        }
        let first = self
            .parts
            .first()
            .cloned()
            .unwrap_or_else(|| self.path.clone());
        let wanted = with_suffix(&first, &format!("-part{}", self.parts.len() + 1));
        let (writer, path) = create_unique(&wanted, self.sample_rate_hz)?;
        self.writer = Some(writer);
        self.parts.push(path.clone());
        self.path = path;
        self.frames_in_part = 0;
        Ok(())
    }

    /// Seconds of audio written so far.
    pub fn recorded_s(&self) -> f64 {
        self.frames_written as f64 / f64::from(self.sample_rate_hz)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves everything waiting in the ring buffer into the file. Returns the frames moved.
    pub fn drain(&mut self, consumer: &mut rtrb::Consumer<f32>) -> Result<usize, RecordError> {
        let available = consumer.slots();
        if available == 0 {
            return Ok(0);
        }
        let Ok(chunk) = consumer.read_chunk(available) else {
            return Ok(0);
        };
        let (first, second) = chunk.as_slices();
        for &sample in first.iter().chain(second) {
            if self.frames_in_part >= self.part_limit_frames {
                self.next_part()?;
            }
            // Clamp, then scale to i16: the cast saturates, so out-of-range floats cannot wrap.
            let value = (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
            let Some(writer) = self.writer.as_mut() else {
                return Err(
                    self.write_error(hound::Error::IoError(std::io::Error::other(
                        "the recording file is closed",
                    ))),
                );
            };
            if let Err(source) = writer.write_sample(value) {
                return Err(self.write_error(source));
            }
            self.frames_in_part += 1;
            self.frames_written += 1;
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.feed(first);
            tap.feed(second);
        }
        chunk.commit_all();
        Ok(available)
    }

    /// Flushes and rewrites the header if the interval has passed. Returns true if it did.
    pub fn flush_if_due(&mut self) -> Result<bool, RecordError> {
        if self.last_flush.elapsed() < self.flush_interval {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Writes buffered samples and a header that covers them (hound's `flush` does both).
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.last_flush = Instant::now();
        match self.writer.as_mut() {
            Some(writer) => writer.flush().map_err(|source| RecordError::WriteWav {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Writes the final header and closes the file. Returns the first part's path and the
    /// seconds recorded (all parts).
    pub fn finish(self) -> Result<(PathBuf, f64), RecordError> {
        self.finish_parts()
            .map(|(parts, recorded_s)| (parts.into_iter().next().unwrap_or_default(), recorded_s))
    }

    /// Like [`WavSink::finish`], with every part's path (never empty).
    pub fn finish_parts(mut self) -> Result<(Vec<PathBuf>, f64), RecordError> {
        let recorded_s = self.recorded_s();
        if let Some(tap) = self.tap.take() {
            tap.finish();
        }
        if let Some(writer) = self.writer.take() {
            writer.finalize().map_err(|e| self.write_error(e))?;
        }
        Ok((self.parts, recorded_s))
    }
}

/// Why [`run_sink_loop`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum SinkEnd {
    /// A stop was requested (or the handle was dropped).
    Stopped,
    /// The stream reported a fault.
    Fault(StreamFault),
    /// The producer (the stream's callback) went away without a stop.
    ProducerGone,
}

/// Drains `consumer` into `sink` until a stop, a stream fault or the producer's end.
///
/// Sends [`RecordEvent::Saved`] after every flush. The caller stops the stream, drains once
/// more and calls [`WavSink::finish`].
pub fn run_sink_loop(
    consumer: &mut rtrb::Consumer<f32>,
    sink: &mut WavSink,
    stop_rx: &Receiver<()>,
    fault_rx: &Receiver<StreamFault>,
    events_tx: &Sender<RecordEvent>,
) -> Result<SinkEnd, RecordError> {
    let mut fault_rx = fault_rx.clone();
    loop {
        let end = select! {
            recv(stop_rx) -> _ => Some(SinkEnd::Stopped),
            recv(fault_rx) -> fault => match fault {
                Ok(fault) => Some(SinkEnd::Fault(fault)),
                Err(_) => {
                    // The error callback is gone, so nothing more can fail; stop listening,
                    // or the disconnected channel would wake this loop without pause.
                    fault_rx = crossbeam_channel::never();
                    None
                }
            },
            default(POLL_INTERVAL) => None,
        };
        sink.drain(consumer)?;
        if let Some(end) = end {
            return Ok(end);
        }
        if consumer.is_abandoned() && consumer.is_empty() {
            return Ok(SinkEnd::ProducerGone);
        }
        if sink.flush_if_due()? {
            // A full event queue only means the UI is behind; the next flush reports again.
            let _ = events_tx.try_send(RecordEvent::Saved {
                recorded_s: sink.recorded_s(),
            });
        }
    }
}
