//! The worker's VRAM over its life, read through NVML: start, loaded, offloaded, released; cold
//! load and restore times; many offload/restore cycles with VRAM and RSS per cycle.
//!
//! ```sh
//! cargo build --release --features cuda --bins --example residency_bench
//! GPUSCRIBE_WORKER=target/release/gpuscribe-worker \
//!   target/release/examples/residency_bench MODEL_DIR 0 500
//! ```
//! Prints one JSON object per line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use crossbeam_channel::{Receiver, bounded};
use gpuscribe::engine::process::{Inbox, ProcessPort, WorkerLink, WorkerPort as _};
use gpuscribe::engine::protocol::{Precision, WorkerDevice, WorkerEvent, WorkerRequest};
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

fn wait(inbox: &Receiver<Inbox>, what: &str) -> anyhow::Result<WorkerEvent> {
    loop {
        match inbox
            .recv_timeout(Duration::from_secs(120))
            .context(what.to_owned())?
        {
            Inbox::Event {
                event: WorkerEvent::Started { .. },
                ..
            } => {}
            Inbox::Event { event, .. } => return Ok(event),
            Inbox::Exited {
                exit, stderr_tail, ..
            } => {
                bail!("worker {exit} while waiting for {what}: {stderr_tail}")
            }
            Inbox::Garbage { detail, .. } => {
                bail!("worker wrote {detail} while waiting for {what}")
            }
            Inbox::Closed { .. } => {}
        }
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
    let (tx, inbox) = bounded(64);
    let device = WorkerDevice::Cuda {
        ordinal: index as usize,
        uuid,
    };
    let io = ProcessPort::new(None).start(&device)?;
    let worker = WorkerLink::open(io, 0, 1, &tx)?;
    let pid = worker.pid;
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "{}",
        serde_json::json!({"stage": "started", "pid": pid, "listed_by_nvml": listed(&nvml, index, pid)?,
            "vram_mib": pid_mib(&nvml, index, pid)?, "rss_mib": rss_mib(pid)})
    );
    let started = Instant::now();
    worker
        .send(&WorkerRequest::Load {
            model_dir: PathBuf::from(model_dir),
            device,
            precision: Precision::Bf16,
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let loaded = wait(&inbox, "Loaded")?;
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
        worker
            .send(&WorkerRequest::Offload)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        match wait(&inbox, "Offloaded")? {
            WorkerEvent::Offloaded { ms } => offload_ms.push(ms),
            other => bail!("cycle {cycle}: expected Offloaded, got {other:?}"),
        }
        offloaded_mib.push(pid_mib(&nvml, index, pid)?);
        worker
            .send(&WorkerRequest::Restore)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        match wait(&inbox, "Restored")? {
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
    worker
        .send(&WorkerRequest::Offload)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    wait(&inbox, "Offloaded")?;
    println!(
        "{}",
        serde_json::json!({"stage": "offloaded", "vram_mib": pid_mib(&nvml, index, pid)?, "rss_mib": rss_mib(pid)})
    );
    let released = Instant::now();
    worker.send(&WorkerRequest::Shutdown).ok();
    std::thread::sleep(Duration::from_secs(1));
    drop(worker);
    let release_ms = released.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{}",
        serde_json::json!({"stage": "released", "release_ms": release_ms,
            "listed_by_nvml": listed(&nvml, index, pid)?, "vram_mib": pid_mib(&nvml, index, pid)?})
    );
    Ok(())
}
