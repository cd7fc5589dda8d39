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
//! Prints one JSON object per precision: our runs, transformers' runs at the same dtype, and how
//! many clips' ids are identical to transformers' f32 ids and to its ids at the same dtype (with
//! the shortest common prefix).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{DType, Device};
use gpuscribe::model::whisper::{Whisper, WhisperOptions};

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, reference, device_spec, precisions, rest @ ..] = args.as_slice() else {
        bail!(
            "usage: whisper_bench MODEL_DIR REFERENCE.json cpu|cuda:N f32,f16,bf16 [REPEAT] [WAV…]"
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
        let (mut same_f32, mut same_dtype) = (0, 0);
        let (mut prefix_f32, mut prefix_dtype) = (usize::MAX, usize::MAX);
        for (name, ours) in names.iter().zip(&ids) {
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
            "clips": names.len(),
            "audio_s": reference["audio_s"],
            "load_ms": load_ms,
            "runs_ms": runs,
            "best_ms": best,
            "tokens": ids.iter().map(Vec::len).sum::<usize>(),
            "transformers_best_ms": theirs["best_ms"],
            "transformers_device": reference["device"],
            "ids_identical_to_transformers_f32": format!("{same_f32}/{}", names.len()),
            "shortest_common_prefix_f32": prefix_f32,
            "ids_identical_to_transformers_same_dtype": format!("{same_dtype}/{}", names.len()),
            "shortest_common_prefix_same_dtype": prefix_dtype,
        });
        println!("{line}");
    }
    Ok(())
}
