//! Timing helpers the benchmark examples share (each includes this file with `#[path]`).

use std::time::Instant;

use candle_core::{Device, Tensor};

/// The middle value of `v` (the upper one of the two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times one closure `reps` times with a device sync after each; returns the median in ms.
pub fn time_op(
    dev: &Device,
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> anyhow::Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut runs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(out);
    }
    Ok(median(runs))
}
