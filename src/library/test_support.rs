//! Setup shared by the library's tests: a library in a folder, a job, a WAV file, a crash.

use std::path::Path;

use super::{LIBRARY_FILE, Library, NewJob};
use crate::engine::DecodeSettings;

/// The library in `dir` (created there if new).
pub(super) fn open_in(dir: &Path) -> Library {
    Library::open(&dir.join(LIBRARY_FILE)).expect("open").0
}

/// A job for `path` on the CPU with model `m` at revision `rev`.
pub(super) fn job(path: &Path) -> NewJob {
    NewJob {
        path: path.to_owned(),
        settings: DecodeSettings::default(),
        device_request: "cpu".into(),
        model: "m".into(),
        model_revision: Some("rev".into()),
        recording: None,
        parts: Vec::new(),
    }
}

/// A WAV of `secs` of a quiet ramp at 16 kHz.
pub(super) fn wav(path: &Path, secs: f64) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("create");
    for i in 0..(secs * 16_000.0) as usize {
        writer.write_sample((i % 100) as i16).expect("write");
    }
    writer.finalize().expect("finalize");
}

/// As if `lib`'s process died without closing: its session lock goes (in-process, removing the
/// lock file is what the kernel does at exit), so the next to open the library finds it dead.
pub(super) fn lose_session_lock(lib: &mut Library) {
    let lock = lib.lock_path.take().expect("locked");
    lib._session_lock = None;
    std::fs::remove_file(lock).expect("remove lock");
}
