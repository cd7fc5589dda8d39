//! A WAV file through the capture path, for `listen --from-wav` and the tests: a `wav-feed`
//! thread plays the file into the same ring buffer the microphone callback fills, and the
//! `audio-capture` thread runs the same sink loop, which writes the copy on disk and hands every
//! sample to the live tap. Only the sound card is missing.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::audio::tap::{SampleTap, TapPolicy, TapReceiver};
use crate::audio::wav_sink::{WavSink, run_sink_loop};
use crate::audio::{FLUSH_INTERVAL, RecordEvent, decode_file};

/// How much audio the feed writes at a time (a typical device callback: 10 ms).
const CALLBACK_FRAMES: usize = 160;

/// How fast the file plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// As a microphone would deliver it; the tap drops rather than wait.
    RealTime,
    /// As fast as the consumer takes it; the tap waits, so nothing is dropped.
    Fast,
}

/// A running feed.
pub struct WavFeed {
    /// The live audio, 16 kHz mono; disconnected after the last sample.
    pub tap: TapReceiver,
    /// Seconds in the file.
    pub duration_s: f64,
    thread: Option<JoinHandle<Result<PathBuf, String>>>,
}

impl WavFeed {
    /// Decodes `path` (any format the app reads, to 16 kHz mono) and starts playing it through
    /// the capture path; the copy is written to `copy_path`. Errors name the file.
    pub fn start(path: &Path, pace: Pace, copy_path: &Path) -> Result<Self, String> {
        let audio = decode_file(path, &mut |_| {}).map_err(|err| err.to_string())?;
        let duration_s = audio.duration_s;
        let policy = match pace {
            Pace::RealTime => TapPolicy::Drop,
            Pace::Fast => TapPolicy::Wait,
        };
        let (tap, receiver) = SampleTap::new(policy);
        let rate = crate::audio::MODEL_SAMPLE_RATE_HZ;
        let mut sink =
            WavSink::create(copy_path, rate, FLUSH_INTERVAL).map_err(|err| err.to_string())?;
        sink.set_tap(tap);
        let ring_frames = rate as usize * 4;
        let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(ring_frames);
        let samples = audio.samples;
        let player = std::thread::Builder::new()
            .name("wav-feed".into())
            .spawn(move || {
                let started = Instant::now();
                for (i, chunk) in samples.chunks(CALLBACK_FRAMES).enumerate() {
                    if pace == Pace::RealTime {
                        let due =
                            Duration::from_secs_f64((i * CALLBACK_FRAMES) as f64 / f64::from(rate));
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let mut rest = chunk;
                    while !rest.is_empty() {
                        let n = producer.slots().min(rest.len());
                        if n == 0 {
                            // The ring is full: a device would drop; a file can wait.
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        if let Ok(write) = producer.write_chunk_uninit(n) {
                            write.fill_from_iter(rest[..n].iter().copied());
                        }
                        rest = &rest[n..];
                    }
                }
                // Dropping the producer ends the sink loop once the ring is drained.
            })
            .map_err(|err| format!("cannot start the wav-feed thread: {err}"))?;
        let thread = std::thread::Builder::new()
            .name("audio-capture".into())
            .spawn(move || -> Result<PathBuf, String> {
                let (_stop_tx, stop_rx) = bounded::<()>(1);
                let (_fault_tx, fault_rx) = bounded(1);
                let (events_tx, _events_rx) = bounded::<RecordEvent>(64);
                let looped =
                    run_sink_loop(&mut consumer, &mut sink, &stop_rx, &fault_rx, &events_tx);
                let drained = looped.and_then(|_| sink.drain(&mut consumer));
                let _ = player.join();
                let finished = sink.finish();
                drained.map_err(|err| err.to_string())?;
                finished
                    .map(|(path, _)| path)
                    .map_err(|err| err.to_string())
            })
            .map_err(|err| format!("cannot start the audio-capture thread: {err}"))?;
        Ok(Self {
            tap: receiver,
            duration_s,
            thread: Some(thread),
        })
    }

    /// Waits for the feed to end; returns the copy's path.
    pub fn join(mut self) -> Result<PathBuf, String> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the audio-capture thread panicked".to_owned()),
            None => Err("the feed was already joined".to_owned()),
        }
    }
}
