//! One greedy decoder step of an f32 model on the CPU as plain loops over the weights, instead of
//! some 200 candle operations per token.
//!
//! A step of whisper-tiny's decoder is a few matrix–vector products (33 MB of decoder weights and
//! the 80 MB output embedding read once) and attention over at most 448 cached positions and the
//! 1500 audio frames. Done with candle, each of its ~50 products re-reads `/proc/cpuinfo`
//! (candle 0.11.1's `get_num_threads`, unless `RAYON_NUM_THREADS` is set, asks `num_cpus` for the
//! physical core count on every call, which costs more the more cores the machine has), each
//! operation allocates, and the cross-attention rescaled and copied the 1500 cached audio keys
//! and values on every step. Here the large products share their rows out over rayon's pool
//! (small ones stay on the calling thread, see [`TASK_MACS`]), the audio
//! keys and values are computed once per window (one candle product each), and the
//! self-attention cache grows in place.
//!
//! The maths is transformers' `WhisperDecoder` in eager f32: pre-norm blocks, the query scaled
//! by `head_dim^-0.5` after its projection, exact (erf) GELU, the output layer tied to the token
//! embedding. Only the summation order of the products and the `exp` and `erf` approximations
//! (within a few ulp, [`crate::model::cpu_ops`]) differ (the parity tests hold it to the same
//! bounds as the candle path). The products and the attention are compiled for AVX-512 and
//! AVX2 + FMA as well as plain code and picked at run time.

#![allow(unsafe_code)] // only to call `#[target_feature]` functions after runtime detection

use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use candle_nn::{LayerNorm, Linear};
use rayon::prelude::*;

use super::network::{Attention, Block, Network};
use crate::model::cpu_ops::{dot, exp_nonpositive, gelu, max, simd_fn, sum};

/// Multiply–adds per rayon task (below it, no task is split off). Large enough that whisper-tiny's
/// and -base's per-layer products run on the calling thread and only the output layer (20 M
/// multiply–adds for tiny) is shared out: on a loaded 2-core machine, ~45 parallel regions a
/// step (one per product and attention) made two threads slower than one.
const TASK_MACS: usize = 1 << 20;

/// Runs `f` on the values of a contiguous f32 CPU tensor.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the fused Whisper step runs on the CPU only");
    };
    let all = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("the fused Whisper step needs contiguous weights");
    };
    Ok(f(&all[start..end]))
}

simd_fn! {
    /// Rows `first..first + out.len()` of `W x (+ b)` for a row-major `W` of `x.len()` columns.
    fn matvec_rows(w: &[f32], bias: Option<&[f32]>, x: &[f32], first: usize, out: &mut [f32]) {
        let cols = x.len();
        for (r, o) in out.iter_mut().enumerate() {
            let row = first + r;
            let v = dot(&w[row * cols..(row + 1) * cols], x);
            *o = bias.map_or(v, |b| v + b[row]);
        }
    }
}

/// `out = W x (+ b)` for a row-major `W` of `out.len()` rows.
fn matvec(w: &[f32], bias: Option<&[f32]>, x: &[f32], out: &mut [f32]) {
    let cols = x.len();
    let rows_per_task = (TASK_MACS / cols.max(1)).max(1);
    let rows = |(task, chunk): (usize, &mut [f32])| {
        matvec_rows(w, bias, x, task * rows_per_task, chunk);
    };
    if out.len() <= rows_per_task {
        rows((0, out));
    } else {
        out.par_chunks_mut(rows_per_task).enumerate().for_each(rows);
    }
}

fn linear(l: &Linear, x: &[f32], out: &mut [f32]) -> Result<()> {
    with_values(l.weight(), |w| match l.bias() {
        Some(b) => with_values(b, |b| matvec(w, Some(b), x, out)),
        None => {
            matvec(w, None, x, out);
            Ok(())
        }
    })?
}

fn layer_norm(ln: &LayerNorm, x: &[f32], out: &mut [f32]) -> Result<()> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + ln.eps() as f32).sqrt();
    with_values(ln.weight(), |w| -> Result<()> {
        let bias = ln
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("layer norm without bias".into()))?;
        with_values(bias, |b| {
            for (((o, v), w), b) in out.iter_mut().zip(x).zip(w).zip(b) {
                *o = (v - mean) * inv * w + b;
            }
        })
    })?
}

simd_fn! {
    /// Softmax-weighted sum of `values` rows (`d` wide, this head's `dh` columns at `offset`) by
    /// `q · keys` over `positions` rows; writes `dh` values to `out`.
    fn attend_head(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        positions: usize,
        d: usize,
        offset: usize,
        out: &mut [f32],
    ) {
        let dh = q.len();
        let mut scores: Vec<f32> = (0..positions)
            .map(|t| dot(q, &keys[t * d + offset..t * d + offset + dh]))
            .collect();
        let m = max(&scores);
        for s in scores.iter_mut() {
            *s = exp_nonpositive(*s - m);
        }
        let total = sum(&scores);
        out.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let row = &values[t * d + offset..t * d + offset + dh];
            for (o, v) in out.iter_mut().zip(row) {
                *o = p.mul_add(*v, *o);
            }
        }
        let inv = 1.0 / total;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// Multi-head attention of one query over `positions` rows of keys and values.
fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    positions: usize,
    heads: usize,
    out: &mut [f32],
) {
    let d = q.len();
    let dh = d / heads;
    let head = |(h, o): (usize, &mut [f32])| {
        let offset = h * dh;
        attend_head(
            &q[offset..offset + dh],
            keys,
            values,
            positions,
            d,
            offset,
            o,
        );
    };
    if positions * d < TASK_MACS {
        out.chunks_mut(dh).enumerate().for_each(head);
    } else {
        out.par_chunks_mut(dh).enumerate().for_each(head);
    }
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
    o: Vec<f32>,
    f: Vec<f32>,
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
    let scale = ((d / heads) as f32).powf(-0.5);
    // Self-attention over the cached positions and this one.
    layer_norm(&block.attn_ln, x, &mut s.h)?;
    linear(&block.attn.q, &s.h, &mut s.q)?;
    s.q.iter_mut().for_each(|v| *v *= scale);
    linear(&block.attn.k, &s.h, &mut s.k)?;
    linear(&block.attn.v, &s.h, &mut s.v)?;
    cache.keys.extend_from_slice(&s.k);
    cache.values.extend_from_slice(&s.v);
    attend(
        &s.q,
        &cache.keys,
        &cache.values,
        positions + 1,
        heads,
        &mut s.a,
    );
    linear(&block.attn.out, &s.a, &mut s.o)?;
    x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);
    // Cross-attention over the audio.
    if let Some((attn, ln)) = &block.cross {
        if cache.audio.is_none() {
            cache.audio = Some(audio_keys_values(attn, audio)?);
        }
        let Some((keys, values)) = &cache.audio else {
            candle_core::bail!("the audio keys were just computed");
        };
        let frames = keys.dim(0)?;
        layer_norm(ln, x, &mut s.h)?;
        linear(&attn.q, &s.h, &mut s.q)?;
        s.q.iter_mut().for_each(|v| *v *= scale);
        with_values(keys, |k| {
            with_values(values, |v| {
                attend(&s.q, k, v, frames, attn.heads, &mut s.a);
            })
        })??;
        linear(&attn.out, &s.a, &mut s.o)?;
        x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);
    }
    // Feed-forward.
    layer_norm(&block.mlp_ln, x, &mut s.h)?;
    linear(&block.fc1, &s.h, &mut s.f)?;
    s.f.iter_mut().for_each(|v| *v = gelu(*v));
    linear(&block.fc2, &s.f, &mut s.o)?;
    x.iter_mut().zip(&s.o).for_each(|(x, o)| *x += o);
    Ok(())
}

impl Network {
    /// Feeds `tokens` after the cached positions through the fused CPU step (f32 on the CPU
    /// only) and returns the last one's logits.
    pub fn step_cpu(&mut self, tokens: &[u32], audio: &Tensor) -> Result<Vec<f32>> {
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
            o: vec![0.0; d],
            f: vec![0.0; ffn],
        };
        let mut x = vec![0f32; d];
        let result = (|| -> Result<Vec<f32>> {
            let embeddings = self.tokens.embeddings();
            let vocab = embeddings.dim(0)?;
            for &token in tokens {
                let (t, p) = (token as usize, step.positions);
                if t >= vocab || p >= context {
                    candle_core::bail!(
                        "token {t} or position {p} is outside the decoder (vocabulary {vocab}, context {context})"
                    );
                }
                with_values(embeddings, |e| {
                    with_values(&self.text_positions, |pos| {
                        for (i, xi) in x.iter_mut().enumerate() {
                            *xi = e[t * d + i] + pos[p * d + i];
                        }
                    })
                })??;
                for (block, cache) in self.decoder.iter().zip(step.layers.iter_mut()) {
                    block_step(block, cache, audio, p, &mut x, &mut s)?;
                }
                step.positions += 1;
            }
            layer_norm(&self.decoder_ln, &x, &mut s.h)?;
            let mut logits = vec![0f32; vocab];
            with_values(embeddings, |e| matvec(e, None, &s.h, &mut logits))?;
            Ok(logits)
        })();
        self.cpu_step = step;
        result
    }
}
