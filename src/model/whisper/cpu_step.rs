//! One greedy decoder step of an f32 model on the CPU as plain loops over the weights, instead of
//! some 200 candle operations per token.
//!
//! A step of whisper-tiny's decoder is a few matrix–vector products (33 MB of decoder weights and
//! the 80 MB output embedding read once) and attention over at most 448 cached positions and the
//! 1500 audio frames: it is bound by memory bandwidth, and by how often the threads meet. Done
//! with candle, each of its ~50 products is its own parallel region (and, unless
//! `RAYON_NUM_THREADS` is set, candle 0.11.1 re-reads `/proc/cpuinfo` for the core count on every
//! call), each operation allocates, and the threads wait for each other some 200 times a token,
//! which on 16 cores cost more than the products (BENCHMARKS.md). Here a token takes seven parallel
//! regions a layer and one for the output layer:
//! - the products that read the same vector run as one region (self-attention's q, k and v), and
//!   each product's bias and what follows it (the query's scale, GELU, the residual add) happen
//!   in the task that computes the row;
//! - every region is cut into about two tasks per thread of rayon's pool, but none smaller than
//!   [`MIN_TASK_MACS`], so a 2-core machine runs few and a 16-core one keeps every core busy;
//! - attention is cut by heads and by stretches of positions (a head's 1500 audio frames are
//!   shared by several tasks, whose partial softmax sums are merged exactly as flash attention
//!   does), so 6 or 8 heads still spread over 16 cores;
//! - the audio's keys and values are computed once per window (one candle product each), the
//!   self-attention cache grows in place, and the step runs inside rayon's pool, so that its
//!   regions start from a worker.
//!
//! The maths is transformers' `WhisperDecoder` in eager f32: pre-norm blocks, the query scaled
//! by `head_dim^-0.5` after its projection, exact (erf) GELU, the output layer tied to the token
//! embedding. Only the summation order of the products and of the attention's partial sums, and
//! the `exp` and `erf` approximations (within a few ulp, [`crate::model::cpu_ops`]) differ (the
//! parity tests hold it to the same bounds as the candle path). The loops are compiled for
//! AVX-512 and AVX2 + FMA as well as plain code and picked at run time.

#![allow(unsafe_code)] // only to call `#[target_feature]` functions after runtime detection

use std::ops::Deref;

use candle_core::{DType, Device, Layout, Module, Result, Storage, Tensor};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use super::network::{Attention, Block, Network};
use crate::model::cpu_ops::{dot4, exp_nonpositive, gelu, layer_norm_rows, max, simd_fn, sum};

/// Multiply–adds below which work is not split into another task: a task of this size reads
/// 64 KB of weights, a few microseconds of work, about what handing it to another thread costs.
const MIN_TASK_MACS: usize = 1 << 14;

/// Tasks per thread a region is cut into at most (rayon evens them out by stealing).
const TASKS_PER_THREAD: usize = 2;

/// Positions one attention task takes at least.
const MIN_TASK_POSITIONS: usize = 64;

/// The values of a contiguous f32 CPU tensor held by `Tensor::storage_and_layout`'s guard.
fn values<'g, S: Deref<Target = Storage>>(held: &'g (S, &Layout)) -> Result<&'g [f32]> {
    let Storage::Cpu(cpu) = &*held.0 else {
        candle_core::bail!("the fused Whisper step runs on the CPU only");
    };
    let all = cpu.as_slice::<f32>()?;
    let Some((start, end)) = held.1.contiguous_offsets() else {
        candle_core::bail!("the fused Whisper step needs contiguous weights");
    };
    Ok(&all[start..end])
}

/// How many tasks `macs` multiply–adds are worth on this pool.
fn tasks_for(macs: usize) -> usize {
    let most = rayon::current_num_threads() * TASKS_PER_THREAD;
    (macs / MIN_TASK_MACS).clamp(1, most.max(1))
}

/// What a product's task does with `W x + b` of each row.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Stores it.
    Store,
    /// Stores it times a factor (the query's scale).
    Scale(f32),
    /// Stores its exact GELU.
    Gelu,
    /// Adds it to what is there (the residual).
    Add,
}

/// One product of a region: `out (then) W x + b` for the layer's row-major `W`.
struct Product<'a> {
    layer: &'a Linear,
    x: &'a [f32],
    out: &'a mut [f32],
    then: Then,
}

/// A task: rows `first..first + out.len()` of one product.
struct Rows<'a> {
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    x: &'a [f32],
    first: usize,
    out: &'a mut [f32],
    then: Then,
}

simd_fn! {
    /// One task of a product: its rows, four at a time.
    fn product_rows(
        w: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        first: usize,
        out: &mut [f32],
        then: Then,
    ) {
        let cols = x.len();
        let row = |r: usize| &w[r * cols..(r + 1) * cols];
        for (g, o) in out.chunks_mut(4).enumerate() {
            let r = first + 4 * g;
            let v = if o.len() == 4 {
                dot4([row(r), row(r + 1), row(r + 2), row(r + 3)], x)
            } else {
                let mut v = [0f32; 4];
                for (i, vi) in v.iter_mut().enumerate().take(o.len()) {
                    *vi = dot4([row(r + i); 4], x)[0];
                }
                v
            };
            for (i, (o, v)) in o.iter_mut().zip(v).enumerate() {
                let v = bias.map_or(v, |b| v + b[r + i]);
                *o = match then {
                    Then::Store => v,
                    Then::Scale(s) => v * s,
                    Then::Gelu => gelu(v),
                    Then::Add => *o + v,
                };
            }
        }
    }
}

/// Runs `products` as one parallel region.
fn products(products: &mut [Product<'_>]) -> Result<()> {
    let held: Vec<_> = products
        .iter()
        .map(|p| {
            (
                p.layer.weight().storage_and_layout(),
                p.layer.bias().map(Tensor::storage_and_layout),
            )
        })
        .collect();
    let macs = |p: &Product<'_>| p.out.len() * p.x.len();
    let total: usize = products.iter().map(macs).sum();
    let tasks = tasks_for(total);
    let mut rows = Vec::with_capacity(tasks + products.len());
    for (p, (w, b)) in products.iter_mut().zip(&held) {
        let w = values(w)?;
        let bias = b.as_ref().map(values).transpose()?;
        let n = p.out.len();
        if w.len() != n * p.x.len() || bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!(
                "a decoder product of {} weights and {:?} biases does not map {} values to {n}",
                w.len(),
                bias.map(<[f32]>::len),
                p.x.len()
            );
        }
        let share = (tasks * macs(p)).div_ceil(total.max(1)).max(1);
        let per_task = n.div_ceil(share).next_multiple_of(4).max(4);
        for (i, out) in p.out.chunks_mut(per_task).enumerate() {
            rows.push(Rows {
                w,
                bias,
                x: p.x,
                first: i * per_task,
                out,
                then: p.then,
            });
        }
    }
    let run = |r: Rows<'_>| product_rows(r.w, r.bias, r.x, r.first, r.out, r.then);
    if rows.len() == 1 {
        rows.into_iter().for_each(run);
    } else {
        rows.into_par_iter().for_each(run);
    }
    Ok(())
}

/// `out = W x + b`, one region.
fn linear(layer: &Linear, x: &[f32], out: &mut [f32], then: Then) -> Result<()> {
    products(&mut [Product {
        layer,
        x,
        out,
        then,
    }])
}

fn layer_norm(ln: &LayerNorm, x: &[f32], out: &mut [f32]) -> Result<()> {
    let bias = ln
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("layer norm without bias".into()))?;
    let (w, b) = (ln.weight().storage_and_layout(), bias.storage_and_layout());
    let (w, b) = (values(&w)?, values(&b)?);
    if w.len() != x.len() || b.len() != x.len() || out.len() != x.len() {
        candle_core::bail!(
            "a decoder layer norm of {} weights for {} values",
            w.len(),
            x.len()
        );
    }
    layer_norm_rows(x, w, b, ln.eps() as f32, out);
    Ok(())
}

simd_fn! {
    /// Attention of one head's query `q` over positions `span` of `keys` and
    /// `values` (rows `d` wide, this head's columns at `offset`), unnormalised: writes
    /// `Σ exp(s_t − m) v_t` to `acc` and returns `(m, Σ exp(s_t − m))` for the largest score `m`.
    fn attend_part(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        span: std::ops::Range<usize>,
        d: usize,
        offset: usize,
        acc: &mut [f32],
    ) -> (f32, f32) {
        let dh = q.len();
        #[inline(always)]
        fn row(rows: &[f32], t: usize, d: usize, offset: usize, dh: usize) -> &[f32] {
            let i = t * d + offset;
            &rows[i..i + dh]
        }
        let at = |rows, t| row(rows, span.start + t, d, offset, dh);
        let mut scores = vec![0f32; span.len()];
        for (t, chunk) in scores.chunks_mut(4).enumerate() {
            let t = 4 * t;
            if chunk.len() == 4 {
                chunk.copy_from_slice(&dot4(
                    [at(keys, t), at(keys, t + 1), at(keys, t + 2), at(keys, t + 3)],
                    q,
                ));
            } else {
                for (i, s) in chunk.iter_mut().enumerate() {
                    *s = dot4([at(keys, t + i); 4], q)[0];
                }
            }
        }
        let m = max(&scores);
        for s in scores.iter_mut() {
            *s = exp_nonpositive(*s - m);
        }
        acc.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            for (a, v) in acc.iter_mut().zip(at(values, t)) {
                *a = p.mul_add(*v, *a);
            }
        }
        (m, sum(&scores))
    }
}

/// A part of one head's attention, and where its partial sums go.
struct Part<'a> {
    head: usize,
    span: std::ops::Range<usize>,
    acc: &'a mut [f32],
    stats: &'a mut (f32, f32),
}

/// Multi-head attention of one (scaled) query over `positions` rows of keys and values: heads
/// and stretches of positions as parallel tasks, merged per head.
fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    positions: usize,
    heads: usize,
    out: &mut [f32],
    partial: &mut Vec<f32>,
) -> Result<()> {
    let d = q.len();
    if heads == 0
        || positions == 0
        || !d.is_multiple_of(heads)
        || keys.len() < positions * d
        || values.len() < positions * d
    {
        candle_core::bail!(
            "attention of width {d} in {heads} heads over {positions} positions of {} keys",
            keys.len()
        );
    }
    let dh = d / heads;
    let most_parts = positions.div_ceil(MIN_TASK_POSITIONS).max(1);
    let parts = tasks_for(2 * positions * d)
        .div_ceil(heads)
        .clamp(1, most_parts);
    let per_part = positions.div_ceil(parts);
    let parts = positions.div_ceil(per_part);
    partial.clear();
    partial.resize(heads * parts * dh, 0.0);
    let mut stats = vec![(0f32, 0f32); heads * parts];
    let tasks: Vec<Part<'_>> = partial
        .chunks_mut(dh)
        .zip(stats.iter_mut())
        .enumerate()
        .map(|(i, (acc, stats))| {
            let (head, part) = (i / parts, i % parts);
            let start = part * per_part;
            Part {
                head,
                span: start..(start + per_part).min(positions),
                acc,
                stats,
            }
        })
        .collect();
    let run = |p: Part<'_>| {
        let offset = p.head * dh;
        *p.stats = attend_part(
            &q[offset..offset + dh],
            keys,
            values,
            p.span,
            d,
            offset,
            p.acc,
        );
    };
    if tasks.len() == 1 || 2 * positions * d < MIN_TASK_MACS {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
    // Per head: Σ_c e^(m_c − M) acc_c / Σ_c e^(m_c − M) s_c, M the largest m_c. One part gives
    // acc / s, as a single pass would.
    for (h, o) in out.chunks_mut(dh).enumerate() {
        let stats = &stats[h * parts..(h + 1) * parts];
        let top = stats.iter().fold(f32::NEG_INFINITY, |m, s| m.max(s.0));
        o.fill(0.0);
        let mut total = 0f32;
        for (c, &(m, s)) in stats.iter().enumerate() {
            let f = exp_nonpositive(m - top);
            total += f * s;
            let acc = &partial[(h * parts + c) * dh..(h * parts + c + 1) * dh];
            for (o, a) in o.iter_mut().zip(acc) {
                *o = f.mul_add(*a, *o);
            }
        }
        let inv = 1.0 / total;
        o.iter_mut().for_each(|o| *o *= inv);
    }
    Ok(())
}

/// One layer's state across a window's steps.
#[derive(Debug, Default, Clone)]
struct LayerCache {
    /// Self-attention keys and values so far, `positions × d` each.
    keys: Vec<f32>,
    values: Vec<f32>,
    /// The audio's keys and values (`frames × d`, contiguous f32), once per window.
    audio: Option<(Tensor, Tensor)>,
}

/// The fused step's caches.
#[derive(Debug, Default, Clone)]
pub struct CpuStep {
    layers: Vec<LayerCache>,
    positions: usize,
}

impl CpuStep {
    /// Forgets the window.
    pub fn reset(&mut self) {
        self.layers.clear();
        self.positions = 0;
    }
}

/// Whether a model on `device` at `dtype` can take the fused step.
pub fn supported(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

/// Scratch vectors of one step.
struct Scratch {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    f: Vec<f32>,
    /// The attention's partial sums.
    partial: Vec<f32>,
}

fn audio_keys_values(attn: &Attention, audio: &Tensor) -> Result<(Tensor, Tensor)> {
    let audio = audio.squeeze(0)?;
    let k = attn.k.forward(&audio)?.contiguous()?;
    let v = attn.v.forward(&audio)?.contiguous()?;
    Ok((k, v))
}

fn block_step(
    block: &Block,
    cache: &mut LayerCache,
    audio: &Tensor,
    positions: usize,
    x: &mut [f32],
    s: &mut Scratch,
) -> Result<()> {
    let d = x.len();
    let heads = block.attn.heads;
    let scale = ((d / heads.max(1)) as f32).powf(-0.5);
    // Self-attention over the cached positions and this one.
    layer_norm(&block.attn_ln, x, &mut s.h)?;
    let attn = &block.attn;
    products(&mut [
        Product {
            layer: &attn.q,
            x: &s.h,
            out: &mut s.q,
            then: Then::Scale(scale),
        },
        Product {
            layer: &attn.k,
            x: &s.h,
            out: &mut s.k,
            then: Then::Store,
        },
        Product {
            layer: &attn.v,
            x: &s.h,
            out: &mut s.v,
            then: Then::Store,
        },
    ])?;
    cache.keys.extend_from_slice(&s.k);
    cache.values.extend_from_slice(&s.v);
    attend(
        &s.q,
        &cache.keys,
        &cache.values,
        positions + 1,
        heads,
        &mut s.a,
        &mut s.partial,
    )?;
    linear(&attn.out, &s.a, x, Then::Add)?;
    // Cross-attention over the audio.
    if let Some((attn, ln)) = &block.cross {
        if cache.audio.is_none() {
            cache.audio = Some(audio_keys_values(attn, audio)?);
        }
        let Some((audio_keys, audio_values)) = &cache.audio else {
            candle_core::bail!("the audio keys were just computed");
        };
        let frames = audio_keys.dim(0)?;
        layer_norm(ln, x, &mut s.h)?;
        linear(&attn.q, &s.h, &mut s.q, Then::Scale(scale))?;
        let (k, v) = (
            audio_keys.storage_and_layout(),
            audio_values.storage_and_layout(),
        );
        attend(
            &s.q,
            values(&k)?,
            values(&v)?,
            frames,
            attn.heads,
            &mut s.a,
            &mut s.partial,
        )?;
        linear(&attn.out, &s.a, x, Then::Add)?;
    }
    // Feed-forward.
    layer_norm(&block.mlp_ln, x, &mut s.h)?;
    linear(&block.fc1, &s.h, &mut s.f, Then::Gelu)?;
    linear(&block.fc2, &s.f, x, Then::Add)
}

impl Network {
    /// Feeds `tokens` after the cached positions through the fused CPU step (f32 on the CPU
    /// only) and returns the last one's logits.
    pub fn step_cpu(&mut self, tokens: &[u32], audio: &Tensor) -> Result<Vec<f32>> {
        // In the pool, so that each region's tasks start from a worker's own queue.
        rayon::scope(|_| self.step_cpu_in_pool(tokens, audio))
    }

    fn step_cpu_in_pool(&mut self, tokens: &[u32], audio: &Tensor) -> Result<Vec<f32>> {
        let d = self.decoder_ln.weight().dim(0)?;
        let ffn = self
            .decoder
            .first()
            .map_or(Ok(4 * d), |b| b.fc1.weight().dim(0))?;
        let context = self.text_positions.dim(0)?;
        let mut step = std::mem::take(&mut self.cpu_step);
        step.layers
            .resize_with(self.decoder.len(), LayerCache::default);
        let mut s = Scratch {
            h: vec![0.0; d],
            q: vec![0.0; d],
            k: vec![0.0; d],
            v: vec![0.0; d],
            a: vec![0.0; d],
            f: vec![0.0; ffn],
            partial: Vec::new(),
        };
        let mut x = vec![0f32; d];
        let result = (|| -> Result<Vec<f32>> {
            let vocab = self.tokens.embeddings().dim(0)?;
            for &token in tokens {
                let (t, p) = (token as usize, step.positions);
                if t >= vocab || p >= context {
                    candle_core::bail!(
                        "token {t} or position {p} is outside the decoder (vocabulary {vocab}, context {context})"
                    );
                }
                {
                    let e = self.tokens.embeddings().storage_and_layout();
                    let pos = self.text_positions.storage_and_layout();
                    let (e, pos) = (values(&e)?, values(&pos)?);
                    for (i, xi) in x.iter_mut().enumerate() {
                        *xi = e[t * d + i] + pos[p * d + i];
                    }
                }
                for (block, cache) in self.decoder.iter().zip(step.layers.iter_mut()) {
                    block_step(block, cache, audio, p, &mut x, &mut s)?;
                }
                step.positions += 1;
            }
            layer_norm(&self.decoder_ln, &x, &mut s.h)?;
            let mut logits = vec![0f32; vocab];
            let output = Linear::new(self.tokens.embeddings().clone(), None);
            linear(&output, &s.h, &mut logits, Then::Store)?;
            Ok(logits)
        })();
        self.cpu_step = step;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 29) as f32 - 14.0) / 9.0)
            .collect()
    }

    /// Naive f64 attention of one query over `positions` rows, per head.
    fn attention_f64(q: &[f32], k: &[f32], v: &[f32], positions: usize, heads: usize) -> Vec<f64> {
        let d = q.len();
        let dh = d / heads;
        let mut out = vec![0f64; d];
        for h in 0..heads {
            let cols = h * dh..(h + 1) * dh;
            let scores: Vec<f64> = (0..positions)
                .map(|t| {
                    cols.clone()
                        .map(|c| f64::from(q[c]) * f64::from(k[t * d + c]))
                        .sum()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let total: f64 = e.iter().sum();
            for c in cols {
                out[c] = (0..positions)
                    .map(|t| e[t] * f64::from(v[t * d + c]))
                    .sum::<f64>()
                    / total;
            }
        }
        out
    }

    #[test]
    fn attention_in_parts_matches_one_pass_in_f64() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .expect("pool");
        // Positions from one (a single part) to the audio's 1500 (several parts a head).
        for (positions, heads, d) in [(1, 6, 384), (7, 6, 384), (448, 8, 512), (1500, 6, 384)] {
            let q = vector(d, 1);
            let k = vector(positions * d, 2);
            let v = vector(positions * d, 3);
            let want = attention_f64(&q, &k, &v, positions, heads);
            let mut out = vec![0f32; d];
            let mut partial = Vec::new();
            pool.install(|| attend(&q, &k, &v, positions, heads, &mut out, &mut partial))
                .expect("attend");
            for (c, (got, want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*got) - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{positions} positions, column {c}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn attention_refuses_widths_that_do_not_split_and_no_positions() {
        let q = vector(10, 1);
        let k = vector(20, 2);
        let mut out = vec![0f32; 10];
        assert!(attend(&q, &k, &k, 2, 3, &mut out, &mut Vec::new()).is_err());
        assert!(attend(&q, &k, &k, 3, 2, &mut out, &mut Vec::new()).is_err());
        assert!(
            attend(&q, &k, &k, 0, 2, &mut out, &mut Vec::new()).is_err(),
            "no positions to attend to"
        );
    }

    #[test]
    fn layer_norm_refuses_a_width_that_is_not_its_own() {
        let device = Device::Cpu;
        let ln = LayerNorm::new(
            Tensor::ones(8, DType::F32, &device).expect("weight"),
            Tensor::zeros(8, DType::F32, &device).expect("bias"),
            1e-5,
        );
        let x = vector(8, 1);
        let mut out = vec![0f32; 8];
        layer_norm(&ln, &x, &mut out).expect("its own width");
        assert!(out.iter().any(|v| *v != 0.0));
        assert!(
            layer_norm(&ln, &x[..7], &mut out[..7]).is_err(),
            "a shorter input"
        );
        assert!(
            layer_norm(&ln, &x, &mut out[..7]).is_err(),
            "a shorter output"
        );
    }

    #[test]
    fn products_match_f64_for_every_epilogue_and_task_split() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .expect("pool");
        // Rows not a multiple of four, columns not of sixteen; large enough to be cut.
        let (rows, cols) = (1031, 77);
        let w = vector(rows * cols, 4);
        let b = vector(rows, 5);
        let x = vector(cols, 6);
        let device = Device::Cpu;
        let layer = Linear::new(
            Tensor::from_vec(w.clone(), (rows, cols), &device).expect("w"),
            Some(Tensor::from_vec(b.clone(), rows, &device).expect("b")),
        );
        let exact: Vec<f64> = (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| f64::from(w[r * cols + c]) * f64::from(x[c]))
                    .sum::<f64>()
                    + f64::from(b[r])
            })
            .collect();
        let start = vector(rows, 7);
        for then in [Then::Store, Then::Scale(0.125), Then::Gelu, Then::Add] {
            let mut out = start.clone();
            pool.install(|| linear(&layer, &x, &mut out, then))
                .expect("product");
            for (r, got) in out.iter().enumerate() {
                let v = exact[r];
                let want = match then {
                    Then::Store => v,
                    Then::Scale(s) => v * f64::from(s),
                    Then::Gelu => f64::from(gelu(v as f32)),
                    Then::Add => f64::from(start[r]) + v,
                };
                assert!(
                    (f64::from(*got) - want).abs() <= 2e-5 * want.abs().max(1.0),
                    "{then:?} row {r}: {got} vs {want}"
                );
            }
        }
        let mut short = vec![0f32; rows - 1];
        assert!(linear(&layer, &x, &mut short, Then::Store).is_err());
    }
}
