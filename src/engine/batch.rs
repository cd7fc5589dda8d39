//! Transcribe a list of files and wait: the engine as the CLI and the tests use it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{DecodeSettings, EngineConfig, EngineHandle, Event, FileTranscript, GpuFree, Request};

/// One file's outcome.
pub type FileResult = Result<FileTranscript, String>;

/// Transcribes `paths` in order of submission and returns one result per path, in the same order.
/// `on_event` sees every engine event (progress, notices) as it happens.
pub fn transcribe_files(
    paths: &[PathBuf],
    config: EngineConfig,
    gpus: Vec<GpuFree>,
    settings: &DecodeSettings,
    on_event: &mut dyn FnMut(&Event),
) -> std::io::Result<Vec<FileResult>> {
    let engine = EngineHandle::spawn(config, Arc::new(|| {}))?;
    engine.send(Request::Gpus(gpus));
    let mut order = HashMap::new();
    for (i, path) in paths.iter().enumerate() {
        order.insert(engine.transcribe(path.clone(), settings.clone()), i);
    }
    let mut results: Vec<Option<FileResult>> = vec![None; paths.len()];
    let mut remaining = paths.len();
    while remaining > 0 {
        let Some(event) = engine.recv_timeout(Duration::from_secs(3600)) else {
            break;
        };
        on_event(&event);
        let (job_id, result) = match event {
            Event::JobDone {
                job_id, transcript, ..
            } => (job_id, Ok(transcript)),
            Event::JobFailed {
                job_id, message, ..
            } => (job_id, Err(message)),
            _ => continue,
        };
        if let Some(&i) = order.get(&job_id)
            && results[i].is_none()
        {
            results[i] = Some(result);
            remaining -= 1;
        }
    }
    Ok(results
        .into_iter()
        .zip(paths)
        .map(|(r, p)| r.unwrap_or_else(|| Err(format!("no result for {}", p.display()))))
        .collect())
}
