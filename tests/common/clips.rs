//! The committed speech clips (`tests/data/sensevoice/audio`) as the Whisper tests read them, and
//! tensors flattened to f32 values.

use std::path::Path;

use candle_core::{DType, Tensor};

/// The samples of clip `name` (16 kHz mono 16-bit WAV) in [-1, 1).
pub fn audio(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sensevoice/audio")
        .join(format!("{name}.wav"));
    let mut reader = hound::WavReader::open(&path).expect("wav");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect()
}

/// All values of `t` as f32.
pub fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1())
        .expect("to_vec1")
}
