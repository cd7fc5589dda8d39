//! The recording's consumer side: drains the capture ring buffer into a WAV file.
//!
//! Runs on the `audio-capture` thread, next to the cpal stream it serves. It needs no device:
//! tests drive [`run_sink_loop`] with a ring buffer, a stop channel and a fault channel.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::record::{RecordError, RecordEvent};
use super::tap::SampleTap;

/// How long the loop sleeps when there is nothing to do.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

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
    writer: hound::WavWriter<BufWriter<File>>,
    path: PathBuf,
    sample_rate_hz: u32,
    frames_written: u64,
    last_flush: Instant,
    flush_interval: Duration,
    /// A copy of every sample written, for live transcription.
    tap: Option<SampleTap>,
}

impl WavSink {
    /// Creates (or truncates) the WAV file at `path`.
    pub fn create(
        path: &Path,
        sample_rate_hz: u32,
        flush_interval: Duration,
    ) -> Result<Self, RecordError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: sample_rate_hz,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer =
            hound::WavWriter::create(path, spec).map_err(|source| RecordError::CreateWav {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            writer,
            path: path.to_owned(),
            sample_rate_hz,
            frames_written: 0,
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
            // Clamp, then scale to i16: the cast saturates, so out-of-range floats cannot wrap.
            let value = (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
            if let Err(source) = self.writer.write_sample(value) {
                return Err(RecordError::WriteWav {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.feed(first);
            tap.feed(second);
        }
        chunk.commit_all();
        self.frames_written += available as u64;
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
        self.writer.flush().map_err(|source| RecordError::WriteWav {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the final header and closes the file. Returns the path and the seconds recorded.
    pub fn finish(self) -> Result<(PathBuf, f64), RecordError> {
        let recorded_s = self.recorded_s();
        let Self {
            writer, path, tap, ..
        } = self;
        if let Some(tap) = tap {
            tap.finish();
        }
        writer.finalize().map_err(|source| RecordError::WriteWav {
            path: path.clone(),
            source,
        })?;
        Ok((path, recorded_s))
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
