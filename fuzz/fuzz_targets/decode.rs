//! Fuzzes the decode + resample entry point (`audio::decode_bytes`) with arbitrary bytes.
//!
//! The first byte picks the extension hint, so every container's probe path gets exercised;
//! the rest is the file. Any panic, abort or sanitizer report is a bug: bad input must come
//! back as a `DecodeError`.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The two modules are compiled from the app's own sources; they refer to `super::` items,
// which here is this crate's root.
#[allow(dead_code)]
#[path = "../../src/audio/decode.rs"]
mod decode;
#[allow(dead_code)]
#[path = "../../src/audio/resample.rs"]
mod resample;

const MODEL_SAMPLE_RATE_HZ: u32 = 16_000;

const HINTS: [Option<&str>; 8] = [
    None,
    Some("wav"),
    Some("mp3"),
    Some("flac"),
    Some("ogg"),
    Some("m4a"),
    Some("aac"),
    Some("mkv"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let hint = HINTS[usize::from(selector) % HINTS.len()];
    let name = std::path::Path::new("fuzz-input");
    let mut progress_calls = 0_u32;
    if let Ok(audio) = decode::decode_bytes(body.to_vec(), name, hint, &mut |_| progress_calls += 1)
    {
        assert!(audio.samples.iter().all(|s| s.is_finite()));
        assert!((audio.duration_s - audio.samples.len() as f64 / 16_000.0).abs() < 1e-9);
    }
});
