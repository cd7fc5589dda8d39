//! The encoder's `x · Wᵀ` products on the CPU with Intel AMX tiles (f32 in, f32 out).
//!
//! AMX multiplies bf16 tiles into f32 accumulators (`tdpbf16ps`: a 16 × 16 f32 tile += a
//! 16 × 32 bf16 tile times a 32 × 16 bf16 tile). Two precisions:
//!
//! - [`CpuMatmul::Bf16x3`]: each f32 is split into `hi = bf16(x)` and `lo = bf16(x - hi)`, and
//!   `C = Ah·Bh + Al·Bh + Ah·Bl` (only `Al·Bl`, about 2⁻¹⁸ of each product, is left out), with f32
//!   accumulation: close to an f32 product (about 1e-6 relative), three tile products per step.
//! - [`CpuMatmul::Bf16`]: one product of the rounded operands (about 3e-3 relative per element).
//!
//! The weights are fixed: [`PackedWeight::pack`] rounds and lays them out once at load, in the
//! tiles' VNNI order (row `p` of a 32 × 16 B tile holds `B[2p][n], B[2p + 1][n]` for each `n`).
//! Activations are split and laid out per call (O(M·K), a small part of the O(M·N·K) product).
//! The output columns are shared out over rayon's global pool (the one the rest of the forward
//! uses), each task loading its own tile configuration.
//!
//! The tile instructions are not in stable Rust's `core::arch`, so they are written with `asm!`
//! and only reached after [`amx_available`] has seen them in CPUID and Linux has granted the
//! process the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`; without it they fault).
//! Anywhere else [`CpuMatmul::resolve`] falls back to candle's f32 product.
//!
//! [`CpuMatmul::Avx512`] is the f32 product of `super::cpu_f32` (an AVX-512 micro-kernel), which
//! any AVX-512 CPU runs: the default.
#![allow(unsafe_code)] // tile instructions and `#[target_feature]` code after runtime detection

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::Linear;
use rayon::prelude::*;

/// Environment variable that picks the CPU matrix product: `f32`, `avx512`, `bf16x3` or `bf16`.
pub const ENV_VAR: &str = "GPUSCRIBE_CPU_MATMUL";

/// How the f32 model's linear layers multiply on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMatmul {
    /// candle's f32 product (gemm).
    F32,
    /// f32 through this crate's AVX-512 micro-kernel (`cpu_f32`), on any AVX-512F CPU.
    Avx512,
    /// AMX with split bf16 operands, f32-level accuracy.
    Bf16x3,
    /// AMX with bf16 operands (a lower precision).
    Bf16,
}

impl CpuMatmul {
    /// The default when [`ENV_VAR`] is unset: the AVX-512 f32 kernel (candle's f32 product on
    /// CPUs without AVX-512F, see [`Self::resolve`]). On the idle 2-core development machine
    /// (BENCHMARKS.md) it made a 30 s segment's forward 1.2–1.3× faster than candle's product with
    /// the same f32 accuracy. The AMX products stay a choice: `bf16x3` was no faster than f32
    /// there, and `bf16` is a lower precision.
    pub const DEFAULT: Self = Self::Avx512;

    /// Parses a setting value (`f32`, `avx512`, `bf16x3`, `bf16`).
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "avx512" => Ok(Self::Avx512),
            "bf16x3" => Ok(Self::Bf16x3),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "{ENV_VAR}={other:?}: expected one of f32, avx512, bf16x3, bf16"
            )),
        }
    }

    /// The name [`Self::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Avx512 => "avx512",
            Self::Bf16x3 => "bf16x3",
            Self::Bf16 => "bf16",
        }
    }

    /// The setting from [`ENV_VAR`] (read once), or [`Self::DEFAULT`]. An unknown value is
    /// reported once and treated as unset.
    pub fn from_env() -> Self {
        static MODE: OnceLock<CpuMatmul> = OnceLock::new();
        *MODE.get_or_init(|| match std::env::var(ENV_VAR) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).unwrap_or_else(|e| {
                tracing::warn!("{e}; using {}", Self::DEFAULT.name());
                Self::DEFAULT
            }),
            _ => Self::DEFAULT,
        })
    }

    /// What this setting runs as on this machine: an AMX mode falls back to [`Self::F32`] when
    /// the CPU or the kernel offers no AMX, [`Self::Avx512`] where the CPU has no AVX-512F.
    pub fn resolve(self) -> Self {
        match self {
            Self::F32 => Self::F32,
            Self::Avx512 if super::cpu_f32::available() => Self::Avx512,
            Self::Bf16x3 | Self::Bf16 if amx_available() => self,
            _ => Self::F32,
        }
    }
}

/// Whether the AMX kernels can run here: the CPU has AMX-TILE, AMX-BF16 and AVX-512 (for the
/// conversions), and Linux granted this process the tile data state. Checked once.
pub fn amx_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| match detect() {
        Ok(()) => true,
        Err(why) => {
            tracing::info!("CPU matrix products: no AMX ({why}); f32 gemm");
            false
        }
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> std::result::Result<(), String> {
    use std::arch::x86_64::__cpuid_count;
    let max_leaf = __cpuid_count(0, 0).eax;
    if max_leaf < 7 {
        return Err(format!("CPUID has no leaf 7 (max {max_leaf})"));
    }
    let edx = __cpuid_count(7, 0).edx;
    let (bf16, tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
    if !(bf16 && tile) {
        return Err(format!("CPUID: amx-bf16 {bf16}, amx-tile {tile}"));
    }
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl"))
    {
        return Err("no AVX-512F/BW/VL".to_owned());
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permission to use the
    // tile data state; it takes no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        return Err(format!(
            "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> std::result::Result<(), String> {
    Err("AMX kernels are built for x86-64 Linux only".to_owned())
}

/// bf16 elements per tile (16 rows × 32).
const TILE: usize = 512;
/// Rows of A (and of C) per tile.
const TM: usize = 16;
/// bf16 elements of K per tile.
const TK: usize = 32;
/// Columns of B (and of C) per tile.
const TN: usize = 16;

/// bf16 tiles per f32 tile: `hi`, then `lo` when `split`.
#[inline(always)]
const fn bf16_parts(split: bool) -> usize {
    if split { 2 } else { 1 }
}

/// A weight `W` `[N, K]` (f32) rounded and laid out for `x · Wᵀ` with AMX.
///
/// Tiles are ordered by pairs of 16-column blocks `np`, then by K block `kb`; each step holds
/// `hi` of both column blocks, then (bf16x3) `lo` of both: the kernel reads them in order.
pub struct PackedWeight {
    n: usize,
    k: usize,
    k_blocks: usize,
    n_pairs: usize,
    split: bool,
    tiles: Vec<u16>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

/// f32 → bf16 bits, rounded to nearest even (NaN stays NaN).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `(bf16(x), bf16(x - bf16(x)))`; the low part is 0 where the high part is not finite.
#[inline(always)]
fn split_bf16(x: f32) -> (u16, u16) {
    let hi = bf16_bits(x);
    let h = bf16_to_f32(hi);
    let lo = if h.is_finite() { bf16_bits(x - h) } else { 0 };
    (hi, lo)
}

/// Splits (or rounds) 512 f32 values into bf16 `hi` and `lo`, in place order.
#[inline(always)]
fn split_values(src: &[f32; TILE], hi: &mut [u16; TILE], lo: &mut [u16; TILE], split: bool) {
    if split {
        for ((h, l), &x) in hi.iter_mut().zip(lo.iter_mut()).zip(src) {
            (*h, *l) = split_bf16(x);
        }
    } else {
        for (h, &x) in hi.iter_mut().zip(src) {
            *h = bf16_bits(x);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn pack_weight_panel_v4(w: &[f32], n: usize, k: usize, np: usize, split: bool, panel: &mut [u16]) {
    pack_weight_panel(w, n, k, np, split, panel);
}

/// Packs column pair `np` of `w` `[n, k]` into `panel` (all K steps): each 32 × 16 tile is
/// gathered as 16 columns × 32 K values, split, then written in VNNI order.
#[inline(always)]
fn pack_weight_panel(w: &[f32], n: usize, k: usize, np: usize, split: bool, panel: &mut [u16]) {
    let parts = bf16_parts(split);
    let step = 2 * parts * TILE;
    let mut vals = [0f32; TILE];
    let mut hi = [0u16; TILE];
    let mut lo = [0u16; TILE];
    for (kb, block) in panel.chunks_exact_mut(step).enumerate() {
        let k0 = kb * TK;
        let width = TK.min(k - k0);
        for half in 0..2 {
            // vals[c * 32 + kk] = W[col c][k0 + kk], zero outside W.
            for c in 0..TN {
                let col = (2 * np + half) * TN + c;
                let dst = &mut vals[c * TK..(c + 1) * TK];
                if col < n {
                    dst[..width].copy_from_slice(&w[col * k + k0..col * k + k0 + width]);
                    dst[width..].fill(0.0);
                } else {
                    dst.fill(0.0);
                }
            }
            split_values(&vals, &mut hi, &mut lo, split);
            vnni(&hi, &mut block[half * TILE..(half + 1) * TILE]);
            if split {
                vnni(&lo, &mut block[(2 + half) * TILE..(3 + half) * TILE]);
            }
        }
    }
}

/// Writes `vals` (16 columns × 32 K values) into `tile` in VNNI order: tile row kk / 2,
/// element 2c + kk % 2.
#[inline(always)]
fn vnni(vals: &[u16; TILE], tile: &mut [u16]) {
    for c in 0..TN {
        for p in 0..TK / 2 {
            tile[p * TK + 2 * c] = vals[c * TK + 2 * p];
            tile[p * TK + 2 * c + 1] = vals[c * TK + 2 * p + 1];
        }
    }
}

impl PackedWeight {
    /// Packs `weight` `[N, K]` (f32, CPU) for `mode` (an AMX mode).
    pub fn pack(weight: &Tensor, mode: CpuMatmul) -> Result<Self> {
        let split = match mode {
            CpuMatmul::Bf16x3 => true,
            CpuMatmul::Bf16 => false,
            CpuMatmul::F32 | CpuMatmul::Avx512 => {
                candle_core::bail!("PackedWeight::pack: f32 needs no AMX packing")
            }
        };
        let (n, k) = weight.dims2()?;
        if n == 0 || k == 0 {
            candle_core::bail!("PackedWeight::pack: empty weight {:?}", weight.dims());
        }
        let w = weight.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("PackedWeight::pack takes a CPU tensor");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("PackedWeight::pack: weight not contiguous");
        };
        let w = &cpu.as_slice::<f32>()?[start..end];
        Ok(Self::pack_slice(w, n, k, split))
    }

    /// Packs `w` (`[n, k]` row-major f32, both non-zero), split into `hi + lo` when `split`.
    fn pack_slice(w: &[f32], n: usize, k: usize, split: bool) -> Self {
        let k_blocks = k.div_ceil(TK);
        let n_pairs = n.div_ceil(2 * TN);
        let parts = bf16_parts(split);
        let step = 2 * parts * TILE;
        let mut tiles = vec![0u16; n_pairs * k_blocks * step];
        tiles
            .par_chunks_mut(k_blocks * step)
            .enumerate()
            .for_each(|(np, panel)| {
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: packing runs only where `amx_available` (checked by `Projection`
                    // and `matmul_nt`, and AMX CPUs have AVX-512F/BW/VL, which it checks too);
                    // without it the plain loop below runs.
                    if amx_available() {
                        return unsafe { pack_weight_panel_v4(w, n, k, np, split, panel) };
                    }
                }
                pack_weight_panel(w, n, k, np, split, panel);
            });
        Self {
            n,
            k,
            k_blocks,
            n_pairs,
            split,
            tiles,
        }
    }

    /// Output columns N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `x · Wᵀ` for `x` `[.., K]` (f32, CPU) → `[.., N]` f32.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("cpu_matmul: a scalar input");
        };
        if k != self.k {
            candle_core::bail!("cpu_matmul: input width {k}, weight takes {}", self.k);
        }
        let m: usize = lead.iter().product();
        let mut out_dims = lead.to_vec();
        out_dims.push(self.n);
        if m == 0 {
            return Tensor::zeros(out_dims, DType::F32, x.device());
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("cpu_matmul takes a CPU tensor");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cpu_matmul: input not contiguous");
        };
        let a = &cpu.as_slice::<f32>()?[start..end];
        if !amx_available() {
            candle_core::bail!("cpu_matmul: AMX is not available on this machine");
        }
        let mut out = Vec::new();
        self.product(a, m, &mut out);
        Tensor::from_vec(out, out_dims, x.device())
    }

    /// Appends `a · Wᵀ` (`[m, n]`, row-major) to `dst` for `a` `[m, k]` (`m > 0`; AMX available).
    fn product(&self, a: &[f32], m: usize, dst: &mut Vec<f32>) {
        let k = self.k;
        let m_pairs = m.div_ceil(2 * TM);
        // Rows padded to the row pairs, columns to the column pairs: every tile is stored whole.
        let n_pad = self.n_pairs * 2 * TN;
        let mut out = vec![0f32; m_pairs * 2 * TM * n_pad];
        SCRATCH.with(|cell| {
            let mut scratch = cell.take();
            let parts = bf16_parts(self.split);
            let len = m_pairs * 2 * self.k_blocks * parts * TILE;
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            let packed = &mut scratch[..len];
            pack_rows(a, k, m, self.k_blocks, self.split, packed);
            self.multiply(packed, m_pairs, &mut out);
            cell.set(scratch);
        });
        if dst.is_empty() && n_pad == self.n {
            out.truncate(m * self.n);
            *dst = out;
        } else {
            dst.reserve(m * self.n);
            for row in out.chunks_exact(n_pad).take(m) {
                dst.extend_from_slice(&row[..self.n]);
            }
        }
    }

    /// C = A·Wᵀ over the packed rows `a` (`m_pairs` pairs of 16-row blocks) into `out`
    /// (`m_pairs * 32` rows of `n_pairs * 32` columns).
    fn multiply(&self, a: &[u16], m_pairs: usize, out: &mut [f32]) {
        let parts = bf16_parts(self.split);
        // Column pairs per task: the task's share of one K chunk of the weights stays within
        // ~512 KiB (L2), and there are a few tasks per thread to balance.
        let chunk_bytes = K_CHUNK.min(self.k_blocks) * 2 * parts * TILE * 2;
        let by_cache = (512 * 1024 / chunk_bytes).max(1);
        let by_threads = self
            .n_pairs
            .div_ceil(2 * rayon::current_num_threads())
            .max(1);
        let group = by_cache.min(by_threads);
        assert!(
            out.len() >= m_pairs * 2 * TM * self.n_pairs * 2 * TN,
            "output size"
        );
        assert!(
            a.len() >= m_pairs * 2 * self.k_blocks * parts * TILE,
            "input size"
        );
        let out_ptr = SendPtr(out.as_mut_ptr());
        let groups = self.n_pairs.div_ceil(group);
        (0..groups).into_par_iter().for_each(|g| {
            let np_range = g * group..((g + 1) * group).min(self.n_pairs);
            // SAFETY: `amx_available` held (checked by the caller); each task writes only the
            // output columns of its own column pairs, so tasks never touch the same element;
            // the sizes asserted above cover every tile access (see `task`).
            unsafe {
                self.task(a, m_pairs, np_range, out_ptr);
            }
        });
    }

    /// One task: every row pair times the column pairs `np_range`, K chunk by K chunk, so that
    /// a row pair's chunk of A (32 KiB) stays in L1 across the column pairs and the column
    /// pairs' chunk of the weights in L2 across the row pairs. C lives in `out` between chunks.
    ///
    /// # Safety
    /// AMX must be available and granted; `a` and `out` sized as [`Self::multiply`] asserts;
    /// no other task touches these columns of `out`.
    unsafe fn task(
        &self,
        a: &[u16],
        m_pairs: usize,
        np_range: std::ops::Range<usize>,
        out: SendPtr,
    ) {
        let cfg = TileConfig::new();
        let parts = bf16_parts(self.split);
        let a_block = self.k_blocks * parts * TILE; // one 16-row block of A
        let b_panel = self.k_blocks * 2 * parts * TILE; // one column pair of B
        let ld = self.n_pairs * 2 * TN;
        let stride = ld * 4;
        // SAFETY: the caller guarantees AMX; the configuration is a valid palette-1 layout.
        unsafe { cfg.load() };
        for kc in (0..self.k_blocks).step_by(K_CHUNK) {
            let steps = K_CHUNK.min(self.k_blocks - kc);
            for mp in 0..m_pairs {
                // SAFETY (all pointer arithmetic below): offsets stay inside `a`, `self.tiles`
                // and `out` by the sizes `multiply` asserted; the kernel reads `steps` K steps.
                let a0 = unsafe { a.as_ptr().add(2 * mp * a_block + kc * parts * TILE) };
                let a1 = unsafe { a0.add(a_block) };
                for np in np_range.clone() {
                    let b = unsafe {
                        self.tiles
                            .as_ptr()
                            .add(np * b_panel + kc * 2 * parts * TILE)
                    };
                    let c = unsafe { out.0.add(2 * mp * TM * ld + np * 2 * TN) };
                    let c = [c, unsafe { c.add(TN) }, unsafe { c.add(TM * ld) }, unsafe {
                        c.add(TM * ld + TN)
                    }];
                    unsafe {
                        if kc == 0 {
                            zero_c();
                        } else {
                            load_c(c, stride);
                        }
                        block(a0, a1, b, steps, self.split);
                        store_c(c, stride);
                    }
                }
            }
        }
        // SAFETY: releases this thread's tile state (AMX available, as above).
        unsafe { tile_release() };
    }
}

/// K steps (of 32) per chunk: a row pair's chunk of split A is 8 × 4 KiB.
const K_CHUNK: usize = 8;

thread_local! {
    /// The split activations of the last call on this thread, reused to skip page faults.
    static SCRATCH: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint columns through it (see `PackedWeight::multiply`).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Lays out `a` `[m, k]` as tiles: per 16-row block, per K block, `hi` (then `lo` when `split`),
/// zero past `m` and `k`. `out` holds `m_pairs * 2` row blocks.
fn pack_rows(a: &[f32], k: usize, m: usize, k_blocks: usize, split: bool, out: &mut [u16]) {
    let parts = bf16_parts(split);
    let a_block = k_blocks * parts * TILE;
    out.par_chunks_mut(a_block)
        .enumerate()
        .for_each(|(mb, block)| {
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: only reached after `amx_available` saw AVX-512F/BW/VL.
                unsafe { pack_row_block_v4(a, k, m, mb, split, block) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            pack_row_block(a, k, m, mb, split, block)
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn pack_row_block_v4(a: &[f32], k: usize, m: usize, mb: usize, split: bool, block: &mut [u16]) {
    pack_row_block(a, k, m, mb, split, block);
}

#[inline(always)]
fn pack_row_block(a: &[f32], k: usize, m: usize, mb: usize, split: bool, block: &mut [u16]) {
    let parts = bf16_parts(split);
    for (kb, step) in block.chunks_exact_mut(parts * TILE).enumerate() {
        let (hi, lo) = step.split_at_mut(TILE);
        for r in 0..TM {
            let row = mb * TM + r;
            let dst_hi = &mut hi[r * TK..(r + 1) * TK];
            let k0 = kb * TK;
            let width = if row < m { TK.min(k - k0) } else { 0 };
            let src = if width > 0 {
                &a[row * k + k0..row * k + k0 + width]
            } else {
                &[][..]
            };
            if split {
                let dst_lo = &mut lo[r * TK..(r + 1) * TK];
                for ((h, l), &x) in dst_hi.iter_mut().zip(dst_lo.iter_mut()).zip(src) {
                    (*h, *l) = split_bf16(x);
                }
                dst_hi[width..].fill(0);
                dst_lo[width..].fill(0);
            } else {
                for (h, &x) in dst_hi.iter_mut().zip(src) {
                    *h = bf16_bits(x);
                }
                dst_hi[width..].fill(0);
            }
        }
    }
}

/// The palette-1 configuration: tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little endian)
            c[48 + t] = TM as u8; // rows
        }
        Self(c)
    }

    /// # Safety
    /// AMX must be available and granted to the process.
    unsafe fn load(&self) {
        // SAFETY: the caller guarantees AMX; `self` is a 64-byte configuration.
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) self.0.as_ptr(), options(nostack));
        }
    }
}

/// # Safety
/// AMX must be available and granted.
unsafe fn tile_release() {
    // SAFETY: the caller guarantees AMX.
    unsafe { std::arch::asm!("tilerelease", options(nostack)) };
}

/// `tileloadd`: tile `$t` from `$p`, `$s` bytes between rows.
macro_rules! tile_load {
    ($t:literal, $p:expr, $s:expr) => {
        std::arch::asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p,
            s = in(reg) $s,
            options(nostack)
        )
    };
}

/// `tilestored`: tile `$t` to `$p`, `$s` bytes between rows.
macro_rules! tile_store {
    ($t:literal, $p:expr, $s:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $p,
            s = in(reg) $s,
            options(nostack)
        )
    };
}

macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack)
        )
    };
}

/// Loads A tiles 4 and 5 from `a0` and `a1` (one 16 × 32 bf16 step each).
///
/// # Safety
/// AMX must be available with [`TileConfig`] loaded; each pointer must cover one tile.
#[inline(always)]
unsafe fn load_a(a0: *const u16, a1: *const u16) {
    // SAFETY: see the function's contract.
    unsafe {
        tile_load!("4", a0, 64usize);
        tile_load!("5", a1, 64usize);
    }
}

/// Loads B tiles 6 and 7 from `b` (two 32 × 16 bf16 tiles in a row: both column blocks).
///
/// # Safety
/// AMX must be available with [`TileConfig`] loaded; `b` must cover two tiles.
#[inline(always)]
unsafe fn load_b(b: *const u16) {
    // SAFETY: see the function's contract.
    unsafe {
        tile_load!("6", b, 64usize);
        tile_load!("7", b.add(TILE), 64usize);
    }
}

/// C tiles 0–3 += A tiles 4–5 × B tiles 6–7 (C tile `2i + j` takes A `4 + i`, B `6 + j`).
///
/// # Safety
/// AMX must be available with [`TileConfig`] loaded.
#[inline(always)]
unsafe fn dot_c() {
    // SAFETY: see the function's contract.
    unsafe {
        tile_dot!("0", "4", "6");
        tile_dot!("1", "4", "7");
        tile_dot!("2", "5", "6");
        tile_dot!("3", "5", "7");
    }
}

/// C tiles 0–3 (rows of `a0`/`a1` × two 16-column blocks of `b`) += the product over
/// `k_blocks` K steps. A steps: `hi` (then `lo`) of one 16 × 32 block; B steps: `hi` of both
/// column blocks (then `lo` of both).
///
/// # Safety
/// AMX must be available with [`TileConfig`] loaded; `a0`, `a1` and `b` must each cover
/// `k_blocks` steps.
#[inline(always)]
unsafe fn block(a0: *const u16, a1: *const u16, b: *const u16, k_blocks: usize, split: bool) {
    // SAFETY: see the function's contract; every access is one 1 KiB tile inside its block.
    unsafe {
        if split {
            for kb in 0..k_blocks {
                let (a0h, a1h) = (a0.add(kb * 2 * TILE), a1.add(kb * 2 * TILE));
                let (a0l, a1l) = (a0h.add(TILE), a1h.add(TILE));
                let bh = b.add(kb * 4 * TILE);
                let bl = bh.add(2 * TILE);
                // Ah·Bl
                load_a(a0h, a1h);
                load_b(bl);
                dot_c();
                // Ah·Bh
                load_b(bh);
                dot_c();
                // Al·Bh
                load_a(a0l, a1l);
                dot_c();
            }
        } else {
            for kb in 0..k_blocks {
                let bh = b.add(kb * 2 * TILE);
                load_a(a0.add(kb * TILE), a1.add(kb * TILE));
                load_b(bh);
                dot_c();
            }
        }
    }
}

/// Zeroes C tiles 0–3.
///
/// # Safety
/// AMX must be available with [`TileConfig`] loaded.
#[inline(always)]
unsafe fn zero_c() {
    // SAFETY: see the function's contract.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
    }
}

/// Loads C tiles 0–3 from `c` (16 rows of 16 f32 each, `stride` bytes between rows).
///
/// # Safety
/// AMX must be available with [`TileConfig`] loaded; each `c[i]` must hold 16 rows of 16 f32.
#[inline(always)]
unsafe fn load_c(c: [*mut f32; 4], stride: usize) {
    // SAFETY: see the function's contract.
    unsafe {
        tile_load!("0", c[0], stride);
        tile_load!("1", c[1], stride);
        tile_load!("2", c[2], stride);
        tile_load!("3", c[3], stride);
    }
}

/// Stores C tiles 0–3 to `c` (as [`load_c`]).
///
/// # Safety
/// As [`load_c`], and nothing else may access those elements meanwhile.
#[inline(always)]
unsafe fn store_c(c: [*mut f32; 4], stride: usize) {
    // SAFETY: see the function's contract.
    unsafe {
        tile_store!("0", c[0], stride);
        tile_store!("1", c[1], stride);
        tile_store!("2", c[2], stride);
        tile_store!("3", c[3], stride);
    }
}

/// `a · bᵀ` for `a` `[.., M, K]` and `b` `[.., N, K]` with the same leading dimensions (f32,
/// CPU) → `[.., M, N]` f32: the attention products, where both operands change per call. On AMX
/// (`mode` an AMX mode and [`amx_available`]) each `b` matrix is split and laid out like a
/// weight, then multiplied as [`PackedWeight::matmul`] does; otherwise candle's f32 product.
pub fn matmul_nt(a: &Tensor, b: &Tensor, mode: CpuMatmul) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let rank = ad.len();
    if rank < 2
        || bd.len() != rank
        || ad[..rank - 2] != bd[..rank - 2]
        || ad[rank - 1] != bd[rank - 1]
    {
        candle_core::bail!("matmul_nt: shapes {ad:?} and {bd:?} do not give a · bᵀ");
    }
    let split = match mode.resolve() {
        CpuMatmul::F32 => return a.matmul(&b.t()?),
        CpuMatmul::Avx512 => {
            return super::cpu_f32::batched(a, b, super::cpu_f32::Layout::Transposed);
        }
        CpuMatmul::Bf16x3 => true,
        CpuMatmul::Bf16 => false,
    };
    let (m, n, k) = (ad[rank - 2], bd[rank - 2], ad[rank - 1]);
    let batch: usize = ad[..rank - 2].iter().product();
    let mut out_dims = ad[..rank - 1].to_vec();
    out_dims.push(n);
    if batch * m * n == 0 || k == 0 {
        return Tensor::zeros(out_dims, DType::F32, a.device());
    }
    let (a, b) = (
        a.to_dtype(DType::F32)?.contiguous()?,
        b.to_dtype(DType::F32)?.contiguous()?,
    );
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(ca), Storage::Cpu(cb)) = (&*sa, &*sb) else {
        candle_core::bail!("matmul_nt takes CPU tensors");
    };
    let (Some((a0, a1)), Some((b0, b1))) = (la.contiguous_offsets(), lb.contiguous_offsets())
    else {
        candle_core::bail!("matmul_nt: operands not contiguous");
    };
    let (av, bv) = (
        &ca.as_slice::<f32>()?[a0..a1],
        &cb.as_slice::<f32>()?[b0..b1],
    );
    let mut out = Vec::with_capacity(batch * m * n);
    for (ai, bi) in av.chunks_exact(m * k).zip(bv.chunks_exact(n * k)) {
        PackedWeight::pack_slice(bi, n, k, split).product(ai, m, &mut out);
    }
    Tensor::from_vec(out, out_dims, a.device())
}

/// How a [`Projection`] multiplies.
#[derive(Debug, Clone)]
enum Packed {
    /// candle's product.
    Candle,
    /// The AVX-512 f32 kernel (`cpu_f32`), straight from the weight.
    Avx512,
    /// AMX tiles.
    Amx(Arc<PackedWeight>),
}

/// A linear layer's weight for the fused CPU path: `x · Wᵀ` through the AVX-512 f32 kernel or
/// AMX where [`CpuMatmul::resolve`] picks them, else through candle.
#[derive(Debug, Clone)]
pub struct Projection {
    weight: Tensor,
    packed: Packed,
}

impl Projection {
    /// Prepares `layer`'s weight for `mode` as it resolves here (packed for AMX) when the weight
    /// is an f32 CPU tensor; otherwise keeps candle's product.
    pub fn new(layer: &Linear, mode: CpuMatmul) -> Result<Self> {
        let weight = layer.weight().clone();
        let packed = if !(weight.device().is_cpu() && weight.dtype() == DType::F32) {
            Packed::Candle
        } else {
            match mode.resolve() {
                CpuMatmul::F32 => Packed::Candle,
                CpuMatmul::Avx512 => Packed::Avx512,
                mode @ (CpuMatmul::Bf16x3 | CpuMatmul::Bf16) => {
                    Packed::Amx(Arc::new(PackedWeight::pack(&weight, mode)?))
                }
            }
        };
        Ok(Self { weight, packed })
    }

    /// Whether the product runs on this crate's kernels (AVX-512 or AMX) rather than candle's.
    pub fn is_packed(&self) -> bool {
        !matches!(self.packed, Packed::Candle)
    }

    /// `x · Wᵀ` over all leading dimensions (no bias).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.packed {
            Packed::Avx512 => super::cpu_f32::linear(x, &self.weight),
            Packed::Amx(p) => p.matmul(x),
            Packed::Candle => Linear::new(self.weight.clone(), None).forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sensevoice::test_util::fill;

    /// AMX here, or a loud failure when `GPUSCRIBE_REQUIRE_AMX=1` says it must be.
    fn amx_here() -> bool {
        let have = amx_available();
        let required = std::env::var("GPUSCRIBE_REQUIRE_AMX").is_ok_and(|v| v == "1");
        assert!(
            have || !required,
            "GPUSCRIBE_REQUIRE_AMX=1 but AMX is not available"
        );
        if !have {
            eprintln!("no AMX on this machine: checking the f32 fallback only");
        }
        have
    }

    /// max |got - want| / max |want|, and max |got - want| / (Σ|a||b| per element) — the second
    /// is the per-element error relative to the dot product's own scale.
    fn errors(got: &Tensor, want: &Tensor, scale: &Tensor) -> (f32, f32) {
        let diff = (got - want).and_then(|d| d.abs()).expect("diff");
        let max_want = want
            .abs()
            .and_then(|t| t.max_all()?.to_scalar::<f32>())
            .expect("max");
        let max_diff = diff
            .max_all()
            .and_then(|t| t.to_scalar::<f32>())
            .expect("d");
        let per_elem = (diff / scale)
            .and_then(|t| t.max_all()?.to_scalar::<f32>())
            .expect("per element");
        (max_diff / max_want, per_elem)
    }

    /// Odd shapes (M not a multiple of 16, K not of 32, N not of 16) and a model-like one, in
    /// both modes, against candle's f32 product. bf16x3 must stay within 1e-5 of each element's
    /// scale Σ|a||b|; plain bf16 within 1e-2 but above 1e-5 (it does round to bf16).
    #[test]
    fn amx_products_match_f32_gemm_on_odd_shapes() {
        let amx = amx_here();
        for (i, &(m, k, n)) in [
            (1, 1, 1),
            (7, 45, 13),
            (33, 70, 50),
            (17, 560, 1536),
            (45, 2050, 33),
            (504, 512, 512),
        ]
        .iter()
        .enumerate()
        {
            let x = fill(&[m, k], 10 + i as u64, 2.0);
            let w = fill(&[n, k], 20 + i as u64, 0.5);
            let layer = Linear::new(w.clone(), None);
            let want = layer.forward(&x).expect("f32");
            let scale = x
                .abs()
                .and_then(|a| a.matmul(&w.abs()?.t()?))
                .expect("scale");
            for mode in [CpuMatmul::Bf16x3, CpuMatmul::Bf16] {
                let p = Projection::new(&layer, mode).expect("projection");
                assert_eq!(p.is_packed(), amx, "{mode:?} packed only with AMX");
                let got = p.forward(&x).expect("product");
                assert_eq!(got.dims(), want.dims());
                let (rel, per_elem) = errors(&got, &want, &scale);
                eprintln!("{mode:?} {m}x{k}x{n}: rel {rel:e}, per element {per_elem:e}");
                let ok = match (amx, mode) {
                    (false, _) => rel == 0.0,
                    (true, CpuMatmul::Bf16x3) => per_elem < 1e-5,
                    (true, _) => per_elem < 1e-2 && per_elem > 1e-5 || m * k * n == 1,
                };
                assert!(
                    ok,
                    "{mode:?} {m}x{k}x{n}: rel {rel:e}, per element {per_elem:e}"
                );
            }
        }
    }

    /// The attention products: `a · bᵀ` over leading dimensions (heads of a batch), odd T and
    /// dk, against candle's f32 product; bf16x3 within 1e-5 of each element's scale, bf16
    /// within 1e-2 (and visibly rounded); the f32 setting is candle's product itself.
    #[test]
    fn matmul_nt_matches_f32_over_heads() {
        let amx = amx_here();
        for (i, &(lead, m, n, k)) in [
            (&[1usize, 4][..], 37usize, 37usize, 128usize),
            (&[2, 3][..], 50, 21, 45),
            (&[1, 4][..], 70, 128, 70),
            (&[3][..], 1, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let shape = |rows: usize| [lead, &[rows, k]].concat();
            let a = fill(&shape(m), 30 + i as u64, 2.0);
            let b = fill(&shape(n), 40 + i as u64, 0.5);
            let want = a.matmul(&b.t().expect("t")).expect("f32");
            let scale = a
                .abs()
                .and_then(|a| a.matmul(&b.abs()?.t()?))
                .expect("scale");
            let f32_path = matmul_nt(&a, &b, CpuMatmul::F32).expect("f32 setting");
            assert_eq!(errors(&f32_path, &want, &scale).0, 0.0);
            for mode in [CpuMatmul::Bf16x3, CpuMatmul::Bf16] {
                let got = matmul_nt(&a, &b, mode).expect("product");
                assert_eq!(got.dims(), want.dims());
                let (rel, per_elem) = errors(&got, &want, &scale);
                eprintln!("{mode:?} {lead:?} {m}x{k}x{n}: rel {rel:e}, per element {per_elem:e}");
                let ok = match (amx, mode) {
                    (false, _) => rel == 0.0,
                    (true, CpuMatmul::Bf16x3) => per_elem < 1e-5,
                    (true, _) => per_elem < 1e-2 && (per_elem > 1e-5 || m * k * n == 1),
                };
                assert!(
                    ok,
                    "{mode:?} {lead:?} {m}x{k}x{n}: rel {rel:e}, per element {per_elem:e}"
                );
            }
        }
        // Operands that do not give a · bᵀ are an error naming both shapes.
        let err = matmul_nt(
            &fill(&[2, 5, 8], 1, 1.0),
            &fill(&[2, 6, 7], 2, 1.0),
            CpuMatmul::Bf16x3,
        )
        .expect_err("widths differ");
        assert!(err.to_string().contains("[2, 6, 7]"), "{err}");
    }

    /// Leading dimensions are kept, and batches give the rows of the 2-D product.
    #[test]
    fn amx_product_keeps_leading_dimensions() {
        amx_here();
        let x = fill(&[3, 5, 40], 1, 1.0);
        let w = fill(&[24, 40], 2, 1.0);
        let layer = Linear::new(w, None);
        let p = Projection::new(&layer, CpuMatmul::Bf16x3).expect("projection");
        let got = p.forward(&x).expect("product");
        assert_eq!(got.dims(), &[3, 5, 24]);
        let flat = p
            .forward(&x.reshape((15, 40)).expect("flat"))
            .expect("flat");
        let diff = (got.reshape((15, 24)).expect("r") - flat)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert_eq!(diff, 0.0);
    }

    /// A wrong input width is an error (naming both widths on AMX), not a panic.
    #[test]
    fn amx_product_rejects_wrong_width() {
        let amx = amx_here();
        let layer = Linear::new(fill(&[16, 32], 3, 1.0), None);
        let p = Projection::new(&layer, CpuMatmul::Bf16x3).expect("projection");
        let err = p.forward(&fill(&[4, 31], 4, 1.0)).expect_err("width");
        if amx {
            assert!(err.to_string().contains("31"), "{err}");
        }
    }

    #[test]
    fn setting_values_parse() {
        assert_eq!(CpuMatmul::parse("F32"), Ok(CpuMatmul::F32));
        assert_eq!(CpuMatmul::parse(" bf16x3 "), Ok(CpuMatmul::Bf16x3));
        assert_eq!(CpuMatmul::parse("bf16"), Ok(CpuMatmul::Bf16));
        let err = CpuMatmul::parse("int8").expect_err("unknown");
        assert!(err.contains(ENV_VAR) && err.contains("int8"), "{err}");
    }

    #[test]
    fn bf16_split_is_close_and_rounds_to_nearest_even() {
        for x in [1.0f32, -3.7, 1e-3, 12345.678, 0.1] {
            let (hi, lo) = split_bf16(x);
            let back = bf16_to_f32(hi) + bf16_to_f32(lo);
            assert!(((back - x) / x).abs() < 2e-5, "{x}: {back}");
        }
        // 1 + 2^-8 lies halfway between two bf16 values: it rounds to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert!(bf16_to_f32(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(split_bf16(f32::INFINITY), (0x7f80, 0));
    }
}
