//! The messages between the engine and a worker process: one JSON object per line, requests on the
//! worker's stdin, events on its stdout. Logs go to stderr.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
            WorkerRequest::Shutdown,
        ];
        for request in requests {
            let line = to_line(&request);
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let back: WorkerRequest = serde_json::from_str(line.trim_end()).expect("parse");
            assert_eq!(back, request);
        }
    }
}
