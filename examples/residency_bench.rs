//! The worker's VRAM over its life, read through NVML: start, loaded, offloaded, released; cold
//! load and restore times; many offload/restore cycles with VRAM and RSS per cycle.
//!
//! ```sh
//! cargo build --release --features cuda --bins --example residency_bench
//! GPUSCRIBE_WORKER=target/release/gpuscribe-worker \
//!   target/release/examples/residency_bench MODEL_DIR 0 500
//! ```
//! Prints one JSON object per line.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use gpuscribe::engine::process::{ProcessPort, WorkerIo, WorkerPort as _};
use gpuscribe::engine::protocol::{
    Precision, WorkerDevice, WorkerEvent, WorkerRequest, from_line, to_line,
};
use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

/// MiB that NVML lists for `pid` on GPU `index` (0 when the pid is not listed).
fn pid_mib(nvml: &Nvml, index: u32, pid: u32) -> anyhow::Result<u64> {
    let device = nvml.device_by_index(index)?;
    let used = device
        .running_compute_processes()?
        .into_iter()
        .filter(|p| p.pid == pid)
        .map(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => bytes,
            UsedGpuMemory::Unavailable => 0,
        })
        .sum::<u64>();
    Ok(used >> 20)
}

fn listed(nvml: &Nvml, index: u32, pid: u32) -> anyhow::Result<bool> {
    let device = nvml.device_by_index(index)?;
    Ok(device
        .running_compute_processes()?
        .iter()
        .any(|p| p.pid == pid))
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib >> 10)
}

/// The worker, spoken to directly over its pipes (no engine in between).
struct Worker {
    io: WorkerIo,
    events: BufReader<Box<dyn Read + Send>>,
}

impl Worker {
    fn start(device: &WorkerDevice) -> anyhow::Result<Self> {
        let mut io = ProcessPort::new(None).start(device)?;
        let stdout = std::mem::replace(&mut io.stdout, Box::new(std::io::empty()));
        Ok(Self {
            io,
            events: BufReader::new(stdout),
        })
    }

    fn pid(&self) -> u32 {
        self.io.process.pid()
    }

    fn send(&mut self, request: &WorkerRequest) -> anyhow::Result<()> {
        writeln!(self.io.stdin, "{}", to_line(request)?)?;
        self.io.stdin.flush()?;
        Ok(())
    }

    /// The next event other than start-up and heartbeats.
    fn wait(&mut self, what: &str) -> anyhow::Result<WorkerEvent> {
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.events.read_until(b'\n', &mut line)? == 0 {
                bail!("worker exited while waiting for {what}");
            }
            match from_line::<WorkerEvent>(&line) {
                Ok(WorkerEvent::Started { .. } | WorkerEvent::Heartbeat { .. }) => {}
                Ok(event) => return Ok(event),
                Err(err) => bail!("worker wrote garbage while waiting for {what}: {err}"),
            }
        }
    }

    /// Asks it to exit, waits up to `grace`, then kills it.
    fn shutdown(mut self, grace: Duration) {
        self.send(&WorkerRequest::Shutdown).ok();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(self.io.process.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.io.process.kill();
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, index, cycles] = args.as_slice() else {
        bail!("usage: residency_bench MODEL_DIR GPU_INDEX CYCLES");
    };
    let index: u32 = index.parse()?;
    let cycles: usize = cycles.parse()?;
    let nvml = Nvml::init()?;
    let uuid = nvml.device_by_index(index)?.uuid()?;
    let device = WorkerDevice::Cuda {
        ordinal: index as usize,
        uuid,
    };
    let mut worker = Worker::start(&device)?;
    let pid = worker.pid();
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "{}",
        serde_json::json!({"stage": "started", "pid": pid, "listed_by_nvml": listed(&nvml, index, pid)?,
            "vram_mib": pid_mib(&nvml, index, pid)?, "rss_mib": rss_mib(pid)})
    );
    let started = Instant::now();
    worker.send(&WorkerRequest::Load {
        model_dir: PathBuf::from(model_dir),
        device,
        precision: Precision::Bf16,
    })?;
    let loaded = worker.wait("Loaded")?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{}",
        serde_json::json!({"stage": "loaded", "event": format!("{loaded:?}"), "wall_ms_incl_cuda_init": wall_ms,
            "vram_mib": pid_mib(&nvml, index, pid)?, "rss_mib": rss_mib(pid)})
    );
    let mut restore_ms = Vec::with_capacity(cycles);
    let mut offload_ms = Vec::with_capacity(cycles);
    let (mut loaded_mib, mut offloaded_mib, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for cycle in 0..cycles {
        worker.send(&WorkerRequest::Offload)?;
        match worker.wait("Offloaded")? {
            WorkerEvent::Offloaded { ms } => offload_ms.push(ms),
            other => bail!("cycle {cycle}: expected Offloaded, got {other:?}"),
        }
        offloaded_mib.push(pid_mib(&nvml, index, pid)?);
        worker.send(&WorkerRequest::Restore)?;
        match worker.wait("Restored")? {
            WorkerEvent::Restored { ms } => restore_ms.push(ms),
            other => bail!("cycle {cycle}: expected Restored, got {other:?}"),
        }
        loaded_mib.push(pid_mib(&nvml, index, pid)?);
        rss.push(rss_mib(pid));
        if cycle == 0 || cycle + 1 == cycles {
            println!(
                "{}",
                serde_json::json!({"stage": "cycle", "cycle": cycle + 1, "offload_ms": offload_ms[cycle],
                    "restore_ms": restore_ms[cycle], "vram_offloaded_mib": offloaded_mib[cycle],
                    "vram_loaded_mib": loaded_mib[cycle], "rss_mib": rss[cycle]})
            );
        }
    }
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        serde_json::json!({"min": s.first(), "median": s.get(s.len() / 2), "max": s.last()})
    };
    let range = |v: &[u64]| serde_json::json!({"min": v.iter().min(), "max": v.iter().max()});
    println!(
        "{}",
        serde_json::json!({"stage": "cycles", "cycles": cycles, "restore_ms": stats(&restore_ms),
            "offload_ms": stats(&offload_ms), "vram_offloaded_mib": range(&offloaded_mib),
            "vram_loaded_mib": range(&loaded_mib), "rss_mib": range(&rss)})
    );
    worker.send(&WorkerRequest::Offload)?;
    worker.wait("Offloaded")?;
    println!(
        "{}",
        serde_json::json!({"stage": "offloaded", "vram_mib": pid_mib(&nvml, index, pid)?, "rss_mib": rss_mib(pid)})
    );
    let released = Instant::now();
    worker.shutdown(Duration::from_secs(5));
    let release_ms = released.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{}",
        serde_json::json!({"stage": "released", "release_ms": release_ms,
            "listed_by_nvml": listed(&nvml, index, pid)?, "vram_mib": pid_mib(&nvml, index, pid)?})
    );
    Ok(())
}
