//! Microphone recording to a WAV file.
//!
//! [`Recorder::start`] spawns the `audio-capture` thread. That thread opens the device, owns
//! the `cpal::Stream` for its whole life (the stream never crosses threads), and runs the
//! [`wav_sink`](super::wav_sink) loop that writes the WAV file. The cpal data callback only
//! downmixes into a wait-free ring buffer and updates the atomic [`LevelMeter`]: no locks, no
//! allocation, no I/O.
//!
//! The UI keeps the [`RecorderHandle`]: it reads [`RecorderHandle::level`] and
//! [`RecorderHandle::elapsed`] each frame, drains [`RecorderHandle::events`], and calls
//! [`RecorderHandle::stop`] to get the finished file.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::level::{Level, LevelAccumulator, LevelMeter};
use super::record_file::FilePlayer;
use super::tap::SampleTap;
use super::wav_sink::{SinkEnd, StreamFault, WavSink, run_sink_loop};

/// How often the WAV header is rewritten while recording (at most this much is lost on a crash).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Seconds of audio the ring buffer between callback and writer holds.
const RING_SECONDS: usize = 4;

/// Capacity of the event channel; events beyond it are dropped (the UI is behind).
const EVENT_CAPACITY: usize = 64;

/// Why recording could not start, or how it ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The system has no input device at all.
    #[error("no microphone or other input device was found")]
    NoInputDevice,
    /// The device id given to [`Recorder::start`] is not (or no longer) present.
    #[error("the input device is not available (unplugged or renamed?): {device_id}")]
    DeviceNotFound {
        /// The id that was asked for.
        device_id: String,
    },
    /// The OS or sound server refused access to the device.
    #[error("permission to use the microphone was denied ({message}): {device}")]
    PermissionDenied {
        /// The device's name.
        device: String,
        /// The host's message.
        message: String,
    },
    /// Another program holds the device.
    #[error("the input device is busy in another program ({message}): {device}")]
    DeviceBusy {
        /// The device's name.
        device: String,
        /// The host's message.
        message: String,
    },
    /// Any other failure while opening or starting the device.
    #[error("cannot open the input device ({message}): {device}")]
    OpenDevice {
        /// The device's name.
        device: String,
        /// The host's message.
        message: String,
    },
    /// The WAV file could not be created.
    #[error("cannot create the recording file ({source}): {path}")]
    CreateWav {
        /// The file.
        path: PathBuf,
        /// hound's error (usually an I/O error).
        source: hound::Error,
    },
    /// Writing the WAV file failed (disk full, removed, …). What was flushed before stays valid.
    #[error("writing the recording failed ({source}): {path}")]
    WriteWav {
        /// The file.
        path: PathBuf,
        /// hound's error.
        source: hound::Error,
    },
    /// The device stopped working mid-recording. The audio recorded before is kept in `path`.
    #[error(
        "the input device stopped ({message}); the {recorded_s:.1} s recorded so far were kept: {path}"
    )]
    DeviceLost {
        /// The host's message.
        message: String,
        /// The (first) WAV file holding what was recorded.
        path: PathBuf,
        /// Every part written, in order.
        parts: Vec<PathBuf>,
        /// Seconds kept.
        recorded_s: f64,
    },
    /// The capture thread could not be started or ended without a result.
    #[error("the audio capture thread failed: {0}")]
    Thread(String),
}

/// A finished recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The WAV files, in order: one, or more past the WAV size limit (see
    /// [`super::wav_sink::DEFAULT_PART_LIMIT_BYTES`]); together they are the whole recording.
    pub parts: Vec<PathBuf>,
    /// Seconds in all parts.
    pub recorded_s: f64,
}

impl Recorded {
    /// The first part's file.
    pub fn path(&self) -> &Path {
        self.parts.first().map_or(Path::new(""), PathBuf::as_path)
    }
}

/// What the capture thread reports while recording.
#[derive(Debug)]
pub enum RecordEvent {
    /// The device is open and audio is flowing.
    Started {
        /// The device's name.
        device_name: String,
        /// The device's rate (the WAV is written at this rate, mono 16-bit).
        sample_rate_hz: u32,
        /// The device's channel count (downmixed to mono).
        channels: u16,
    },
    /// The file was flushed; everything up to `recorded_s` is safe on disk.
    Saved {
        /// Seconds in the file.
        recorded_s: f64,
    },
    /// Recording ended on its own (device lost, write error). Call [`RecorderHandle::stop`] to
    /// collect the same error and release the handle.
    Failed(RecordError),
}

/// Counters shared between the callback (writer) and the handle (reader).
#[derive(Debug, Default)]
struct Counters {
    captured_frames: AtomicU64,
    dropped_frames: AtomicU64,
    sample_rate_hz: AtomicU64,
}

/// Where a recording's audio comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureSource {
    /// An input device by id (`None`: the default input).
    Device(Option<String>),
    /// An audio file (any format [`decode_file`](super::decode_file) reads) played in real
    /// time as if a microphone heard it, then silence until stopped: the whole capture path
    /// but the sound card, for demos and tests (`GPUSCRIBE_CAPTURE_FILE`).
    File(PathBuf),
}

/// Starts recordings.
pub struct Recorder;

impl Recorder {
    /// Opens `device_id` (or the default input when `None`) and records it, mono 16-bit at the
    /// device's rate, into a new WAV file at `wav_path`. Returns once audio is flowing, or with
    /// the reason it could not start.
    pub fn start(device_id: Option<&str>, wav_path: &Path) -> Result<RecorderHandle, RecordError> {
        Self::start_with_tap(device_id, wav_path, None)
    }

    /// [`start`](Self::start), also handing every recorded sample to `tap` (at 16 kHz) for
    /// live transcription. The tap never slows the recording down.
    pub fn start_with_tap(
        device_id: Option<&str>,
        wav_path: &Path,
        tap: Option<SampleTap>,
    ) -> Result<RecorderHandle, RecordError> {
        Self::start_from(
            CaptureSource::Device(device_id.map(str::to_owned)),
            wav_path,
            tap,
        )
    }

    /// [`start_with_tap`](Self::start_with_tap) from any [`CaptureSource`].
    pub fn start_from(
        source: CaptureSource,
        wav_path: &Path,
        tap: Option<SampleTap>,
    ) -> Result<RecorderHandle, RecordError> {
        let level = Arc::new(LevelMeter::new());
        let counters = Arc::new(Counters::default());
        let (startup_tx, startup_rx) = bounded::<Result<Started, RecordError>>(1);
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let (events_tx, events_rx) = bounded::<RecordEvent>(EVENT_CAPACITY);
        let (result_tx, result_rx) = bounded::<Result<Recorded, RecordError>>(1);
        let job = CaptureJob {
            source,
            wav_path: wav_path.to_owned(),
            level: Arc::clone(&level),
            counters: Arc::clone(&counters),
            tap,
        };
        let thread = std::thread::Builder::new()
            .name("audio-capture".into())
            .spawn(move || {
                let result = job.run(&startup_tx, &stop_rx, &events_tx);
                if let Err(err) = &result {
                    // A failure after start-up is also announced as an event for the UI.
                    let _ = events_tx.try_send(RecordEvent::Failed(clone_for_event(err)));
                }
                let _ = result_tx.send(result);
            })
            .map_err(|err| RecordError::Thread(err.to_string()))?;
        match startup_rx.recv() {
            Ok(Ok(started)) => Ok(RecorderHandle {
                stop_tx,
                result_rx,
                events_rx,
                level,
                counters,
                thread: Some(thread),
                device_name: started.device_name,
                wav_path: started.wav_path,
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(RecordError::Thread(
                    "the capture thread ended during start-up".into(),
                ))
            }
        }
    }
}

/// A running recording. Dropping it stops the recording and finalises the file.
pub struct RecorderHandle {
    stop_tx: Sender<()>,
    result_rx: Receiver<Result<Recorded, RecordError>>,
    events_rx: Receiver<RecordEvent>,
    level: Arc<LevelMeter>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
    device_name: String,
    wav_path: PathBuf,
}

impl RecorderHandle {
    /// The current input level (lock-free; call every frame).
    pub fn level(&self) -> Level {
        self.level.read()
    }

    /// The shared meter, for widgets that keep their own handle to it.
    pub fn level_meter(&self) -> Arc<LevelMeter> {
        Arc::clone(&self.level)
    }

    /// Length of the audio captured so far.
    pub fn elapsed(&self) -> Duration {
        let rate = self.counters.sample_rate_hz.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let frames = self.counters.captured_frames.load(Ordering::Relaxed);
        Duration::from_secs_f64(frames as f64 / rate as f64)
    }

    /// Frames lost because the writer fell behind (should stay 0).
    pub fn dropped_frames(&self) -> u64 {
        self.counters.dropped_frames.load(Ordering::Relaxed)
    }

    /// Events from the capture thread; drain with `try_iter()` in the UI's `logic()`.
    pub fn events(&self) -> &Receiver<RecordEvent> {
        &self.events_rx
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The device's sample rate (the WAV's), once known.
    pub fn sample_rate_hz(&self) -> u32 {
        u32::try_from(self.counters.sample_rate_hz.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// The (first) WAV file being written: the name asked for, or a free one next to it.
    pub fn wav_path(&self) -> &Path {
        &self.wav_path
    }

    /// True while the capture thread is still recording.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops recording, finalises the WAV header and returns the files written. If the device
    /// was lost earlier, returns [`RecordError::DeviceLost`], whose `parts` hold what was recorded.
    pub fn stop(mut self) -> Result<Recorded, RecordError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<Recorded, RecordError> {
        let _ = self.stop_tx.try_send(());
        let result = self.result_rx.recv().unwrap_or_else(|_| {
            Err(RecordError::Thread(
                "the capture thread ended without a result".into(),
            ))
        });
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(RecordError::Thread("the capture thread panicked".into()));
        }
        self.level.store(Level::default());
        result
    }
}

impl Drop for RecorderHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_and_join();
        }
    }
}

/// What the capture thread reports once the stream runs.
struct Started {
    device_name: String,
    wav_path: PathBuf,
}

/// Everything the capture thread needs; moved into it.
struct CaptureJob {
    source: CaptureSource,
    wav_path: PathBuf,
    level: Arc<LevelMeter>,
    counters: Arc<Counters>,
    tap: Option<SampleTap>,
}

impl CaptureJob {
    /// The capture thread's body: open, record until stopped, finalise.
    fn run(
        mut self,
        startup_tx: &Sender<Result<Started, RecordError>>,
        stop_rx: &Receiver<()>,
        events_tx: &Sender<RecordEvent>,
    ) -> Result<Recorded, RecordError> {
        let opened = match self.open() {
            Ok(opened) => opened,
            Err(err) => {
                let _ = startup_tx.send(Err(clone_for_event(&err)));
                return Err(err);
            }
        };
        let Opened {
            stream,
            mut consumer,
            mut sink,
            fault_rx,
            device_name,
            sample_rate_hz,
            channels,
        } = opened;
        let _ = startup_tx.send(Ok(Started {
            device_name: device_name.clone(),
            wav_path: sink.path().to_owned(),
        }));
        let _ = events_tx.try_send(RecordEvent::Started {
            device_name,
            sample_rate_hz,
            channels,
        });

        let end = run_sink_loop(&mut consumer, &mut sink, stop_rx, &fault_rx, events_tx);
        // Stop the device before the last drain so no sample arrives after it.
        drop(stream);
        let end = end.and_then(|end| sink.drain(&mut consumer).map(|_| end));
        let end = match end {
            Ok(end) => end,
            Err(err) => {
                // Keep what is on disk: finalising rewrites the header for the samples written.
                let _ = sink.finish();
                return Err(err);
            }
        };
        let (parts, recorded_s) = sink.finish_parts()?;
        let path = parts.first().cloned().unwrap_or_default();
        match end {
            SinkEnd::Stopped => Ok(Recorded { parts, recorded_s }),
            SinkEnd::Fault(fault) => Err(RecordError::DeviceLost {
                message: fault.message,
                path,
                parts,
                recorded_s,
            }),
            SinkEnd::ProducerGone => Err(RecordError::DeviceLost {
                message: "the audio stream closed".into(),
                path,
                parts,
                recorded_s,
            }),
        }
    }

    fn open(&mut self) -> Result<Opened, RecordError> {
        let device_id = match &self.source {
            CaptureSource::Device(id) => id.clone(),
            CaptureSource::File(path) => return self.open_file(&path.clone()),
        };
        let device = match &device_id {
            None => cpal::default_host()
                .default_input_device()
                .ok_or(RecordError::NoInputDevice)?,
            Some(id) => find_device(id)?,
        };
        let device_name = device.description().map_or_else(
            |_| device_id.clone().unwrap_or_default(),
            |d| d.name().to_owned(),
        );
        let open_error = |err: &cpal::Error| map_open_error(&device_name, err);
        let supported = device.default_input_config().map_err(|e| open_error(&e))?;
        let config = supported.config();
        let sample_rate_hz = config.sample_rate;
        let channels = config.channels;
        let (producer, consumer) =
            rtrb::RingBuffer::<f32>::new(sample_rate_hz as usize * RING_SECONDS);
        let (fault_tx, fault_rx) = bounded::<StreamFault>(4);
        // Create the file before the stream so a bad path fails before the microphone opens.
        let mut sink = WavSink::create(&self.wav_path, sample_rate_hz, FLUSH_INTERVAL)?
            .with_part_limit(super::wav_sink::part_limit_bytes());
        if let Some(tap) = self.tap.take() {
            sink.set_tap(tap);
        }
        self.counters
            .sample_rate_hz
            .store(u64::from(sample_rate_hz), Ordering::Relaxed);
        let callback = CallbackState {
            producer,
            channels: usize::from(channels.max(1)),
            level: Arc::clone(&self.level),
            counters: Arc::clone(&self.counters),
        };
        let stream = build_stream(
            &device,
            supported.sample_format(),
            config,
            callback,
            fault_tx,
        )
        .map_err(|e| open_error(&e))?;
        stream.play().map_err(|e| open_error(&e))?;
        Ok(Opened {
            stream: Running::Device { _stream: stream },
            consumer,
            sink,
            fault_rx,
            device_name,
            sample_rate_hz,
            channels,
        })
    }

    /// A file as the microphone: decoded to 16 kHz mono, fed through the same callback.
    fn open_file(&mut self, path: &Path) -> Result<Opened, RecordError> {
        let device_name = format!("file {}", path.display());
        let audio =
            super::decode_file(path, &mut |_| {}).map_err(|err| RecordError::OpenDevice {
                device: device_name.clone(),
                message: err.to_string(),
            })?;
        let sample_rate_hz = super::MODEL_SAMPLE_RATE_HZ;
        let (producer, consumer) =
            rtrb::RingBuffer::<f32>::new(sample_rate_hz as usize * RING_SECONDS);
        // A file never faults; the sender lives as long as the player.
        let (fault_tx, fault_rx) = bounded::<StreamFault>(1);
        let mut sink = WavSink::create(&self.wav_path, sample_rate_hz, FLUSH_INTERVAL)?;
        if let Some(tap) = self.tap.take() {
            sink.set_tap(tap);
        }
        self.counters
            .sample_rate_hz
            .store(u64::from(sample_rate_hz), Ordering::Relaxed);
        let mut callback = CallbackState {
            producer,
            channels: 1,
            level: Arc::clone(&self.level),
            counters: Arc::clone(&self.counters),
        };
        let player = FilePlayer::start(audio.samples, sample_rate_hz, move |chunk| {
            let _keep = &fault_tx;
            callback.on_data(chunk);
        })
        .map_err(|message| RecordError::OpenDevice {
            device: device_name.clone(),
            message,
        })?;
        Ok(Opened {
            stream: Running::File { _player: player },
            consumer,
            sink,
            fault_rx,
            device_name,
            sample_rate_hz,
            channels: 1,
        })
    }
}

/// What delivers the audio; held, never read: dropping it stops the delivery.
enum Running {
    /// cpal calls the callback.
    Device { _stream: cpal::Stream },
    /// A thread plays a file into the callback.
    File { _player: FilePlayer },
}

struct Opened {
    stream: Running,
    consumer: rtrb::Consumer<f32>,
    sink: WavSink,
    fault_rx: Receiver<StreamFault>,
    device_name: String,
    sample_rate_hz: u32,
    channels: u16,
}

/// The device with this id, on the host the id names (`pulseaudio:…` on PulseAudio, where the
/// build has that host), else on the default host.
fn find_device(id: &str) -> Result<cpal::Device, RecordError> {
    let not_found = || RecordError::DeviceNotFound {
        device_id: id.to_owned(),
    };
    let parsed = cpal::DeviceId::from_str(id).ok();
    let host = parsed
        .as_ref()
        .and_then(|p| cpal::host_from_id(p.host()).ok())
        .unwrap_or_else(cpal::default_host);
    if let Some(device) = parsed.as_ref().and_then(|p| host.device_by_id(p)) {
        return Ok(device);
    }
    // Fall back to comparing the printed ids (covers hosts whose ids do not round-trip).
    host.input_devices()
        .map_err(|_| not_found())?
        .find(|d| d.id().is_ok_and(|d_id| d_id.to_string() == id))
        .ok_or_else(not_found)
}

fn map_open_error(device: &str, err: &cpal::Error) -> RecordError {
    let device = device.to_owned();
    let message = err.to_string();
    match err.kind() {
        cpal::ErrorKind::PermissionDenied => RecordError::PermissionDenied { device, message },
        cpal::ErrorKind::DeviceBusy => RecordError::DeviceBusy { device, message },
        cpal::ErrorKind::DeviceNotAvailable => RecordError::DeviceNotFound { device_id: device },
        _ => RecordError::OpenDevice { device, message },
    }
}

/// The state the real-time callback owns.
struct CallbackState {
    producer: rtrb::Producer<f32>,
    channels: usize,
    level: Arc<LevelMeter>,
    counters: Arc<Counters>,
}

impl CallbackState {
    /// Downmixes one callback's frames into the ring buffer. Real-time safe: no locks, no
    /// allocation, no I/O; frames that do not fit are counted as dropped.
    fn on_data<T>(&mut self, data: &[T])
    where
        T: Sample,
        f32: FromSample<T>,
    {
        let frames = data.len() / self.channels;
        let writable = frames.min(self.producer.slots());
        let scale = 1.0 / self.channels as f32;
        let mut acc = LevelAccumulator::default();
        if let Ok(chunk) = self.producer.write_chunk_uninit(writable) {
            let mono = data.chunks_exact(self.channels).map(|frame| {
                let value = frame.iter().map(|s| s.to_sample::<f32>()).sum::<f32>() * scale;
                acc.add(value);
                value
            });
            chunk.fill_from_iter(mono);
        }
        self.level.store(acc.level());
        self.counters
            .captured_frames
            .fetch_add(writable as u64, Ordering::Relaxed);
        if frames > writable {
            self.counters
                .dropped_frames
                .fetch_add((frames - writable) as u64, Ordering::Relaxed);
        }
    }
}

fn build_stream(
    device: &cpal::Device,
    format: cpal::SampleFormat,
    config: cpal::StreamConfig,
    state: CallbackState,
    fault_tx: Sender<StreamFault>,
) -> Result<cpal::Stream, cpal::Error> {
    use cpal::SampleFormat as F;
    match format {
        F::F32 => build_typed::<f32>(device, config, state, fault_tx),
        F::F64 => build_typed::<f64>(device, config, state, fault_tx),
        F::I8 => build_typed::<i8>(device, config, state, fault_tx),
        F::I16 => build_typed::<i16>(device, config, state, fault_tx),
        F::I32 => build_typed::<i32>(device, config, state, fault_tx),
        F::U8 => build_typed::<u8>(device, config, state, fault_tx),
        F::U16 => build_typed::<u16>(device, config, state, fault_tx),
        F::U32 => build_typed::<u32>(device, config, state, fault_tx),
        other => Err(cpal::Error::with_message(
            cpal::ErrorKind::UnsupportedConfig,
            format!("sample format {other} is not supported for recording"),
        )),
    }
}

fn build_typed<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut state: CallbackState,
    fault_tx: Sender<StreamFault>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _info: &cpal::InputCallbackInfo| state.on_data(data),
        move |err: cpal::Error| {
            let device_lost = matches!(
                err.kind(),
                cpal::ErrorKind::DeviceNotAvailable
                    | cpal::ErrorKind::HostUnavailable
                    | cpal::ErrorKind::StreamInvalidated
            );
            // Other errors (an xrun, a reroute) are survivable: keep recording.
            if device_lost {
                let _ = fault_tx.try_send(StreamFault {
                    device_lost,
                    message: err.to_string(),
                });
            }
        },
        None,
    )
}

/// A copy of an error for the event channel (hound/io errors are not `Clone`).
fn clone_for_event(err: &RecordError) -> RecordError {
    match err {
        RecordError::NoInputDevice => RecordError::NoInputDevice,
        RecordError::DeviceNotFound { device_id } => RecordError::DeviceNotFound {
            device_id: device_id.clone(),
        },
        RecordError::PermissionDenied { device, message } => RecordError::PermissionDenied {
            device: device.clone(),
            message: message.clone(),
        },
        RecordError::DeviceBusy { device, message } => RecordError::DeviceBusy {
            device: device.clone(),
            message: message.clone(),
        },
        RecordError::OpenDevice { device, message } => RecordError::OpenDevice {
            device: device.clone(),
            message: message.clone(),
        },
        RecordError::DeviceLost {
            message,
            path,
            parts,
            recorded_s,
        } => RecordError::DeviceLost {
            message: message.clone(),
            path: path.clone(),
            parts: parts.clone(),
            recorded_s: *recorded_s,
        },
        RecordError::CreateWav { path, source } => RecordError::CreateWav {
            path: path.clone(),
            source: hound::Error::IoError(std::io::Error::other(source.to_string())),
        },
        RecordError::WriteWav { path, source } => RecordError::WriteWav {
            path: path.clone(),
            source: hound::Error::IoError(std::io::Error::other(source.to_string())),
        },
        RecordError::Thread(message) => RecordError::Thread(message.clone()),
    }
}
