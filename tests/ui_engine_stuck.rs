//! The window with a real engine whose worker hangs mid-job: frames stay quick while hundreds of
//! files are queued and GPU samples pour in, and closing the window returns within a second.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use egui_kittest::Harness;
use gpuscribe::app::{AppDeps, Command, EngineFactory, GpuScribeApp};
use gpuscribe::engine::fake_worker::{FakePort, FakeScript, FakeStats};
use gpuscribe::engine::{EngineHandle, Waker};
use gpuscribe::gpu::{DriverInfo, GpuFeed, GpuSample, GpuStatus, fake_gpu};

#[test]
fn frames_stay_quick_while_the_engine_is_stuck_and_closing_returns_within_a_second() {
    let stats: Arc<Mutex<Vec<Arc<FakeStats>>>> = Arc::default();
    let seen = Arc::clone(&stats);
    let waker: Waker = Arc::new(|| {});
    let factory: EngineFactory = Box::new(move |mut config| {
        // The CPU, so this runs the same with and without the cuda feature.
        config.target = gpuscribe::engine::DeviceTarget::Cpu;
        config.model_dir = Some(PathBuf::from("/fake/model"));
        let (port, stats) = FakePort::new(FakeScript::default());
        seen.lock().expect("lock").push(stats);
        EngineHandle::spawn_with_port(config, Arc::clone(&waker), Box::new(port))
    });
    let (gpu_tx, gpu_rx) = bounded(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
    deps.recordings_dir = dir.path().join("recordings");
    let mut harness = Harness::builder()
        .with_size([1400.0, 900.0])
        .with_max_steps(16)
        .build_eframe(move |cc| GpuScribeApp::new(cc, deps));
    harness.run_steps(2);

    // The first file hangs its worker (no heartbeats: the watchdog's 30 s are far away); the
    // others wait behind it.
    let mut files = vec![dir.path().join("first-hang@0.wav")];
    files.extend((0..300).map(|i| dir.path().join(format!("queued{i}.wav"))));
    for file in &files {
        std::fs::write(file, b"").expect("write");
    }
    harness.state_mut().apply(Command::AddPaths(files));

    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for frame in 0..40 {
        // Samples arrive faster than any monitor sends them.
        for _ in 0..8 {
            let sample = GpuSample::now(vec![fake_gpu(0), fake_gpu(1)], 10, DriverInfo::default());
            gpu_tx.try_send(GpuStatus::Sample(sample)).ok();
        }
        let at = Instant::now();
        harness.step();
        slowest = slowest.max(at.elapsed());
        if frame == 0 {
            // Let the engine start the worker and reach the hang.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        slowest < Duration::from_millis(500),
        "the slowest frame took {slowest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let running = harness
        .state()
        .jobs()
        .rows()
        .iter()
        .filter(|r| !r.status.is_finished())
        .count();
    assert_eq!(running, 301, "every file is still queued or running");
    let stats = stats.lock().expect("lock")[0].clone();
    assert_eq!(stats.started.load(std::sync::atomic::Ordering::SeqCst), 1);

    let closing = Instant::now();
    drop(harness);
    assert!(
        closing.elapsed() < Duration::from_millis(1500),
        "closing took {:?}",
        closing.elapsed()
    );
}
