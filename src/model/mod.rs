//! Speech models. Pure computation: loading weights, features, forward passes and decoding.
//!
//! Runs on whichever thread calls it (the engine worker thread in the application); nothing
//! here spawns threads or touches the UI.

pub mod bounded;
pub mod files;
pub mod pickle;
pub mod pth;
pub mod sensevoice;
pub mod whisper;

/// A candle CUDA device on GPU `ordinal`, with cudarc's per-buffer event tracking off.
///
/// candle runs everything of a device on one stream, but as soon as a context has a stream of
/// its own cudarc records and waits on two CUDA events around every kernel argument of every
/// launch, which costs host time on each of the ~1,500 launches of a SenseVoice forward. Every
/// buffer this project makes on the device is used on candle's one stream (cuBLASLt included),
/// so the tracking orders nothing.
pub fn cuda_device(ordinal: usize) -> candle_core::Result<candle_core::Device> {
    let device = candle_core::Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = &device {
        // SAFETY: see above; it is called before any tensor exists on the device, and nothing
        // here uses a second stream.
        #[allow(unsafe_code)]
        unsafe {
            cuda.disable_event_tracking()
        };
    }
    Ok(device)
}
