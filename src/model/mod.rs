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
        pool::keep_freed_memory(cuda)?;
    }
    Ok(device)
}

/// Waits for `device`'s work and gives the memory its pool keeps for reuse back to the driver,
/// so that what was freed (an offloaded model, a failed pass) no longer counts as used VRAM.
/// A no-op on the CPU; failures are logged (memory stays reserved, nothing breaks).
pub fn release_device_memory(device: &candle_core::Device) {
    if let Err(err) = device.synchronize() {
        tracing::warn!("device synchronize failed: {err}");
        return;
    }
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device
        && let Err(err) = pool::trim(cuda)
    {
        tracing::warn!("could not give the device's pooled memory back: {err}");
    }
}

/// The stream-ordered memory pool candle's allocations come from (cudarc allocates with
/// `cuMemAllocAsync` from the device's current pool).
///
/// By default a pool gives every freed byte back to the driver at each synchronisation, so
/// each forward pass (one sync when its ids are copied out) maps its ~1 GiB of activations
/// afresh. Keeping freed memory in the pool, as PyTorch's caching allocator does, makes that
/// reuse free; [`release_device_memory`] gives it back when the model is offloaded.
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

    /// Sets the pool's release threshold to "never" (`GPUSCRIBE_CUDA_POOL=release` keeps the
    /// driver's default of giving memory back at every synchronisation, for comparison).
    pub fn keep_freed_memory(cuda: &CudaDevice) -> candle_core::Result<()> {
        if std::env::var("GPUSCRIBE_CUDA_POOL").is_ok_and(|v| v == "release") {
            return Ok(());
        }
        let pool = current_pool(cuda)?;
        let mut threshold = u64::MAX;
        // SAFETY: the pool handle is live (the device's own); the attribute takes a cuuint64_t.
        check("cuMemPoolSetAttribute", unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        })
    }

    /// Gives every unused byte of the pool back to the driver (after a synchronize).
    pub fn trim(cuda: &CudaDevice) -> candle_core::Result<()> {
        let pool = current_pool(cuda)?;
        // SAFETY: the pool handle is live; trimming only releases memory no allocation holds.
        check("cuMemPoolTrimTo", unsafe { sys::cuMemPoolTrimTo(pool, 0) })
    }
}
