//! Against the real NVIDIA driver; ignored by default. Run on a GPU machine with
//! `cargo test --test gpu_nvml -- --ignored --nocapture`. Prints every GPU and the monitor's
//! own cost per sample.

use std::time::Duration;

use gpuscribe::gpu::{
    DeviceChoice, GpuSource, GpuStatus, NvmlSource, ResolvedDevice, cuda_ordinal,
    cuda_visible_devices_from_env, spawn_monitor,
};

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn real_nvml_reports_gpus_and_sample_cost() {
    let mut source = NvmlSource::init().expect("NVML starts on a GPU machine");
    let driver = source.driver_info();
    println!("driver: {driver:?}");
    let gpus = source.sample().expect("the GPU list is readable");
    assert!(!gpus.is_empty(), "a GPU machine reports at least one GPU");
    let visible = cuda_visible_devices_from_env();
    for gpu in &gpus {
        println!(
            "{}",
            serde_json::to_string_pretty(gpu).expect("snapshots serialise")
        );
        println!(
            "  cuda ordinal (PCI order): {:?}",
            cuda_ordinal(&gpu.uuid, &gpus, visible.as_deref())
        );
        assert!(gpu.uuid.starts_with("GPU-"), "{}", gpu.uuid);
        let memory = gpu.memory.expect("every NVIDIA GPU reports memory");
        assert_eq!(
            memory.used_bytes + memory.free_bytes + memory.reserved_bytes,
            memory.total_bytes,
            "NVML v2 arithmetic"
        );
    }
    match DeviceChoice::Auto.resolve(&gpus, visible.as_deref()) {
        ResolvedDevice::Gpu(gpu) => println!("auto picks GPU {} {}", gpu.nvml_index, gpu.uuid),
        ResolvedDevice::Cpu(reason) => println!("auto picks the CPU: {reason:?}"),
        ResolvedDevice::AllGpus { count } => panic!("auto picks one device, not all {count}"),
    }

    // Sample cost through the monitor thread, as the app runs it (100 ms for speed).
    let mut feed = spawn_monitor(
        NvmlSource::init,
        Duration::from_millis(100),
        Box::new(|| {}),
    )
    .expect("spawn");
    let mut costs_us = Vec::new();
    while costs_us.len() < 50 {
        match feed.recv_timeout(Duration::from_secs(10)) {
            Some(GpuStatus::Sample(sample)) => costs_us.push(sample.sample_cost_us),
            other => panic!("expected samples, got {other:?}"),
        }
    }
    costs_us.sort_unstable();
    println!(
        "sample cost over {} samples of {} GPU(s): min {} µs, median {} µs, p90 {} µs, max {} µs",
        costs_us.len(),
        gpus.len(),
        costs_us[0],
        costs_us[costs_us.len() / 2],
        costs_us[costs_us.len() * 9 / 10],
        costs_us[costs_us.len() - 1]
    );
}
