//! Worker processes seen from the engine, behind the [`WorkerPort`] seam: the engine starts
//! workers through a port (real processes in the app, scripted fakes in tests) and talks to each
//! through a [`WorkerLink`], which never blocks the engine thread:
//!
//! - requests go through a bounded queue to a writer thread ("worker-N-stdin"); a full queue
//!   means the worker stopped reading and is reported, not waited for;
//! - a reader thread ("worker-N-stdout") turns lines of bytes into [`WorkerEvent`]s; a line that
//!   is not UTF-8 or not a message is reported as [`Inbox::Garbage`], and the rest of the output is
//!   drained (so the worker never blocks on a full pipe before it is killed);
//! - a reaper thread ("worker-N-reap") owns the process: it kills it when asked, collects its
//!   exit status (no zombies) and reports [`Inbox::Exited`] with the status or signal and the
//!   last lines of stderr, after the reader has passed on everything the worker wrote.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError, bounded};

use super::protocol::{WorkerDevice, WorkerEvent, WorkerRequest, from_line, to_line};

/// Environment variable naming the worker executable (tests and unusual installs).
pub const WORKER_ENV: &str = "GPUSCRIBE_WORKER";

/// The worker executable's file name, looked up next to the running executable.
pub const WORKER_EXE: &str = "gpuscribe-worker";

/// Lines of the worker's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

/// Longest line read from a worker. A transcript comes in pieces of one batch's results (a few
/// hundred KiB even from a model that emits a token every frame), so no line grows with the
/// file's length; only a worker that sends a whole transcript at the end comes near this.
const MAX_LINE_BYTES: usize = 256 << 20;

/// A line buffer that one long line grew past this is given back, not kept for the reader's
/// life.
const KEEP_LINE_CAPACITY: usize = 1 << 20;

/// Requests waiting for the writer thread; more means the worker is not reading.
const REQUEST_QUEUE: usize = 64;

/// How often the reaper looks at its process.
const REAP_POLL: Duration = Duration::from_millis(10);

/// How long the reaper waits for the reader to pass on the last lines after the exit.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Its exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// From a process's exit status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        Self {
            code: status.code(),
            signal,
        }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(9)) => write!(f, "killed by signal 9 (SIGKILL) — out of host memory?"),
            (_, Some(6)) => write!(f, "aborted (signal 6, SIGABRT)"),
            (_, Some(11)) => write!(f, "crashed (signal 11, SIGSEGV)"),
            (_, Some(7)) => write!(f, "crashed (signal 7, SIGBUS)"),
            (_, Some(15)) => write!(f, "terminated by signal 15 (SIGTERM)"),
            (_, Some(signal)) => write!(f, "killed by signal {signal}"),
            (Some(0), None) => write!(f, "exited"),
            (Some(code), None) => write!(f, "exited with status {code}"),
            (None, None) => write!(f, "ended"),
        }
    }
}

/// A started worker's process, as its reaper needs it.
pub trait WorkerProcess: Send {
    /// Its process id (what NVML lists).
    fn pid(&self) -> u32;
    /// Ends it at once (SIGKILL for a real process).
    fn kill(&mut self);
    /// Its exit, once it has ended; never blocks.
    fn try_wait(&mut self) -> std::io::Result<Option<ExitInfo>>;
}

/// A started worker: its pipes and its process.
pub struct WorkerIo {
    /// Its requests.
    pub stdin: Box<dyn Write + Send>,
    /// Its events.
    pub stdout: Box<dyn Read + Send>,
    /// Its log, if it has one.
    pub stderr: Option<Box<dyn Read + Send>>,
    /// The process.
    pub process: Box<dyn WorkerProcess>,
}

/// Starts workers: real processes ([`ProcessPort`]) or test fakes.
pub trait WorkerPort: Send {
    /// Starts a worker for `device`.
    fn start(&mut self, device: &WorkerDevice) -> std::io::Result<WorkerIo>;
    /// Whether this port can start GPU workers at all (a build without CUDA cannot).
    fn gpu_capable(&self) -> bool;
}

/// What the link threads report, tagged with the worker's slot and generation (a restarted
/// worker gets a new one, so late lines of an old worker are recognised).
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one message per worker line over a bounded channel; boxing would only add an allocation"
)]
pub enum Inbox {
    /// An event from the worker's stdout.
    Event {
        /// The slot that owns the worker.
        slot: usize,
        /// The worker's generation.
        generation: u64,
        /// The event.
        event: WorkerEvent,
    },
    /// The worker wrote something that is not a protocol line.
    Garbage {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        generation: u64,
        /// What was wrong.
        detail: String,
    },
    /// The worker's stdout closed.
    Closed {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        generation: u64,
    },
    /// The worker process ended and was reaped.
    Exited {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        generation: u64,
        /// How it ended.
        exit: ExitInfo,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
}

impl Inbox {
    /// The slot and generation the message is about.
    pub fn source(&self) -> (usize, u64) {
        match self {
            Self::Event {
                slot, generation, ..
            }
            | Self::Garbage {
                slot, generation, ..
            }
            | Self::Closed { slot, generation }
            | Self::Exited {
                slot, generation, ..
            } => (*slot, *generation),
        }
    }
}

/// Why a request could not be handed to a worker.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The worker has not read its last requests: it is stuck.
    Stuck,
    /// The worker's input is closed: it is gone.
    Gone,
    /// The request cannot be encoded (a bug).
    Encode(String),
}

/// The engine's end of one worker.
pub struct WorkerLink {
    requests: Sender<String>,
    kill: Arc<AtomicBool>,
    /// Its process id.
    pub pid: u32,
    /// Its generation.
    pub generation: u64,
}

impl WorkerLink {
    /// Starts the link's threads over a started worker.
    pub fn open(
        io: WorkerIo,
        slot: usize,
        generation: u64,
        inbox: &Sender<Inbox>,
    ) -> std::io::Result<Self> {
        let WorkerIo {
            mut stdin,
            stdout,
            stderr,
            process,
        } = io;
        let pid = process.pid();
        let kill = Arc::new(AtomicBool::new(false));
        let (requests, request_rx) = bounded::<String>(REQUEST_QUEUE);
        std::thread::Builder::new()
            .name(format!("worker-{slot}-stdin"))
            .spawn(move || {
                for line in request_rx {
                    if stdin
                        .write_all(line.as_bytes())
                        .and_then(|()| stdin.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (stderr_done_tx, stderr_done) = bounded::<()>(1);
        if let Some(stderr) = stderr {
            let tail = Arc::clone(&tail);
            std::thread::Builder::new()
                .name(format!("worker-{slot}-stderr"))
                .spawn(move || {
                    read_stderr(stderr, pid, &tail);
                    drop(stderr_done_tx);
                })?;
        } else {
            drop(stderr_done_tx);
        }
        let (stdout_done_tx, stdout_done) = bounded::<()>(1);
        let events = inbox.clone();
        std::thread::Builder::new()
            .name(format!("worker-{slot}-stdout"))
            .spawn(move || {
                read_stdout(stdout, slot, generation, &events);
                drop(stdout_done_tx);
            })?;
        let events = inbox.clone();
        let kill_flag = Arc::clone(&kill);
        std::thread::Builder::new()
            .name(format!("worker-{slot}-reap"))
            .spawn(move || {
                let mut process = process;
                let exit = reap(process.as_mut(), &kill_flag);
                // Everything the worker wrote is passed on before its exit is.
                stdout_done.recv_timeout(DRAIN_AFTER_EXIT).ok();
                stderr_done.recv_timeout(DRAIN_AFTER_EXIT).ok();
                let stderr_tail = tail
                    .lock()
                    .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                events
                    .send(Inbox::Exited {
                        slot,
                        generation,
                        exit,
                        stderr_tail,
                    })
                    .ok();
            })?;
        Ok(Self {
            requests,
            kill,
            pid,
            generation,
        })
    }

    /// Hands a request to the writer thread; never blocks.
    pub fn send(&self, request: &WorkerRequest) -> Result<(), SendError> {
        let line = to_line(request).map_err(|err| SendError::Encode(err.to_string()))?;
        self.requests.try_send(line).map_err(|err| match err {
            TrySendError::Full(_) => SendError::Stuck,
            TrySendError::Disconnected(_) => SendError::Gone,
        })
    }

    /// Asks the reaper to kill the process (at once; it is reaped and reported as usual).
    pub fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }
}

impl Drop for WorkerLink {
    fn drop(&mut self) {
        // A worker nobody talks to any more has no reason to live.
        self.kill();
    }
}

fn reap(process: &mut dyn WorkerProcess, kill: &AtomicBool) -> ExitInfo {
    let mut killed = false;
    loop {
        if !killed && kill.load(Ordering::SeqCst) {
            process.kill();
            killed = true;
        }
        match process.try_wait() {
            Ok(Some(exit)) => return exit,
            Ok(None) => std::thread::sleep(REAP_POLL),
            Err(err) => {
                tracing::warn!("cannot wait for worker {}: {err}", process.pid());
                if killed {
                    return ExitInfo {
                        code: None,
                        signal: None,
                    };
                }
                process.kill();
                killed = true;
            }
        }
    }
}

fn read_stderr(stderr: Box<dyn Read + Send>, pid: u32, tail: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        let text = String::from_utf8_lossy(&line);
        eprint!("[worker {pid}] {text}");
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.trim_end().to_owned());
        }
        line.clear();
    }
}

fn read_stdout(stdout: Box<dyn Read + Send>, slot: usize, generation: u64, inbox: &Sender<Inbox>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        if line.capacity() > KEEP_LINE_CAPACITY {
            line = Vec::new();
        }
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line);
        let detail = match read {
            Ok(0) => break,
            Err(err) => {
                tracing::warn!("cannot read worker output: {err}");
                break;
            }
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                format!("a line longer than {} MiB", MAX_LINE_BYTES >> 20)
            }
            Ok(_) => {
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                match from_line::<WorkerEvent>(trimmed) {
                    Ok(event) => {
                        let message = Inbox::Event {
                            slot,
                            generation,
                            event,
                        };
                        if inbox.send(message).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(detail) => detail,
                }
            }
        };
        let excerpt = String::from_utf8_lossy(&line[..line.len().min(120)])
            .trim_end()
            .to_owned();
        let message = Inbox::Garbage {
            slot,
            generation,
            detail: format!("{detail}: {excerpt:?}"),
        };
        if inbox.send(message).is_err() {
            return;
        }
        // Nothing it says can be trusted now; keep its pipe flowing until it is killed.
        std::io::copy(&mut reader, &mut std::io::sink()).ok();
        break;
    }
    inbox.send(Inbox::Closed { slot, generation }).ok();
}

/// How to start a worker: `configured`, else `$GPUSCRIBE_WORKER`, else `gpuscribe-worker` next to
/// the running executable; a CPU build whose folder has no `gpuscribe-worker` (as after
/// `cargo run`) runs its own executable as `gpuscribe worker`.
pub fn worker_command(configured: Option<&Path>) -> (PathBuf, Vec<String>) {
    if let Some(path) = configured {
        return (path.to_path_buf(), Vec::new());
    }
    if let Some(path) = std::env::var_os(WORKER_ENV) {
        return (PathBuf::from(path), Vec::new());
    }
    let Ok(exe) = std::env::current_exe() else {
        return (PathBuf::from(WORKER_EXE), Vec::new());
    };
    let sibling = exe.with_file_name(WORKER_EXE);
    if sibling.is_file()
        || cfg!(feature = "cuda")
        || exe.file_stem().is_some_and(|s| s != "gpuscribe")
    {
        (sibling, Vec::new())
    } else {
        (exe, vec!["worker".to_owned()])
    }
}

/// Starts real `gpuscribe-worker` processes.
pub struct ProcessPort {
    command: (PathBuf, Vec<String>),
}

impl ProcessPort {
    /// A port running `configured`, else what [`worker_command`] finds.
    pub fn new(configured: Option<&Path>) -> Self {
        Self {
            command: worker_command(configured),
        }
    }
}

struct ChildProcess(Child);

impl WorkerProcess for ChildProcess {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        // An error means it has already exited; try_wait collects it.
        self.0.kill().ok();
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitInfo>> {
        Ok(self.0.try_wait()?.map(ExitInfo::from_status))
    }
}

impl WorkerPort for ProcessPort {
    /// A CPU-only worker of a `cuda` build gets the stand-in CUDA libraries at the end of its
    /// `LD_LIBRARY_PATH` (see [`super::cuda_stubs`]), so it starts where the CUDA runtime or the
    /// driver is missing; a GPU worker does not, and fails to start there with the loader's
    /// message, which the engine shows as the reason GPU transcription is unavailable.
    fn start(&mut self, device: &WorkerDevice) -> std::io::Result<WorkerIo> {
        let (exe, args) = &self.command;
        let mut command = Command::new(exe);
        if *device == WorkerDevice::Cpu {
            match super::cuda_stubs::stub_library_dir() {
                Ok(Some(dir)) => {
                    let current = std::env::var_os("LD_LIBRARY_PATH");
                    command.env(
                        "LD_LIBRARY_PATH",
                        super::cuda_stubs::ld_library_path_with(current.as_deref(), &dir),
                    );
                }
                Ok(None) => {}
                Err(err) => tracing::warn!("no stand-in CUDA libraries for the CPU worker: {err}"),
            }
        }
        // candle asks for its thread count on every CPU matrix product and, unless
        // RAYON_NUM_THREADS is set, works it out from /proc/cpuinfo each time (tens of µs, on
        // every product of every decoder step): the worker gets candle's own answer, once.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            command.env(
                "RAYON_NUM_THREADS",
                candle_core::utils::get_num_threads().to_string(),
            );
        }
        let mut child = command
            .args(args)
            // CUDA ordinals in PCI-bus order, as the app maps NVML GPUs to ordinals.
            .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| {
                std::io::Error::new(err.kind(), format!("cannot start {}: {err}", exe.display()))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            child.kill().ok();
            child.wait().ok();
            return Err(std::io::Error::other("worker pipes are missing"));
        };
        Ok(WorkerIo {
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            stderr: Some(Box::new(stderr)),
            process: Box::new(ChildProcess(child)),
        })
    }

    fn gpu_capable(&self) -> bool {
        cfg!(feature = "cuda")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_messages_name_the_status_or_signal() {
        let signal = |s| ExitInfo {
            code: None,
            signal: Some(s),
        };
        assert_eq!(
            signal(9).to_string(),
            "killed by signal 9 (SIGKILL) — out of host memory?"
        );
        assert_eq!(signal(11).to_string(), "crashed (signal 11, SIGSEGV)");
        let code = ExitInfo {
            code: Some(3),
            signal: None,
        };
        assert_eq!(code.to_string(), "exited with status 3");
    }
}
