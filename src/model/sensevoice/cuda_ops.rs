//! candle custom ops that launch the fused encoder kernels of `kernels.cu` (CUDA builds only).
//!
//! Each op checks its inputs' layouts and dtypes, allocates the output on the input's device and
//! launches one kernel on candle's stream, so it orders with every other candle op. The kernels
//! are compiled to PTX by build.rs and loaded once per device (candle caches the module).
//! [`super::fused`] picks these on CUDA devices and plain candle ops elsewhere.
#![allow(unsafe_code)] // kernel launches and uninitialised output buffers; see each SAFETY note.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr, kernel_name};
use candle_core::{CpuStorage, CudaDevice, CudaStorage, DType, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sensevoice_kernels.ptx"));
const MODULE: &str = "gpuscribe_sensevoice";
/// Threads per block of the row-wise kernels (a multiple of 32, see `block_sum`).
const ROW_THREADS: u32 = 256;
/// Channels and frames of one FSMN block (`FSMN_CH`, `FSMN_TILE` in kernels.cu).
const FSMN_CH: usize = 128;
const FSMN_TILE: usize = 32;
/// Longest row the one-warp-per-row softmax holds in registers (32 × `SOFTMAX_PER_LANE`).
const SOFTMAX_WARP_KEYS: usize = 32 * 32;
/// Float4 vectors per lane of the one-warp-per-row LayerNorm (`LN_MAX_VEC` in kernels.cu).
const LN_MAX_VEC: usize = 8;

fn cpu_unsupported<T>(name: &str) -> Result<T> {
    candle_core::bail!("{name} is a CUDA kernel; the CPU path uses candle ops")
}

fn contiguous<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous, got {layout:?}"),
    }
}

fn rows_config(rows: usize) -> Result<LaunchConfig> {
    let rows = u32::try_from(rows)
        .ok()
        .filter(|&r| r < i32::MAX as u32)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!("{rows} rows is too many for one launch"))
        })?;
    Ok(LaunchConfig {
        grid_dim: (rows.max(1), 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One warp per row, `ROW_THREADS / 32` rows a block (the `*_warp` kernels; rows past the end
/// return at once).
fn warp_rows_config(rows: usize) -> Result<LaunchConfig> {
    let warps = (ROW_THREADS / 32) as usize;
    Ok(LaunchConfig {
        grid_dim: (to_u32(rows.div_ceil(warps).max(1), "row blocks")?, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `ROW_THREADS`-thread blocks for a grid-stride loop over `n` items, at most `max_blocks`.
fn grid_stride_config(n: usize, max_blocks: usize) -> LaunchConfig {
    // Clamped below `u32::MAX`, so the cast keeps the value.
    let blocks = n
        .div_ceil(ROW_THREADS as usize)
        .clamp(1, max_blocks.min(1 << 30)) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn to_u32(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| candle_core::Error::Msg(format!("{what} {value} overflows u32")))
}

/// Allocates `len` elements the kernel will write in full.
fn output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel below writes each of the `len` elements before anything reads them.
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// Runs `$body` with `$t` bound to the Rust element type of `$dtype` (f32, f16 or bf16).
macro_rules! with_float_type {
    ($dtype:expr, $name:expr, |$t:ident| $body:block) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F16 => {
                type $t = half::f16;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => candle_core::bail!("{}: unsupported dtype {other:?}", $name),
        }
    };
}

/// FSMN memory block: `v` `[B, T, D]` (a strided view is fine as long as channels are
/// contiguous), taps `[K, D]` of the same dtype, valid lengths `[B]` u32.
pub struct Fsmn {
    /// Zero padding before the first frame (`(K - 1) / 2` plus the shift).
    pub left: usize,
}

impl candle_core::CustomOp3 for Fsmn {
    fn name(&self) -> &'static str {
        "sensevoice-fsmn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        v: &CudaStorage,
        v_l: &Layout,
        w: &CudaStorage,
        w_l: &Layout,
        lens: &CudaStorage,
        lens_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, t, d) = v_l.shape().dims3()?;
        let (k, wd) = w_l.shape().dims2()?;
        let stride = v_l.stride();
        if wd != d || stride[2] != 1 || lens_l.shape().elem_count() != b {
            candle_core::bail!(
                "fsmn: v {:?} (strides {stride:?}), taps {:?}, lengths {:?} do not match",
                v_l.shape(),
                w_l.shape(),
                lens_l.shape()
            );
        }
        if w.dtype() != v.dtype() || lens.dtype() != DType::U32 {
            candle_core::bail!(
                "fsmn: dtypes {:?}/{:?}/{:?}",
                v.dtype(),
                w.dtype(),
                lens.dtype()
            );
        }
        let dev = v.device();
        let lens = contiguous::<u32>(lens, lens_l, "fsmn lengths")?;
        let storage = with_float_type!(v.dtype(), self.name(), |T| {
            let src = v.as_cuda_slice::<T>()?.slice(v_l.start_offset()..);
            let taps = contiguous::<T>(w, w_l, "fsmn taps")?;
            let out = output::<T>(dev, b * t * d)?;
            let func = dev.get_or_load_custom_func(&kernel_name::<T>("fsmn_tiled"), MODULE, PTX)?;
            let mut launch = func.builder();
            launch.arg(&src).arg(&taps).arg(&lens).arg(&out);
            let (frames, dim, taps_n, left) = (
                to_u32(t, "frames")?,
                to_u32(d, "width")?,
                to_u32(k, "taps")?,
                to_u32(self.left, "left padding")?,
            );
            let (stride_b, stride_t) = (stride[0] as u64, stride[1] as u64);
            launch.arg(&frames).arg(&dim).arg(&taps_n).arg(&left);
            launch.arg(&stride_b).arg(&stride_t);
            let staged = (FSMN_TILE + 2 * k - 1) * FSMN_CH * std::mem::size_of::<f32>();
            if staged > 48 * 1024 || self.left >= k {
                candle_core::bail!("fsmn: {k} taps (left padding {}) do not fit", self.left);
            }
            let cfg = LaunchConfig {
                grid_dim: (
                    to_u32(d.div_ceil(FSMN_CH), "channel blocks")?,
                    to_u32(t.div_ceil(FSMN_TILE), "frame tiles")?,
                    to_u32(b.max(1), "batch")?,
                ),
                block_dim: (FSMN_CH as u32, 1, 1),
                shared_mem_bytes: staged as u32,
            };
            // SAFETY: argument types and order match `fsmn_tiled_*` in kernels.cu; the kernel
            // reads only inside `src` (frames < T, channels < D), stages `staged` bytes of shared
            // memory and writes B*T*D elements of `out`.
            unsafe { launch.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, Shape::from((b, t, d))))
    }
}

/// `x + bias` over the last axis, then ReLU if `relu`; `x` contiguous, `bias` `[D]`.
pub struct BiasAct {
    /// Apply ReLU after the bias.
    pub relu: bool,
}

impl candle_core::CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "sensevoice-bias-act"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        bias: &CudaStorage,
        bias_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = x_l.shape().dims().last().copied().unwrap_or(0);
        if bias_l.shape().elem_count() != d || bias.dtype() != x.dtype() || d == 0 {
            candle_core::bail!("bias {:?} does not fit {:?}", bias_l.shape(), x_l.shape());
        }
        let n = x_l.shape().elem_count();
        let dev = x.device();
        let storage = with_float_type!(x.dtype(), self.name(), |T| {
            let src = contiguous::<T>(x, x_l, "bias input")?;
            let b = contiguous::<T>(bias, bias_l, "bias")?;
            let out = output::<T>(dev, n)?;
            let func = dev.get_or_load_custom_func(&kernel_name::<T>("bias_act"), MODULE, PTX)?;
            let mut launch = func.builder();
            let (dim, relu) = (to_u32(d, "width")?, u32::from(self.relu));
            launch.arg(&src).arg(&b).arg(&out).arg(&dim).arg(&relu);
            // SAFETY: matches `bias_act_*`; one block per row of `d` elements, n / d rows.
            unsafe { launch.launch(rows_config(n / d)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, x_l.shape().clone()))
    }
}

/// LayerNorm of an f32 tensor over its last axis (f32 gamma and beta), written in `out_dtype`.
pub struct LayerNormTo {
    /// The variance epsilon.
    pub eps: f32,
    /// The output dtype.
    pub out_dtype: DType,
}

impl candle_core::CustomOp3 for LayerNormTo {
    fn name(&self) -> &'static str {
        "sensevoice-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        gamma: &CudaStorage,
        g_l: &Layout,
        beta: &CudaStorage,
        b_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = x_l.shape().dims().last().copied().unwrap_or(0);
        let f32s = [x.dtype(), gamma.dtype(), beta.dtype()] == [DType::F32; 3];
        if !f32s || g_l.shape().elem_count() != d || b_l.shape().elem_count() != d || d == 0 {
            candle_core::bail!("layer norm: x {:?}, gamma {:?}, beta {:?}", x_l, g_l, b_l);
        }
        let n = x_l.shape().elem_count();
        let dev = x.device();
        let src = contiguous::<f32>(x, x_l, "layer norm input")?;
        let g = contiguous::<f32>(gamma, g_l, "layer norm weight")?;
        let b = contiguous::<f32>(beta, b_l, "layer norm bias")?;
        let rows = n / d;
        let aligned = x_l.start_offset() % 4 == 0;
        let storage = with_float_type!(self.out_dtype, self.name(), |T| {
            let out = output::<T>(dev, n)?;
            if d % 128 == 0 && d <= 128 * LN_MAX_VEC && aligned {
                let name = kernel_name::<T>("layer_norm_warp");
                let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
                let mut launch = func.builder();
                let (dim, rows_u64) = (to_u32(d, "width")?, rows as u64);
                launch.arg(&src).arg(&g).arg(&b).arg(&out).arg(&dim);
                launch.arg(&self.eps).arg(&rows_u64);
                let cfg = warp_rows_config(rows)?;
                // SAFETY: matches `layer_norm_warp_*`; one warp per row of `d` (a multiple of
                // 128, at most 128 · LN_MAX_VEC) f32 values read as float4 from a 16-byte
                // aligned start; rows beyond `rows` return at once.
                unsafe { launch.launch(cfg) }.w()?;
                return Ok((
                    CudaStorage::wrap_cuda_slice(out, dev.clone()),
                    x_l.shape().clone(),
                ));
            }
            let func = dev.get_or_load_custom_func(&kernel_name::<T>("layer_norm"), MODULE, PTX)?;
            let mut launch = func.builder();
            let dim = to_u32(d, "width")?;
            launch
                .arg(&src)
                .arg(&g)
                .arg(&b)
                .arg(&out)
                .arg(&dim)
                .arg(&self.eps);
            // SAFETY: matches `layer_norm_*`; one block per row of `d` elements.
            unsafe { launch.launch(rows_config(n / d)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, x_l.shape().clone()))
    }
}

/// Whether [`AddLayerNorm`] serves rows of `dim` values (its one-warp kernel holds a row of
/// 128 · n ≤ 128 · `LN_MAX_VEC` values in registers).
pub fn add_layer_norm_fits(dim: usize) -> bool {
    dim > 0 && dim % 128 == 0 && dim <= 128 * LN_MAX_VEC
}

/// LayerNorm of `x + update` (f32 residual `x`, `update` in the output dtype, f32 gamma and
/// beta packed as `[2, D]`), written in the update's dtype; the f32 sum itself is kept for
/// [`AddLayerNorm::take_sum`] when `keep_sum` is set. One kernel where an add and a LayerNorm
/// were two (and the sum's round trip through memory).
pub struct AddLayerNorm {
    /// The variance epsilon.
    pub eps: f32,
    /// Write the sum `x + update` too.
    pub keep_sum: bool,
    sum: std::sync::Mutex<Option<(CudaStorage, Shape)>>,
}

impl AddLayerNorm {
    /// An op for one call (the sum of that call is kept in it).
    pub fn new(eps: f32, keep_sum: bool) -> Self {
        Self {
            eps,
            keep_sum,
            sum: std::sync::Mutex::new(None),
        }
    }

    /// The f32 sum of the call that ran (with `keep_sum`), as a tensor.
    pub fn take_sum(&self) -> Result<candle_core::Tensor> {
        let taken = self
            .sum
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some((storage, shape)) = taken else {
            candle_core::bail!("add + layer norm: no sum was kept");
        };
        Ok(candle_core::Tensor::from_storage(
            candle_core::Storage::Cuda(storage),
            shape,
            candle_core::op::BackpropOp::none(),
            false,
        ))
    }
}

impl candle_core::CustomOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "sensevoice-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        update: &CudaStorage,
        u_l: &Layout,
        gamma_beta: &CudaStorage,
        gb_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = x_l.shape().dims().last().copied().unwrap_or(0);
        let fits = x.dtype() == DType::F32
            && gamma_beta.dtype() == DType::F32
            && u_l.shape() == x_l.shape()
            && gb_l.shape().elem_count() == 2 * d
            && add_layer_norm_fits(d)
            && x_l.start_offset() % 4 == 0;
        if !fits {
            candle_core::bail!("add + layer norm: x {x_l:?}, update {u_l:?}, gamma/beta {gb_l:?}");
        }
        let n = x_l.shape().elem_count();
        let rows = n / d;
        let dev = x.device();
        let src = contiguous::<f32>(x, x_l, "residual")?;
        let gb = contiguous::<f32>(gamma_beta, gb_l, "layer norm weight and bias")?;
        let (sum, storage) = with_float_type!(update.dtype(), self.name(), |T| {
            let upd = contiguous::<T>(update, u_l, "update")?;
            let out = output::<T>(dev, n)?;
            let sum = if self.keep_sum {
                Some(output::<f32>(dev, n)?)
            } else {
                None
            };
            let func =
                dev.get_or_load_custom_func(&kernel_name::<T>("add_layer_norm_warp"), MODULE, PTX)?;
            let mut launch = func.builder();
            let (dim, rows_u64) = (to_u32(d, "width")?, rows as u64);
            let no_sum: u64 = 0;
            launch.arg(&src).arg(&upd).arg(&gb);
            match &sum {
                Some(sum) => launch.arg(sum),
                None => launch.arg(&no_sum),
            };
            launch.arg(&out).arg(&dim).arg(&self.eps).arg(&rows_u64);
            // SAFETY: matches `add_layer_norm_warp_*`: x, update, out (and sum) hold `rows`
            // rows of `d` values (a multiple of 128, at most 128 · LN_MAX_VEC; x read as float4
            // from a 16-byte aligned start), gamma_beta 2·d; a null sum pointer is not written.
            unsafe { launch.launch(warp_rows_config(rows)?) }.w()?;
            (
                sum.map(|s| CudaStorage::wrap_cuda_slice(s, dev.clone())),
                CudaStorage::wrap_cuda_slice(out, dev.clone()),
            )
        });
        if let Some(sum) = sum {
            *self
                .sum
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((sum, x_l.shape().clone()));
        }
        Ok((storage, x_l.shape().clone()))
    }
}

/// Softmax of attention scores `[B, H, Tq, Tk]` over keys in f32, keys at or beyond the
/// item's length (u32 `[B]`) masked out; the output keeps the scores' dtype.
pub struct MaskedSoftmax;

impl candle_core::CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "sensevoice-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        scores: &CudaStorage,
        s_l: &Layout,
        lens: &CudaStorage,
        lens_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h, tq, tk) = s_l.shape().dims4()?;
        if lens_l.shape().elem_count() != b || lens.dtype() != DType::U32 {
            candle_core::bail!("softmax: lengths {:?} for scores {:?}", lens_l, s_l);
        }
        let dev = scores.device();
        let lens = contiguous::<u32>(lens, lens_l, "softmax lengths")?;
        let storage = with_float_type!(scores.dtype(), self.name(), |T| {
            let src = contiguous::<T>(scores, s_l, "attention scores")?;
            let out = output::<T>(dev, b * h * tq * tk)?;
            let (keys, rows_per_item) = (to_u32(tk, "keys")?, to_u32(h * tq, "rows")?);
            let rows = b * h * tq;
            if tk <= SOFTMAX_WARP_KEYS {
                let name = kernel_name::<T>("masked_softmax_warp");
                let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
                let mut launch = func.builder();
                let rows_u64 = rows as u64;
                launch
                    .arg(&src)
                    .arg(&lens)
                    .arg(&out)
                    .arg(&keys)
                    .arg(&rows_per_item);
                launch.arg(&rows_u64);
                let cfg = warp_rows_config(rows)?;
                // SAFETY: matches `masked_softmax_warp_*`; one warp per row of `tk` ≤
                // SOFTMAX_WARP_KEYS keys, rows beyond `rows` return at once.
                unsafe { launch.launch(cfg) }.w()?;
            } else {
                let func =
                    dev.get_or_load_custom_func(&kernel_name::<T>("masked_softmax"), MODULE, PTX)?;
                let mut launch = func.builder();
                launch
                    .arg(&src)
                    .arg(&lens)
                    .arg(&out)
                    .arg(&keys)
                    .arg(&rows_per_item);
                // SAFETY: matches `masked_softmax_*`; one block per row of `tk` keys.
                unsafe { launch.launch(rows_config(rows)?) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, s_l.shape().clone()))
    }
}

/// `a + b` with `a` f32 and `b` any float dtype of the same shape, in f32.
pub struct AddToF32;

impl candle_core::CustomOp2 for AddToF32 {
    fn name(&self) -> &'static str {
        "sensevoice-add-to-f32"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        a_l: &Layout,
        b: &CudaStorage,
        b_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if a_l.shape() != b_l.shape() || a.dtype() != DType::F32 {
            candle_core::bail!("add: {:?} ({:?}) + {:?}", a_l, a.dtype(), b_l);
        }
        let n = a_l.shape().elem_count();
        let dev = a.device();
        let lhs = contiguous::<f32>(a, a_l, "residual")?;
        let storage = with_float_type!(b.dtype(), self.name(), |T| {
            let rhs = contiguous::<T>(b, b_l, "update")?;
            let out = output::<f32>(dev, n)?;
            let func = dev.get_or_load_custom_func(&kernel_name::<T>("add_to_f32"), MODULE, PTX)?;
            let mut launch = func.builder();
            let count = n as u64;
            launch.arg(&lhs).arg(&rhs).arg(&out).arg(&count);
            let cfg = grid_stride_config(n, 65_535);
            // SAFETY: matches `add_to_f32_*`; grid-stride loop over the n elements.
            unsafe { launch.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, a_l.shape().clone()))
    }
}

/// How attention heads move between the q/k/v projection, the attention products and
/// `linear_out`.
#[derive(Debug, Clone, Copy)]
pub enum Heads {
    /// `[B, T, 3·H·dk]` (the fused q/k/v projection) → `[3, B, H, T, dk]`.
    Split { heads: usize },
    /// `[B, H, T, dk]` → `[B, T, H·dk]`.
    Merge,
}

impl candle_core::CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "sensevoice-heads"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let size = x.dtype().size_in_bytes();
        let (batch, frames, heads, dk, shape, kernel) = match *self {
            Self::Split { heads } => {
                let (b, t, w) = x_l.shape().dims3()?;
                if heads == 0 || w % (3 * heads) != 0 {
                    candle_core::bail!("split heads: width {w} is not 3 × {heads} heads");
                }
                let dk = w / (3 * heads);
                (
                    b,
                    t,
                    heads,
                    dk,
                    Shape::from((3, b, heads, t, dk)),
                    "split_heads",
                )
            }
            Self::Merge => {
                let (b, h, t, dk) = x_l.shape().dims4()?;
                (b, t, h, dk, Shape::from((b, t, h * dk)), "merge_heads")
            }
        };
        let row_bytes = dk * size;
        let Some((start, end)) = x_l.contiguous_offsets() else {
            candle_core::bail!("{kernel}: input must be contiguous, got {x_l:?}");
        };
        if row_bytes % 16 != 0 || (start * size) % 16 != 0 {
            candle_core::bail!("{kernel}: rows of {dk} × {size} bytes are not 16-byte vectors");
        }
        let dev = x.device();
        let vectors = (end - start) * size / 16;
        let storage = with_float_type!(x.dtype(), self.name(), |T| {
            let src = x.as_cuda_slice::<T>()?.slice(start..end);
            let out = output::<T>(dev, end - start)?;
            let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
            let mut launch = func.builder();
            let (b, t, h, vpr) = (
                to_u32(batch, "batch")?,
                to_u32(frames, "frames")?,
                to_u32(heads, "heads")?,
                to_u32(row_bytes / 16, "vectors per row")?,
            );
            launch.arg(&src).arg(&out).arg(&b).arg(&t).arg(&h).arg(&vpr);
            let cfg = grid_stride_config(vectors, 1 << 20);
            // SAFETY: matches `split_heads` / `merge_heads`: both buffers hold `vectors`
            // 16-byte vectors (checked above: rows are whole vectors, the start is aligned and
            // candle's allocations are 256-byte aligned); grid-stride loop over them.
            unsafe { launch.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, shape))
    }
}

/// Head width and longest key row of [`SanmAttention`] (`ATT_DK`, `ATT_KEYS` in kernels.cu).
const ATT_DK: usize = 128;
const ATT_KEYS: usize = 512;
/// Query rows per block, threads per block and shared memory of `sanm_attention_*`
/// (`ATT_ROWS`, `ATT_WARPS`, `ATT_SMEM_BYTES`).
const ATT_ROWS: usize = 64;
const ATT_THREADS: u32 = 128;
const ATT_SMEM_BYTES: u32 =
    ((64 * (512 + 8) + 64 * (128 + 8) + 64 * (128 + 8)) * 2 + 4 * 256 * 4) as u32;
/// The compute capability the kernels were compiled for (build/ptx.rs).
const PTX_CAP: &str = env!("GPUSCRIBE_PTX_CAP");

/// Whether [`SanmAttention`] serves `frames` keys per item with heads of `dk` (and the PTX has
/// the tensor-core kernels).
pub fn attention_fits(frames: usize, dk: usize) -> bool {
    dk == ATT_DK
        && (1..=ATT_KEYS).contains(&frames)
        && PTX_CAP.parse::<u32>().is_ok_and(|c| c >= 80)
}

/// SAN-M attention in one kernel: the fused q/k/v projection `[B, T, 3·H·dk]` (f16/bf16,
/// contiguous) with valid lengths (u32 `[B]`) → the merged heads `[B, T, H·dk]`, ready for
/// `linear_out`. Same steps and roundings as split, q·kᵀ, masked softmax, attention·v, merge.
pub struct SanmAttention {
    /// Attention heads H.
    pub heads: usize,
}

impl candle_core::CustomOp2 for SanmAttention {
    fn name(&self) -> &'static str {
        "sensevoice-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        q_l: &Layout,
        lens: &CudaStorage,
        lens_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, t, w) = q_l.shape().dims3()?;
        let heads = self.heads;
        let fits = heads > 0
            && w % (3 * heads) == 0
            && attention_fits(t, w / (3 * heads))
            && matches!(qkv.dtype(), DType::F16 | DType::BF16)
            && lens.dtype() == DType::U32
            && lens_l.shape().elem_count() == b
            && q_l.start_offset() % 8 == 0;
        if !fits {
            candle_core::bail!(
                "attention: qkv {q_l:?} ({:?}), {heads} heads, lengths {lens_l:?}",
                qkv.dtype()
            );
        }
        let d = w / 3;
        let dev = qkv.device();
        let lens = contiguous::<u32>(lens, lens_l, "attention lengths")?;
        let storage = with_float_type!(qkv.dtype(), self.name(), |T| {
            let src = contiguous::<T>(qkv, q_l, "q/k/v projection")?;
            let out = output::<T>(dev, b * t * d)?;
            let func =
                dev.get_or_load_custom_func(&kernel_name::<T>("sanm_attention"), MODULE, PTX)?;
            func.set_attribute(
                candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                ATT_SMEM_BYTES as i32,
            )
            .w()?;
            let mut launch = func.builder();
            let (heads_u32, frames) = (to_u32(heads, "heads")?, to_u32(t, "frames")?);
            launch
                .arg(&src)
                .arg(&lens)
                .arg(&out)
                .arg(&heads_u32)
                .arg(&frames);
            let cfg = LaunchConfig {
                grid_dim: (
                    to_u32(t.div_ceil(ATT_ROWS), "row blocks")?,
                    to_u32(b * heads, "items × heads")?,
                    1,
                ),
                block_dim: (ATT_THREADS, 1, 1),
                shared_mem_bytes: ATT_SMEM_BYTES,
            };
            // SAFETY: matches `sanm_attention_*`: `src` holds B·T rows of 3·H·dk (dk = ATT_DK,
            // checked) starting 16-byte aligned (candle's buffers are 256-byte aligned, the
            // offset is a multiple of 8 elements), T ≤ ATT_KEYS; the kernel writes every row
            // < T of `out` (B·T·H·dk elements) and stages ATT_SMEM_BYTES of shared memory,
            // allowed by the attribute set above.
            unsafe { launch.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, Shape::from((b, t, d))))
    }
}

/// `relu?(x · Wᵀ + b)` in one cuBLASLt call (bias and ReLU in the matrix product's epilogue),
/// for f16 and bf16: `x` `[.., K]` contiguous, `W` `[N, K]`, `b` `[N]`, all of one dtype.
/// (f32 keeps candle's cuBLAS call: cuBLASLt's f32 path computes in TF32.)
pub struct LinearLt {
    /// Apply ReLU after the bias.
    pub relu: bool,
    /// Added to the product in the same call (cuBLASLt's `C` with beta = 1): a contiguous
    /// tensor of the output's shape and dtype on the same device. Not with `relu`.
    pub residual: Option<candle_core::Tensor>,
}

impl candle_core::CustomOp3 for LinearLt {
    fn name(&self) -> &'static str {
        "sensevoice-linear-lt"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        w: &CudaStorage,
        w_l: &Layout,
        bias: &CudaStorage,
        b_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let k = x_l.shape().dims().last().copied().unwrap_or(0);
        let (n, wk) = w_l.shape().dims2()?;
        let same = x.dtype() == w.dtype() && x.dtype() == bias.dtype();
        if wk != k || k == 0 || n == 0 || b_l.shape().elem_count() != n || !same {
            candle_core::bail!("linear: x {x_l:?}, weight {w_l:?}, bias {b_l:?} do not fit");
        }
        let m = x_l.shape().elem_count() / k;
        let mut dims = x_l.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        let dev = x.device();
        let Some(half) = super::cublaslt::Half::of(x.dtype()) else {
            candle_core::bail!(
                "linear: the cuBLASLt path is for f16/bf16, got {:?}",
                x.dtype()
            );
        };
        let residual = match &self.residual {
            Some(r) if self.relu => candle_core::bail!("linear: a residual with ReLU ({r:?})"),
            Some(r) => Some(r.storage_and_layout()),
            None => None,
        };
        if let Some((storage, layout)) = &residual {
            let fits = layout.shape().elem_count() == m * n && storage.dtype() == x.dtype();
            if !fits || layout.contiguous_offsets().is_none() {
                candle_core::bail!("linear: residual {layout:?} does not fit [{m}, {n}]");
            }
        }
        let shape = super::cublaslt::Shape {
            m,
            n,
            k,
            half,
            relu: self.relu,
            accumulate: residual.is_some(),
        };
        let stream = dev.cuda_stream();
        macro_rules! run {
            ($t:ty) => {{
                let a = contiguous::<$t>(w, w_l, "linear weight")?;
                let b = contiguous::<$t>(x, x_l, "linear input")?;
                let bias = contiguous::<$t>(bias, b_l, "linear bias")?;
                let out = output::<$t>(dev, m * n)?;
                let residual = match &residual {
                    Some((storage, layout)) => {
                        let candle_core::Storage::Cuda(r) = &**storage else {
                            candle_core::bail!("linear: the residual is not on the GPU");
                        };
                        Some(contiguous::<$t>(r, layout, "linear residual")?)
                    }
                    None => None,
                };
                {
                    let (a_ptr, _a) = a.device_ptr(&stream);
                    let (b_ptr, _b) = b.device_ptr(&stream);
                    let (bias_ptr, _bias) = bias.device_ptr(&stream);
                    let (out_ptr, _out) = out.device_ptr(&stream);
                    let r = residual.as_ref().map(|r| r.device_ptr(&stream));
                    // SAFETY: W is N×K, x is M×K, bias has N, out and the residual M×N
                    // elements of this type (checked above), all on this device and used on
                    // its one stream.
                    unsafe {
                        super::cublaslt::matmul_bias(
                            dev,
                            shape,
                            a_ptr,
                            b_ptr,
                            bias_ptr,
                            r.as_ref().map(|(p, _)| *p),
                            out_ptr,
                        )
                    }?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let storage = match half {
            super::cublaslt::Half::F16 => run!(half::f16),
            super::cublaslt::Half::Bf16 => run!(half::bf16),
        };
        Ok((storage, Shape::from(dims)))
    }
}

/// Index (u32) of the largest value along the last axis of a contiguous tensor, the first one
/// on ties; the output drops the last axis.
pub struct ArgmaxLast;

impl candle_core::CustomOp1 for ArgmaxLast {
    fn name(&self) -> &'static str {
        "sensevoice-argmax-last"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dims = x_l.shape().dims();
        let Some((&cols, outer)) = dims.split_last() else {
            candle_core::bail!("argmax of a scalar");
        };
        if cols == 0 {
            candle_core::bail!("argmax over an empty axis");
        }
        let rows = x_l.shape().elem_count() / cols;
        let dev = x.device();
        let storage = with_float_type!(x.dtype(), self.name(), |T| {
            let src = contiguous::<T>(x, x_l, "argmax input")?;
            let out = output::<u32>(dev, rows)?;
            let func =
                dev.get_or_load_custom_func(&kernel_name::<T>("argmax_last"), MODULE, PTX)?;
            let mut launch = func.builder();
            let cols_u32 = to_u32(cols, "columns")?;
            launch.arg(&src).arg(&out).arg(&cols_u32);
            // SAFETY: matches `argmax_last_*`; one block per row, each writes its one output.
            unsafe { launch.launch(rows_config(rows)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((storage, Shape::from(outer.to_vec())))
    }
}
