//! A real capture through cpal and ALSA, with the ALSA `file` plugin as the microphone.
//!
//! Needs alsa-lib and sox (CI installs both, as the recording tests need). The test writes an
//! `.asoundrc` whose default capture device reads a 440 Hz tone from a raw file, then re-runs
//! itself with `HOME` pointing there (alsa-lib reads `~/.asoundrc` once, at first use, and
//! changing the environment of a running test process would need `unsafe`).
//! The plugin's `null` slave has no clock, so capture runs faster than real time.

// Test code: a panic is how a failure is reported, also from helper functions.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use gpuscribe::audio::{DeviceList, Recorder};

use common::alsa::{child_test, microphone_home};

const CHILD_ENV: &str = "GPUSCRIBE_ALSA_CHILD_DIR";

#[test]
fn alsa_file_plugin_capture_records_the_tone() {
    match std::env::var_os(CHILD_ENV) {
        None => run_parent(),
        Some(dir) => run_child(Path::new(&dir)),
    }
}

fn run_parent() {
    let dir = microphone_home(
        &["-n".into()],
        &["synth", "30", "sine", "440", "vol", "0.5"],
    );
    let output = child_test("alsa_file_plugin_capture_records_the_tone", dir.path())
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    assert!(output.status.success(), "child capture failed");
    assert!(text.contains("1 passed"), "child did not run the capture");
}

fn run_child(dir: &Path) {
    let devices = DeviceList::scan();
    eprintln!("input devices: {:?}", devices.devices());
    let wav = dir.join("rec.wav");
    let handle = Recorder::start(None, &wav).unwrap();
    eprintln!("recording from {}", handle.device_name());
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let level = handle.level();
    // The clock-less plugin delivers audio much faster than real time, so the writer can fall
    // behind and the callback drops frames: that is expected here, and reported.
    eprintln!("dropped frames: {}", handle.dropped_frames());
    let recorded = handle.stop().unwrap();
    let mut reader = hound::WavReader::open(recorded.path()).unwrap();
    let rate = reader.spec().sample_rate;
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    eprintln!(
        "captured {} samples at {rate} Hz, last level {level:?}",
        samples.len()
    );
    assert!(samples.len() >= rate as usize, "less than 1 s captured");
    let first_second = &samples[..rate as usize];
    let rms = (first_second.iter().map(|v| v * v).sum::<f32>() / first_second.len() as f32).sqrt();
    assert!((rms - 0.5 / 2f32.sqrt()).abs() < 0.02, "RMS {rms}");
    // Median period between rising zero crossings: robust to the odd jump where frames dropped.
    let crossings: Vec<f64> = first_second
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + f64::from(-w[0] / (w[1] - w[0])))
        .collect();
    let mut periods: Vec<f64> = crossings.windows(2).map(|c| c[1] - c[0]).collect();
    periods.sort_by(f64::total_cmp);
    let frequency_hz = f64::from(rate) / periods[periods.len() / 2];
    assert!(
        (frequency_hz - 440.0).abs() < 1.0,
        "measured {frequency_hz:.2} Hz"
    );
}
