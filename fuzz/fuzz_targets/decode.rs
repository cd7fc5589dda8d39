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
    let mut streamed = 0usize;
    let stream = decode::decode_bytes_to(body.to_vec(), name, hint, &mut |_| {}, &mut |chunk| {
        streamed += chunk.len();
        std::ops::ControlFlow::Continue(())
    });
    if let Ok(audio) = decode::decode_bytes(body.to_vec(), name, hint, &mut |_| progress_calls += 1)
    {
        // Streaming gives the same amount of audio as collecting it.
        let s = stream.as_ref().map(|a| a.duration_s).unwrap_or(-1.0);
        assert!((s - audio.duration_s).abs() < 1e-9 && streamed == audio.samples.len());
        assert!(audio.samples.iter().all(|s| s.is_finite()));
        assert!((audio.duration_s - audio.samples.len() as f64 / 16_000.0).abs() < 1e-9);
        // Output-size bound derived from the input size (plus the resampler's flush).
        let limit_s = decode::MAX_AUDIO_BASE_S + body.len() as f64 * decode::MAX_AUDIO_S_PER_BYTE;
        assert!(
            audio.duration_s <= limit_s + 1.0,
            "{} s from {} bytes",
            audio.duration_s,
            body.len()
        );
    }
});
