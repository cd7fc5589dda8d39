//! A worker process seen from the engine: spawn it, send requests, read its events on a thread.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::protocol::{WorkerEvent, WorkerRequest, to_line};

/// Environment variable naming the worker executable (tests and unusual installs).
pub const WORKER_ENV: &str = "GPUSCRIBE_WORKER";

/// The worker executable's file name, looked up next to the running executable.
pub const WORKER_EXE: &str = "gpuscribe-worker";

/// Lines of the worker's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

/// What the reader threads report, tagged with the worker's slot.
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
        /// The worker's generation (a restarted worker gets a new one, so late lines of an old
        /// worker are recognised).
        generation: u64,
        /// The event.
        event: WorkerEvent,
    },
    /// The worker's stdout closed: it exited or crashed.
    Exited {
        /// The slot.
        slot: usize,
        /// The worker's generation.
        generation: u64,
        /// Exit status and the last lines of stderr.
        detail: String,
    },
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

/// A running worker.
pub struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    /// Its process id, as NVML lists it.
    pub pid: u32,
    /// Its generation.
    pub generation: u64,
}

impl WorkerProcess {
    /// Starts the worker and the threads that read its stdout and stderr.
    ///
    /// A CPU-only worker of a `cuda` build gets the stand-in CUDA libraries at the end of its
    /// `LD_LIBRARY_PATH` (see [`super::cuda_stubs`]), so it starts where the CUDA runtime or the
    /// driver is missing; a GPU worker does not, and fails to start there with the loader's
    /// message, which the engine shows as the reason GPU transcription is unavailable.
    pub fn spawn(
        (exe, args): &(PathBuf, Vec<String>),
        cpu_only: bool,
        slot: usize,
        generation: u64,
        inbox: Sender<Inbox>,
    ) -> std::io::Result<Self> {
        let mut command = Command::new(exe);
        if cpu_only {
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
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("worker pipes are missing"));
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        std::thread::Builder::new()
            .name(format!("worker-{slot}-stderr"))
            .spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    eprint!("[worker {pid}] {line}");
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line.trim_end().to_owned());
                    }
                    line.clear();
                }
            })?;
        std::thread::Builder::new()
            .name(format!("worker-{slot}-stdout"))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => match serde_json::from_str::<WorkerEvent>(line.trim_end()) {
                            Ok(event) => {
                                let message = Inbox::Event {
                                    slot,
                                    generation,
                                    event,
                                };
                                if inbox.send(message).is_err() {
                                    return;
                                }
                            }
                            Err(err) => tracing::warn!("worker {pid} wrote a bad line: {err}"),
                        },
                    }
                }
                // Give stderr a moment to drain so the tail has the cause of a crash.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let mut rest = String::new();
                reader.read_to_string(&mut rest).ok();
                let detail = stderr_tail
                    .lock()
                    .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                inbox
                    .send(Inbox::Exited {
                        slot,
                        generation,
                        detail,
                    })
                    .ok();
            })?;
        Ok(Self {
            child,
            stdin,
            pid,
            generation,
        })
    }

    /// Sends one request; an error means the worker is gone.
    pub fn send(&mut self, request: &WorkerRequest) -> std::io::Result<()> {
        self.stdin.write_all(to_line(request).as_bytes())?;
        self.stdin.flush()
    }

    /// Asks the worker to exit, and kills it if it has not within `grace`.
    pub fn shutdown(mut self, grace: std::time::Duration) {
        self.send(&WorkerRequest::Shutdown).ok();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
