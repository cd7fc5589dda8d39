//! The SenseVoice fixtures of `tests/data/sensevoice` (written by tools/reference/generate.py).
// A failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

/// `tests/data/sensevoice`.
pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice")
}

/// `reference.json`.
pub fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data().join("reference.json")).unwrap()).unwrap()
}

/// `reference.safetensors`, on the CPU.
pub fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data().join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// The clip names of `reference.json`, sorted.
pub fn clips(r: &Value) -> Vec<String> {
    let mut c: Vec<String> = r["clips"].as_object().unwrap().keys().cloned().collect();
    c.sort();
    c
}

/// `audio/{clip}.wav` as f32 samples (16 kHz mono, checked).
pub fn wav(clip: &str) -> Vec<f32> {
    let mut r = hound::WavReader::open(data().join(format!("audio/{clip}.wav"))).unwrap();
    assert_eq!(r.spec().sample_rate, 16_000);
    assert_eq!(r.spec().channels, 1);
    r.samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}
