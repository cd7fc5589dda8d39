//! The `gpu-monitor` thread against a fake GPU source: several GPUs, a failing sample, an error
//! on one GPU, a GPU vanishing, no driver, interval changes and shutdown.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gpuscribe::gpu::{
    FakeGpuControl, FakeGpuSource, GpuFeed, GpuInitError, GpuSample, GpuStatus, NvmlSource,
    fake_gpu, spawn_monitor,
};

/// Generous: the test machine is small and busy.
const WAIT: Duration = Duration::from_secs(10);
const FAST: Duration = Duration::from_millis(100);

fn start(gpu_count: u32, interval: Duration) -> (GpuFeed, FakeGpuControl, Arc<AtomicUsize>) {
    let (source, control) = FakeGpuSource::new((0..gpu_count).map(fake_gpu).collect());
    let repaints = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&repaints);
    let feed = spawn_monitor(
        move || Ok(source),
        interval,
        Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .expect("spawn the monitor thread");
    (feed, control, repaints)
}

fn next_sample(feed: &mut GpuFeed) -> GpuSample {
    match feed.recv_timeout(WAIT) {
        Some(GpuStatus::Sample(sample)) => sample,
        other => panic!("expected a sample, got {other:?}"),
    }
}

/// Skips samples taken before a change reached the source, until `accept` holds.
fn sample_where(feed: &mut GpuFeed, accept: impl Fn(&GpuSample) -> bool) -> GpuSample {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let sample = next_sample(feed);
        if accept(&sample) {
            return sample;
        }
    }
    panic!("no matching sample within {WAIT:?}");
}

#[test]
fn samples_every_gpu_and_wakes_the_ui() {
    let (mut feed, _control, repaints) = start(3, FAST);
    let sample = next_sample(&mut feed);
    let uuids: Vec<String> = sample.gpus.iter().map(|g| g.uuid.clone()).collect();
    let expected: Vec<String> = (0..3).map(|i| fake_gpu(i).uuid).collect();
    assert_eq!(uuids, expected);
    assert_eq!(sample.gpus[0], fake_gpu(0));
    assert!(sample.taken_at_unix_ms > 0);
    assert_eq!(
        sample.driver.driver_version.as_deref(),
        Some("580.159.04 (fake)")
    );
    let later = next_sample(&mut feed);
    assert!(later.taken_at > sample.taken_at);
    // One repaint per send, right after it: the first sample's has happened by the time the
    // second sample was sent.
    assert!(repaints.load(Ordering::SeqCst) >= 1);
}

#[test]
fn failed_sample_marks_every_known_gpu_then_recovers() {
    let (mut feed, control, _) = start(2, FAST);
    next_sample(&mut feed);
    control.fail_next_sample("Unknown Error");
    let failed = sample_where(&mut feed, |s| s.gpus.iter().any(|g| g.error.is_some()));
    assert_eq!(failed.gpus.len(), 2, "known GPUs stay on screen");
    for (index, gpu) in failed.gpus.iter().enumerate() {
        assert_eq!(
            gpu.uuid,
            fake_gpu(u32::try_from(index).expect("small")).uuid
        );
        assert_eq!(
            gpu.error.as_deref(),
            Some("reading the GPU list failed: Unknown Error")
        );
        assert_eq!(gpu.memory, None);
    }
    let recovered = next_sample(&mut feed);
    assert_eq!(recovered.gpus, vec![fake_gpu(0), fake_gpu(1)]);
}

#[test]
fn error_on_one_gpu_stays_on_that_gpu() {
    let (mut feed, control, _) = start(3, FAST);
    next_sample(&mut feed);
    control.update(|gpus| {
        gpus[1].error = Some("temperature: the GPU has fallen off the bus".to_owned());
        gpus[1].temperature_c = None;
    });
    let sample = sample_where(&mut feed, |s| s.gpus[1].error.is_some());
    assert_eq!(sample.gpus[0].error, None);
    assert_eq!(sample.gpus[2].error, None);
    assert_eq!(sample.gpus[1].temperature_c, None);
    assert!(sample.gpus[1].memory.is_some(), "other fields still read");
    control.update(|gpus| gpus[1] = fake_gpu(1));
    let recovered = sample_where(&mut feed, |s| s.gpus[1].error.is_none());
    assert_eq!(recovered.gpus[1], fake_gpu(1));
}

#[test]
fn vanished_gpu_leaves_the_sample() {
    let (mut feed, control, _) = start(3, FAST);
    assert_eq!(next_sample(&mut feed).gpus.len(), 3);
    control.update(|gpus| {
        gpus.remove(1);
    });
    let sample = sample_where(&mut feed, |s| s.gpus.len() == 2);
    let indices: Vec<u32> = sample.gpus.iter().map(|g| g.nvml_index).collect();
    assert_eq!(indices, [0, 2]);
}

#[test]
fn init_failure_is_reported_once_and_the_thread_ends() {
    let repaints = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&repaints);
    let mut feed = spawn_monitor(
        || -> Result<FakeGpuSource, _> { Err(GpuInitError::NoPermission) },
        FAST,
        Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .expect("spawn");
    match feed.recv_timeout(WAIT) {
        Some(GpuStatus::Unavailable(err)) => assert_eq!(err, GpuInitError::NoPermission),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(feed.recv_timeout(Duration::from_millis(300)).is_none());
    assert_eq!(repaints.load(Ordering::SeqCst), 1);
}

#[test]
fn real_nvml_without_the_library_reports_no_driver() {
    let mut feed = spawn_monitor(
        || NvmlSource::init_from(OsStr::new("/nonexistent/libnvidia-ml.so.1")),
        FAST,
        Box::new(|| {}),
    )
    .expect("spawn");
    match feed.recv_timeout(WAIT) {
        Some(GpuStatus::Unavailable(err)) => {
            assert_eq!(err.code(), "no_driver");
            assert_eq!(
                err.to_string(),
                "No NVIDIA driver found — transcription runs on the CPU"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn dropping_the_feed_stops_a_sleeping_monitor_at_once() {
    let (mut feed, _control, _) = start(1, Duration::from_secs(5));
    next_sample(&mut feed);
    let started = Instant::now();
    drop(feed); // Joins the thread.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
}

#[test]
fn interval_change_takes_effect_without_waiting_out_the_old_one() {
    let (mut feed, _control, _) = start(1, Duration::from_secs(5));
    let first = next_sample(&mut feed);
    assert!(feed.set_sample_interval(FAST));
    let second = next_sample(&mut feed);
    let gap = second.taken_at.duration_since(first.taken_at);
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");
    // Requests below the minimum are clamped, not honoured.
    assert!(feed.set_sample_interval(Duration::from_millis(1)));
    let a = next_sample(&mut feed);
    let b = next_sample(&mut feed);
    assert!(b.taken_at.duration_since(a.taken_at) >= Duration::from_millis(95));
}

#[test]
fn snapshots_serialise_with_the_documented_fields() {
    let (mut feed, _control, _) = start(1, FAST);
    let sample = next_sample(&mut feed);
    let json = serde_json::to_value(&sample).expect("serialise");
    let gpu = &json["gpus"][0];
    for field in [
        "nvml_index",
        "uuid",
        "name",
        "pci_bus_id",
        "memory",
        "gpu_util_percent",
        "memory_util_percent",
        "temperature_c",
        "power_draw_mw",
        "power_limit_mw",
        "sm_clock_mhz",
        "memory_clock_mhz",
        "fan_speed_percent",
        "processes",
        "error",
    ] {
        assert!(gpu.get(field).is_some(), "missing {field} in {gpu}");
    }
    assert!(gpu["fan_speed_percent"].is_null(), "n/a is null");
    assert!(json["sample_cost_us"].is_u64());
}
