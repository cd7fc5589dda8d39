//! Chaos: the real engine and scheduler over scripted fake workers (real threads behind real
//! pipes; see `gpuscribe::engine::fake_worker`) that hang, stop reading, crash, die of signal 9,
//! print garbage and bytes that are not UTF-8, answer slowly, run out of memory, fail loads,
//! and hang loads — 200 jobs over two GPUs and the CPU, some of them cancelled on the way.
//!
//! Every job must end — done, cancelled, or failed with a reason that names what happened —
//! within the stated bound; none is left running; the engine thread is alive and still takes
//! work; no fake worker is left behind and at most one per device (plus those being retired)
//! lives at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gpuscribe::engine::fake_worker::{FakeLoad, FakePort, FakeScript};
use gpuscribe::engine::protocol::{LoadErrorKind, WorkerDevice};
use gpuscribe::engine::{
    DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, Event, GpuFree, IdlePolicy, JobId,
    Request, ResidencyConfig, WatchdogConfig,
};

const JOBS: usize = 200;

/// The whole run must end within this (it takes a few seconds on a 2-core machine).
const BOUND: Duration = Duration::from_secs(45);
/// How much the test process's resident memory may grow over the run.
const MAX_RSS_GROWTH_KIB: u64 = 128 * 1024;

/// This process's resident memory (VmRSS), KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// xorshift64*: a fixed, seeded sequence, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a job must end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Fails, and the message contains this (or names a scripted load failure that came first).
    Fails(&'static str),
    /// Done, or failed with a reason naming the file (a plain job can still lose its worker
    /// twice to scripted load crashes, or run out of devices to scripted load OOMs).
    Ends,
}

fn job_name(i: usize, rng: &mut Rng) -> (String, Expect) {
    let batches = 1 + rng.below(4);
    let pass = rng.below(15);
    let base = format!("job{i}-batches={batches}-pass={pass}");
    let at = rng.below(batches);
    let roll = rng.below(100);
    let (token, expect) = match roll {
        0..=49 => (String::new(), Expect::Ends),
        50..=54 => ("-pass=120".to_owned(), Expect::Ends),
        55..=59 => (format!("-hang@{at}"), Expect::Fails("sent nothing")),
        60..=62 => (format!("-stop@{at}"), Expect::Fails("sent nothing")),
        63..=67 => (
            format!("-crash@{at}"),
            Expect::Fails("exited with status 101"),
        ),
        68..=71 => (
            format!("-oomkill@{at}"),
            Expect::Fails("killed by signal 9"),
        ),
        72..=75 => (
            format!("-garbage@{at}"),
            Expect::Fails("not a protocol message"),
        ),
        76..=79 => (format!("-binary@{at}"), Expect::Fails("not UTF-8")),
        80..=83 => ("-badinput".to_owned(), Expect::Fails("not audio")),
        84..=89 => ("-oom".to_owned(), Expect::Ends),
        90..=94 => (format!("-hang@{at}-once"), Expect::Ends),
        _ => (format!("-crash@{at}-once"), Expect::Ends),
    };
    (format!("{base}{token}"), expect)
}

fn gpu(index: u32) -> GpuFree {
    GpuFree {
        uuid: format!("GPU-chaos-{index}"),
        index,
        cuda_ordinal: index as usize,
        free_bytes: 40 << 30,
        total_bytes: 80 << 30,
    }
}

#[test]
fn two_hundred_jobs_over_misbehaving_workers_all_end_with_a_reason() {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let load_rolls: Vec<u64> = (0..4096).map(|_| rng.below(100)).collect();
    let script = FakeScript {
        // Most loads work (after up to 20 ms); some crash or hang, and a GPU may lack the memory
        // (which moves its whole queue on, to the other GPU, then the CPU).
        load: Box::new(
            move |device, started| match load_rolls[started % load_rolls.len()] {
                0..=3 => FakeLoad::Crash,
                4..=5 => FakeLoad::Hang,
                6..=7 if *device != WorkerDevice::Cpu => FakeLoad::Fail(LoadErrorKind::OutOfMemory),
                n => FakeLoad::Ok(n % 20),
            },
        ),
        panic_on_start: Vec::new(),
    };
    let (port, stats) = FakePort::new(script);
    let config = EngineConfig {
        model_dir: Some(PathBuf::from("/fake/model")),
        target: DeviceTarget::All,
        residency: ResidencyConfig {
            offload: IdlePolicy::Immediately,
            release_after_secs: Some(0),
        },
        watchdog: WatchdogConfig {
            min_silence: Duration::from_millis(150),
            first_pass: Duration::from_millis(150),
            load: Duration::from_millis(300),
            cancel_grace: Duration::from_millis(100),
            shutdown_grace: Duration::from_millis(50),
            tick: Duration::from_millis(10),
        },
        ..EngineConfig::default()
    };
    let engine = EngineHandle::spawn_with_port(config, Arc::new(|| {}), Box::new(port))
        .expect("engine starts");
    engine.send(Request::Gpus(vec![gpu(0), gpu(1)]));

    let started = Instant::now();
    let rss_before = rss_kib();
    let mut expected: HashMap<JobId, (String, Expect)> = HashMap::new();
    let mut to_cancel = Vec::new();
    for i in 0..JOBS {
        let (name, expect) = job_name(i, &mut rng);
        let id = engine.transcribe(
            PathBuf::from(format!("/chaos/{name}.wav")),
            DecodeSettings::default(),
        );
        if rng.below(100) < 4 {
            to_cancel.push(id);
        }
        expected.insert(id, (name, expect));
    }

    let mut ended: HashMap<JobId, Result<(), String>> = HashMap::new();
    let mut cancelled = Vec::new();
    let mut running_now: HashMap<JobId, String> = HashMap::new();
    let mut seen = 0usize;
    while ended.len() < JOBS {
        let left = BOUND.saturating_sub(started.elapsed());
        let Some(event) = engine.recv_timeout(left) else {
            let open: Vec<&String> = expected
                .iter()
                .filter(|(id, _)| !ended.contains_key(id))
                .map(|(_, (name, _))| name)
                .collect();
            panic!(
                "{} job(s) still open after {BOUND:?}: {open:?}",
                JOBS - ended.len()
            );
        };
        seen += 1;
        // Cancel a few jobs while things happen.
        if seen.is_multiple_of(40)
            && let Some(id) = to_cancel.pop()
        {
            engine.send(Request::Cancel(id));
        }
        match event {
            Event::JobStarted { job_id, device } => {
                running_now.insert(job_id, device);
            }
            Event::JobDone { job_id, .. } => {
                running_now.remove(&job_id);
                assert!(
                    ended.insert(job_id, Ok(())).is_none(),
                    "job {job_id} ended twice"
                );
            }
            Event::JobFailed {
                job_id,
                message,
                cancelled: was_cancelled,
            } => {
                running_now.remove(&job_id);
                if was_cancelled {
                    cancelled.push(job_id);
                }
                assert!(
                    ended.insert(job_id, Err(message)).is_none(),
                    "job {job_id} ended twice"
                );
            }
            _ => {}
        }
    }
    let took = started.elapsed();
    // Memory stays bounded: 200 jobs, dozens of dead workers and their pipes leave no pile behind.
    let rss_growth_kib = rss_kib().saturating_sub(rss_before);
    eprintln!("chaos: resident memory grew by {rss_growth_kib} KiB");
    assert!(
        rss_growth_kib < MAX_RSS_GROWTH_KIB,
        "resident memory grew by {rss_growth_kib} KiB over the run"
    );

    for (id, (name, expect)) in &expected {
        let end = &ended[id];
        if cancelled.contains(id) {
            continue;
        }
        match (expect, end) {
            (Expect::Ends, Ok(())) => {}
            (Expect::Fails(_) | Expect::Ends, Err(message)) => {
                assert!(
                    message.contains(&format!("/chaos/{name}.wav")),
                    "{name}: the reason names the file: {message}"
                );
                if let Expect::Fails(what) = expect
                    && !message.contains(what)
                {
                    // A scripted load failure may hit first; its reason is then the one given.
                    assert!(
                        message.contains("worker on") || message.contains("no device left"),
                        "{name}: {message}"
                    );
                }
            }
            (Expect::Fails(what), Ok(())) => panic!("{name} should have failed with {what}"),
        }
    }
    let done = ended.values().filter(|e| e.is_ok()).count();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for (id, end) in &ended {
        if let (Err(message), false) = (end, cancelled.contains(id)) {
            let name = &expected[id].0;
            let reason = message.replace(&format!("/chaos/{name}.wav"), "FILE");
            *reasons
                .entry(reason.chars().take(90).collect())
                .or_default() += 1;
        }
    }
    eprintln!("chaos: failure reasons: {reasons:#?}");
    assert!(done >= JOBS / 2, "only {done} of {JOBS} done");

    // The engine still works, nothing is left running, no worker is left behind.
    let probe = engine.transcribe(PathBuf::from("/chaos/after.wav"), DecodeSettings::default());
    let probe_done = Instant::now() + Duration::from_secs(10);
    loop {
        let left = probe_done.saturating_duration_since(Instant::now());
        match engine.recv_timeout(left) {
            Some(Event::JobDone { job_id, .. }) if job_id == probe => break,
            Some(Event::JobFailed {
                job_id, message, ..
            }) if job_id == probe => {
                // A scripted load crash may take this one too; it still ends with a reason.
                assert!(message.contains("after.wav"), "{message}");
                break;
            }
            Some(_) => {}
            None => panic!("the engine no longer answers after the chaos"),
        }
    }
    assert!(engine.is_running(), "the engine thread is alive");
    assert_eq!(engine.pending_requests(), 0);
    assert!(
        stats.most_alive.load(Ordering::SeqCst) <= 3 + 3,
        "at most one worker per device, plus ones being retired: {}",
        stats.most_alive.load(Ordering::SeqCst)
    );
    assert!(running_now.is_empty(), "left running: {running_now:?}");
    drop(engine);
    let reaped = Instant::now() + Duration::from_secs(3);
    while stats.alive.load(Ordering::SeqCst) > 0 && Instant::now() < reaped {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        stats.alive.load(Ordering::SeqCst),
        0,
        "fake workers left behind"
    );
    eprintln!(
        "chaos: {JOBS} jobs in {took:?}: {done} done, {} cancelled, {} failed with a reason; {} workers started",
        cancelled.len(),
        JOBS - done - cancelled.len(),
        stats.started.load(Ordering::SeqCst)
    );
}
