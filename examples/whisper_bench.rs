//! Whisper speed and parity against transformers on any device, for f32, f16 and bf16: one
//! greedy window per clip (features, encoder, decoder; language `en`, no timestamps, at most
//! the reference's `max_new_tokens`), timed over several runs after a warm-up, with the ids
//! compared to what transformers gave (`tools/reference/whisper_bench.py`, same clips).
//!
//! ```sh
//! # Random weights of whisper-tiny's and -base's real configs (or any Hugging Face folder):
//! python tools/reference/whisper_generate.py --preset tiny --model-only --out /tmp/wtiny
//! python tools/reference/whisper_generate.py --preset base --model-only --out /tmp/wbase
//! python tools/reference/whisper_bench.py --model /tmp/wtiny/model --device cuda:0 --out /tmp/ref-tiny.json
//! cargo run --release --features cuda --example whisper_bench -- /tmp/wtiny/model /tmp/ref-tiny.json cuda:0 f32,f16,bf16
//! ```
//! `whisper_bench ops D_MODEL HEADS REPS` times each step of one f32 CPU encoder layer alone
//! (where the encoder's time goes). `WHISPER_BENCH_STEP=fused|candle` picks the greedy step
//! (the fused CPU step is the default for f32 on the CPU); `tools/bench/whisper_cpu.sh` runs
//! both against transformers.
//!
//! Prints one JSON object per precision: our runs, transformers' runs at the same dtype, and how
//! many clips' ids are identical to transformers' f32 ids and to its ids at the same dtype (with
//! the shortest common prefix). Per clip: the first step where the ids differ (if any) and, at
//! that step (the first step when none differ), both sides' two best scores after the decoding
//! rules, ours from one teacher-forced pass over our ids; and our smallest top-2 margin along the
//! way. A difference at a step whose margin is below the two sides' logit error is a near tie, not
//! a decoding difference. `transformers_f32_exact` is false when the reference's f32 ran with
//! TF32 (torch's default for cuDNN convolutions, which `whisper_bench.py` turns off) or does not
//! say: its f32 ids are then no f32 reference.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{DType, Device};
use gpuscribe::model::whisper::decode::apply_rules;
use gpuscribe::model::whisper::{Whisper, WhisperOptions};

#[path = "common/timing.rs"]
mod timing;
use timing::time_op;

fn device(spec: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        s => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .context("the device is cpu or cuda:N")?
                .parse()?;
            Device::new_cuda(ordinal)?
        }
    })
}

fn dtype(spec: &str) -> anyhow::Result<(DType, &'static str)> {
    Ok(match spec {
        "f32" => (DType::F32, "float32"),
        "f16" => (DType::F16, "float16"),
        "bf16" => (DType::BF16, "bfloat16"),
        other => bail!("unknown precision {other}: f32, f16 or bf16"),
    })
}

fn audio(path: &Path) -> anyhow::Result<Vec<f32>> {
    Ok(gpuscribe::audio::decode_file(path, &mut |_| {})?.samples)
}

fn ids_of(reference: &serde_json::Value, dtype: &str, clip: &str) -> Option<Vec<u32>> {
    let ids = reference["runs"][dtype]["ids"][clip].as_array()?;
    ids.iter()
        .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
        .collect()
}

fn strip_eot(mut ids: Vec<u32>, eot: u32) -> Vec<u32> {
    if ids.last() == Some(&eot) {
        ids.pop();
    }
    ids
}

fn prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One step's two best (id, score) pairs; the first index wins ties, as `argmax`.
type Top2 = [(u32, f32); 2];

fn top2(row: &[f32]) -> Top2 {
    let mut best = [(0u32, f32::NEG_INFINITY); 2];
    for (i, &v) in row.iter().enumerate() {
        if v > best[0].1 {
            best[1] = best[0];
            best[0] = (i as u32, v);
        } else if v > best[1].1 {
            best[1] = (i as u32, v);
        }
    }
    best
}

/// Our two best scores after the decoding rules at every generated step, from one
/// teacher-forced pass over the prompt and our ids.
fn our_top2(
    whisper: &mut Whisper,
    samples: &[f32],
    prompt: &[u32],
    ids: &[u32],
) -> anyhow::Result<Vec<Top2>> {
    let features = whisper.features(samples);
    let audio = whisper.encode(&features)?;
    let tokens: Vec<u32> = prompt.iter().chain(ids).copied().collect();
    let rows: Vec<Vec<f32>> = whisper.logits(&audio, &tokens)?.to_vec2()?;
    let vocab = whisper.vocabulary().clone();
    Ok((0..ids.len())
        .map(|k| {
            let mut row = rows[prompt.len() - 1 + k].clone();
            apply_rules(&mut row, &ids[..k], &vocab, false);
            top2(&row)
        })
        .collect())
}

/// transformers' two best scores per step, as whisper_bench.py writes them.
fn their_top2(reference: &serde_json::Value, dtype: &str, clip: &str) -> Option<Vec<Top2>> {
    let steps = reference["runs"][dtype]["top2"][clip].as_array()?;
    let pair = |v: &serde_json::Value| -> Option<(u32, f32)> {
        let id = u32::try_from(v[0].as_u64()?).ok()?;
        Some((id, v[1].as_f64().map_or(f32::NEG_INFINITY, |x| x as f32)))
    };
    steps
        .iter()
        .map(|s| Some([pair(&s[0])?, pair(&s[1])?]))
        .collect()
}

fn top2_json(t: Option<&Top2>) -> serde_json::Value {
    t.map_or(serde_json::Value::Null, |t| {
        serde_json::json!({
            "ids": [t[0].0, t[1].0],
            "scores": [t[0].1, t[1].1],
            "margin": t[0].1 - t[1].1,
        })
    })
}

/// Where our ids and theirs part (null: nowhere), with both sides' two best there.
fn difference_json(
    ours: &[u32],
    ours_top2: &[Top2],
    theirs: Option<(&[u32], Option<Vec<Top2>>)>,
) -> serde_json::Value {
    let Some((theirs, theirs_top2)) = theirs else {
        return serde_json::Value::Null;
    };
    let common = prefix(ours, theirs);
    let differs = common < ours.len().max(theirs.len());
    let step = if differs { common } else { 0 };
    serde_json::json!({
        "first_difference": differs.then_some(common),
        "ours_first_ids": &ours[..ours.len().min(step + 3)],
        "theirs_first_ids": &theirs[..theirs.len().min(step + 3)],
        "ours_top2": top2_json(ours_top2.get(step)),
        "theirs_top2": top2_json(theirs_top2.as_ref().and_then(|t| t.get(step))),
    })
}

/// The best time over `repeat` runs of each phase summed over the clips: the log-mel features,
/// the encoder and the greedy decoder (prompt and every step).
fn phase_times(
    whisper: &mut Whisper,
    clips: &[Vec<f32>],
    options: &WhisperOptions,
    repeat: usize,
) -> anyhow::Result<serde_json::Value> {
    let device = whisper.device().clone();
    let mut best = [f64::INFINITY; 3];
    for _ in 0..repeat {
        let mut sums = [0.0; 3];
        for clip in clips {
            let t0 = Instant::now();
            let features = whisper.features(clip);
            let t1 = Instant::now();
            let audio = whisper.encode(&features)?;
            device.synchronize()?;
            let t2 = Instant::now();
            whisper.decode_window(&audio, clip.len() as f64 / 16_000.0, options)?;
            device.synchronize()?;
            let t3 = Instant::now();
            for (sum, (a, b)) in sums.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3)]) {
                *sum += (b - a).as_secs_f64() * 1000.0;
            }
        }
        for (b, s) in best.iter_mut().zip(sums) {
            *b = b.min(s);
        }
    }
    Ok(serde_json::json!({"features": best[0], "encoder": best[1], "decoder": best[2]}))
}

/// Whether the reference's float32 run is exact f32 (no TF32 anywhere).
fn reference_f32_exact(reference: &serde_json::Value) -> bool {
    let precision = &reference["fp32_precision"];
    if precision.is_null() {
        // Written before the flags were recorded: exact only on the CPU.
        return reference["device"].as_str() == Some("cpu");
    }
    precision["matmul"].as_str() == Some("ieee")
        && precision["cudnn_conv"].as_str() == Some("ieee")
        && precision["tf32_convs"].as_bool() != Some(true)
}

/// Where one f32 CPU encoder layer's time goes at width `d` with `heads` heads over one window
/// (1500 frames): each step of `Block::encode_cpu` alone on random tensors of its shape, the
/// products both through candle's gemm (what the encoder uses) and through SenseVoice's AVX-512
/// kernel, and the two convolutions. Median ms per step, one JSON line each.
fn ops(d: usize, heads: usize, reps: usize) -> anyhow::Result<()> {
    use candle_core::{Module, Tensor};
    use gpuscribe::model::cpu_ops;
    use gpuscribe::model::sensevoice::cpu_f32::{self, Layout};
    let dev = Device::Cpu;
    // As `Whisper::load` on the CPU: freed buffers are reused, not faulted in again.
    cpu_ops::keep_freed_buffers();
    let t = 1500;
    let dh = d / heads;
    let x = Tensor::randn(0f32, 1.0, (1, t, d), &dev)?;
    let wide = Tensor::randn(0f32, 1.0, (1, t, 4 * d), &dev)?;
    let w = |o: usize, i: usize| Tensor::randn(0f32, 0.05, (o, i), &dev);
    let ln_w = Tensor::ones(d, DType::F32, &dev)?;
    let ln_b = Tensor::zeros(d, DType::F32, &dev)?;
    let q = Tensor::randn(0f32, 1.0, (1, heads, t, dh), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, heads, t, dh), &dev)?;
    let scores = Tensor::randn(0f32, 1.0, (1, heads, t, t), &dev)?;
    let bias_d = Tensor::zeros(d, DType::F32, &dev)?;
    let bias_4d = Tensor::zeros(4 * d, DType::F32, &dev)?;
    let line = |what: &str, per_layer: usize, ms: f64| {
        println!(
            "{}",
            serde_json::json!({"bench": "whisper_encoder_ops", "d": d, "heads": heads,
                "threads": rayon::current_num_threads(), "op": what, "per_layer": per_layer,
                "median_ms": ms})
        );
    };
    let (w_dd, w_4dd, w_d4d) = (w(d, d)?, w(4 * d, d)?, w(d, 4 * d)?);
    for (what, per_layer, weight, input) in [
        ("linear d->d (q, k, v, out)", 4, &w_dd, &x),
        ("linear d->4d (fc1)", 1, &w_4dd, &x),
        ("linear 4d->d (fc2)", 1, &w_d4d, &wide),
    ] {
        let layer = candle_nn::Linear::new(weight.clone(), None);
        line(
            &format!("{what}: gemm"),
            per_layer,
            time_op(&dev, reps, || layer.forward(input))?,
        );
        if cpu_f32::available() {
            let flat = input.squeeze(0)?;
            line(
                &format!("{what}: avx512"),
                per_layer,
                time_op(&dev, reps, || cpu_f32::linear(&flat, weight))?,
            );
        }
    }
    line(
        "q·kᵀ: candle",
        1,
        time_op(&dev, reps, || q.matmul(&k.t()?))?,
    );
    line(
        "attn·v: candle",
        1,
        time_op(&dev, reps, || scores.matmul(&k))?,
    );
    if cpu_f32::available() {
        line(
            "q·kᵀ: avx512",
            1,
            time_op(&dev, reps, || cpu_f32::batched(&q, &k, Layout::Transposed))?,
        );
        line(
            "attn·v: avx512",
            1,
            time_op(&dev, reps, || cpu_f32::batched(&scores, &k, Layout::Plain))?,
        );
    }
    line(
        "layer norm",
        2,
        time_op(&dev, reps, || cpu_ops::layer_norm(&x, &ln_w, &ln_b, 1e-5))?,
    );
    line(
        "head split (heads)",
        3,
        time_op(&dev, reps, || cpu_ops::heads(&x, Some(&bias_d), heads, 1.0))?,
    );
    line(
        "softmax",
        1,
        time_op(&dev, reps, || cpu_ops::masked_softmax(&scores, &[t]))?,
    );
    line(
        "merge heads",
        1,
        time_op(&dev, reps, || cpu_ops::merge_heads(&q))?,
    );
    line(
        "bias + gelu (fc1)",
        1,
        time_op(&dev, reps, || cpu_ops::bias_gelu(&wide, Some(&bias_4d)))?,
    );
    line(
        "bias + residual",
        2,
        time_op(&dev, reps, || cpu_ops::residual_bias(&x, &bias_d, &x))?,
    );
    let conv = |i: usize, stride: usize| -> candle_core::Result<candle_nn::Conv1d> {
        let cfg = candle_nn::Conv1dConfig {
            padding: 1,
            stride,
            groups: 1,
            dilation: 1,
            cudnn_fwd_algo: None,
        };
        Ok(candle_nn::Conv1d::new(
            Tensor::randn(0f32, 0.05, (d, i, 3), &dev)?,
            Some(Tensor::zeros(d, DType::F32, &dev)?),
            cfg,
        ))
    };
    let (conv1, conv2) = (conv(80, 1)?, conv(d, 2)?);
    let mel = Tensor::randn(0f32, 1.0, (1, 80, 3000), &dev)?;
    let mid = Tensor::randn(0f32, 1.0, (1, d, 3000), &dev)?;
    line(
        "conv1 (once)",
        0,
        time_op(&dev, reps, || conv1.forward(&mel))?,
    );
    line(
        "conv2 (once)",
        0,
        time_op(&dev, reps, || conv2.forward(&mid))?,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, d, heads, reps] = args.as_slice()
        && mode == "ops"
    {
        return ops(d.parse()?, heads.parse()?, reps.parse()?);
    }
    let [model_dir, reference, device_spec, precisions, rest @ ..] = args.as_slice() else {
        bail!(
            "usage: whisper_bench MODEL_DIR REFERENCE.json cpu|cuda:N f32,f16,bf16 [REPEAT] [WAV…] \
             | whisper_bench ops D_MODEL HEADS REPS"
        );
    };
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference).with_context(|| format!("reading {reference}"))?,
    )?;
    let repeat: usize = rest.first().map_or(Ok(3), |r| r.parse())?;
    let audio_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/audio");
    let names: Vec<String> = reference["clips"]
        .as_array()
        .context("the reference has no clips")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let paths: Vec<PathBuf> = if rest.len() > 1 {
        rest[1..].iter().map(PathBuf::from).collect()
    } else {
        names
            .iter()
            .map(|n| audio_dir.join(format!("{n}.wav")))
            .collect()
    };
    // Ids are compared by clip name (the file stem), as whisper_bench.py names them.
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let clips: Vec<Vec<f32>> = paths
        .iter()
        .map(|p| audio(p))
        .collect::<anyhow::Result<_>>()?;
    let max_new_tokens = reference["max_new_tokens"].as_u64().unwrap_or(64) as usize;
    let dev = device(device_spec)?;
    let f32_exact = reference_f32_exact(&reference);
    if !f32_exact {
        eprintln!(
            "warning: the reference's float32 run used TF32 or does not say (no fp32_precision); \
             its ids are no f32 reference: write it again with tools/reference/whisper_bench.py"
        );
    }
    let options = WhisperOptions {
        language: Some("en".into()),
        translate: false,
        timestamps: false,
        max_new_tokens: Some(max_new_tokens),
    };
    for spec in precisions.split(',') {
        let (dt, torch_name) = dtype(spec)?;
        let started = Instant::now();
        let mut whisper = Whisper::load(Path::new(model_dir), &dev, dt)?;
        // WHISPER_BENCH_STEP=fused|candle: greedy steps through the fused CPU step (f32 on the
        // CPU) or candle's operations, to compare the two (unset: the model's default).
        match std::env::var("WHISPER_BENCH_STEP").as_deref() {
            Ok("fused") => {
                whisper.set_fused_step(true);
            }
            Ok("candle") => {
                whisper.set_fused_step(false);
            }
            Ok(other) => bail!("WHISPER_BENCH_STEP is fused or candle, not {other}"),
            Err(_) => {}
        }
        dev.synchronize()?;
        let load_ms = started.elapsed().as_secs_f64() * 1000.0;
        let eot = whisper.vocabulary().eot;
        whisper.transcribe(&clips[0], &options)?; // warm-up
        let mut runs = Vec::new();
        let mut ids: Vec<Vec<u32>> = Vec::new();
        for _ in 0..repeat {
            dev.synchronize()?;
            let t0 = Instant::now();
            ids.clear();
            for clip in &clips {
                ids.push(whisper.transcribe(clip, &options)?.tokens);
            }
            dev.synchronize()?;
            runs.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let phases = phase_times(&mut whisper, &clips, &options, repeat)?;
        let (mut same_f32, mut same_dtype) = (0, 0);
        let (mut prefix_f32, mut prefix_dtype) = (usize::MAX, usize::MAX);
        let prompt = whisper.prompt(whisper.vocabulary().language_id("en"), false, false);
        let mut per_clip = Vec::new();
        for ((name, ours), samples) in names.iter().zip(&ids).zip(&clips) {
            let ours_top2 = our_top2(&mut whisper, samples, &prompt, ours)?;
            let smallest = ours_top2
                .iter()
                .enumerate()
                .map(|(k, t)| (k, t[0].1 - t[1].1))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let theirs_f32 = ids_of(&reference, "float32", name);
            let theirs_dtype = ids_of(&reference, torch_name, name);
            per_clip.push(serde_json::json!({
                "clip": name,
                "teacher_forced_agrees": ours_top2.iter().zip(ours).all(|(t, &id)| t[0].0 == id),
                "our_smallest_margin": smallest.map(|(k, m)| serde_json::json!({"step": k, "margin": m})),
                "vs_transformers_f32": difference_json(ours, &ours_top2, theirs_f32.as_deref()
                    .map(|t| (t, their_top2(&reference, "float32", name)))),
                "vs_transformers_same_dtype": difference_json(ours, &ours_top2, theirs_dtype.as_deref()
                    .map(|t| (t, their_top2(&reference, torch_name, name)))),
            }));
            let ours = strip_eot(ours.clone(), eot);
            if let Some(theirs) = ids_of(&reference, "float32", name) {
                let theirs = strip_eot(theirs, eot);
                same_f32 += usize::from(ours == theirs);
                prefix_f32 = prefix_f32.min(prefix(&ours, &theirs));
            }
            if let Some(theirs) = ids_of(&reference, torch_name, name) {
                let theirs = strip_eot(theirs, eot);
                same_dtype += usize::from(ours == theirs);
                prefix_dtype = prefix_dtype.min(prefix(&ours, &theirs));
            }
        }
        let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let theirs = &reference["runs"][torch_name];
        let line = serde_json::json!({
            "device": device_spec,
            "precision": spec,
            "step": if whisper.fused_step() { "fused" } else { "candle" },
            "clips": names.len(),
            "audio_s": reference["audio_s"],
            "load_ms": load_ms,
            "runs_ms": runs,
            "best_ms": best,
            "tokens": ids.iter().map(Vec::len).sum::<usize>(),
            "phases_best_ms": phases,
            "transformers_best_ms": theirs["best_ms"],
            "transformers_phases_best_ms": theirs["phases_best_ms"],
            "transformers_device": reference["device"],
            "transformers_f32_exact": f32_exact,
            "ids_identical_to_transformers_f32": format!("{same_f32}/{}", names.len()),
            "shortest_common_prefix_f32": prefix_f32,
            "ids_identical_to_transformers_same_dtype": format!("{same_dtype}/{}", names.len()),
            "shortest_common_prefix_same_dtype": prefix_dtype,
            "per_clip": per_clip,
        });
        println!("{line}");
    }
    Ok(())
}
