//! Whisper's fused f32 CPU encoder (`crate::model::cpu_ops` loops around the products) against
//! the same encoder through candle's operations, on the committed random-weight model. One test
//! in its own binary: it flips the process-wide fused-kernel switch, which would race with other
//! tests in the same process.

use std::path::Path;

use candle_core::{DType, Device};
use gpuscribe::model::sensevoice::fused::set_fused_kernels;
use gpuscribe::model::whisper::Whisper;

#[path = "common/clips.rs"]
mod clips;
use clips::{audio, flat};

#[test]
fn the_fused_cpu_encoder_equals_candle_ops() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/whisper/model");
    let mut whisper = Whisper::load(&dir, &Device::Cpu, DType::F32).expect("load");
    for name in ["en_short", "zh_mid", "ja_long"] {
        let features = whisper.features(&audio(name));
        set_fused_kernels(false);
        let candle = flat(&whisper.encode(&features).expect("candle ops"));
        set_fused_kernels(true);
        let fused = flat(&whisper.encode(&features).expect("fused loops"));
        assert_eq!(candle.len(), fused.len());
        let scale = candle.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = candle
            .iter()
            .zip(&fused)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("{name}: max |fused - candle| {worst:.2e} (max |candle| {scale:.2})");
        assert!(
            scale > 0.1,
            "{name}: an encoder output of zeros proves nothing"
        );
        // Both round in f32; only the summation order and exp/erf (a few ulp) differ.
        assert!(
            worst <= 2e-5 * scale.max(1.0),
            "{name}: fused encoder off by {worst} (max {scale})"
        );
    }
}
