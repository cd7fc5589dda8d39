//! Live transcription latency: plays audio files through the capture path at real-time pace
//! and measures, for each utterance, the time from its end in the audio to its final line, and
//! the gaps between the lines shown while it is spoken.
//!
//! ```sh
//! cargo run --release --example live_latency -- --model-dir DIR [--device cpu|cuda:N] FILE…
//! ```
//! `--device cuda:N` needs a `--features cuda` build. The model loads before the clock starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gpuscribe::engine::{DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, GpuFree};
use gpuscribe::live::{
    LiveConfig, LiveDriver, LiveLine, LiveUpdate, Pace, WavFeed, run_live, warm_up,
};

fn main() -> anyhow::Result<()> {
    let mut model_dir = None;
    let mut device = "cpu".to_owned();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model-dir" => model_dir = args.next().map(PathBuf::from),
            "--device" => device = args.next().unwrap_or_default(),
            _ => files.push(PathBuf::from(arg)),
        }
    }
    anyhow::ensure!(
        !files.is_empty(),
        "usage: live_latency --model-dir DIR [--device cpu|cuda:N] FILE…"
    );
    let (target, gpus) = target(&device)?;
    let config = EngineConfig {
        model_dir,
        target,
        ..EngineConfig::default()
    };
    let engine = EngineHandle::spawn(config, Arc::new(|| {}))?;
    engine.send(gpuscribe::engine::Request::Gpus(gpus));
    let settings = DecodeSettings::default();
    let load = warm_up(&engine, &settings, &mut |_| {}).map_err(|m| anyhow::anyhow!(m))?;
    println!("model ready in {:.2} s on {device}", load.as_secs_f64());
    let hangover_s = LiveConfig::default().segmenter.hangover_samples() as f64 / 16_000.0;
    let mut finals_after_end = Vec::new();
    let mut finals_after_speech = Vec::new();
    let mut gaps = Vec::new();
    for file in &files {
        let copy = std::env::temp_dir().join(format!("live-latency-{}.wav", std::process::id()));
        let feed = WavFeed::start(file, Pace::RealTime, &copy).map_err(|m| anyhow::anyhow!(m))?;
        let started = Instant::now();
        let mut driver = LiveDriver::new(LiveConfig::default(), settings.clone());
        let mut seen: Vec<(f64, LiveLine)> = Vec::new();
        run_live(
            &feed.tap,
            &engine,
            &mut driver,
            &mut |update| {
                if let LiveUpdate::Line(line) = update {
                    seen.push((started.elapsed().as_secs_f64(), line.clone()));
                }
            },
            &mut |_| {},
        );
        let dropped = feed.tap.dropped();
        feed.join().map_err(|m| anyhow::anyhow!(m))?;
        let _ = std::fs::remove_file(&copy);
        let stats = driver.stats();
        println!(
            "{}: {} utterance(s), {} partial(s) sent, {} skipped, {} stale, {} live samples dropped",
            file.display(),
            stats.utterances,
            stats.partials_sent,
            stats.partials_skipped,
            stats.partials_stale,
            dropped
        );
        for (at, line) in &seen {
            if line.partial {
                continue;
            }
            // The audio plays in real time: its sample at t seconds is captured at t.
            let after_end = at - line.end;
            finals_after_end.push(after_end);
            finals_after_speech.push(after_end + hangover_s);
            // Lines of this utterance shown while it was spoken, from its start to its final.
            let mut last = line.start;
            for (t, _) in seen.iter().filter(|(_, l)| l.utterance == line.utterance) {
                gaps.push(t - last);
                last = *t;
            }
            println!(
                "  {:6.2}–{:6.2} s  final {:5.0} ms after the utterance's end ({:5.0} ms after \
                 its last voiced frame)",
                line.start,
                line.end,
                after_end * 1000.0,
                (after_end + hangover_s) * 1000.0
            );
        }
    }
    let summary = |name: &str, values: &mut [f64]| {
        values.sort_by(f64::total_cmp);
        if let (Some(first), Some(last)) = (values.first(), values.last()) {
            let median = values[values.len() / 2];
            println!(
                "{name}: n={} min {:.0} ms, median {:.0} ms, max {:.0} ms",
                values.len(),
                first * 1000.0,
                median * 1000.0,
                last * 1000.0
            );
        }
    };
    summary("utterance end → final line", &mut finals_after_end);
    summary("last voiced frame → final line", &mut finals_after_speech);
    summary(
        "gap between lines while speaking (first from the utterance start)",
        &mut gaps,
    );
    Ok(())
}

fn target(device: &str) -> anyhow::Result<(DeviceTarget, Vec<GpuFree>)> {
    if device == "cpu" {
        return Ok((DeviceTarget::Cpu, Vec::new()));
    }
    let ordinal: usize = device
        .strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("--device is cpu or cuda:N, not {device}"))?;
    // The engine routes by UUID and free memory; a stand-in entry with room to spare.
    let uuid = format!("GPU-live-latency-{ordinal}");
    let gpu = GpuFree {
        uuid: uuid.clone(),
        index: ordinal as u32,
        cuda_ordinal: ordinal,
        free_bytes: 64 << 30,
        total_bytes: 80 << 30,
    };
    Ok((DeviceTarget::Gpu { uuid }, vec![gpu]))
}
