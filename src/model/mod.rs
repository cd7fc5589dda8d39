//! Speech models. Pure computation: loading weights, features, forward passes and decoding.
//!
//! Runs on whichever thread calls it (the engine worker thread in the application); nothing
//! here spawns threads or touches the UI.

pub mod bounded;
pub mod cpu_ops;
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

/// Waits for `device`'s work and gives whatever its memory pool still holds back to the driver,
/// so that what was freed (an offloaded model, a failed pass) no longer counts as used VRAM.
/// A no-op on the CPU; failures are logged (memory stays reserved, nothing breaks).
pub fn release_device_memory(device: &candle_core::Device) {
    match device.synchronize() {
        Err(err) => tracing::warn!("device synchronize failed: {err}"),
        Ok(()) => trim_pool(device),
    }
}

/// Gives what `device`'s memory pool holds unused back to the driver (CUDA devices only).
fn trim_pool(device: &candle_core::Device) {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device
        && let Err(err) = pool::trim(cuda)
    {
        tracing::warn!("could not give the device's pooled memory back: {err}");
    }
    let _ = device;
}

/// The stream-ordered memory pool candle's allocations come from (cudarc allocates with
/// `cuMemAllocAsync` from the device's current pool). The pool keeps its default release
/// threshold (freed memory goes back to the driver at each synchronisation): keeping it for
/// reuse, as PyTorch's caching allocator does, made no measurable difference to a forward pass
/// on an H200 (BENCHMARKS.md) and would hide free VRAM from the other processes on a shared GPU.
#[cfg(feature = "cuda")]
mod pool {
    #![allow(unsafe_code)] // two driver calls on the device's own pool; see each SAFETY note.

    use candle_core::CudaDevice;
    use candle_core::cuda_backend::cudarc::driver::sys;

    fn check(what: &str, r: sys::CUresult) -> candle_core::Result<()> {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            candle_core::bail!("{what}: {r:?}")
        }
    }

    fn current_pool(cuda: &CudaDevice) -> candle_core::Result<sys::CUmemoryPool> {
        let stream = cuda.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(format!("binding the CUDA context: {e}")))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out pointer and the device ordinal is the context's own.
        check("cuDeviceGetMemPool", unsafe {
            sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device())
        })?;
        Ok(pool)
    }

    /// Gives every unused byte of the pool back to the driver (after a synchronize).
    pub fn trim(cuda: &CudaDevice) -> candle_core::Result<()> {
        let pool = current_pool(cuda)?;
        // SAFETY: the pool handle is live; trimming only releases memory no allocation holds.
        check("cuMemPoolTrimTo", unsafe { sys::cuMemPoolTrimTo(pool, 0) })?;
        // CUDA graphs keep the memory of their allocations in a pool of their own; what no
        // kept graph holds goes back too.
        let ctx = cuda.cuda_stream().context().clone();
        // SAFETY: the device ordinal is the context's own, bound to this thread above.
        check("cuDeviceGraphMemTrim", unsafe {
            sys::cuDeviceGraphMemTrim(ctx.cu_device())
        })
    }
}
