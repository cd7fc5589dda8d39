//! The messages between the engine and a worker process: one JSON object per line, requests on the
//! worker's stdin, events on its stdout. Logs go to stderr.
//!
//! Paths cross the pipe losslessly ([`wire_path`]): a file name that is not UTF-8 (a Latin-1 name
//! from an old zip file or a Windows share) arrives as the same bytes. Failures carry a typed
//! [`JobErrorKind`] or [`LoadErrorKind`]; the engine never looks inside a message's text.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::transcript::{FileTranscript, Segment, SegmentResult};

/// A job's id, unique within the app's run.
pub type JobId = u64;

/// Where a worker runs the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerDevice {
    /// The CPU.
    Cpu,
    /// A CUDA device, by its ordinal in PCI-bus order (the worker sets `CUDA_DEVICE_ORDER`).
    Cuda {
        /// CUDA ordinal.
        ordinal: usize,
        /// The GPU's UUID (for messages and markers).
        uuid: String,
    },
}

impl WorkerDevice {
    /// "CPU" or "GPU 0".
    pub fn label(&self) -> String {
        match self {
            Self::Cpu => "CPU".to_owned(),
            Self::Cuda { ordinal, .. } => format!("GPU {ordinal}"),
        }
    }
}

/// Weight precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Precision {
    /// bf16 on CUDA, f32 on the CPU.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// What a job asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeSettings {
    /// `auto`, `zh`, `en`, `yue`, `ja`, `ko`, `nospeech`.
    pub language: String,
    /// Inverse text normalisation (punctuation, numbers).
    pub use_itn: bool,
    /// Emoji for emotions and events in `text` (FunASR's `rich_transcription_postprocess`).
    pub rich: bool,
    /// Whisper: translate to English instead of transcribing.
    #[serde(default)]
    pub translate: bool,
}

impl Default for DecodeSettings {
    fn default() -> Self {
        Self {
            language: "auto".to_owned(),
            use_itn: false,
            rich: false,
            translate: false,
        }
    }
}

/// A clip of 16 kHz mono audio held in memory (live transcription), as 16-bit PCM: what a
/// recording holds on disk, and a quarter of the bytes of `f32` JSON numbers on the pipe.
/// On the wire it is one base64 string of little-endian `i16`s.
#[derive(Clone, PartialEq, Eq)]
pub struct Pcm16(Arc<[i16]>);

impl Pcm16 {
    /// Quantises `[-1, 1]` samples (out-of-range values saturate).
    pub fn from_f32(samples: &[f32]) -> Self {
        Self(
            samples
                .iter()
                .map(|&s| (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16)
                .collect(),
        )
    }

    /// The samples as `f32` in `[-1, 1)`, as the decoder produces them from a 16-bit WAV.
    pub fn to_f32(&self) -> Vec<f32> {
        self.0.iter().map(|&s| f32::from(s) / 32_768.0).collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Pcm16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pcm16({} samples)", self.0.len())
    }
}

impl Serialize for Pcm16 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|s| s.to_le_bytes()).collect();
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Pcm16 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        if bytes.len() % 2 != 0 {
            return Err(serde::de::Error::custom(
                "16-bit PCM needs an even number of bytes",
            ));
        }
        Ok(Self(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ))
    }
}

/// Engine → worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkerRequest {
    /// Read the weights from `model_dir` onto `device`.
    Load {
        /// A folder with config.yaml, am.mvn, the .bpe.model and model.pt or model.safetensors.
        #[serde(with = "wire_path")]
        model_dir: PathBuf,
        /// Where to run.
        device: WorkerDevice,
        /// Precision.
        precision: Precision,
    },
    /// Transcribe one file.
    Transcribe {
        /// The job.
        job_id: JobId,
        /// The audio file.
        #[serde(with = "wire_path")]
        path: PathBuf,
        /// Decode options.
        settings: DecodeSettings,
        /// Longest padded batch, in seconds of audio (segments × longest segment).
        batch_budget_s: f64,
    },
    /// Transcribe a clip held in memory (live transcription); answered like `Transcribe`.
    TranscribeSamples {
        /// The job.
        job_id: JobId,
        /// What messages call the clip (it has no file).
        label: String,
        /// The audio.
        pcm: Pcm16,
        /// Decode options.
        settings: DecodeSettings,
        /// Longest padded batch, in seconds of audio.
        batch_budget_s: f64,
    },
    /// Stop the running job: the worker's request reader sets a flag that the job checks between
    /// batches and inside its long loops.
    Cancel {
        /// The job.
        job_id: JobId,
    },
    /// Move the weights to host RAM and free the device memory.
    Offload,
    /// Copy the host-RAM weights back to the device.
    Restore,
    /// Exit.
    Shutdown,
}

/// Why a job failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobErrorKind {
    /// The file could not be read or decoded.
    BadInput,
    /// The device ran out of memory even at batch size 1.
    OutOfMemory,
    /// The model's files are unusable (or no model is loaded).
    BadModel,
    /// The user cancelled it.
    Cancelled,
    /// Anything else: a bug or a device fault.
    Internal,
}

/// Why loading (or restoring) the model failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadErrorKind {
    /// The device ran out of memory.
    OutOfMemory,
    /// The model's files are missing, unreadable or do not belong together.
    BadModel,
    /// The device cannot be used (no driver, no CUDA runtime, CUDA initialisation failed).
    DeviceUnavailable,
    /// Anything else.
    Internal,
}

/// Worker → engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WorkerEvent {
    /// The worker started and reads requests.
    Started {
        /// Its process id (what NVML lists).
        pid: u32,
        /// Whether it was built with CUDA.
        cuda_built: bool,
    },
    /// Weights loaded.
    Loaded {
        /// "GPU 0" or "CPU".
        device: String,
        /// "bf16", "f32", …
        dtype: String,
        /// Wall time of the load.
        load_ms: f64,
        /// Bytes of weights on the device.
        weight_bytes: u64,
    },
    /// The load or restore failed; the worker stays up but has no model on the device.
    LoadFailed {
        /// What kind of failure.
        kind: LoadErrorKind,
        /// What to tell the user.
        message: String,
    },
    /// Still working: sent during long work (decoding, batches, loading) at most about once a
    /// second, so the engine's watchdog can tell a slow worker from a hung one.
    Heartbeat {
        /// The job being worked on, if any.
        job_id: Option<JobId>,
    },
    /// Weights are in host RAM.
    Offloaded {
        /// Wall time.
        ms: f64,
    },
    /// Moving the weights to host RAM failed; they are still on the device.
    OffloadFailed {
        /// Why.
        message: String,
    },
    /// Weights are back on the device.
    Restored {
        /// Wall time.
        ms: f64,
    },
    /// Audio decoded.
    Decoded {
        /// The job.
        job_id: JobId,
        /// Decoded length.
        duration_s: f64,
        /// What was skipped while decoding (corrupt frames), if anything.
        warning: Option<String>,
    },
    /// A batch finished.
    Progress {
        /// The job.
        job_id: JobId,
        /// Seconds of audio transcribed so far.
        done_s: f64,
        /// Seconds in the file.
        total_s: f64,
        /// New segments, in time order within this batch.
        segments: Vec<Segment>,
    },
    /// Out of memory at `batch` items; retrying with `next_batch`.
    BatchReduced {
        /// The job.
        job_id: JobId,
        /// The batch size that failed.
        batch: usize,
        /// The one tried next.
        next_batch: usize,
    },
    /// Segments whose results are final, in time order and following those sent before: the
    /// transcript goes out in these pieces as the file is transcribed, so no line grows with the
    /// file's length. (`Progress` carries a batch's segments as soon as it ran, for display;
    /// these come in the file's order, with text, token and word times.)
    Transcribed {
        /// The job.
        job_id: JobId,
        /// The results, with times from the file's start.
        results: Vec<SegmentResult>,
    },
    /// A job finished.
    Done {
        /// The job.
        job_id: JobId,
        /// The transcript. Its `path` is only a label here (lossy for a non-UTF-8 name): the
        /// engine puts back the job's own path. With `streamed`, only what is global (path,
        /// length, the file's tags): text, segments, tokens and words came in `Transcribed`.
        transcript: FileTranscript,
        /// Wall time of the job.
        ms: f64,
        /// The results came in `Transcribed` events (absent, from a worker that sends the
        /// whole transcript here: `false`).
        #[serde(default)]
        streamed: bool,
    },
    /// A job failed.
    JobFailed {
        /// The job.
        job_id: JobId,
        /// Why.
        kind: JobErrorKind,
        /// What to tell the user (names the file).
        message: String,
    },
}

/// Encodes a message as one line. Fails only for a value JSON cannot hold (a map with
/// non-string keys, a non-finite float is written as `null`); the callers report it.
pub fn to_line<T: Serialize>(message: &T) -> serde_json::Result<String> {
    let mut line = serde_json::to_string(message)?;
    line.push('\n');
    Ok(line)
}

/// Decodes one line (without its newline) of bytes: a message, or why it is not one.
pub fn from_line<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    let text =
        std::str::from_utf8(line).map_err(|err| format!("a line that is not UTF-8 ({err})"))?;
    serde_json::from_str(text.trim_end_matches('\r'))
        .map_err(|err| format!("a line that is not a protocol message ({err})"))
}

/// Paths on the wire, losslessly: a UTF-8 path is a JSON string; any other is
/// `{"bytes": [..]}` with the OS bytes (Unix) or `{"wide": [..]}` with the UTF-16 units
/// (Windows). Readers accept all three forms.
pub mod wire_path {
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Bytes { bytes: Vec<u8> },
        Wide { wide: Vec<u16> },
    }

    /// Writes `path`.
    pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match path.to_str() {
            Some(text) => Wire::Text(text.to_owned()),
            None => raw(path),
        };
        wire.serialize(serializer)
    }

    #[cfg(unix)]
    fn raw(path: &Path) -> Wire {
        use std::os::unix::ffi::OsStrExt as _;
        Wire::Bytes {
            bytes: path.as_os_str().as_bytes().to_vec(),
        }
    }

    #[cfg(windows)]
    fn raw(path: &Path) -> Wire {
        use std::os::windows::ffi::OsStrExt as _;
        Wire::Wide {
            wide: path.as_os_str().encode_wide().collect(),
        }
    }

    #[cfg(not(any(unix, windows)))]
    fn raw(path: &Path) -> Wire {
        Wire::Text(path.to_string_lossy().into_owned())
    }

    /// Reads a path.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
        match Wire::deserialize(deserializer)? {
            Wire::Text(text) => Ok(PathBuf::from(text)),
            Wire::Bytes { bytes } => from_bytes(bytes).map_err(serde::de::Error::custom),
            Wire::Wide { wide } => from_wide(&wide).map_err(serde::de::Error::custom),
        }
    }

    #[cfg(unix)]
    fn from_bytes(bytes: Vec<u8>) -> Result<PathBuf, &'static str> {
        use std::os::unix::ffi::OsStringExt as _;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }

    #[cfg(not(unix))]
    fn from_bytes(bytes: Vec<u8>) -> Result<PathBuf, &'static str> {
        String::from_utf8(bytes)
            .map(PathBuf::from)
            .map_err(|_| "a path of bytes that is not UTF-8 on a system without byte paths")
    }

    #[cfg(windows)]
    fn from_wide(wide: &[u16]) -> Result<PathBuf, &'static str> {
        use std::os::windows::ffi::OsStringExt as _;
        Ok(PathBuf::from(std::ffi::OsString::from_wide(wide)))
    }

    #[cfg(not(windows))]
    fn from_wide(wide: &[u16]) -> Result<PathBuf, &'static str> {
        String::from_utf16(wide)
            .map(PathBuf::from)
            .map_err(|_| "a UTF-16 path that is not valid on this system")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn os_path(bytes: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt as _;
        PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_cross_the_pipe_unchanged() {
        // "café.wav" in Latin-1, and bytes that are no encoding at all, in files and the model folder.
        let latin1 = os_path(b"/audio/caf\xe9.wav");
        let garbage = os_path(b"/audio/\xff\xfe\x80name\n.wav");
        let model = os_path(b"/models/mod\xe8le");
        let requests = [
            WorkerRequest::Transcribe {
                job_id: 1,
                path: latin1.clone(),
                settings: DecodeSettings::default(),
                batch_budget_s: 30.0,
            },
            WorkerRequest::Transcribe {
                job_id: 2,
                path: garbage,
                settings: DecodeSettings::default(),
                batch_budget_s: 30.0,
            },
            WorkerRequest::Load {
                model_dir: model,
                device: WorkerDevice::Cpu,
                precision: Precision::Auto,
            },
        ];
        for request in requests {
            let line = to_line(&request).expect("encodes");
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            assert!(line.contains("\"bytes\""), "{line}");
            let back: WorkerRequest = from_line(line.trim_end().as_bytes()).expect("parse");
            assert_eq!(back, request);
        }
        let WorkerRequest::Transcribe { path, .. } = from_line::<WorkerRequest>(
            to_line(&WorkerRequest::Transcribe {
                job_id: 1,
                path: latin1.clone(),
                settings: DecodeSettings::default(),
                batch_budget_s: 1.0,
            })
            .expect("encodes")
            .trim_end()
            .as_bytes(),
        )
        .expect("parse") else {
            panic!("not a transcribe request");
        };
        use std::os::unix::ffi::OsStrExt as _;
        assert_eq!(path.as_os_str().as_bytes(), b"/audio/caf\xe9.wav");
        assert_ne!(path, PathBuf::from("/audio/caf\u{e9}.wav"));
    }

    #[test]
    fn a_line_that_is_not_utf8_or_not_a_message_is_an_error() {
        assert!(from_line::<WorkerEvent>(b"\xff\xfe{}").is_err());
        assert!(from_line::<WorkerEvent>(b"hello").is_err());
        assert!(from_line::<WorkerEvent>(b"{\"Heartbeat\":{\"job_id\":3}}").is_ok());
    }

    #[test]
    fn messages_round_trip_as_single_lines() {
        let requests = [
            WorkerRequest::Load {
                model_dir: "/m".into(),
                device: WorkerDevice::Cuda {
                    ordinal: 1,
                    uuid: "GPU-1".into(),
                },
                precision: Precision::Bf16,
            },
            WorkerRequest::Transcribe {
                job_id: 7,
                path: "/a\nb.wav".into(),
                settings: DecodeSettings::default(),
                batch_budget_s: 120.0,
            },
            WorkerRequest::TranscribeSamples {
                job_id: 8,
                label: "live 0.0–1.0 s".into(),
                pcm: Pcm16::from_f32(&[0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -0.25]),
                settings: DecodeSettings::default(),
                batch_budget_s: 30.0,
            },
            WorkerRequest::Shutdown,
        ];
        for request in requests {
            let line = to_line(&request).expect("encodes");
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let back: WorkerRequest = from_line(line.trim_end().as_bytes()).expect("parse");
            assert_eq!(back, request);
        }
    }

    #[test]
    fn pcm16_round_trips_16_bit_samples_exactly_and_rejects_odd_bytes() {
        let original: Vec<f32> = [-32_768i16, -1, 0, 1, 12_345, 32_767]
            .iter()
            .map(|&s| f32::from(s) / 32_768.0)
            .collect();
        let pcm = Pcm16::from_f32(&original);
        let json = serde_json::to_string(&pcm).expect("serialise");
        let back: Pcm16 = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.to_f32(), original);
        assert_eq!(
            Pcm16::from_f32(&[3.0, -3.0]).to_f32(),
            [32_767.0 / 32_768.0, -1.0]
        );
        let err = serde_json::from_str::<Pcm16>("\"AAEC\"").expect_err("3 bytes");
        assert!(err.to_string().contains("even number"), "{err}");
    }
}
