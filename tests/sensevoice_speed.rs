//! Speed of the release-size network (random weights) on the CPU. Ignored by default:
//! `cargo test --release --test sensevoice_speed -- --ignored --nocapture`.

// Test helpers outside #[test] functions panic on purpose: a failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use gpuscribe::model::sensevoice::config::SenseVoiceConfig;
use gpuscribe::model::sensevoice::frontend::{Cmvn, Frontend};
use gpuscribe::model::sensevoice::model::{Prompt, SenseVoiceSmall};
use gpuscribe::model::sensevoice::weights::{HostWeights, expected_tensors};

#[test]
#[ignore = "slow: builds the 234M-parameter network"]
fn release_size_cpu_realtime_factor() {
    let cfg_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference/release/config.yaml");
    let cfg = SenseVoiceConfig::from_file(&cfg_path).unwrap();
    let dev = Device::Cpu;
    let tensors = expected_tensors(&cfg, 25055)
        .into_iter()
        .map(|(n, s)| (n, (Tensor::rand(-0.03f32, 0.03, s, &dev).unwrap())))
        .collect();
    let host = HostWeights::from_tensors(tensors, Path::new("random"));
    let vb = host.materialize(DType::F32, &dev).unwrap();
    let model = SenseVoiceSmall::load(&cfg, 25055, &vb).unwrap();
    let cmvn = Cmvn::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference/release/am.mvn"),
    )
    .unwrap();
    let frontend = Frontend::new(80, 7, 6, cmvn);
    let audio: Vec<f32> = (0..160_000)
        .map(|i| 0.1 * ((i as f32) * 0.05).sin())
        .collect();
    for round in 0..3 {
        let start = Instant::now();
        let (feats, t) = frontend.features(&audio);
        let fe = start.elapsed();
        let x = Tensor::from_vec(feats, (1, t, 560), &dev).unwrap();
        let out = model.forward(&x, &[t], &[Prompt::default()], None).unwrap();
        let ids = out.logits.argmax(2).unwrap().to_vec2::<u32>().unwrap();
        let total = start.elapsed();
        println!(
            "round {round}: 10 s clip, {} frames: frontend {:?}, total {:?}, {:.1}x realtime",
            ids[0].len(),
            fe,
            total,
            10.0 / total.as_secs_f64()
        );
    }
}
