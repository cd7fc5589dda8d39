//! The `model-store` thread and its handle: requests in, [`StoreEvent`]s out, over bounded
//! channels; nothing on the caller's side blocks (requests are `try_send`, cancel is a flag).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::fetch::{ByteCount, Fetch, Rehash, cached_model};
use super::{FileState, ModelStatus, ReadyModel, StoreConfig, StoreError, status};
use crate::engine::Waker;

/// Download progress with speed and time left.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Bytes and files.
    pub bytes: ByteCount,
    /// Bytes per second over the last few seconds (`None` until measurable).
    pub bytes_per_s: Option<f64>,
    /// Time left at that speed.
    pub eta: Option<Duration>,
}

/// What the store says.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    /// The cache's state (after a check found files missing).
    Status(ModelStatus),
    /// Bytes arrived or were checked.
    Progress(Progress),
    /// Every file is present and verified.
    Ready(ReadyModel),
    /// The check, download or verification failed.
    Failed(StoreError),
    /// The user cancelled; partial files are kept for a resume.
    Cancelled,
}

enum StoreRequest {
    Check,
    Download,
    Verify,
}

/// Speed over a sliding window of a few seconds.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

/// How far back the speed looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl RateMeter {
    /// Adds `done` bytes at `now`; returns (bytes/s, time left for `total`).
    pub fn sample(
        &mut self,
        now: Instant,
        done: u64,
        total: u64,
    ) -> (Option<f64>, Option<Duration>) {
        if self.samples.back().is_some_and(|(_, d)| *d > done) {
            self.samples.clear();
        }
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let Some(&(t0, d0)) = self.samples.front() else {
            return (None, None);
        };
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        if dt < 0.3 || done <= d0 {
            return (None, None);
        }
        let rate = (done - d0) as f64 / dt;
        let left = total.saturating_sub(done) as f64 / rate;
        (Some(rate), Duration::try_from_secs_f64(left).ok())
    }
}

/// The handle of the `model-store` thread. Dropping it cancels what runs and lets the thread
/// end on its own (it is not joined: a read may take up to the read timeout to notice).
pub struct ModelStore {
    config: StoreConfig,
    requests: Option<Sender<StoreRequest>>,
    events: Receiver<StoreEvent>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModelStore {
    /// Starts the thread. Nothing is read or fetched until asked.
    pub fn spawn(config: StoreConfig, waker: Waker) -> std::io::Result<Self> {
        let (requests, request_rx) = bounded(8);
        let (event_tx, events) = bounded(256);
        let cancel = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            config: config.clone(),
            events: event_tx,
            cancel: Arc::clone(&cancel),
            waker,
        };
        let thread = std::thread::Builder::new()
            .name("model-store".to_owned())
            .spawn(move || worker.run(&request_rx))?;
        Ok(Self {
            config,
            requests: Some(requests),
            events,
            cancel,
            thread: Some(thread),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn request(&self, request: StoreRequest) -> bool {
        match self.requests.as_ref().map(|r| r.try_send(request)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) => {
                tracing::warn!("the model store is busy; request dropped");
                false
            }
            Some(Err(TrySendError::Disconnected(_))) | None => {
                tracing::error!("the model-store thread has stopped");
                false
            }
        }
    }

    /// Reads the cache (hashing files not verified yet): `Ready`, `Status` or `Failed`.
    pub fn check(&self) -> bool {
        self.request(StoreRequest::Check)
    }

    /// Fetches what is missing: `Progress` events, then `Ready`, `Failed` or `Cancelled`.
    pub fn download(&self) -> bool {
        self.cancel.store(false, Ordering::Relaxed);
        self.request(StoreRequest::Download)
    }

    /// Hashes every cached file again: `Ready` or `Failed`.
    pub fn verify(&self) -> bool {
        self.cancel.store(false, Ordering::Relaxed);
        self.request(StoreRequest::Verify)
    }

    /// Stops the running download or verification (the partial file stays for a resume).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Events so far, without blocking.
    pub fn try_events(&self) -> impl Iterator<Item = StoreEvent> + '_ {
        self.events.try_iter()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<StoreEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Stops taking requests and waits for the thread to finish what it does.
    pub fn join(mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            // Events it still sends must not block it.
            while !thread.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(10));
            }
            thread.join().ok();
        }
    }
}

impl Drop for ModelStore {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.requests = None;
    }
}

struct Worker {
    config: StoreConfig,
    events: Sender<StoreEvent>,
    cancel: Arc<AtomicBool>,
    waker: Waker,
}

impl Worker {
    fn run(&self, requests: &Receiver<StoreRequest>) {
        for request in requests {
            let event = match request {
                StoreRequest::Check => self.check(),
                StoreRequest::Download => self.download(),
                StoreRequest::Verify => {
                    self.finish(cached_model(&self.config, Rehash::All, &self.cancel))
                }
            };
            if self.events.send(event).is_err() {
                return;
            }
            (self.waker)();
        }
    }

    fn finish(&self, result: Result<ReadyModel, StoreError>) -> StoreEvent {
        match result {
            Ok(model) => StoreEvent::Ready(model),
            Err(StoreError::Cancelled) => StoreEvent::Cancelled,
            Err(err) => StoreEvent::Failed(err),
        }
    }

    fn check(&self) -> StoreEvent {
        let found = status(&self.config);
        let all_present = found
            .files
            .iter()
            .all(|f| !matches!(f.state, FileState::Missing));
        if all_present {
            self.finish(cached_model(&self.config, Rehash::Unrecorded, &self.cancel))
        } else {
            StoreEvent::Status(found)
        }
    }

    fn download(&self) -> StoreEvent {
        let mut meter = RateMeter::default();
        let events = self.events.clone();
        let waker = Arc::clone(&self.waker);
        let mut on_progress = move |bytes: &ByteCount| {
            let (bytes_per_s, eta) = meter.sample(Instant::now(), bytes.done, bytes.total);
            let event = StoreEvent::Progress(Progress {
                bytes: bytes.clone(),
                bytes_per_s,
                eta,
            });
            // A full channel drops this one; the next comes soon.
            if events.try_send(event).is_ok() {
                waker();
            }
        };
        let result = Fetch::new(&self.config, &self.cancel, &mut on_progress).run();
        self.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_from_samples() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.sample(t0, 0, 1000), (None, None));
        let (rate, eta) = m.sample(t0 + Duration::from_secs(1), 100, 1000);
        assert_eq!(rate, Some(100.0));
        assert_eq!(eta, Some(Duration::from_secs(9)));
    }
}
