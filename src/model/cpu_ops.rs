//! Fused CPU versions of the encoder steps around the matrix products (f32 only), for
//! SenseVoice's SAN-M encoder and Whisper's encoder and greedy decoder step.
//!
//! Each function makes one pass over its inputs and writes one new tensor, where the candle ops
//! make one pass (and one allocation) per elementary op and run most of them on one thread. Rows
//! are spread over rayon's global pool (the one candle's matrix products use, sized to the
//! physical cores), and the inner loops are compiled three times — AVX-512, AVX2 + FMA, and
//! plain — with the best one picked at run time.
//!
//! [`super::sensevoice::fused`] picks these for f32 tensors on the CPU; they compute the same function as the
//! candle-op path (`tests` below compare them), only with fewer roundings in between.
#![allow(unsafe_code)] // only to call `#[target_feature]` functions after runtime detection

use candle_core::{Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Largest buffer (bytes) that glibc serves from its heap rather than from a fresh `mmap`, and
/// the free space it keeps at the top of the heap, after [`keep_freed_buffers`].
const HEAP_KEEP_BYTES: usize = 256 << 20;

/// Lets the CPU forward reuse the memory of the buffers it freed. glibc hands out allocations
/// above its mmap threshold (128 KiB at first, adjusted up to 32 MiB) as fresh mappings and
/// returns them to the kernel on free, so each forward's 1–50 MB activations were new pages
/// that the kernel faulted in and zeroed on first touch: about 160,000 page faults per 30 s
/// segment of the release-size model, 11–15 % of the forward's samples (BENCHMARKS.md).
/// With allocations up to 256 MiB served from the heap, and up to 256 MiB of free heap kept,
/// the second and later forwards fault in no new pages. Process-wide and set once; a no-op
/// outside glibc.
pub fn keep_freed_buffers() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let keep = libc::c_int::try_from(HEAP_KEEP_BYTES).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only changes glibc's allocation thresholds; it takes no pointers.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, keep) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, keep) == 1
            };
            if !ok {
                tracing::debug!("mallopt refused the heap thresholds; freed buffers are unmapped");
            }
        }
    });
}

/// Rows (of the model width) per rayon task: small enough to balance, large enough that the
/// task overhead stays far below the work.
const ROWS_PER_TASK: usize = 16;

/// Defines `fn $name(args)` that runs `$body` compiled for AVX-512 or AVX2 + FMA when the CPU
/// has them (detected once), and as plain code otherwise.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                match $crate::model::cpu_ops::simd_level() {
                    // SAFETY: `simd_level` saw every feature `v4` is compiled with on this CPU.
                    $crate::model::cpu_ops::SimdLevel::V4 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above, for `v3`.
                    $crate::model::cpu_ops::SimdLevel::V3 => return unsafe { v3($($arg),*) },
                    $crate::model::cpu_ops::SimdLevel::Plain => {}
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SimdLevel {
    V4,
    V3,
    Plain,
}

/// The best instruction set level of this CPU (checked once).
pub(crate) fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let v4 = v3
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw");
            if v4 {
                return SimdLevel::V4;
            }
            if v3 {
                return SimdLevel::V3;
            }
        }
        SimdLevel::Plain
    })
}

/// Runs `f` on the f32 data of a CPU tensor (from its layout's start) and its layout.
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu.as_slice::<f32>()?, layout),
        _ => candle_core::bail!("{what}: the fused CPU kernels take CPU tensors"),
    }
}

/// Runs `f` on the elements of a contiguous f32 CPU tensor.
fn contiguous_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_f32(t, what, |data, layout| match layout.contiguous_offsets() {
        Some((start, end)) => f(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous, got {layout:?}"),
    })
}

/// The kernels split rows by width: a zero-sized dimension is an error, not a panic.
fn check_nonempty(what: &str, t: &Tensor) -> Result<()> {
    if t.dims().contains(&0) {
        candle_core::bail!("{what} has an empty dimension: {:?}", t.dims());
    }
    Ok(())
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        candle_core::bail!("{what} has {got} elements, expected {want}");
    }
    Ok(())
}

/// Sum with 16 independent accumulators, so that it vectorises.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for half in [8, 4, 2, 1] {
        for i in 0..half {
            acc[i] += acc[i + half];
        }
    }
    rest.iter().fold(acc[0], |s, v| s + v)
}

/// Sum of squares of `x - mean`, vectorised like [`sum`].
#[inline(always)]
fn centred_sq_sum(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            let d = v - mean;
            *a += d * d;
        }
    }
    for half in [8, 4, 2, 1] {
        for i in 0..half {
            acc[i] += acc[i + half];
        }
    }
    rest.iter().fold(acc[0], |s, v| {
        let d = v - mean;
        s + d * d
    })
}

/// Largest element (the first of `x` when all are equal); `x` is not empty.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    rest.iter().fold(m, |m, v| m.max(*v))
}

/// `e^x` for `x <= 0` (Cephes' `expf` polynomial, within 2 ulp of libm; inputs below -87 give
/// e^-87, which no softmax row can tell from 0 next to its maximum's 1). Branch-free, so a loop
/// of it vectorises.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (r * r).mul_add(p, r) + 1.0;
    // n is in [-126, 0]: 2^n is a normal float.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e * scale
}

/// Dot products of four rows with one vector, each summed in 16 lanes, then halves: four
/// independent accumulator chains that vectorise (a row repeated four times gives its one dot
/// product).
#[inline(always)]
pub(crate) fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let (xs, x_tail) = x.as_chunks::<16>();
    let n = xs.len() * 16;
    let [r0, r1, r2, r3] = w.map(|row| row[..n].as_chunks::<16>().0);
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    for ((((xv, w0), w1), w2), w3) in xs.iter().zip(r0).zip(r1).zip(r2).zip(r3) {
        for i in 0..16 {
            a0[i] = w0[i].mul_add(xv[i], a0[i]);
            a1[i] = w1[i].mul_add(xv[i], a1[i]);
            a2[i] = w2[i].mul_add(xv[i], a2[i]);
            a3[i] = w3[i].mul_add(xv[i], a3[i]);
        }
    }
    let mut out = [0f32; 4];
    for ((o, mut acc), row) in out.iter_mut().zip([a0, a1, a2, a3]).zip(w) {
        let tail = row[n..]
            .iter()
            .zip(x_tail)
            .fold(0f32, |s, (a, b)| a.mul_add(*b, s));
        for half in [8, 4, 2, 1] {
            for i in 0..half {
                acc[i] += acc[i + half];
            }
        }
        *o = acc[0] + tail;
    }
    out
}

/// `erf(x)` as a rational function of `x` on [-4, 4] (Eigen's `generic_fast_erf_float`, within
/// a few ulp of the exact function; beyond ±4 erf is ±1 in f32). Branch-free, so a loop of it
/// vectorises.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_4e-10f32;
    p = p.mul_add(x2, 2.770_681_5e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_2e-5);
    p = p.mul_add(x2, -7.349_906_4e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_15e-5f32;
    q = q.mul_add(x2, -2.133_740_5e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329_3e-3);
    q = q.mul_add(x2, -1.426_473_9e-2);
    x * p / q
}

/// The exact GELU, `x · (1 + erf(x / √2)) / 2` (transformers' and OpenAI's `gelu`).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

simd_fn! {
    /// LayerNorm of each row of `x` into `out` (rows of `weight.len()`).
    pub(crate) fn layer_norm_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
        let d = weight.len();
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = sum(row) / d as f32;
            let var = centred_sq_sum(row, mean) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, v), w), b) in o.iter_mut().zip(row).zip(weight).zip(bias) {
                *o = ((v - mean) * inv).mul_add(*w, *b);
            }
        }
    }
}

/// LayerNorm over the last dimension (`torch.nn.LayerNorm`, biased variance of the centred
/// rows) of a contiguous f32 tensor; f32 `weight` and `bias` of that width.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    check_nonempty("layer_norm input", x)?;
    let d = x.dim(candle_core::D::Minus1)?;
    let out = contiguous_f32(x, "layer_norm input", |x| {
        contiguous_f32(weight, "layer_norm weight", |w| {
            contiguous_f32(bias, "layer_norm bias", |b| {
                check_len("layer_norm weight", w.len(), d)?;
                check_len("layer_norm bias", b.len(), d)?;
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(d * ROWS_PER_TASK)
                    .zip(x.par_chunks(d * ROWS_PER_TASK))
                    .for_each(|(o, x)| layer_norm_rows(x, w, b, eps, o));
                Ok(out)
            })
        })
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}

simd_fn! {
    /// `relu?(y + bias)` row by row (rows of `bias.len()`).
    fn bias_act_rows(y: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
        let n = bias.len();
        for (row, o) in y.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            if relu {
                for ((o, v), b) in o.iter_mut().zip(row).zip(bias) {
                    *o = (v + b).max(0.0);
                }
            } else {
                for ((o, v), b) in o.iter_mut().zip(row).zip(bias) {
                    *o = v + b;
                }
            }
        }
    }
}

/// `relu?(y + bias)` of a contiguous f32 `y` `[.., N]` and `bias` `[N]`.
pub fn bias_act(y: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    check_nonempty("bias_act input", y)?;
    let n = y.dim(candle_core::D::Minus1)?;
    let out = contiguous_f32(y, "bias_act input", |y| {
        contiguous_f32(bias, "bias", |b| {
            check_len("bias", b.len(), n)?;
            let mut out = vec![0f32; y.len()];
            let chunk = n * ROWS_PER_TASK.max(32_768 / n.max(1));
            out.par_chunks_mut(chunk)
                .zip(y.par_chunks(chunk))
                .for_each(|(o, y)| bias_act_rows(y, b, relu, o));
            Ok(out)
        })
    })?;
    Tensor::from_vec(out, y.shape(), y.device())
}

simd_fn! {
    /// `gelu(y + bias)` row by row (rows of `bias.len()`), or `gelu(y)` without a bias.
    fn gelu_rows(y: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        match bias {
            Some(bias) => {
                let n = bias.len();
                for (row, o) in y.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                    for ((o, v), b) in o.iter_mut().zip(row).zip(bias) {
                        *o = gelu(v + b);
                    }
                }
            }
            None => {
                for (o, v) in out.iter_mut().zip(y) {
                    *o = gelu(*v);
                }
            }
        }
    }
}

/// `gelu(y + bias)` of a contiguous f32 `y` `[.., N]` and `bias` `[N]` (exact GELU), or
/// `gelu(y)` of any contiguous f32 tensor without a bias.
pub fn bias_gelu(y: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    check_nonempty("gelu input", y)?;
    let n = y.dim(candle_core::D::Minus1)?;
    let out = contiguous_f32(y, "gelu input", |y| {
        let run = |b: Option<&[f32]>| {
            let mut out = vec![0f32; y.len()];
            let chunk = n * ROWS_PER_TASK.max(32_768 / n.max(1));
            out.par_chunks_mut(chunk)
                .zip(y.par_chunks(chunk))
                .for_each(|(o, y)| gelu_rows(y, b, o));
            out
        };
        match bias {
            Some(bias) => contiguous_f32(bias, "gelu bias", |b| {
                check_len("gelu bias", b.len(), n)?;
                Ok(run(Some(b)))
            }),
            None => Ok(run(None)),
        }
    })?;
    Tensor::from_vec(out, y.shape(), y.device())
}

/// The fused projection's output `y` `[B, T, 3·D]` (contiguous f32, no bias yet) plus `bias`
/// `[3·D]`, split into heads: `[3, B, H, T, D/H]` (q, k, v).
pub fn qkv_heads(y: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    check_nonempty("qkv input", y)?;
    let (b, t, w) = y.dims3()?;
    if heads == 0 || w % (3 * heads) != 0 {
        candle_core::bail!("qkv_heads: width {w} does not split into 3 x {heads} heads");
    }
    let dk = w / (3 * heads);
    let out = contiguous_f32(y, "qkv input", |y| {
        contiguous_f32(bias, "qkv bias", |bias| {
            check_len("qkv bias", bias.len(), w)?;
            let mut out = vec![0f32; y.len()];
            // Block (s, b, h) is q, k or v of head h of item b: columns (s·H + h)·dk.
            out.par_chunks_mut(t * dk)
                .enumerate()
                .for_each(|(block, o)| {
                    let (s, rest) = (block / (b * heads), block % (b * heads));
                    let (item, h) = (rest / heads, rest % heads);
                    let col = (s * heads + h) * dk;
                    let rows = &y[item * t * w..(item + 1) * t * w];
                    scaled_block(rows, w, col, &bias[col..col + dk], 1.0, o);
                });
            Ok(out)
        })
    })?;
    Tensor::from_vec(out, (3, b, heads, t, dk), y.device())
}

simd_fn! {
    /// One `[T, dk]` head block of a projection: `(y + bias) · scale` of column block
    /// `col..col + dk` of every row of `y` (rows of `width`).
    fn scaled_block(y: &[f32], width: usize, col: usize, bias: &[f32], scale: f32, out: &mut [f32]) {
        let dk = bias.len();
        for (row, o) in y.chunks_exact(width).zip(out.chunks_exact_mut(dk)) {
            for ((o, v), b) in o.iter_mut().zip(&row[col..col + dk]).zip(bias) {
                *o = (v + b) * scale;
            }
        }
    }
}

/// One projection's output `y` `[B, T, D]` (contiguous f32, no bias yet) plus `bias` `[D]`
/// (none: 0), times `scale`, split into heads: `[B, H, T, D/H]`.
pub fn heads(y: &Tensor, bias: Option<&Tensor>, heads: usize, scale: f32) -> Result<Tensor> {
    check_nonempty("projection", y)?;
    let (b, t, w) = y.dims3()?;
    if heads == 0 || w % heads != 0 {
        candle_core::bail!("heads: width {w} does not split into {heads} heads");
    }
    let dk = w / heads;
    let out = contiguous_f32(y, "projection", |y| {
        let run = |bias: &[f32]| {
            let mut out = vec![0f32; y.len()];
            out.par_chunks_mut(t * dk)
                .enumerate()
                .for_each(|(block, o)| {
                    let (item, h) = (block / heads, block % heads);
                    let rows = &y[item * t * w..(item + 1) * t * w];
                    scaled_block(rows, w, h * dk, &bias[h * dk..(h + 1) * dk], scale, o);
                });
            out
        };
        match bias {
            Some(bias) => contiguous_f32(bias, "projection bias", |bias| {
                check_len("projection bias", bias.len(), w)?;
                Ok(run(bias))
            }),
            None => Ok(run(&vec![0f32; w])),
        }
    })?;
    Tensor::from_vec(out, (b, heads, t, dk), y.device())
}

simd_fn! {
    /// One head block's rows `[rows, Tk]`: softmax over the first `valid` keys, 0 for the rest.
    fn softmax_rows(x: &[f32], tk: usize, valid: usize, out: &mut [f32]) {
        for (row, o) in x.chunks_exact(tk).zip(out.chunks_exact_mut(tk)) {
            let (row, (o, masked)) = (&row[..valid], o.split_at_mut(valid));
            let m = max(row);
            for (o, v) in o.iter_mut().zip(row) {
                *o = exp_nonpositive(v - m);
            }
            let inv = 1.0 / sum(o);
            for o in o.iter_mut() {
                *o *= inv;
            }
            masked.fill(0.0);
        }
    }
}

/// Softmax over keys of contiguous f32 attention scores `[B, H, Tq, Tk]`, keys at or beyond
/// `lengths[b]` masked (probability 0, as FunASR's `masked_fill` after the softmax).
pub fn masked_softmax(scores: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    check_nonempty("attention scores", scores)?;
    let (b, h, tq, tk) = scores.dims4()?;
    check_len("lengths", lengths.len(), b)?;
    let out = contiguous_f32(scores, "attention scores", |x| {
        let mut out = vec![0f32; x.len()];
        let rows_per_task = ROWS_PER_TASK.min(tq.max(1));
        let chunk = tk * rows_per_task;
        let per_item = h * tq * tk;
        // Tasks never straddle two items: split each item's rows on their own.
        out.par_chunks_mut(per_item)
            .zip(x.par_chunks(per_item))
            .zip(lengths.par_iter())
            .for_each(|((o, x), &len)| {
                let valid = len.clamp(1, tk.max(1));
                o.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk))
                    .for_each(|(o, x)| softmax_rows(x, tk, valid, o));
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, scores.shape(), scores.device())
}

/// The attention output `[B, H, T, dk]` (contiguous f32) with its heads side by side again:
/// `[B, T, H·dk]`.
pub fn merge_heads(o: &Tensor) -> Result<Tensor> {
    check_nonempty("attention output", o)?;
    let (b, h, t, dk) = o.dims4()?;
    let d = h * dk;
    let out = contiguous_f32(o, "attention output", |src| {
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, rows)| {
                for (i, row) in rows.chunks_exact_mut(d).enumerate() {
                    let r = task * ROWS_PER_TASK + i;
                    let (item, ti) = (r / t, r % t);
                    for (head, dst) in row.chunks_exact_mut(dk).enumerate() {
                        let at = ((item * h + head) * t + ti) * dk;
                        dst.copy_from_slice(&src[at..at + dk]);
                    }
                }
            });
        Ok(out)
    })?;
    Tensor::from_vec(out, (b, t, d), o.device())
}

/// The inputs of [`attention_output`] as slices; v is read from the `[3, B, H, T, dk]` heads of
/// [`qkv_heads`] (block 2).
struct AttentionOutput<'a> {
    lo: &'a [f32],
    bias: &'a [f32],
    heads: &'a [f32],
    taps: &'a [f32],
    lengths: &'a [usize],
    residual: Option<&'a [f32]>,
    left: usize,
    b: usize,
    h: usize,
    t: usize,
    dk: usize,
}

impl AttentionOutput<'_> {
    /// Channels `head·dk..(head + 1)·dk` of v at frame `ti` of item `item`.
    #[inline(always)]
    fn v(&self, item: usize, head: usize, ti: usize) -> &[f32] {
        let at = (((2 * self.b + item) * self.h + head) * self.t + ti) * self.dk;
        &self.heads[at..at + self.dk]
    }
}

simd_fn! {
    /// Rows `first..` (flattened over items) of `residual + ((lo + bias) + fsmn(v))` into
    /// `out`; see [`attention_output`].
    fn attention_output_rows(a: &AttentionOutput<'_>, first: usize, out: &mut [f32]) {
        let (t, dk) = (a.t, a.dk);
        let d = a.h * dk;
        let k = a.taps.len() / d;
        let mut acc = vec![0f32; dk];
        for (i, o) in out.chunks_exact_mut(d).enumerate() {
            let r = first + i;
            let (item, ti) = (r / t, r % t);
            let len = a.lengths[item].min(t);
            for head in 0..a.h {
                let cols = r * d + head * dk..r * d + (head + 1) * dk;
                let lo = &a.lo[cols.clone()];
                let bias = &a.bias[head * dk..(head + 1) * dk];
                let o = &mut o[head * dk..(head + 1) * dk];
                if ti < len {
                    // fsmn = mask · (v·mask + Σⱼ tapⱼ ⊙ (v·mask)[ti + j - left]).
                    acc.fill(0.0);
                    for j in 0..k {
                        let src = (ti + j).wrapping_sub(a.left);
                        if src >= len {
                            continue; // zero padding, or a masked frame
                        }
                        let tap = &a.taps[j * d + head * dk..j * d + (head + 1) * dk];
                        for ((acc, x), w) in acc.iter_mut().zip(a.v(item, head, src)).zip(tap) {
                            *acc = x.mul_add(*w, *acc);
                        }
                    }
                    let own = a.v(item, head, ti);
                    for (((o, acc), x), (l, b)) in o.iter_mut().zip(&acc).zip(own).zip(lo.iter().zip(bias)) {
                        *o = (l + b) + (acc + x);
                    }
                } else {
                    for (o, (l, b)) in o.iter_mut().zip(lo.iter().zip(bias)) {
                        *o = l + b;
                    }
                }
                if let Some(res) = a.residual {
                    for (o, x) in o.iter_mut().zip(&res[cols]) {
                        *o += x;
                    }
                }
            }
        }
    }
}

/// The end of `MultiHeadedAttentionSANM` and its residual in one pass:
/// `residual + ((lo + bias) + fsmn)`, where `lo` `[B, T, D]` is `linear_out` without its bias
/// and `fsmn = mask · (v·mask + depthwise_conv(v·mask))` with `taps` `[K, D]` (zero padding,
/// `left` frames before), v read from `heads` (`[3, B, H, T, dk]`, [`qkv_heads`]), and frames at
/// or beyond `lengths[b]` masked. Without `residual` (the first layer, whose input is wider)
/// returns `(lo + bias) + fsmn`. All contiguous f32.
pub fn attention_output(
    lo: &Tensor,
    bias: &Tensor,
    heads: &Tensor,
    taps: &Tensor,
    lengths: &[usize],
    left: usize,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    check_nonempty("linear_out output", lo)?;
    check_nonempty("fsmn taps", taps)?;
    let (b, t, d) = lo.dims3()?;
    let (three, hb, h, ht, dk) = heads.dims5()?;
    if three != 3 || hb != b || ht != t || h * dk != d {
        candle_core::bail!(
            "attention_output: heads {:?} do not match [{b}, {t}, {d}]",
            heads.dims()
        );
    }
    check_len("lengths", lengths.len(), b)?;
    let k = taps.dim(0)?;
    if left >= k {
        candle_core::bail!("attention_output: left padding {left} >= kernel size {k}");
    }
    let run = |lo: &[f32], bias: &[f32], v: &[f32], taps: &[f32], residual: Option<&[f32]>| {
        check_len("linear_out bias", bias.len(), d)?;
        check_len("fsmn taps", taps.len(), k * d)?;
        if let Some(res) = residual {
            check_len("residual", res.len(), lo.len())?;
        }
        let args = AttentionOutput {
            lo,
            bias,
            heads: v,
            taps,
            lengths,
            residual,
            left,
            b,
            h,
            t,
            dk,
        };
        let mut out = vec![0f32; lo.len()];
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, o)| attention_output_rows(&args, task * ROWS_PER_TASK, o));
        Ok(out)
    };
    let out = contiguous_f32(lo, "linear_out output", |lo| {
        contiguous_f32(bias, "linear_out bias", |bias| {
            contiguous_f32(heads, "qkv heads", |v| {
                contiguous_f32(taps, "fsmn taps", |taps| match residual {
                    Some(r) => contiguous_f32(r, "residual", |r| run(lo, bias, v, taps, Some(r))),
                    None => run(lo, bias, v, taps, None),
                })
            })
        })
    })?;
    Tensor::from_vec(out, (b, t, d), lo.device())
}

simd_fn! {
    /// `residual + (y + bias)` row by row.
    fn residual_bias_rows(y: &[f32], bias: &[f32], residual: &[f32], out: &mut [f32]) {
        let n = bias.len();
        for ((row, res), o) in y.chunks_exact(n).zip(residual.chunks_exact(n)).zip(out.chunks_exact_mut(n)) {
            for (((o, v), b), x) in o.iter_mut().zip(row).zip(bias).zip(res) {
                *o = x + (v + b);
            }
        }
    }
}

/// `residual + (y + bias)` for contiguous f32 `y` and `residual` `[.., N]`, `bias` `[N]`.
pub fn residual_bias(y: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
    check_nonempty("ffn output", y)?;
    let n = y.dim(candle_core::D::Minus1)?;
    if y.dims() != residual.dims() {
        candle_core::bail!(
            "residual_bias: {:?} and residual {:?} differ",
            y.dims(),
            residual.dims()
        );
    }
    let out = contiguous_f32(y, "ffn output", |y| {
        contiguous_f32(bias, "ffn bias", |b| {
            contiguous_f32(residual, "residual", |res| {
                check_len("ffn bias", b.len(), n)?;
                let mut out = vec![0f32; y.len()];
                let chunk = n * ROWS_PER_TASK;
                out.par_chunks_mut(chunk)
                    .zip(y.par_chunks(chunk))
                    .zip(res.par_chunks(chunk))
                    .for_each(|((o, y), r)| residual_bias_rows(y, b, r, o));
                Ok(out)
            })
        })
    })?;
    Tensor::from_vec(out, y.shape(), y.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sensevoice::test_util::{fill, rel};
    use candle_core::{D, DType, Device, IndexOp};

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let want = x.exp();
            let got = exp_nonpositive(x);
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_match_f64() {
        // Against the exact function (candle's f64 erf), over [-6, 6] and the tails.
        let mut worst = 0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let want = candle_core::cpu::erf::erf_f64(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - want).abs());
        }
        assert!(worst < 4e-7, "erf: worst absolute error {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(30.0), 1.0);
        assert_eq!(erf(-30.0), -1.0);
        let mut worst = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4;
            let xd = f64::from(x);
            let want =
                0.5 * xd * (1.0 + candle_core::cpu::erf::erf_f64(xd / std::f64::consts::SQRT_2));
            worst = worst.max((f64::from(gelu(x)) - want).abs() / xd.abs().max(1.0));
        }
        assert!(worst < 4e-7, "gelu: worst error {worst}");
    }

    #[test]
    fn dot4_matches_f64() {
        for n in [1, 15, 16, 17, 384, 1000] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            // Four different rows: a, -a, 2a, a/2 (exact multiples, so exact references).
            let rows: [Vec<f32>; 4] =
                [1.0, -1.0, 2.0, 0.5].map(|f| a.iter().map(|x| x * f).collect());
            let got = dot4([&rows[0], &rows[1], &rows[2], &rows[3]], &b);
            for (g, f) in got.iter().zip([1.0, -1.0, 2.0, 0.5]) {
                let (g, want) = (f64::from(*g), want * f);
                assert!(
                    (g - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "n {n}, row x{f}: {g} vs {want}"
                );
            }
            assert_eq!(
                dot4([&a; 4], &b),
                [got[0]; 4],
                "n {n}: rows are independent"
            );
        }
    }

    #[test]
    fn bias_gelu_matches_candle() {
        let y = fill(&[2, 33, 70], 4, 3.0);
        let b = fill(&[70], 5, 2.0);
        let got = bias_gelu(&y, Some(&b)).expect("fused");
        let want = y
            .broadcast_add(&b)
            .and_then(|v| v.gelu_erf())
            .expect("candle");
        assert!(rel(&got, &want) < 1e-6, "with bias: {}", rel(&got, &want));
        let got = bias_gelu(&y, None).expect("fused");
        let want = y.gelu_erf().expect("candle");
        assert!(rel(&got, &want) < 1e-6, "without: {}", rel(&got, &want));
        assert!(bias_gelu(&y, Some(&fill(&[69], 5, 2.0))).is_err());
    }

    #[test]
    fn heads_match_candle() {
        let (b, t, h, dk) = (2, 21, 4, 8);
        let y = fill(&[b, t, h * dk], 6, 2.0);
        let bias = fill(&[h * dk], 7, 2.0);
        let split = |y: &Tensor| {
            y.reshape((b, t, h, dk))
                .and_then(|y| y.transpose(1, 2)?.contiguous())
                .expect("candle heads")
        };
        let got = heads(&y, Some(&bias), h, 0.125).expect("fused");
        let want = split(
            &y.broadcast_add(&bias)
                .and_then(|y| y * 0.125)
                .expect("scaled"),
        );
        assert_eq!(rel(&got, &want), 0.0);
        let got = heads(&y, None, h, 1.0).expect("fused");
        assert_eq!(rel(&got, &split(&y)), 0.0);
        assert!(heads(&y, None, 5, 1.0).is_err());
    }

    #[test]
    fn layer_norm_matches_candle() {
        // Width 100 leaves a remainder after the 16-wide chunks; an offset mean tests centring.
        for (rows, d) in [(37, 512), (5, 100), (1, 7)] {
            let x = (fill(&[1, rows, d], 1, 2.0) + 3.0).expect("x");
            let w = fill(&[d], 2, 2.0);
            let b = fill(&[d], 3, 2.0);
            let got = layer_norm(&x, &w, &b, 1e-5).expect("fused");
            let centred = x
                .broadcast_sub(&x.mean_keepdim(D::Minus1).expect("mean"))
                .expect("centred");
            let want = candle_nn::ops::layer_norm(&centred, &w, &b, 1e-5).expect("candle");
            assert!(rel(&got, &want) < 1e-5, "{rows}x{d}: {}", rel(&got, &want));
        }
    }

    #[test]
    fn bias_act_matches_candle() {
        let y = fill(&[2, 33, 70], 4, 2.0);
        let b = fill(&[70], 5, 2.0);
        for relu in [false, true] {
            let got = bias_act(&y, &b, relu).expect("fused");
            let mut want = y.broadcast_add(&b).expect("add");
            if relu {
                want = want.relu().expect("relu");
            }
            assert_eq!(rel(&got, &want), 0.0, "relu {relu}");
        }
    }

    #[test]
    fn heads_softmax_and_merge_match_candle() {
        let (b, t, h, dk) = (2, 21, 4, 8);
        let d = h * dk;
        let y = fill(&[b, t, 3 * d], 6, 2.0);
        let bias = fill(&[3 * d], 7, 2.0);
        let heads = qkv_heads(&y, &bias, h).expect("fused heads");
        let want = y
            .broadcast_add(&bias)
            .and_then(|y| {
                y.reshape((b, t, 3, h, dk))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()
            })
            .expect("candle heads");
        assert_eq!(rel(&heads, &want), 0.0);

        let lengths = [t, 13];
        let scores = fill(&[b, h, t, t], 8, 2.0)
            .affine(4.0, 0.0)
            .expect("scores");
        let got = masked_softmax(&scores, &lengths).expect("fused softmax");
        let bias: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |i| if i < l { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let key_bias = Tensor::from_vec(bias, (b, 1, 1, t), &Device::Cpu).expect("bias");
        let want = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&key_bias).expect("add"))
            .expect("candle softmax");
        assert!(rel(&got, &want) < 1e-6, "{}", rel(&got, &want));

        let o = fill(&[b, h, t, dk], 9, 2.0);
        let got = merge_heads(&o).expect("fused merge");
        let want = o
            .transpose(1, 2)
            .and_then(|o| o.reshape((b, t, d)))
            .expect("candle merge");
        assert_eq!(rel(&got, &want), 0.0);
    }

    /// The candle-op formula of the FSMN block (as `MultiHeadedAttentionSANM::forward_fsmn`).
    fn fsmn_reference(v: &Tensor, taps: &Tensor, lengths: &[usize], left: usize) -> Tensor {
        let (b, t, d) = v.dims3().expect("dims");
        let k = taps.dim(0).expect("k");
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, t, 1), &Device::Cpu).expect("mask");
        let vm = v.broadcast_mul(&mask).expect("vm");
        let padded = vm.pad_with_zeros(1, left, k - 1 - left).expect("pad");
        let mut acc = vm.clone();
        for j in 0..k {
            let tap = taps.i(j).and_then(|t| t.reshape((1, 1, d))).expect("tap");
            acc = (acc
                + padded
                    .narrow(1, j, t)
                    .expect("narrow")
                    .broadcast_mul(&tap)
                    .expect("mul"))
            .expect("add");
        }
        acc.broadcast_mul(&mask).expect("mask")
    }

    #[test]
    fn attention_output_matches_candle() {
        let (b, t, h, dk, k) = (3, 19, 2, 24, 11);
        let d = h * dk;
        let y = fill(&[b, t, 3 * d], 10, 2.0);
        let zero = Tensor::zeros(3 * d, DType::F32, &Device::Cpu).expect("zero");
        let heads = qkv_heads(&y, &zero, h).expect("heads");
        let v = y.narrow(2, 2 * d, d).expect("v");
        let taps = fill(&[k, d], 11, 2.0);
        let lo = fill(&[b, t, d], 12, 2.0);
        let bias = fill(&[d], 13, 2.0);
        let residual = fill(&[b, t, d], 14, 2.0);
        // Unpadded, padded, and an item shorter than the kernel; left 5 (sanm_shfit 0) and 7.
        for (lengths, left) in [([t, t, t], 5), ([t, 12, 3], 5), ([t, 12, 3], 7)] {
            let fsmn = fsmn_reference(&v, &taps, &lengths, left);
            let att = lo
                .broadcast_add(&bias)
                .and_then(|x| x + &fsmn)
                .expect("att");
            let got =
                attention_output(&lo, &bias, &heads, &taps, &lengths, left, None).expect("fused");
            assert!(rel(&got, &att) < 1e-6, "{lengths:?}: {}", rel(&got, &att));
            let want = (&residual + &att).expect("residual");
            let got = attention_output(&lo, &bias, &heads, &taps, &lengths, left, Some(&residual))
                .expect("fused residual");
            assert!(rel(&got, &want) < 1e-6, "{lengths:?}: {}", rel(&got, &want));
        }
    }

    #[test]
    fn residual_bias_matches_candle() {
        let y = fill(&[1, 40, 64], 15, 2.0);
        let b = fill(&[64], 16, 2.0);
        let res = fill(&[1, 40, 64], 17, 2.0);
        let got = residual_bias(&y, &b, &res).expect("fused");
        let want = y.broadcast_add(&b).and_then(|y| &res + y).expect("candle");
        assert_eq!(rel(&got, &want), 0.0);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let x = fill(&[2, 8], 18, 2.0);
        assert!(layer_norm(&x, &fill(&[7], 1, 2.0), &fill(&[8], 2, 2.0), 1e-5).is_err());
        assert!(qkv_heads(&fill(&[1, 4, 10], 3, 2.0), &fill(&[10], 4, 2.0), 4).is_err());
        assert!(masked_softmax(&fill(&[2, 1, 3, 3], 5, 2.0), &[3]).is_err());
        let t = fill(&[8, 2], 6, 2.0).t().expect("t");
        assert!(bias_act(&t, &fill(&[8], 7, 2.0), false).is_err());
    }

    /// Minor page faults of the calling thread so far.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn thread_minor_faults() -> i64 {
        // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// After `keep_freed_buffers`, a 40 MiB buffer (above glibc's own 32 MiB limit for keeping
    /// freed memory) filled, freed and allocated again faults in (almost) no new pages the
    /// second time; without it each round maps 10,240 fresh pages.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_buffers_are_reused_without_page_faults() {
        keep_freed_buffers();
        let len = (40 << 20) / 4;
        let round = || {
            let before = thread_minor_faults();
            let v = std::hint::black_box(vec![1.0f32; len]);
            let sum: f32 = v.iter().step_by(1024).sum();
            assert_eq!(sum, (len / 1024) as f32);
            drop(v);
            thread_minor_faults() - before
        };
        let first = round();
        let second = round();
        eprintln!("page faults: first round {first}, second {second}");
        assert!(
            second < 256,
            "second round faulted {second} pages (first {first})"
        );
    }
}
