//! cuBLASLt matrix products with a bias (and ReLU) epilogue, with their plans kept per shape.
//!
//! cudarc's safe `Matmul` builds four descriptors and asks cuBLASLt's heuristic for an algorithm
//! on every call; over the ~280 products of a SenseVoice forward that host work left the GPU idle
//! between kernels. Here one cuBLASLt handle and workspace live per device, and each shape's
//! descriptors and chosen algorithm are made once and reused: a call only sets the bias pointer
//! and enqueues the product on candle's stream.
#![allow(unsafe_code)] // raw cuBLASLt handles and device pointers; see each SAFETY note.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use candle_core::cuda_backend::cudarc::cublaslt::result as lt;
use candle_core::cuda_backend::cudarc::cublaslt::sys;
use candle_core::cuda_backend::cudarc::driver::sys::CUdeviceptr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::{CudaDevice, DType, Result};

/// Plans kept per device before the oldest set is dropped (shapes vary with segment lengths).
const MAX_PLANS: usize = 512;
/// Workspace for cuBLASLt's kernels (NVIDIA's recommendation for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

/// One product `D[M, N] = act(X[M, K] · Wᵀ + bias) (+ C)` in row-major terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Rows of X and of the output.
    pub m: usize,
    /// Output features (rows of W).
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// f16 or bf16 for every matrix and the bias.
    pub half: Half,
    /// ReLU after the bias.
    pub relu: bool,
    /// The output buffer already holds a matrix to add (beta = 1).
    pub accumulate: bool,
}

/// The half-precision type of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    /// The half type of `dtype`, if it is one.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F16 => Some(Self::F16),
            DType::BF16 => Some(Self::Bf16),
            _ => None,
        }
    }

    fn cuda(self) -> sys::cudaDataType {
        match self {
            Self::F16 => sys::cudaDataType_t::CUDA_R_16F,
            Self::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
        }
    }
}

/// Descriptors and algorithm of one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    w: sys::cublasLtMatrixLayout_t,
    x: sys::cublasLtMatrixLayout_t,
    out: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created once in `Plan::new` and is destroyed once here;
        // errors on destruction leave nothing to recover.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            let _ = lt::destroy_matrix_layout(self.w);
            let _ = lt::destroy_matrix_layout(self.x);
            let _ = lt::destroy_matrix_layout(self.out);
        }
    }
}

/// A device's handle, workspace and plans.
struct Device {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: HashMap<Shape, Plan>,
}

// SAFETY: cuBLASLt handles and descriptors may be used from any thread as long as one thread
// uses them at a time; every use goes through the `Mutex` around `Device`.
unsafe impl Send for Device {}

fn err(e: lt::CublasError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuBLASLt: {e:?}"))
}

fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    // SAFETY: `desc` is live and `value` points at `size_of::<T>()` readable bytes of the type
    // the attribute expects (callers pass i32 flags, the epilogue enum or a device pointer).
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            (value as *const T).cast::<c_void>(),
            std::mem::size_of::<T>(),
        )
    }
    .map_err(err)
}

impl Plan {
    fn new(dev: &Device, s: Shape, bias: CUdeviceptr) -> Result<Self> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        let t = s.half.cuda();
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(err)?;
        // Column-major: outᵀ [N, M] = op(W) [N, K] × xᵀ [K, M], W stored as K × N.
        let (w, x, out) = (
            lt::create_matrix_layout(t, s.k as u64, s.n as u64, s.k as i64).map_err(err)?,
            lt::create_matrix_layout(t, s.k as u64, s.m as u64, s.k as i64).map_err(err)?,
            lt::create_matrix_layout(t, s.n as u64, s.m as u64, s.n as i64).map_err(err)?,
        );
        let mut plan = Self {
            desc,
            w,
            x,
            out,
            // SAFETY: a plain C struct of integers, filled in by the heuristic below.
            algo: unsafe { std::mem::zeroed() },
        };
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        let epilogue = if s.relu {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        };
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        set_desc(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
        let pref = lt::create_matmul_pref().map_err(err)?;
        let workspace = WORKSPACE_BYTES;
        // SAFETY: `pref` is live; the attribute is a usize byte count.
        let found = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const usize).cast::<c_void>(),
                std::mem::size_of::<usize>(),
            )
            .and_then(|()| lt::get_matmul_algo_heuristic(dev.handle, desc, w, x, out, out, pref))
        };
        // SAFETY: created above, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        plan.algo = found.map_err(err)?.algo;
        Ok(plan)
    }
}

fn devices() -> &'static Mutex<HashMap<DeviceId, Arc<Mutex<Device>>>> {
    static DEVICES: OnceLock<Mutex<HashMap<DeviceId, Arc<Mutex<Device>>>>> = OnceLock::new();
    DEVICES.get_or_init(Default::default)
}

fn device(dev: &CudaDevice) -> Result<Arc<Mutex<Device>>> {
    let mut all = devices().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(d) = all.get(&dev.id()) {
        return Ok(d.clone());
    }
    let stream = dev.cuda_stream();
    let handle = lt::create_handle().map_err(err)?;
    // SAFETY: cuBLASLt only uses the workspace as scratch memory; nothing reads it uninitialised.
    let workspace = match unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) } {
        Ok(w) => w,
        Err(e) => {
            // SAFETY: created just above and not shared.
            unsafe {
                let _ = lt::destroy_handle(handle);
            }
            return Err(e).w();
        }
    };
    let d = Arc::new(Mutex::new(Device {
        handle,
        workspace,
        stream,
        plans: HashMap::new(),
    }));
    all.insert(dev.id(), d.clone());
    Ok(d)
}

/// Enqueues `out = act(x · wᵀ + bias) (+ residual)` on `dev`'s stream; `residual` is given
/// exactly when `s.accumulate` is set.
///
/// # Safety
/// `w`, `x`, `bias`, `out` (and `residual`) must be live device buffers of `dev` of at least
/// N·K, M·K, N and M·N (M·N) elements of `s.half`'s type, used only on candle's stream of `dev`.
pub unsafe fn matmul_bias(
    dev: &CudaDevice,
    s: Shape,
    w: CUdeviceptr,
    x: CUdeviceptr,
    bias: CUdeviceptr,
    residual: Option<CUdeviceptr>,
    out: CUdeviceptr,
) -> Result<()> {
    if residual.is_some() != s.accumulate {
        candle_core::bail!("cuBLASLt: a residual must come with `accumulate` ({s:?})");
    }
    let d = device(dev)?;
    let mut d = d.lock().unwrap_or_else(PoisonError::into_inner);
    if !d.plans.contains_key(&s) {
        if d.plans.len() >= MAX_PLANS {
            d.plans.clear();
        }
        let plan = Plan::new(&d, s, bias)?;
        d.plans.insert(s, plan);
    }
    let (handle, stream) = (d.handle, d.stream.cu_stream());
    let (ws, _ws_guard) = d.workspace.device_ptr(&d.stream);
    let Some(plan) = d.plans.get(&s) else {
        candle_core::bail!("cuBLASLt plan for {s:?} vanished");
    };
    set_desc(
        plan.desc,
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
        &bias,
    )?;
    let alpha = 1.0f32;
    let beta = if s.accumulate { 1.0f32 } else { 0.0 };
    // C is read only with beta = 1 (`accumulate`); otherwise it is `out` itself, never read.
    let c = residual.unwrap_or(out);
    // SAFETY: the plan's layouts describe the buffers the caller vouches for; C and D share one
    // layout (cuBLASLt allows C and D to be the same buffer or two); the lock keeps the plan's
    // bias pointer ours until the product is enqueued.
    unsafe {
        lt::matmul(
            handle,
            plan.desc,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            w as *const c_void,
            plan.w,
            x as *const c_void,
            plan.x,
            c as *const c_void,
            plan.out,
            out as *mut c_void,
            plan.out,
            &plan.algo,
            ws as *mut c_void,
            WORKSPACE_BYTES,
            stream as sys::cudaStream_t,
        )
    }
    .map_err(err)
}
