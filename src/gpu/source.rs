//! The seam between the monitor loop and whatever reads the GPUs (NVML, or a fake in tests).

use super::{DriverInfo, GpuSnapshot};

/// Something that can read every GPU once. Runs on the `gpu-monitor` thread only.
///
/// A query a GPU does not support must come back as `None` for that field, never as an error of
/// the whole device; a failure of one device belongs in its [`GpuSnapshot::error`].
pub trait GpuSource: Send + 'static {
    /// Driver facts, read once after start-up.
    fn driver_info(&mut self) -> DriverInfo;

    /// Reads every GPU. `Err` only when not even the list of GPUs could be read.
    fn sample(&mut self) -> Result<Vec<GpuSnapshot>, SampleError>;
}

/// Why NVML could not start. Each case has its own message because the user's fix differs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpuInitError {
    /// `libnvidia-ml.so.1` could not be loaded: no NVIDIA driver is installed.
    #[error("No NVIDIA driver found — transcription runs on the CPU")]
    NoDriver {
        /// The loader's message, e.g. `libnvidia-ml.so.1: cannot open shared object file`.
        detail: String,
    },
    /// The library is there but the kernel module is not loaded.
    #[error(
        "The NVIDIA driver library is installed but its kernel module is not loaded \
         (try `sudo modprobe nvidia` or reboot) — transcription runs on the CPU"
    )]
    DriverNotLoaded,
    /// The user may not open `/dev/nvidia*`.
    #[error(
        "No permission to query the NVIDIA driver (check access to /dev/nvidia*) — \
         transcription runs on the CPU"
    )]
    NoPermission,
    /// The driver lacks a function the monitor needs.
    #[error(
        "The NVIDIA driver is too old for the GPU monitor ({detail}) — transcription runs on the CPU"
    )]
    DriverTooOld {
        /// The missing symbol, as NVML reports it.
        detail: String,
    },
    /// Anything else NVML reported at start-up.
    #[error("The NVIDIA driver could not be queried ({detail}) — transcription runs on the CPU")]
    Other {
        /// NVML's message.
        detail: String,
    },
}

impl GpuInitError {
    /// A stable machine-readable code, used as `status` in `gpuscribe gpus --json`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoDriver { .. } => "no_driver",
            Self::DriverNotLoaded => "driver_not_loaded",
            Self::NoPermission => "no_permission",
            Self::DriverTooOld { .. } => "driver_too_old",
            Self::Other { .. } => "driver_error",
        }
    }

    /// Extra technical detail for logs and tooltips, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::NoDriver { detail } | Self::DriverTooOld { detail } | Self::Other { detail } => {
                Some(detail)
            }
            Self::DriverNotLoaded | Self::NoPermission => None,
        }
    }
}

/// The whole sample failed (e.g. the GPU count could not be read); the monitor retries next tick.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("reading the GPU list failed: {0}")]
pub struct SampleError(pub String);
