//! SenseVoice parity against FunASR's reference dump, and speed, on any device.
//!
//! ```sh
//! # Parity with `tools/reference/generate.py --full --out DIR` (release-size random model):
//! cargo run --release --features cuda --example sensevoice_bench -- parity DIR cuda:0 f32
//! # Speed: a 10 s clip end to end, and batches of 30 s segments:
//! python3 tools/gpu/make_wav.py /tmp/clip10.wav 10; python3 tools/gpu/make_wav.py /tmp/seg30.wav 30
//! cargo run --release --features cuda --example sensevoice_bench -- speed DIR/model cuda:0 bf16 8 /tmp/clip10.wav /tmp/seg30.wav
//! # Forward + argmax alone at several batch sizes (the side-by-side with FunASR's bench_forward.py):
//! cargo run --release --features cuda --example sensevoice_bench -- forward DIR/model cuda:0 bf16 /tmp/seg30.wav 16,32,64 10
//! # One file end to end (FunASR's generate()), and the frame ids of one segment (for tools/bench/cpu_side.sh):
//! cargo run --release --example sensevoice_bench -- e2e DIR/model cpu f32 /tmp/seg30.wav 5
//! cargo run --release --example sensevoice_bench -- ids DIR/model cpu f32 /tmp/seg30.wav /tmp/ids.json
//! ```
//! Prints one JSON object per line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{D, DType, Device};
use gpuscribe::model::files::ModelFiles;
use gpuscribe::model::sensevoice::{DecodeOptions, Prompt, SenseVoice};

#[path = "common/timing.rs"]
mod timing;
use timing::{median, time_op};

fn device(spec: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        s => {
            let ordinal: usize = s.strip_prefix("cuda:").unwrap_or("0").parse()?;
            gpuscribe::model::cuda_device(ordinal)?
        }
    })
}

fn dtype(spec: &str) -> anyhow::Result<DType> {
    Ok(match spec {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("unknown dtype {other}"),
    })
}

fn load(model_dir: &Path, dev: &Device, dt: DType) -> anyhow::Result<(SenseVoice, f64)> {
    let files = ModelFiles::from_dir(model_dir)?;
    let started = Instant::now();
    let model = SenseVoice::load(&files, dev, dt)?;
    dev.synchronize()?;
    Ok((model, started.elapsed().as_secs_f64() * 1000.0))
}

fn audio(path: &Path) -> anyhow::Result<Vec<f32>> {
    Ok(gpuscribe::audio::decode_file(path, &mut |_| {})?.samples)
}

/// Checks our model against FunASR's reference dump in `dir` and fails (non-zero exit) when a
/// threshold is missed: in f32 every clip's logits within 1e-4 relative and its ids identical;
/// in every dtype no NaN/Inf and at least `min_agreement` of the frame ids equal to FunASR's.
fn parity(
    dir: &Path,
    dev: &Device,
    dt: DType,
    audio_dir: &Path,
    min_agreement: f64,
) -> anyhow::Result<()> {
    let (model, load_ms) = load(&dir.join("model"), dev, dt)?;
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let clips = reference["clips"]
        .as_object()
        .context("reference.json has no clips")?;
    let (mut same_ids, mut frames_total, mut frames_same) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for (clip, expected) in clips {
        let samples = audio(&audio_dir.join(format!("{clip}.wav")))?;
        let feats = model.features(&samples);
        let out = model.forward_features(&[feats], &[Prompt::default()], None)?;
        let logits = out
            .logits
            .get(0)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let reference_logits = tensors
            .get(&format!("{clip}/logits"))
            .with_context(|| format!("no {clip}/logits"))?;
        let diff = (&logits - reference_logits)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let scale = reference_logits.abs()?.max_all()?.to_scalar::<f32>()?;
        let nan = logits
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .any(|v| !v.is_finite());
        // Frame-level argmax agreement (the share of identical ids).
        let ours = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let theirs = reference_logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        frames_total += ours.len();
        frames_same += ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
        let transcript = model
            .transcribe_batch(&[&samples], &DecodeOptions::default())?
            .remove(0);
        let expected_ids: Vec<u32> = expected["greedy_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|v| v as u32))
                    .collect()
            })
            .unwrap_or_default();
        let ids_equal = transcript.token_ids == expected_ids;
        same_ids += usize::from(ids_equal);
        if nan {
            failures.push(format!("{clip}: NaN or Inf in the logits"));
        }
        if dt == DType::F32 && (diff / scale > 1e-4 || !ids_equal) {
            failures.push(format!(
                "{clip}: f32 logits relative error {} (bound 1e-4), ids equal: {ids_equal}",
                diff / scale
            ));
        }
        let text_equal =
            expected["generate"]["auto"].as_str() == Some(transcript.raw_text.as_str());
        println!(
            "{}",
            serde_json::json!({
                "clip": clip, "dtype": format!("{dt:?}"), "logits_max_abs_diff": diff,
                "logits_max_abs": scale, "rel": diff / scale, "nan_or_inf": nan,
                "ids_equal": ids_equal, "raw_text_equal": text_equal,
                "frames": ours.len(), "frame_ids_equal": ours.iter().zip(&theirs).filter(|(a, b)| a == b).count(),
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "summary": "parity", "dtype": format!("{dt:?}"), "load_ms": load_ms,
            "clips": clips.len(), "clips_with_identical_ids": same_ids,
            "frame_id_agreement": frames_same as f64 / frames_total.max(1) as f64,
            "min_agreement": min_agreement, "failures": failures,
        })
    );
    let agreement = frames_same as f64 / frames_total.max(1) as f64;
    if agreement < min_agreement {
        failures.push(format!(
            "frame ids agree on {agreement:.4}, below {min_agreement}"
        ));
    }
    anyhow::ensure!(
        failures.is_empty(),
        "parity failed: {}",
        failures.join("; ")
    );
    Ok(())
}

fn speed(
    model_dir: &Path,
    dev: &Device,
    dt: DType,
    batch: usize,
    clip10: &Path,
    segment30: &Path,
) -> anyhow::Result<()> {
    let (model, load_ms) = load(model_dir, dev, dt)?;
    let clip10 = audio(clip10)?;
    let segment = audio(segment30)?;
    let opts = DecodeOptions::default();
    for _ in 0..3 {
        model.transcribe_batch(&[&clip10], &opts)?;
    }
    let runs: Vec<f64> = (0..20)
        .map(|_| {
            let started = Instant::now();
            model
                .transcribe_batch(&[&clip10], &opts)
                .map(|_| started.elapsed().as_secs_f64() * 1000.0)
        })
        .collect::<Result<_, _>>()?;
    let ms10 = median(runs.clone());
    // Where the clip's time goes: the frontend alone, and the network (ids to the host) alone.
    let timed = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let runs = (0..10)
            .map(|_| {
                let started = Instant::now();
                f().map(|()| started.elapsed().as_secs_f64() * 1000.0)
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        Ok(median(runs))
    };
    let frontend_ms = timed(&mut || {
        model.features(&clip10);
        Ok(())
    })?;
    let feats10 = [model.features(&clip10)];
    let network_ms = timed(&mut || {
        let (ids, _) = model.forward_ids_features(&feats10, &[Prompt::default()])?;
        ids.to_vec2::<u32>()?;
        Ok(())
    })?;
    println!(
        "{}",
        serde_json::json!({"bench": "10s_clip_end_to_end", "dtype": format!("{dt:?}"), "median_ms": ms10,
            "min_ms": runs.iter().copied().fold(f64::INFINITY, f64::min), "load_ms": load_ms,
            "frontend_ms": frontend_ms, "network_ids_ms": network_ms,
            "x_realtime": 10_000.0 / ms10})
    );
    let clips: Vec<&[f32]> = (0..batch).map(|_| segment.as_slice()).collect();
    model.transcribe_batch(&clips, &opts)?;
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            model
                .transcribe_batch(&clips, &opts)
                .map(|_| started.elapsed().as_secs_f64() * 1000.0)
        })
        .collect::<Result<_, _>>()?;
    let ms = median(runs);
    // Where the time goes: the CPU frontend (fbank + LFR + CMVN, clips in parallel) alone.
    let started = Instant::now();
    let feats: Vec<(Vec<f32>, usize)> = clips.iter().map(|c| model.features(c)).collect();
    let frontend_serial_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let out = model.forward_features(&feats, &vec![Prompt::default(); feats.len()], None)?;
    let ids = out.logits.argmax(D::Minus1)?.to_vec2::<u32>()?;
    let forward_argmax_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        serde_json::json!({"bench": "batch_breakdown", "dtype": format!("{dt:?}"), "batch": batch,
            "frontend_one_thread_ms": frontend_serial_ms, "forward_and_argmax_ms": forward_argmax_ms,
            "frames": ids.first().map_or(0, Vec::len)})
    );
    println!(
        "{}",
        serde_json::json!({"bench": "batch_of_30s_segments", "dtype": format!("{dt:?}"), "batch": batch,
            "median_ms": ms, "audio_s": 30.0 * batch as f64, "x_realtime": 30_000.0 * batch as f64 / ms})
    );
    Ok(())
}

/// Forward + argmax alone (features computed once, outside the timing) for batches of the same
/// 30 s segment: the shape FunASR's `tools/reference/bench_forward.py` times, for a side-by-side.
fn forward(
    model_dir: &Path,
    dev: &Device,
    dt: DType,
    segment30: &Path,
    batches: &[usize],
    repeat: usize,
) -> anyhow::Result<()> {
    let (model, load_ms) = load(model_dir, dev, dt)?;
    let segment = audio(segment30)?;
    let audio_s_each = segment.len() as f64 / 16_000.0;
    let one = model.features(&segment);
    // FunASR's fp32 frame ids of the same segment (`bench_forward.py --dump-ids`), if given:
    // the share of ours equal to them is reported with each batch.
    let reference: Option<Vec<u32>> = match std::env::var_os("BENCH_REFERENCE_IDS") {
        Some(path) => Some(serde_json::from_str(&std::fs::read_to_string(path)?)?),
        None => None,
    };
    for &batch in batches {
        let feats = vec![one.clone(); batch];
        let prompts = vec![Prompt::default(); batch];
        let mut last_ids = Vec::new();
        // As FunASR's bench_forward.py times it: from features already on the device.
        let (xs, xs_lengths) = model.upload_features(&feats)?;
        let on_device = (0..repeat + 2)
            .map(|_| -> anyhow::Result<f64> {
                let started = Instant::now();
                let (ids, _) = model.model().forward_ids(&xs, &xs_lengths, &prompts)?;
                ids.to_vec2::<u32>()?;
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let on_device_med = median(on_device[2..].to_vec());
        let mut run = || -> anyhow::Result<f64> {
            let started = Instant::now();
            // What transcription runs: encoder, CTC head and argmax on the device.
            let (ids, lengths) = model.forward_ids_features(&feats, &prompts)?;
            // The ids reach the host, so the time includes the whole GPU queue.
            let ids = ids.to_vec2::<u32>()?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                ids.len() == batch,
                "forward gave {} rows for {batch}",
                ids.len()
            );
            last_ids = ids[0][..lengths[0]].to_vec();
            Ok(elapsed)
        };
        for _ in 0..2 {
            run()?;
        }
        let runs: Vec<f64> = (0..repeat).map(|_| run()).collect::<Result<_, _>>()?;
        let agreement = reference.as_ref().map(|want| {
            let same = last_ids.iter().zip(want).filter(|(a, b)| a == b).count();
            same as f64 / want.len().max(last_ids.len()).max(1) as f64
        });
        let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(runs);
        let audio_s = audio_s_each * batch as f64;
        println!(
            "{}",
            serde_json::json!({"bench": "forward_argmax", "impl": "gpuscribe", "dtype": format!("{dt:?}"),
                "batch": batch, "audio_s": audio_s, "median_ms": med, "best_ms": best, "load_ms": load_ms,
                "from_device_features_median_ms": on_device_med,
                "x_realtime_from_device_features": audio_s * 1000.0 / on_device_med,
                "threads": rayon::current_num_threads(),
                "cuda_graphs_kept": model.model().cuda_graphs_kept(),
                "x_realtime_median": audio_s * 1000.0 / med, "x_realtime_best": audio_s * 1000.0 / best,
                "frames_equal_to_funasr_fp32": agreement})
        );
    }
    Ok(())
}

/// One file end to end (`transcribe_batch`: frontend, forward, decode, timestamps), the
/// counterpart of FunASR's `generate()` on that file.
fn e2e(model_dir: &Path, dev: &Device, dt: DType, wav: &Path, repeat: usize) -> anyhow::Result<()> {
    let (model, load_ms) = load(model_dir, dev, dt)?;
    let samples = audio(wav)?;
    let audio_s = samples.len() as f64 / 16_000.0;
    let opts = DecodeOptions::default();
    model.transcribe_batch(&[&samples], &opts)?;
    let runs: Vec<f64> = (0..repeat.max(1))
        .map(|_| {
            let started = Instant::now();
            model
                .transcribe_batch(&[&samples], &opts)
                .map(|_| started.elapsed().as_secs_f64() * 1000.0)
        })
        .collect::<Result<_, _>>()?;
    let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(runs);
    println!(
        "{}",
        serde_json::json!({"bench": "generate", "impl": "gpuscribe", "dtype": format!("{dt:?}"),
            "batch": 1, "audio_s": audio_s, "median_ms": med, "best_ms": best, "load_ms": load_ms,
            "x_realtime_best": audio_s * 1000.0 / best, "threads": rayon::current_num_threads()})
    );
    Ok(())
}

/// The greedy frame ids of one file's forward pass (prompt frames included), written as a JSON
/// list to `out`: what `bench_forward.py --dump-ids` writes for FunASR.
fn ids(model_dir: &Path, dev: &Device, dt: DType, wav: &Path, out: &Path) -> anyhow::Result<()> {
    let (model, _) = load(model_dir, dev, dt)?;
    let feats = model.features(&audio(wav)?);
    let logits = model
        .forward_features(&[feats], &[Prompt::default()], None)?
        .logits;
    let ids = logits.get(0)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    std::fs::write(out, serde_json::to_string(&ids)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// CPU time of this process so far (all its threads' run time from the scheduler), in ms.
fn process_cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e6
}

/// The CPU matrix products alone (`GPUSCRIBE_CPU_MATMUL`'s four settings) on the encoder's
/// shapes for one 30 s segment (504 rows), random operands: median ms and GFLOP/s per shape,
/// and the time to pack one layer's weights.
fn amx(reps: usize) -> anyhow::Result<()> {
    use candle_core::Tensor;
    use gpuscribe::model::sensevoice::cpu_matmul::{CpuMatmul, Projection};
    let dev = Device::Cpu;
    for (m, k, n, what) in [
        (504, 512, 1536, "q_k_v"),
        (504, 512, 512, "linear_out"),
        (504, 512, 2048, "ffn_w1"),
        (504, 2048, 512, "ffn_w2"),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
        let layer = candle_nn::Linear::new(w, None);
        for mode in [
            CpuMatmul::F32,
            CpuMatmul::Avx512,
            CpuMatmul::Bf16x3,
            CpuMatmul::Bf16,
        ] {
            let started = Instant::now();
            let p = Projection::new(&layer, mode)?;
            let pack_ms = started.elapsed().as_secs_f64() * 1000.0;
            let ms = time_op(&dev, reps, || p.forward(&x))?;
            // CPU time per call (all threads): on a shared machine, what the product costs
            // regardless of how much of the cores it was given.
            let cpu_before = process_cpu_ms();
            for _ in 0..reps {
                drop(p.forward(&x)?);
            }
            let cpu_ms = (process_cpu_ms() - cpu_before) / reps as f64;
            let gflops = 2.0 * (m * k * n) as f64 / ms / 1e6;
            println!(
                "{}",
                serde_json::json!({"bench": "cpu_matmul", "shape": what, "m": m, "k": k, "n": n,
                    "mode": mode.name(), "runs_as": mode.resolve().name(), "packed": p.is_packed(), "median_ms": ms,
                    "gflops": gflops, "cpu_ms": cpu_ms,
                    "gflops_per_cpu_s": 2.0 * (m * k * n) as f64 / cpu_ms / 1e6, "pack_ms": pack_ms})
            );
        }
    }
    Ok(())
}

/// Where a layer's time goes: each candle op of one SAN-M layer, on random tensors of the
/// batch shape, timed alone; then the real encoder layer by layer (sync after each layer).
fn ops(
    model_dir: &Path,
    dev: &Device,
    dt: DType,
    batch: usize,
    frames: usize,
) -> anyhow::Result<()> {
    use candle_core::{Module, Tensor};
    let (b, t, d, h, k, hidden) = (batch, frames, 512usize, 4usize, 11usize, 2048usize);
    let x32 = Tensor::randn(0f32, 1.0, (b, t, d), dev)?;
    let x = x32.to_dtype(dt)?;
    let lin = |i: usize, o: usize| -> candle_core::Result<candle_nn::Linear> {
        Ok(candle_nn::Linear::new(
            Tensor::randn(0f32, 0.02, (o, i), dev)?.to_dtype(dt)?,
            Some(Tensor::zeros(o, dt, dev)?),
        ))
    };
    let (qkv_l, out_l, w1, w2) = (lin(d, 3 * d)?, lin(d, d)?, lin(d, hidden)?, lin(hidden, d)?);
    let g = Tensor::ones(d, DType::F32, dev)?;
    let beta = Tensor::zeros(d, DType::F32, dev)?;
    let qkv = qkv_l.forward(&x)?;
    let v = qkv.narrow(2, 2 * d, d)?.contiguous()?;
    let padded = v.pad_with_zeros(1, 5, 5)?;
    let index: Vec<u32> = (0..t)
        .flat_map(|i| (0..k).map(move |j| (i + j) as u32))
        .collect();
    let index = Tensor::from_vec(index, t * k, dev)?;
    let kd = Tensor::randn(0f32, 0.1, (k, d), dev)?.to_dtype(dt)?;
    let unfolded = padded.index_select(&index, 1)?.reshape((b, t, k, d))?;
    let prod = unfolded.broadcast_mul(&kd)?;
    let heads = qkv
        .reshape((b, t, 3, h, d / h))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, kk, vv) = (heads.get(0)?, heads.get(1)?, heads.get(2)?);
    let scores = q.matmul(&kk.t()?)?.to_dtype(DType::F32)?;
    let attn = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dt)?;
    let reps = 20;
    let mut report = serde_json::Map::new();
    let mut put = |name: &str, ms: f64| {
        report.insert(
            name.to_owned(),
            serde_json::json!((ms * 1000.0).round() / 1000.0),
        );
    };
    put(
        "layernorm_mean_sub",
        time_op(dev, reps, || {
            x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)
        })?,
    );
    put(
        "layernorm_fused",
        time_op(dev, reps, || {
            candle_nn::ops::layer_norm(&x32, &g, &beta, 1e-5)
        })?,
    );
    put("cast_f32_to_dt", time_op(dev, reps, || x32.to_dtype(dt))?);
    put(
        "cast_dt_to_f32",
        time_op(dev, reps, || x.to_dtype(DType::F32))?,
    );
    put("add_f32", time_op(dev, reps, || &x32 + &x32)?);
    put("linear_qkv", time_op(dev, reps, || qkv_l.forward(&x))?);
    put("linear_out", time_op(dev, reps, || out_l.forward(&x))?);
    put(
        "ffn_w1_relu",
        time_op(dev, reps, || w1.forward(&x)?.relu())?,
    );
    let hid = w1.forward(&x)?;
    put("ffn_w2", time_op(dev, reps, || w2.forward(&hid))?);
    put(
        "fsmn_narrow_contiguous",
        time_op(dev, reps, || qkv.narrow(2, 2 * d, d)?.contiguous())?,
    );
    put(
        "fsmn_pad",
        time_op(dev, reps, || v.pad_with_zeros(1, 5, 5))?,
    );
    put(
        "fsmn_index_select",
        time_op(dev, reps, || padded.index_select(&index, 1))?,
    );
    put(
        "fsmn_mul",
        time_op(dev, reps, || unfolded.broadcast_mul(&kd))?,
    );
    put("fsmn_sum_dim2", time_op(dev, reps, || prod.sum(2))?);
    put(
        "fsmn_shift_add",
        time_op(dev, reps, || {
            let mut acc = v.clone();
            for j in 0..k {
                acc = (acc
                    + padded
                        .narrow(1, j, t)?
                        .broadcast_mul(&kd.get(j)?.reshape((1, 1, d))?)?)?;
            }
            Ok(acc)
        })?,
    );
    put(
        "heads_permute_contiguous",
        time_op(dev, reps, || {
            qkv.reshape((b, t, 3, h, d / h))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()
        })?,
    );
    put(
        "attn_scores_matmul",
        time_op(dev, reps, || q.matmul(&kk.t()?))?,
    );
    put(
        "attn_softmax_f32_casts",
        time_op(dev, reps, || {
            candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dt)
        })?,
    );
    put(
        "attn_av_matmul_merge",
        time_op(dev, reps, || {
            attn.matmul(&vv)?.transpose(1, 2)?.reshape((b, t, d))
        })?,
    );
    // The fused CPU loops that replace the ops above (f32 on the CPU).
    if dev.is_cpu() && dt == DType::F32 {
        use gpuscribe::model::sensevoice::cpu_ops;
        let full = vec![t; b];
        let zero3 = Tensor::zeros(3 * d, DType::F32, dev)?;
        let b1 = Tensor::zeros(hidden, DType::F32, dev)?;
        let heads_f = cpu_ops::qkv_heads(&qkv, &zero3, h)?;
        let lo = out_l.forward(&x)?;
        put(
            "cpu_layernorm",
            time_op(dev, reps, || cpu_ops::layer_norm(&x32, &g, &beta, 1e-5))?,
        );
        put(
            "cpu_bias_relu_ffn",
            time_op(dev, reps, || cpu_ops::bias_act(&hid, &b1, true))?,
        );
        put(
            "cpu_qkv_heads",
            time_op(dev, reps, || cpu_ops::qkv_heads(&qkv, &zero3, h))?,
        );
        put(
            "cpu_masked_softmax",
            time_op(dev, reps, || cpu_ops::masked_softmax(&scores, &full))?,
        );
        put(
            "cpu_merge_heads",
            time_op(dev, reps, || cpu_ops::merge_heads(&attn.matmul(&vv)?))?,
        );
        put(
            "cpu_fsmn_bias_residual",
            time_op(dev, reps, || {
                cpu_ops::attention_output(&lo, &beta, &heads_f, &kd, &full, 5, Some(&x32))
            })?,
        );
        put(
            "cpu_bias_residual",
            time_op(dev, reps, || cpu_ops::residual_bias(&lo, &beta, &x32))?,
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "ops_ms", "dtype": format!("{dt:?}"),
        "shape": [b, t, d], "ops": report})
    );

    // The real encoder, layer by layer.
    let (model, _) = load(model_dir, dev, dt)?;
    let feats = Tensor::randn(0f32, 1.0, (b, t - 4, 560), dev)?;
    let lengths = vec![t - 4; b];
    let prompts = vec![Prompt::default(); b];
    for _ in 0..2 {
        model.model().forward(&feats, &lengths, &prompts, None)?;
    }
    dev.synchronize()?;
    let mut per_layer = Vec::new();
    let mut last = Instant::now();
    let started = last;
    let mut capture = |_: &str, _: &candle_core::Tensor| -> candle_core::Result<()> {
        dev.synchronize()?;
        per_layer.push(last.elapsed().as_secs_f64() * 1000.0);
        last = Instant::now();
        Ok(())
    };
    let out = model
        .model()
        .forward(&feats, &lengths, &prompts, Some(&mut capture))?;
    dev.synchronize()?;
    let synced_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(out);
    let unsynced = time_op(dev, 5, || {
        Ok(model
            .model()
            .forward(&feats, &lengths, &prompts, None)?
            .logits)
    })?;
    let head = per_layer.iter().take(3).copied().collect::<Vec<_>>();
    println!(
        "{}",
        serde_json::json!({"bench": "encoder_layers", "dtype": format!("{dt:?}"),
        "forward_ms": unsynced, "forward_synced_per_layer_ms": synced_ms,
        "layer_median_ms": median(per_layer[2..per_layer.len() - 1].to_vec()),
        "first_layers_ms": head})
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let audio_dir = std::env::var_os("BENCH_AUDIO_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/audio"),
        PathBuf::from,
    );
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["parity", dir, dev, dt] => parity(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            &audio_dir,
            if dtype(dt)? == DType::F32 { 1.0 } else { 0.95 },
        ),
        ["parity", dir, dev, dt, min_agreement] => parity(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            &audio_dir,
            min_agreement.parse()?,
        ),
        ["speed", dir, dev, dt, batch, clip10, segment30] => speed(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            batch.parse()?,
            Path::new(clip10),
            Path::new(segment30),
        ),
        ["forward", dir, dev, dt, segment30, batches, repeat] => forward(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            Path::new(segment30),
            &batches
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<usize>, _>>()?,
            repeat.parse()?,
        ),
        ["e2e", dir, dev, dt, wav, repeat] => e2e(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            Path::new(wav),
            repeat.parse()?,
        ),
        ["ids", dir, dev, dt, wav, out] => ids(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            Path::new(wav),
            Path::new(out),
        ),
        ["ops", dir, dev, dt, batch, frames] => ops(
            Path::new(dir),
            &device(dev)?,
            dtype(dt)?,
            batch.parse()?,
            frames.parse()?,
        ),
        ["amx", reps] => amx(reps.parse()?),
        _ => bail!(
            "usage: sensevoice_bench amx REPS | parity DIR DEVICE DTYPE [MIN_FRAME_AGREEMENT] | \
             speed MODEL_DIR DEVICE DTYPE BATCH CLIP10_WAV SEGMENT30_WAV | \
             forward MODEL_DIR DEVICE DTYPE SEGMENT30_WAV BATCHES(16,32,64) REPEAT | \
             e2e MODEL_DIR DEVICE DTYPE WAV REPEAT | ids MODEL_DIR DEVICE DTYPE WAV OUT_JSON | \
             ops MODEL_DIR DEVICE DTYPE BATCH FRAMES"
        ),
    }
}
