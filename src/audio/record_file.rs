//! A file as the microphone: the `capture-file` thread hands the decoded samples to the
//! recorder's callback in 10 ms pieces at real-time pace, as a sound card's callback would, and
//! silence after the file's end until the recording is stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running player; dropping it stops the thread and waits for it.
pub(super) struct FilePlayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FilePlayer {
    /// Plays `samples` (mono, `rate` Hz) into `deliver` from a new thread.
    pub(super) fn start(
        samples: Vec<f32>,
        rate: u32,
        mut deliver: impl FnMut(&[f32]) + Send + 'static,
    ) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let piece = (rate as usize / 100).max(1);
        let thread = std::thread::Builder::new()
            .name("capture-file".into())
            .spawn(move || {
                let silence = vec![0.0f32; piece];
                let started = Instant::now();
                let mut sent = 0usize;
                while !stopped.load(Ordering::Relaxed) {
                    let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let chunk = samples
                        .get(sent..)
                        .filter(|rest| !rest.is_empty())
                        .map_or(silence.as_slice(), |rest| &rest[..rest.len().min(piece)]);
                    deliver(chunk);
                    sent += chunk.len();
                }
            })
            .map_err(|err| format!("cannot start the capture-file thread: {err}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FilePlayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
