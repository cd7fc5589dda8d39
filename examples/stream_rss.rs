//! Peak host memory of getting a long file ready for the model: the whole-buffer path
//! (`decode_file` + `split_at_pauses` + `plan_batches`) against the streaming pipeline
//! (`engine::pipeline::SegmentBatches`). Prints one JSON line.
//!
//!     cargo run --example stream_rss -- whole|stream FILE.wav
//!
//! Used by `tools/bench/stream_rss.sh`, which generates the long WAVs.

use std::path::PathBuf;
use std::time::Instant;

use gpuscribe::engine::pipeline::{DEFAULT_WINDOW, SegmentBatches};
use gpuscribe::engine::segment::{
    MAX_SEGMENT_SECS, MIN_SEGMENT_SECS, SAMPLE_RATE_HZ, plan_batches, split_at_pauses,
};

/// Peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let path = PathBuf::from(args.next().unwrap_or_default());
    let budget_s = 16.0 * MAX_SEGMENT_SECS;
    let started = Instant::now();
    let (segments, batches, audio_s, checksum) = match mode.as_str() {
        "whole" => {
            let audio = gpuscribe::audio::decode_file(&path, &mut |_| {})?;
            let ranges = split_at_pauses(&audio.samples, MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
            let lens: Vec<usize> = ranges.iter().map(ExactSizeIterator::len).collect();
            let batches = plan_batches(&lens, budget_s);
            let checksum: f64 = ranges
                .iter()
                .map(|r| {
                    audio.samples[r.clone()]
                        .iter()
                        .map(|&x| f64::from(x))
                        .sum::<f64>()
                })
                .sum();
            (ranges.len(), batches.len(), audio.duration_s, checksum)
        }
        "stream" => {
            let mut b = SegmentBatches::spawn(&path, budget_s, DEFAULT_WINDOW)?;
            let (mut segments, mut batches, mut checksum) = (0, 0, 0.0f64);
            while let Some(batch) = b.next_batch() {
                batches += 1;
                segments += batch.len();
                checksum += batch
                    .iter()
                    .flat_map(|s| s.samples.iter())
                    .map(|&x| f64::from(x))
                    .sum::<f64>();
            }
            let summary = b.finish()?;
            (segments, batches, summary.duration_s, checksum)
        }
        other => anyhow::bail!("mode must be whole or stream, not {other:?}"),
    };
    println!(
        "{{\"mode\":\"{mode}\",\"audio_s\":{audio_s:.1},\"segments\":{segments},\"batches\":{batches},\"peak_rss_mib\":{:.1},\"wall_s\":{:.2},\"checksum\":{checksum:.3},\"rate_hz\":{SAMPLE_RATE_HZ}}}",
        peak_rss_kib() as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
