//! The messages between the engine and a worker process: one JSON object per line, requests on the
//! worker's stdin, events on its stdout. Logs go to stderr.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::transcript::{FileTranscript, Segment};

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
}

impl Default for DecodeSettings {
    fn default() -> Self {
        Self {
            language: "auto".to_owned(),
            use_itn: false,
            rich: false,
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
    /// Stop the running job at the next batch boundary.
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
    /// The user cancelled it.
    Cancelled,
    /// Anything else in the model.
    Model,
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
    /// The load failed; the worker stays up but has no model.
    LoadFailed {
        /// Why.
        message: String,
        /// Whether the device ran out of memory.
        out_of_memory: bool,
    },
    /// Weights are in host RAM.
    Offloaded {
        /// Wall time.
        ms: f64,
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
    /// A job finished.
    Done {
        /// The job.
        job_id: JobId,
        /// The transcript.
        transcript: FileTranscript,
        /// Wall time of the job.
        ms: f64,
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

/// Encodes a message as one line.
pub fn to_line<T: Serialize>(message: &T) -> String {
    // Serialising these plain enums cannot fail; fall back to an empty object rather than panic.
    let mut line = serde_json::to_string(message).unwrap_or_else(|_| "{}".to_owned());
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let line = to_line(&request);
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let back: WorkerRequest = serde_json::from_str(line.trim_end()).expect("parse");
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
