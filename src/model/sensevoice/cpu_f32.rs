//! f32 matrix products on the CPU with an AVX-512 micro-kernel (f32 in, f32 fused multiply–add
//! accumulation, f32 out): [`super::cpu_matmul::CpuMatmul::Avx512`], the default wherever the
//! CPU has AVX-512F.
//!
//! `C = A · B` for `A` `[M, K]` row-major and `B` either a weight `W` `[N, K]` (`B = Wᵀ`, the
//! linear layers and q·kᵀ) or `[K, N]` row-major (attention · v). Nothing is stored beside the
//! operands: per call `A` is laid out in panels of [`MR`] rows (row-interleaved, so that one K
//! step reads one contiguous run of `MR` values), and each task lays out one `KC × 32` chunk of
//! `B` at a time in a 16 KiB buffer that stays in L1 while every row panel passes over it
//! (O(K·N) copying against O(M·N·K) products). Each `MR × 32` tile of `C` accumulates in 24
//! AVX-512 registers: per K step two 16-wide loads of `B` and `MR` broadcasts of `A`. The column
//! panels are shared out over rayon's global pool (the one the rest of the forward uses).
//!
//! Each output element is one f32 multiply–add chain over K in order: as accurate as any f32
//! product (`tests` below hold it to 1e-5 of candle's gemm).
#![allow(unsafe_code)] // AVX-512 intrinsics after runtime detection, raw tile pointers

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Rows of a micro-tile (24 accumulators: `MR` rows × 2 vectors of 16).
const MR: usize = 12;
/// Columns of a micro-tile (two AVX-512 vectors).
const NR: usize = 32;
/// K steps per chunk: one chunk of a column panel of `B` is `KC × 32` f32 (16 KiB).
const KC: usize = 128;

/// Whether the kernel can run here (AVX-512F, checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// How `B` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `B = Wᵀ` for `W` `[N, K]` row-major (a linear layer's weight, or the keys of q·kᵀ).
    Transposed,
    /// `B` `[K, N]` row-major.
    Plain,
}

/// A raw pointer that may cross into rayon's tasks (each task writes its own columns).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements through it (see `product`).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f` on the values of a contiguous f32 CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("cpu_f32 takes CPU tensors");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("cpu_f32: operand not contiguous");
    };
    f(&cpu.as_slice::<f32>()?[start..end])
}

/// `x · Wᵀ` for `x` `[.., K]` and `w` `[N, K]` (f32, CPU) → `[.., N]` f32 (a linear layer
/// without its bias).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let dims = x.dims().to_vec();
    let Some((&kx, lead)) = dims.split_last() else {
        candle_core::bail!("cpu_f32: a scalar input");
    };
    if kx != k {
        candle_core::bail!("cpu_f32: input width {kx}, weight takes {k}");
    }
    let m: usize = lead.iter().product();
    let mut out_dims = lead.to_vec();
    out_dims.push(n);
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let w = w.to_dtype(DType::F32)?.contiguous()?;
    let out = with_slice(&x, |a| {
        with_slice(&w, |b| product(a, b, m, k, n, Layout::Transposed))
    })?;
    Tensor::from_vec(out, out_dims, x.device())
}

/// `a · b` over matching leading dimensions: `a` `[.., M, K]` and `b` `[.., N, K]`
/// ([`Layout::Transposed`]: `a · bᵀ`) or `[.., K, N]` ([`Layout::Plain`]) → `[.., M, N]` f32.
pub fn batched(a: &Tensor, b: &Tensor, layout: Layout) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let rank = ad.len();
    let (m, k) = (ad.get(rank.wrapping_sub(2)).copied(), ad.last().copied());
    let (Some(m), Some(k)) = (m, k) else {
        candle_core::bail!("cpu_f32: operands of rank {rank}");
    };
    let (bk, n) = match layout {
        Layout::Transposed => (bd.last().copied(), bd.get(rank.wrapping_sub(2)).copied()),
        Layout::Plain => (bd.get(rank.wrapping_sub(2)).copied(), bd.last().copied()),
    };
    if bd.len() != rank || ad[..rank - 2] != bd[..rank - 2] || bk != Some(k) {
        candle_core::bail!("cpu_f32: shapes {ad:?} and {bd:?} ({layout:?}) do not multiply");
    }
    let n = n.unwrap_or(0);
    let batch: usize = ad[..rank - 2].iter().product();
    let mut out_dims = ad[..rank - 1].to_vec();
    out_dims.push(n);
    let a = a.to_dtype(DType::F32)?.contiguous()?;
    let b = b.to_dtype(DType::F32)?.contiguous()?;
    let out = with_slice(&a, |av| {
        with_slice(&b, |bv| {
            if m * k == 0 || n * k == 0 {
                return Ok(vec![0f32; batch * m * n]);
            }
            // The matrices in parallel too (each product shares its own work out as well).
            let parts = av
                .par_chunks_exact(m * k)
                .zip(bv.par_chunks_exact(n * k))
                .map(|(ai, bi)| product(ai, bi, m, k, n, layout))
                .collect::<Result<Vec<_>>>()?;
            Ok(parts.concat())
        })
    })?;
    Tensor::from_vec(out, out_dims, a.device())
}

/// `a` (`[m, k]`) · `B` (`b` as `layout` says) → `[m, n]`.
fn product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, layout: Layout) -> Result<Vec<f32>> {
    if !available() {
        candle_core::bail!("cpu_f32: AVX-512F is not available on this machine");
    }
    if a.len() != m * k || b.len() != n * k {
        candle_core::bail!(
            "cpu_f32: operand sizes {} and {} for {m}x{k}x{n}",
            a.len(),
            b.len()
        );
    }
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return Ok(out);
    }
    let tiles = m.div_ceil(MR);
    let packed = pack_rows(a, m, k);
    let panels = n.div_ceil(NR);
    // About two tasks per thread: groups of column panels, and where there are too few panels
    // for that (narrow products such as attention · v), blocks of row tiles as well. Each task
    // lays out its own chunks of B.
    let tasks = 2 * rayon::current_num_threads();
    let group = panels.div_ceil(tasks).max(1);
    let groups = panels.div_ceil(group);
    let per_block = tiles.div_ceil(tasks.div_ceil(groups).clamp(1, tiles));
    let blocks = tiles.div_ceil(per_block);
    let c = SendPtr(out.as_mut_ptr());
    (0..groups * blocks).into_par_iter().for_each(|task| {
        let (g, block) = (task / blocks, task % blocks);
        let tile_range = block * per_block..((block + 1) * per_block).min(tiles);
        let mut chunk = [0f32; KC * NR];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in g * group..((g + 1) * group).min(panels) {
                let n0 = p * NR;
                let cols = NR.min(n - n0);
                pack_chunk(b, k, n, layout, k0, kc, n0, cols, &mut chunk);
                for t in tile_range.clone() {
                    let rows = MR.min(m - t * MR);
                    // SAFETY: AVX-512F is available (checked above); the tile reads `kc` steps
                    // of row panel `t` of `packed` (`tiles · MR · k` values) and of `chunk`
                    // (`KC · 32`), and writes `rows × cols` elements of `out` (`m · n`) in its
                    // own row tile and column panel, which no other task writes.
                    unsafe {
                        Tile {
                            a: packed.as_ptr().add((t * k + k0) * MR),
                            b: chunk.as_ptr(),
                            kc,
                            c: c.get().add(t * MR * n + n0),
                            ldc: n,
                            rows,
                            cols,
                            accumulate: k0 > 0,
                        }
                        .run();
                    }
                }
            }
        }
    });
    Ok(out)
}

/// `a` `[m, k]` laid out as panels of [`MR`] rows: panel `t`, step `kk`, row `r` at
/// `(t·k + kk)·MR + r`; rows past `m` are zero.
fn pack_rows(a: &[f32], m: usize, k: usize) -> Vec<f32> {
    let tiles = m.div_ceil(MR);
    let mut packed = vec![0f32; tiles * MR * k];
    packed
        .par_chunks_mut(MR * k)
        .enumerate()
        .for_each(|(t, panel)| {
            for r in 0..MR.min(m - t * MR) {
                let row = &a[(t * MR + r) * k..(t * MR + r + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * MR + r] = v;
                }
            }
        });
    packed
}

/// Lays out rows `k0..k0 + kc`, columns `n0..n0 + cols` of `B` as `chunk[kk·32 + c]`, zero in
/// the columns past `cols`.
#[allow(clippy::too_many_arguments)]
fn pack_chunk(
    b: &[f32],
    k: usize,
    n: usize,
    layout: Layout,
    k0: usize,
    kc: usize,
    n0: usize,
    cols: usize,
    chunk: &mut [f32; KC * NR],
) {
    if cols < NR {
        chunk.fill(0.0);
    }
    match layout {
        Layout::Transposed => {
            for c in 0..cols {
                let row = &b[(n0 + c) * k + k0..(n0 + c) * k + k0 + kc];
                for (kk, &v) in row.iter().enumerate() {
                    chunk[kk * NR + c] = v;
                }
            }
        }
        Layout::Plain => {
            for kk in 0..kc {
                let row = &b[(k0 + kk) * n + n0..(k0 + kk) * n + n0 + cols];
                chunk[kk * NR..kk * NR + cols].copy_from_slice(row);
            }
        }
    }
}

/// One micro-tile: `C[rows, cols] (+)= A_panel[kc] · chunk[kc, 32]`.
struct Tile {
    /// Packed A: `kc` steps of `MR` values.
    a: *const f32,
    /// The chunk of `B`: `kc` rows of 32 values.
    b: *const f32,
    kc: usize,
    /// `C` at the tile's first row and column; rows `ldc` apart.
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    /// Adds to `C` (a later K chunk) rather than overwriting it.
    accumulate: bool,
}

impl Tile {
    /// # Safety
    /// AVX-512F must be available; `a` must hold `kc · MR` values and `b` `kc · 32`; `c` must
    /// give `rows` rows of `cols` writable values that nothing else accesses meanwhile.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run(self) {
        // SAFETY: forwarded contract; `kernel::<R>` takes exactly `R == self.rows` rows.
        unsafe {
            match self.rows {
                12 => kernel::<12>(&self),
                11 => kernel::<11>(&self),
                10 => kernel::<10>(&self),
                9 => kernel::<9>(&self),
                8 => kernel::<8>(&self),
                7 => kernel::<7>(&self),
                6 => kernel::<6>(&self),
                5 => kernel::<5>(&self),
                4 => kernel::<4>(&self),
                3 => kernel::<3>(&self),
                2 => kernel::<2>(&self),
                _ => kernel::<1>(&self),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run(self) {
        unreachable!("cpu_f32 runs only where `available`, which needs x86-64");
    }
}

/// [`Tile::run`] for `R` rows (`R <= MR`).
///
/// # Safety
/// As [`Tile::run`], with `t.rows == R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    // Lanes of the two column vectors that exist in C.
    let mask = |cols: usize| -> __mmask16 { if cols >= 16 { !0 } else { (1u16 << cols) - 1 } };
    let (mask_lo, mask_hi) = (mask(t.cols), mask(t.cols.saturating_sub(16)));
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY (every access below): inside the sizes of the contract.
    unsafe {
        if t.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                let c = t.c.add(r * t.ldc);
                row[0] = _mm512_maskz_loadu_ps(mask_lo, c);
                row[1] = _mm512_maskz_loadu_ps(mask_hi, c.add(16));
            }
        }
        for kk in 0..t.kc {
            let b = t.b.add(kk * NR);
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            let a = t.a.add(kk * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            _mm512_mask_storeu_ps(c, mask_lo, row[0]);
            _mm512_mask_storeu_ps(c.add(16), mask_hi, row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sensevoice::test_util::{fill, rel};
    use candle_core::Module;

    /// The product against candle's where the CPU has AVX-512F; elsewhere it must refuse.
    fn check(got: Result<Tensor>, want: &Tensor, what: &str) {
        match got {
            Ok(got) => {
                assert!(available(), "{what}: ran without AVX-512F");
                assert_eq!(got.dims(), want.dims(), "{what}");
                assert!(rel(&got, want) <= 1e-5, "{what}: {}", rel(&got, want));
            }
            Err(err) => assert!(!available(), "{what}: {err}"),
        }
    }

    #[test]
    fn linear_matches_candle_on_odd_shapes() {
        // Rows not a multiple of 12, columns not of 32, K not of the 128-step chunk.
        for (m, k, n) in [
            (1, 1, 1),
            (13, 200, 45),
            (37, 129, 64),
            (504, 512, 96),
            (25, 300, 1),
        ] {
            let x = fill(&[m, k], 1, 2.0);
            let w = fill(&[n, k], 2, 0.5);
            let want = candle_nn::Linear::new(w.clone(), None)
                .forward(&x)
                .expect("candle");
            check(linear(&x, &w), &want, &format!("{m}x{k}x{n}"));
        }
        let (x, w) = (fill(&[2, 3, 24], 4, 1.0), fill(&[40, 24], 3, 0.5));
        let want = candle_nn::Linear::new(w.clone(), None)
            .forward(&x)
            .expect("candle");
        check(linear(&x, &w), &want, "leading dimensions");
        assert!(linear(&fill(&[2, 3, 25], 4, 1.0), &fill(&[40, 24], 3, 0.5)).is_err());
    }

    #[test]
    fn batched_products_match_candle_in_both_layouts() {
        let (b, h, m, k, n) = (2, 3, 21, 40, 35);
        let a = fill(&[b, h, m, k], 5, 2.0);
        let bt = fill(&[b, h, n, k], 6, 2.0);
        let want = a.matmul(&bt.t().expect("t")).expect("candle");
        check(batched(&a, &bt, Layout::Transposed), &want, "a·bᵀ");
        let bp = fill(&[b, h, k, n], 7, 2.0);
        let want = a.matmul(&bp).expect("candle");
        check(batched(&a, &bp, Layout::Plain), &want, "a·b");
        assert!(batched(&a, &bp, Layout::Transposed).is_err());
    }
}
