//! Decode + resample speed: MP3 (44.1 kHz stereo) to 16 kHz mono, on the calling thread.
//!
//! Run: `taskset -c 0 cargo bench --bench audio_decode` (one core). Input: `$GPUSCRIBE_BENCH_FILE`
//! if set, else a 60 s MP3 that ffmpeg loops from the test fixture into a temp dir.
//! Prints the realtime factor (seconds of audio decoded per second of wall time).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gpuscribe::audio::decode_file;

fn bench_input(dir: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("GPUSCRIBE_BENCH_FILE") {
        return PathBuf::from(path);
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audio/speech.mp3");
    let looped = dir.join("bench_60s.mp3");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-stream_loop", "25", "-i"])
        .arg(&fixture)
        .args(["-t", "60", "-c:a", "libmp3lame", "-b:a", "128k"])
        .arg(&looped)
        .status();
    match status {
        Ok(s) if s.success() => looped,
        _ => {
            eprintln!("ffmpeg not available: benchmarking the 2.4 s fixture instead");
            fixture
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = bench_input(dir.path());
    // Warm-up (page cache, lazy tables), then the best of five runs.
    let audio = decode_file(&input, &mut |_| {}).expect("decode");
    let mut best_s = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let decoded = decode_file(&input, &mut |_| {}).expect("decode");
        best_s = best_s.min(start.elapsed().as_secs_f64());
        assert_eq!(decoded.samples.len(), audio.samples.len());
    }
    println!(
        "audio_decode: {} ({} Hz, {} ch, {}) -> 16 kHz mono: {:.2} s of audio in {:.1} ms = {:.0}x realtime",
        input.display(),
        audio.source_sample_rate_hz,
        audio.source_channels,
        audio.codec,
        audio.duration_s,
        best_s * 1e3,
        audio.duration_s / best_s
    );
}
