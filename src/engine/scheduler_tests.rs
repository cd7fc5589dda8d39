//! The engine thread over scripted fake workers ([`crate::engine::fake_worker`]): routing,
//! fallbacks, the watchdog, cancel, restart after a panic, and that nothing blocks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::fake_worker::{FakeLoad, FakePort, FakeScript, FakeStats};
use crate::engine::protocol::LoadErrorKind;
use crate::engine::{
    DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, Event, GpuFree, IdlePolicy, JobId,
    PinnedFallback, Request, ResidencyConfig, WatchdogConfig,
};

const GIB: u64 = 1 << 30;

pub(crate) fn fast_config(target: DeviceTarget) -> EngineConfig {
    EngineConfig {
        model_dir: Some(PathBuf::from("/fake/model")),
        target,
        residency: ResidencyConfig {
            offload: IdlePolicy::Never,
            release_after_secs: None,
        },
        watchdog: WatchdogConfig {
            min_silence: Duration::from_millis(300),
            first_pass: Duration::from_millis(300),
            load: Duration::from_millis(1000),
            cancel_grace: Duration::from_millis(200),
            shutdown_grace: Duration::from_millis(100),
            tick: Duration::from_millis(20),
        },
        ..EngineConfig::default()
    }
}

fn gpu(index: u32, free_gib: u64) -> GpuFree {
    GpuFree {
        uuid: format!("GPU-{index}"),
        index,
        cuda_ordinal: index as usize,
        free_bytes: free_gib * GIB,
        total_bytes: 80 * GIB,
    }
}

struct Run {
    engine: EngineHandle,
    stats: Arc<FakeStats>,
    notices: Vec<String>,
    started_on: HashMap<JobId, String>,
}

#[derive(Debug, PartialEq)]
enum End {
    Done(PathBuf),
    Failed(String),
    Cancelled,
}

fn start(config: EngineConfig, script: FakeScript, gpus: Vec<GpuFree>) -> Run {
    let (port, stats) = FakePort::new(script);
    let engine = EngineHandle::spawn_with_port(config, Arc::new(|| {}), Box::new(port))
        .expect("engine starts");
    engine.send(Request::Gpus(gpus));
    Run {
        engine,
        stats,
        notices: Vec::new(),
        started_on: HashMap::new(),
    }
}

impl Run {
    fn queue(&self, names: &[&str]) -> Vec<JobId> {
        names
            .iter()
            .map(|n| {
                self.engine.transcribe(
                    PathBuf::from(format!("/in/{n}.wav")),
                    DecodeSettings::default(),
                )
            })
            .collect()
    }

    /// Waits until every job in `ids` has ended; panics after `within`.
    fn ends(&mut self, ids: &[JobId], within: Duration) -> HashMap<JobId, End> {
        let deadline = Instant::now() + within;
        let mut ends = HashMap::new();
        while ends.len() < ids.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.engine.recv_timeout(left) else {
                panic!(
                    "jobs still open after {within:?}: {ends:?}; notices {:?}",
                    self.notices
                );
            };
            match event {
                Event::Notice(text) => self.notices.push(text),
                Event::JobStarted { job_id, device } => {
                    self.started_on.insert(job_id, device);
                }
                Event::JobDone {
                    job_id, transcript, ..
                } => {
                    assert!(ends.insert(job_id, End::Done(transcript.path)).is_none());
                }
                Event::JobFailed {
                    job_id,
                    message,
                    cancelled,
                } => {
                    let end = if cancelled {
                        End::Cancelled
                    } else {
                        End::Failed(message)
                    };
                    assert!(
                        ends.insert(job_id, end).is_none(),
                        "job {job_id} ended twice"
                    );
                }
                _ => {}
            }
        }
        ends
    }

    fn failed(ends: &HashMap<JobId, End>, id: JobId) -> String {
        match &ends[&id] {
            End::Failed(message) => message.clone(),
            other => panic!("job {id}: {other:?}"),
        }
    }
}

fn is_done(end: &End) -> bool {
    matches!(end, End::Done(_))
}

#[test]
fn auto_runs_on_the_gpu_with_most_free_memory() {
    let mut run = start(
        fast_config(DeviceTarget::Auto),
        FakeScript::default(),
        vec![gpu(0, 4), gpu(1, 30)],
    );
    let ids = run.queue(&["a", "b"]);
    let ends = run.ends(&ids, Duration::from_secs(5));
    assert!(ends.values().all(is_done), "{ends:?}");
    assert_eq!(run.started_on[&ids[0]], "GPU 1");
    assert_eq!(run.stats.started_on("GPU 1"), 1, "one worker for both jobs");
}

#[test]
fn a_pinned_gpu_that_vanished_is_told_and_the_fallback_runs_the_job() {
    let mut config = fast_config(DeviceTarget::Gpu {
        uuid: "GPU-9".into(),
    });
    config.pinned_fallback = PinnedFallback::Cpu;
    let mut run = start(config, FakeScript::default(), vec![gpu(0, 40)]);
    let ids = run.queue(&["a"]);
    let ends = run.ends(&ids, Duration::from_secs(5));
    assert!(is_done(&ends[&ids[0]]));
    assert_eq!(run.started_on[&ids[0]], "CPU");
    assert!(
        run.notices
            .iter()
            .any(|n| n.contains("GPU-9 is not present any more")),
        "{:?}",
        run.notices
    );
}

#[test]
fn a_gpu_without_room_hands_the_job_on_and_says_why() {
    let mut run = start(
        fast_config(DeviceTarget::Auto),
        FakeScript::default(),
        vec![gpu(0, 0)],
    );
    let ids = run.queue(&["a"]);
    let ends = run.ends(&ids, Duration::from_secs(5));
    assert!(is_done(&ends[&ids[0]]));
    assert_eq!(run.started_on[&ids[0]], "CPU");
    assert!(
        run.notices
            .iter()
            .any(|n| n.contains("running on CPU") && n.contains("GPU 0 has 0 MiB free")),
        "{:?}",
        run.notices
    );
}

#[test]
fn out_of_memory_moves_the_job_to_the_next_gpu_then_the_cpu() {
    let mut run = start(
        fast_config(DeviceTarget::Auto),
        FakeScript::default(),
        vec![gpu(0, 40), gpu(1, 20)],
    );
    let ids = run.queue(&["talk-oom"]);
    let ends = run.ends(&ids, Duration::from_secs(5));
    assert!(is_done(&ends[&ids[0]]), "{ends:?}");
    let oom: Vec<&String> = run
        .notices
        .iter()
        .filter(|n| n.contains("out of memory on GPU"))
        .collect();
    assert_eq!(oom.len(), 2, "{:?}", run.notices);
    assert!(
        oom[0].contains("GPU 0") && oom[1].contains("GPU 1"),
        "{oom:?}"
    );
    assert_eq!(run.stats.started_on("CPU"), 1);
}

#[test]
fn all_spreads_files_over_the_gpus_and_one_failing_gpu_does_not_stop_the_others() {
    let script = FakeScript {
        load: Box::new(|device, _| {
            if device.label() == "GPU 1" {
                FakeLoad::Fail(LoadErrorKind::DeviceUnavailable)
            } else {
                FakeLoad::Ok(1)
            }
        }),
        ..FakeScript::default()
    };
    let mut run = start(
        fast_config(DeviceTarget::All),
        script,
        vec![gpu(0, 40), gpu(1, 40), gpu(2, 40)],
    );
    let names: Vec<String> = (0..9).map(|i| format!("f{i}-pass=30")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids = run.queue(&names);
    let ends = run.ends(&ids, Duration::from_secs(10));
    assert!(ends.values().all(is_done), "{ends:?}");
    let on = |label: &str| run.started_on.values().filter(|d| *d == label).count();
    assert_eq!(on("GPU 1"), 0);
    assert!(on("GPU 0") >= 3 && on("GPU 2") >= 3, "{:?}", run.started_on);
    assert!(
        run.notices
            .iter()
            .any(|n| n.contains("cannot load the model on GPU 1")),
        "{:?}",
        run.notices
    );
}

#[test]
fn a_bad_model_fails_its_jobs_without_disabling_the_gpu() {
    let script = FakeScript {
        load: Box::new(|_, started| {
            if started == 0 {
                FakeLoad::Fail(LoadErrorKind::BadModel)
            } else {
                FakeLoad::Ok(1)
            }
        }),
        ..FakeScript::default()
    };
    let mut run = start(fast_config(DeviceTarget::Auto), script, vec![gpu(0, 40)]);
    let first = run.queue(&["a"]);
    let ends = run.ends(&first, Duration::from_secs(5));
    let message = Run::failed(&ends, first[0]);
    assert!(
        message.contains("/in/a.wav") && message.contains("BadModel"),
        "{message}"
    );
    // The model was fixed: the same GPU takes the next job.
    let second = run.queue(&["b"]);
    let ends = run.ends(&second, Duration::from_secs(5));
    assert!(is_done(&ends[&second[0]]));
    assert_eq!(run.started_on[&second[0]], "GPU 0");
}

#[test]
fn a_hung_worker_is_killed_the_job_retried_once_then_failed_and_the_queue_goes_on() {
    let mut run = start(
        fast_config(DeviceTarget::Cpu),
        FakeScript::default(),
        vec![],
    );
    let ids = run.queue(&["a-hang@1", "b-hang@0-once", "c"]);
    let started = Instant::now();
    let ends = run.ends(&ids, Duration::from_secs(10));
    let message = Run::failed(&ends, ids[0]);
    assert!(
        message.contains("sent nothing for") && message.contains("twice"),
        "{message}"
    );
    assert!(is_done(&ends[&ids[1]]), "retried once: {ends:?}");
    assert!(is_done(&ends[&ids[2]]));
    // Three silences of at most 300 ms + the tick, and the rest is quick.
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn crashes_and_kills_are_reported_with_the_status_or_signal() {
    let mut run = start(
        fast_config(DeviceTarget::Cpu),
        FakeScript::default(),
        vec![],
    );
    let ids = run.queue(&["a-crash@1", "b-oomkill@0", "c-crash@2-once", "d-stop@1"]);
    let ends = run.ends(&ids, Duration::from_secs(10));
    let crash = Run::failed(&ends, ids[0]);
    assert!(crash.contains("exited with status 101"), "{crash}");
    let oom = Run::failed(&ends, ids[1]);
    assert!(
        oom.contains("killed by signal 9 (SIGKILL) — out of host memory?"),
        "{oom}"
    );
    assert!(is_done(&ends[&ids[2]]));
    let stopped = Run::failed(&ends, ids[3]);
    assert!(stopped.contains("sent nothing"), "{stopped}");
    assert!(
        run.notices.iter().any(|n| n.contains("trying again")),
        "{:?}",
        run.notices
    );
}

#[test]
fn garbage_and_bytes_that_are_not_utf8_get_the_worker_killed_and_the_job_retried() {
    let mut run = start(
        fast_config(DeviceTarget::Cpu),
        FakeScript::default(),
        vec![],
    );
    let ids = run.queue(&["a-garbage@1-once", "b-binary@0-once", "c-binary@1"]);
    let ends = run.ends(&ids, Duration::from_secs(10));
    assert!(is_done(&ends[&ids[0]]), "{ends:?}");
    assert!(is_done(&ends[&ids[1]]), "{ends:?}");
    let message = Run::failed(&ends, ids[2]);
    assert!(message.contains("not UTF-8"), "{message}");
}

#[test]
fn a_cancel_ends_a_running_job_within_a_second_even_if_the_worker_does_not_listen() {
    let mut run = start(
        fast_config(DeviceTarget::Cpu),
        FakeScript::default(),
        vec![],
    );
    // Listens: checks between 100 ms batches. Deaf: hangs (with no heartbeats) in batch 1.
    let ids = run.queue(&["listens-batches=100-pass=100"]);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    run.engine.send(Request::Cancel(ids[0]));
    let ends = run.ends(&ids, Duration::from_secs(2));
    assert_eq!(ends[&ids[0]], End::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    let mut config = fast_config(DeviceTarget::Cpu);
    config.watchdog.min_silence = Duration::from_secs(30);
    config.watchdog.first_pass = Duration::from_secs(30);
    config.watchdog.cancel_grace = Duration::from_millis(800);
    let mut run = start(config, FakeScript::default(), vec![]);
    let ids = run.queue(&["deaf-hang@1", "next"]);
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    run.engine.send(Request::Cancel(ids[0]));
    let ends = run.ends(&ids[..1], Duration::from_secs(2));
    assert_eq!(ends[&ids[0]], End::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let ends = run.ends(&ids[1..], Duration::from_secs(5));
    assert!(is_done(&ends[&ids[1]]), "the queue goes on");
}

#[test]
fn a_panic_in_the_engine_restarts_it_with_the_queue_kept() {
    let script = FakeScript {
        panic_on_start: vec![0],
        ..FakeScript::default()
    };
    let mut run = start(fast_config(DeviceTarget::Cpu), script, vec![]);
    let ids = run.queue(&["a", "b", "c"]);
    let ends = run.ends(&ids, Duration::from_secs(5));
    assert!(ends.values().all(is_done), "{ends:?}");
    assert!(
        run.notices
            .iter()
            .any(|n| n.contains("stopped unexpectedly") && n.contains("job(s) kept")),
        "{:?}",
        run.notices
    );
    assert!(run.engine.is_running());
}

#[cfg(unix)]
#[test]
fn a_file_name_that_is_not_utf8_is_transcribed_and_keeps_its_bytes() {
    use std::os::unix::ffi::OsStrExt as _;
    let mut run = start(
        fast_config(DeviceTarget::Cpu),
        FakeScript::default(),
        vec![],
    );
    let latin1 = PathBuf::from(std::ffi::OsStr::from_bytes(b"/in/caf\xe9.wav"));
    let invalid = PathBuf::from(std::ffi::OsStr::from_bytes(b"/in/\xff\xfe\x80.wav"));
    let ids: Vec<JobId> = [&latin1, &invalid]
        .iter()
        .map(|p| {
            run.engine
                .transcribe((*p).clone(), DecodeSettings::default())
        })
        .collect();
    let good = run.queue(&["hello"]);
    let ends = run.ends(&[ids.clone(), good].concat(), Duration::from_secs(5));
    assert_eq!(ends[&ids[0]], End::Done(latin1));
    assert_eq!(ends[&ids[1]], End::Done(invalid));
}

#[test]
fn sends_never_block_and_closing_returns_within_a_second_while_a_worker_hangs() {
    let mut config = fast_config(DeviceTarget::Cpu);
    config.watchdog.min_silence = Duration::from_secs(60);
    config.watchdog.first_pass = Duration::from_secs(60);
    let run = start(config, FakeScript::default(), vec![]);
    // Nobody drains the events, the worker hangs, and far more requests come than the
    // channel holds: every call returns at once.
    let sent = Instant::now();
    run.queue(&["stuck-hang@0"]);
    for i in 0..3000 {
        run.engine.send(Request::Gpus(vec![gpu(i % 4, 1)]));
        run.engine.transcribe(
            PathBuf::from(format!("/in/{i}.wav")),
            DecodeSettings::default(),
        );
    }
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    let stats = Arc::clone(&run.stats);
    let closing = Instant::now();
    drop(run);
    assert!(
        closing.elapsed() < Duration::from_millis(1200),
        "{:?}",
        closing.elapsed()
    );
    // The hung worker was killed and reaped.
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats.alive.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stats.alive.load(Ordering::SeqCst), 0);
}
