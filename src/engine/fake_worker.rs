//! Scripted fake workers for tests: a [`FakePort`] whose workers are threads that speak the real
//! protocol over real pipes (so the engine's reader, writer, reaper and watchdog all run), and
//! misbehave as their script says: hang, stop reading, crash, die of a signal, print garbage or
//! bytes that are not UTF-8, answer slowly, run out of memory.
//!
//! A job's behaviour comes from its file name: the stem is split at `-` into tokens, and each
//! token that names a behaviour applies (all others are ignored, so names stay readable):
//!
//! | token | the worker… |
//! | --- | --- |
//! | `hang@K` | goes silent after K batches and never answers again |
//! | `stop@K` | as `hang`, and stops reading its requests too (as under SIGSTOP) |
//! | `crash@K` | exits with status 101 after K batches |
//! | `oomkill@K` | dies of signal 9 after K batches |
//! | `garbage@K` | writes a line that is not a message after K batches |
//! | `binary@K` | writes a line of bytes that are not UTF-8 after K batches |
//! | `badinput` | fails the job as bad input |
//! | `oom` | fails the job as out of memory on a GPU (the CPU gets through) |
//! | `batches=N` | the job has N batches (default 3) |
//! | `pass=MS` | each batch takes MS milliseconds (default 5), with heartbeats |
//! | `once` | the misbehaviour happens on the first attempt only |
//!
//! Loads follow [`FakeScript::load`]. Every fake worker's thread is counted, so a test can check
//! that none is left behind.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};

use super::process::{ExitInfo, WorkerIo, WorkerPort, WorkerProcess};
use super::protocol::{
    JobErrorKind, LoadErrorKind, WorkerDevice, WorkerEvent, WorkerRequest, from_line, to_line,
};
use super::transcript::{FileTranscript, Segment};

/// How a fake worker answers a `Load`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeLoad {
    /// Loads after this many milliseconds.
    Ok(u64),
    /// Fails with this kind.
    Fail(LoadErrorKind),
    /// Never answers.
    Hang,
    /// Exits with status 101.
    Crash,
}

/// Decides how each load goes: `(device, how many workers this port started before)`.
pub type LoadScript = dyn Fn(&WorkerDevice, usize) -> FakeLoad + Send + Sync;

/// What the fake workers do.
pub struct FakeScript {
    /// How loads go.
    pub load: Box<LoadScript>,
    /// Panic inside `start` for these start numbers (0-based): a way to make the engine panic.
    pub panic_on_start: Vec<usize>,
}

impl Default for FakeScript {
    fn default() -> Self {
        Self {
            load: Box::new(|_, _| FakeLoad::Ok(1)),
            panic_on_start: Vec::new(),
        }
    }
}

/// What the port saw, shared with the test.
#[derive(Debug, Default)]
pub struct FakeStats {
    /// Workers started.
    pub started: AtomicUsize,
    /// Fake worker threads alive now.
    pub alive: AtomicUsize,
    /// Most fake worker threads alive at once.
    pub most_alive: AtomicUsize,
    /// Workers started per device label ("CPU", "GPU 0").
    pub per_device: Mutex<HashMap<String, usize>>,
    /// Attempts per job file name.
    attempts: Mutex<HashMap<String, u32>>,
}

impl FakeStats {
    /// Workers started on `label`.
    pub fn started_on(&self, label: &str) -> usize {
        self.per_device
            .lock()
            .map_or(0, |m| m.get(label).copied().unwrap_or(0))
    }

    /// Which attempt at `path` this is (1 for the first).
    fn attempt(&self, path: &Path) -> u32 {
        let key = path.to_string_lossy().into_owned();
        self.attempts.lock().map_or(1, |mut m| {
            let n = m.entry(key).or_insert(0);
            *n += 1;
            *n
        })
    }
}

/// A [`WorkerPort`] of scripted fake workers.
pub struct FakePort {
    script: Arc<FakeScript>,
    stats: Arc<FakeStats>,
    next_pid: u32,
}

impl FakePort {
    /// A port following `script`; the stats are shared with the caller.
    pub fn new(script: FakeScript) -> (Self, Arc<FakeStats>) {
        let stats = Arc::new(FakeStats::default());
        (
            Self {
                script: Arc::new(script),
                stats: Arc::clone(&stats),
                next_pid: 4_000_000,
            },
            stats,
        )
    }
}

struct FakeProcess {
    pid: u32,
    killed: Arc<AtomicBool>,
    exit: Arc<Mutex<Option<ExitInfo>>>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerProcess for FakeProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitInfo>> {
        if !self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return Ok(None);
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
        let exit = self.exit.lock().ok().and_then(|e| *e);
        Ok(Some(exit.unwrap_or(ExitInfo {
            code: Some(0),
            signal: None,
        })))
    }
}

impl WorkerPort for FakePort {
    fn start(&mut self, device: &WorkerDevice) -> std::io::Result<WorkerIo> {
        let index = self.stats.started.fetch_add(1, Ordering::SeqCst);
        assert!(
            !self.script.panic_on_start.contains(&index),
            "scripted panic at worker start {index}"
        );
        if let Ok(mut per_device) = self.stats.per_device.lock() {
            *per_device.entry(device.label()).or_insert(0) += 1;
        }
        let (stdin_reader, stdin) = std::io::pipe()?;
        let (stdout, stdout_writer) = std::io::pipe()?;
        let killed = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(Mutex::new(None));
        self.next_pid += 1;
        let pid = self.next_pid;
        let worker = FakeWorker {
            device: device.clone(),
            load: (self.script.load)(device, index),
            stats: Arc::clone(&self.stats),
            killed: Arc::clone(&killed),
            cancelled: Arc::new(AtomicU32::new(0)),
            out: stdout_writer,
            pid,
        };
        let exit_slot = Arc::clone(&exit);
        let stats = Arc::clone(&self.stats);
        let alive = stats.alive.fetch_add(1, Ordering::SeqCst) + 1;
        stats.most_alive.fetch_max(alive, Ordering::SeqCst);
        let thread = std::thread::Builder::new()
            .name(format!("fake-worker-{pid}"))
            .spawn(move || {
                let requests = worker.read_requests(stdin_reader);
                let ended = requests.map_or(
                    ExitInfo {
                        code: Some(1),
                        signal: None,
                    },
                    |requests| worker.serve(&requests),
                );
                if let Ok(mut slot) = exit_slot.lock() {
                    *slot = Some(ended);
                }
                stats.alive.fetch_sub(1, Ordering::SeqCst);
            })?;
        Ok(WorkerIo {
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            stderr: None,
            process: Box::new(FakeProcess {
                pid,
                killed,
                exit,
                thread: Some(thread),
            }),
        })
    }

    fn gpu_capable(&self) -> bool {
        true
    }
}

/// A job's script, from its file name.
#[derive(Debug, Default)]
struct JobScript {
    batches: u32,
    pass: Duration,
    misbehave: Option<(String, u32)>,
    bad_input: bool,
    oom: bool,
}

impl JobScript {
    fn parse(path: &Path, attempt: u32) -> Self {
        let mut script = Self {
            batches: 3,
            pass: Duration::from_millis(5),
            ..Self::default()
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let once = stem.split('-').any(|t| t == "once");
        for token in stem.split('-') {
            if let Some(n) = token.strip_prefix("batches=").and_then(|n| n.parse().ok()) {
                script.batches = n;
            } else if let Some(ms) = token.strip_prefix("pass=").and_then(|n| n.parse().ok()) {
                script.pass = Duration::from_millis(ms);
            } else if token == "badinput" {
                script.bad_input = true;
            } else if token == "oom" {
                script.oom = true;
            } else if let Some((what, at)) = token.split_once('@')
                && ["hang", "stop", "crash", "oomkill", "garbage", "binary"].contains(&what)
                && let Ok(at) = at.parse()
                && (!once || attempt == 1)
            {
                script.misbehave = Some((what.to_owned(), at));
            }
        }
        script
    }
}

enum Ending {
    Exit(ExitInfo),
    Continue,
}

struct FakeWorker {
    device: WorkerDevice,
    load: FakeLoad,
    stats: Arc<FakeStats>,
    killed: Arc<AtomicBool>,
    cancelled: Arc<AtomicU32>,
    out: std::io::PipeWriter,
    pid: u32,
}

const KILLED: ExitInfo = ExitInfo {
    code: None,
    signal: Some(9),
};

const CRASHED: ExitInfo = ExitInfo {
    code: Some(101),
    signal: None,
};

impl FakeWorker {
    fn read_requests(
        &self,
        stdin: std::io::PipeReader,
    ) -> std::io::Result<Receiver<Result<WorkerRequest, String>>> {
        let (tx, rx) = bounded(64);
        let cancelled = Arc::clone(&self.cancelled);
        std::thread::Builder::new()
            .name(format!("fake-worker-{}-stdin", self.pid))
            .spawn(move || {
                let mut reader = BufReader::new(stdin);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let request = from_line::<WorkerRequest>(line.trim_ascii());
                    if let Ok(WorkerRequest::Cancel { job_id }) = &request {
                        cancelled.store(u32::try_from(*job_id).unwrap_or(0), Ordering::SeqCst);
                    }
                    if tx.send(request).is_err() {
                        break;
                    }
                    line.clear();
                }
            })?;
        Ok(rx)
    }

    fn send(&mut self, event: &WorkerEvent) {
        if let Ok(line) = to_line(event) {
            self.out.write_all(line.as_bytes()).ok();
        }
    }

    /// Waits `time`, or until killed; `true` if killed.
    fn sleep(&self, time: Duration) -> bool {
        let until = Instant::now() + time;
        while Instant::now() < until {
            if self.killed.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2).min(time));
        }
        self.killed.load(Ordering::SeqCst)
    }

    fn hang(&self) -> ExitInfo {
        while !self.sleep(Duration::from_millis(50)) {}
        KILLED
    }

    fn serve(mut self, requests: &Receiver<Result<WorkerRequest, String>>) -> ExitInfo {
        self.send(&WorkerEvent::Started {
            pid: self.pid,
            cuda_built: true,
        });
        loop {
            let request = match requests.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(request)) => request,
                Ok(Err(_)) => {
                    return ExitInfo {
                        code: Some(crate::worker::EXIT_BAD_REQUEST),
                        signal: None,
                    };
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.killed.load(Ordering::SeqCst) {
                        return KILLED;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return ExitInfo {
                        code: Some(0),
                        signal: None,
                    };
                }
            };
            if self.killed.load(Ordering::SeqCst) {
                return KILLED;
            }
            match request {
                WorkerRequest::Load { device, .. } => match self.load {
                    FakeLoad::Ok(ms) => {
                        if self.sleep(Duration::from_millis(ms)) {
                            return KILLED;
                        }
                        self.send(&WorkerEvent::Loaded {
                            device: device.label(),
                            dtype: "f32".into(),
                            load_ms: ms as f64,
                            weight_bytes: 1000,
                        });
                    }
                    FakeLoad::Fail(kind) => self.send(&WorkerEvent::LoadFailed {
                        kind,
                        message: format!("scripted {kind:?} on {}", device.label()),
                    }),
                    FakeLoad::Hang => return self.hang(),
                    FakeLoad::Crash => return CRASHED,
                },
                WorkerRequest::Transcribe { job_id, path, .. } => {
                    if let Ending::Exit(exit) = self.job(job_id, &path) {
                        return exit;
                    }
                }
                WorkerRequest::TranscribeSamples { job_id, label, .. } => {
                    if let Ending::Exit(exit) = self.job(job_id, Path::new(&label)) {
                        return exit;
                    }
                }
                WorkerRequest::Cancel { .. } => {}
                WorkerRequest::Offload => self.send(&WorkerEvent::Offloaded { ms: 1.0 }),
                WorkerRequest::Restore => self.send(&WorkerEvent::Restored { ms: 1.0 }),
                WorkerRequest::Shutdown => {
                    return ExitInfo {
                        code: Some(0),
                        signal: None,
                    };
                }
            }
        }
    }

    fn job(&mut self, job_id: u64, path: &Path) -> Ending {
        let script = JobScript::parse(path, self.stats.attempt(path));
        let fail = |kind, message: String| WorkerEvent::JobFailed {
            job_id,
            kind,
            message,
        };
        if script.bad_input {
            self.send(&fail(
                JobErrorKind::BadInput,
                format!("{}: not audio", path.display()),
            ));
            return Ending::Continue;
        }
        if script.oom && self.device != WorkerDevice::Cpu {
            self.send(&fail(
                JobErrorKind::OutOfMemory,
                "out of memory even for one segment".into(),
            ));
            return Ending::Continue;
        }
        let total_s = f64::from(script.batches) * 30.0;
        self.send(&WorkerEvent::Decoded {
            job_id,
            duration_s: total_s,
            warning: None,
        });
        let mut segments = Vec::new();
        for batch in 0..script.batches {
            if let Some((what, at)) = &script.misbehave
                && *at == batch
            {
                match what.as_str() {
                    "hang" | "stop" => return Ending::Exit(self.hang()),
                    "crash" => return Ending::Exit(CRASHED),
                    "oomkill" => return Ending::Exit(KILLED),
                    "garbage" => {
                        self.out
                            .write_all(b"Segmentation fault? no: plain text\n")
                            .ok();
                    }
                    _ => {
                        self.out.write_all(b"\xff\xfe\x80\x81 not utf-8\n").ok();
                    }
                }
            }
            if u64::from(self.cancelled.load(Ordering::SeqCst)) == job_id {
                self.send(&fail(
                    JobErrorKind::Cancelled,
                    format!("cancelled: {}", path.display()),
                ));
                return Ending::Continue;
            }
            // A pass, with heartbeats every 50 ms.
            let mut left = script.pass;
            while !left.is_zero() {
                let step = left.min(Duration::from_millis(50));
                if self.sleep(step) {
                    return Ending::Exit(KILLED);
                }
                left -= step;
                if !left.is_zero() {
                    self.send(&WorkerEvent::Heartbeat {
                        job_id: Some(job_id),
                    });
                }
            }
            let segment = Segment {
                start_s: f64::from(batch) * 30.0,
                end_s: f64::from(batch + 1) * 30.0,
                text: format!("batch {batch}"),
                language: "en".into(),
                emotion: "NEUTRAL".into(),
                event: "Speech".into(),
            };
            segments.push(segment.clone());
            self.send(&WorkerEvent::Progress {
                job_id,
                done_s: f64::from(batch + 1) * 30.0,
                total_s,
                segments: vec![segment],
            });
        }
        let text = segments
            .iter()
            .map(|s| s.text.clone())
            .collect::<Vec<_>>()
            .join(" ");
        self.send(&WorkerEvent::Done {
            job_id,
            transcript: FileTranscript {
                path: path.to_string_lossy().into_owned().into(),
                duration_s: total_s,
                language: "en".into(),
                emotion: "NEUTRAL".into(),
                event: "Speech".into(),
                raw_text: text.clone(),
                text,
                segments,
                tokens: Vec::new(),
                words: Vec::new(),
            },
            ms: 1.0,
            streamed: false,
        });
        Ending::Continue
    }
}
