//! Everything that is PCM, with no model knowledge: decoding files to 16 kHz mono, recording
//! the microphone to a WAV file, and the live input level.
//!
//! Threads:
//! * [`decode_file`] runs on the caller's thread (the engine worker; never the UI thread) and
//!   reports progress through a callback on that same thread.
//! * [`Recorder::start`] spawns the named `audio-capture` thread, which owns the cpal stream and
//!   writes the WAV file; the UI keeps a [`RecorderHandle`] and reads its lock-free level meter.
//!
//! Typical use from the UI:
//! ```no_run
//! use gpuscribe::audio::{DeviceList, Recorder, decode_file};
//! # fn demo(wav: &std::path::Path) -> anyhow::Result<()> {
//! let devices = DeviceList::scan();                       // default device first
//! let id = devices.default_device().map(|d| d.id.clone());
//! let handle = Recorder::start(id.as_deref(), wav)?;      // returns once audio flows
//! let _level = handle.level();                            // each frame: rms/peak
//! let _secs = handle.elapsed();
//! for _event in handle.events().try_iter() { /* Saved / Failed */ }
//! let path = handle.stop()?.parts.remove(0);              // finalised WAV
//! let audio = decode_file(&path, &mut |p| println!("{:?}", p.fraction()))?;
//! assert_eq!(audio.samples.len() as f64 / 16_000.0, audio.duration_s);
//! # Ok(()) }
//! ```

pub mod decode;
pub mod devices;
pub mod level;
pub mod record;
mod record_file;
pub mod resample;
pub mod tap;
pub mod wav_repair;
pub mod wav_sink;

pub use decode::{
    DecodeError, DecodeProgress, DecodedAudio, EndedEarly, SkippedRange, decode_bytes,
    decode_bytes_to, decode_file, decode_file_to,
};
pub use devices::{DeviceList, HostDevice, InputDevice, MONITOR_NOTE, is_monitor_source};
pub use level::{Level, LevelMeter};
pub use record::{
    CaptureSource, FLUSH_INTERVAL, RecordError, RecordEvent, Recorded, Recorder, RecorderHandle,
};
pub use resample::MonoResampler;
pub use tap::{SampleTap, TapPolicy, TapReceiver};
pub use wav_repair::{WavCheck, WavRepairError, recording_parts, repair_wav, wav_duration_s};

/// The sample rate SenseVoice expects, and that [`decode_file`] produces.
pub const MODEL_SAMPLE_RATE_HZ: u32 = 16_000;
