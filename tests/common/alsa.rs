//! The ALSA `file` plugin as a test microphone, and the tiny model on the CPU for the tests
//! that record and transcribe through the real engine.
//!
//! alsa-lib reads `~/.asoundrc` once, at first use, and changing the environment of a running
//! test process would need `unsafe`; so a test writes a `HOME` folder with [`microphone_home`]
//! and re-runs itself there as a child ([`child_test`]). The plugin's `null` slave has no clock,
//! so capture runs faster than real time. Needs alsa-lib and sox.
// A failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpuscribe::engine::{DeviceTarget, EngineConfig, IdlePolicy, ResidencyConfig};

use super::sensevoice::data;

/// The `.asoundrc` whose default capture device reads `raw` (16 kHz mono s16 little-endian).
pub fn asoundrc(raw: &Path) -> String {
    format!(
        r#"pcm.filecap {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{}"
    format "raw"
}}
pcm.capfmt {{
    type plug
    slave {{
        pcm "filecap"
        format S16_LE
        rate 16000
        channels 1
    }}
    hint {{ show on description "File-backed test microphone" }}
}}
pcm.!default {{
    type asym
    playback.pcm "null"
    capture.pcm "capfmt"
}}
"#,
        raw.display()
    )
}

/// A folder to be a child's `HOME`: `in.raw`, made by sox from `inputs` with `effects`
/// (16 kHz mono s16), and the [`asoundrc`] that records it.
pub fn microphone_home(inputs: &[OsString], effects: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("in.raw");
    let status = Command::new("sox")
        .args(inputs)
        .args([
            "-t",
            "raw",
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
        ])
        .arg(&raw)
        .args(effects)
        .status()
        .expect("sox is needed for this test");
    assert!(status.success(), "sox failed");
    std::fs::write(dir.path().join(".asoundrc"), asoundrc(&raw)).unwrap();
    dir
}

/// This test binary again, running only `test`, with `home` as `HOME`.
pub fn child_test(test: &str, home: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("HOME", home);
    cmd
}

/// The committed tiny model on the CPU through the real worker, never offloaded.
pub fn tiny_cpu_engine() -> EngineConfig {
    EngineConfig {
        model_dir: Some(data().join("tiny")),
        target: DeviceTarget::Cpu,
        residency: ResidencyConfig {
            offload: IdlePolicy::Never,
            release_after_secs: None,
        },
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_gpuscribe-worker"))),
        ..EngineConfig::default()
    }
}
