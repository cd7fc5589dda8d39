//! The real `eframe::App` driven by egui_kittest with fake GPU data: one GPU, eight GPUs, no
//! driver, an NVML error, a vanished GPU, CJK process names, the device picker and persistence.

mod common;

use std::time::{Duration, Instant};

use common::MemoryStorage;
use crossbeam_channel::{Sender, bounded};
use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use gpuscribe::app::{
    AUTO_LABEL, AppDeps, CPU_LABEL, EngineFactory, GpuScribeApp, PlotWindow, Settings,
    gpu_entry_label,
};
use gpuscribe::engine::EngineHandle;
use gpuscribe::gpu::{
    DeviceChoice, DriverInfo, GpuFeed, GpuInitError, GpuSample, GpuSnapshot, GpuStatus,
    ResolvedDevice, fake_gpu, fake_process, set_fake_used_bytes,
};

const GIB: u64 = 1 << 30;
const TARGET_BADGE: &str = "▶ transcription runs here";

fn sample(gpus: Vec<GpuSnapshot>) -> GpuStatus {
    let driver = DriverInfo {
        driver_version: Some("580.159.04".to_owned()),
        cuda_driver_version: Some(13000),
    };
    GpuStatus::Sample(GpuSample::now(gpus, 812, driver))
}

/// A GPU running a CJK-named process next to our own.
fn busy_gpu(index: u32) -> GpuSnapshot {
    let mut gpu = fake_gpu(index);
    gpu.processes = vec![
        fake_process(4012, "转写服务", 3 * GIB, false),
        fake_process(std::process::id(), "gpuscribe", GIB, true),
        fake_process(3921, "/usr/bin/python3", 21 * GIB, false),
    ];
    set_fake_used_bytes(&mut gpu, 25 * GIB);
    gpu.gpu_util_percent = Some(37);
    gpu
}

/// An engine that accepts requests and never answers (these tests look at the GPU side only).
fn silent_engine() -> EngineFactory {
    let (requests, kept_requests) = bounded(4096);
    let (_events_tx, events) = bounded(1);
    Box::new(move |_config| {
        // Keeping the receiving end alive makes sends succeed.
        let _ = &kept_requests;
        Ok(EngineHandle::from_channels(
            requests.clone(),
            events.clone(),
        ))
    })
}

struct Fixture<'a> {
    harness: Harness<'a, GpuScribeApp>,
    tx: Sender<GpuStatus>,
}

impl Fixture<'_> {
    fn send(&mut self, status: GpuStatus) {
        self.tx.try_send(status).expect("the test feed has room");
        self.harness.run();
    }
}

fn fixture_with(statuses: Vec<GpuStatus>, edit: impl FnOnce(&mut AppDeps)) -> Fixture<'static> {
    let (tx, rx) = bounded(64);
    for status in statuses {
        tx.try_send(status).expect("room");
    }
    let mut deps = AppDeps::new(GpuFeed::from_receiver(rx), silent_engine());
    edit(&mut deps);
    let mut harness = Harness::builder()
        .with_size([1400.0, 900.0])
        // New rows and the theme can take a few frames to settle; 4 (the default) is tight.
        .with_max_steps(16)
        .build_eframe(move |cc| GpuScribeApp::new(cc, deps));
    harness.run();
    Fixture { harness, tx }
}

fn fixture(statuses: Vec<GpuStatus>) -> Fixture<'static> {
    fixture_with(statuses, |_| {})
}

#[test]
fn one_gpu_panel_shows_identity_metrics_and_processes() {
    let gpu = busy_gpu(0);
    let f = fixture(vec![sample(vec![gpu.clone()])]);
    let h = &f.harness;
    h.get_by_label("Transcription");
    h.get_by_label("GPU 0");
    h.get_by_label("NVIDIA H100 80GB HBM3");
    h.get_by_label_contains(gpu.short_uuid());
    h.get_by_label(TARGET_BADGE);
    h.get_by_label("37 %");
    h.get_by_label("72 / 700 W");
    h.get_by_label("2619 MHz");
    h.get_by_label("VRAM (GiB)");
    h.get_by_label("Utilisation (%)");
    // The fan of a passively cooled board reads "n/a", not an error.
    assert!(h.query_by_label("n/a").is_some());
    assert!(h.query_by_label_contains("NVML error").is_none());
    // CJK renders (kittest panics on a missing glyph), paths are shortened, ours is marked.
    h.get_by_label("转写服务");
    h.get_by_label("python3");
    h.get_by_label("gpuscribe (this app)");
    h.get_by_label("21504 MiB");
    h.get_by_label_contains("NVIDIA driver 580.159.04 · CUDA 13.0 · 1 GPU(s)");
    h.get_by_label_contains("in 812 µs");
}

#[test]
fn eight_gpus_each_get_a_panel_and_a_picker_entry() {
    let gpus: Vec<GpuSnapshot> = (0..8)
        .map(|i| {
            let mut gpu = fake_gpu(i);
            // GPU 5 has the most free VRAM.
            set_fake_used_bytes(&mut gpu, if i == 5 { 0 } else { (10 + u64::from(i)) * GIB });
            gpu
        })
        .collect();
    let mut f = fixture(vec![sample(gpus.clone())]);
    for i in 0..8 {
        f.harness.get_by_label(&format!("GPU {i}"));
    }
    assert_eq!(
        f.harness.state().resolved_device(),
        ResolvedDevice::Gpu(&gpus[5])
    );
    assert_eq!(f.harness.query_all_by_label(TARGET_BADGE).count(), 1);

    f.harness
        .get_by_role_and_label(Role::ComboBox, "Transcription device")
        .click();
    f.harness.run();
    f.harness.get_by_label(AUTO_LABEL);
    f.harness.get_by_label(CPU_LABEL);
    for gpu in &gpus {
        f.harness.get_by_label(&gpu_entry_label(gpu));
    }
    f.harness
        .get_by_label("GPU 3 · NVIDIA H100 80GB HBM3 · 66.2 GiB free");

    f.harness.get_by_label(&gpu_entry_label(&gpus[3])).click();
    f.harness.run();
    assert_eq!(
        f.harness.state().settings().device,
        DeviceChoice::Gpu {
            uuid: gpus[3].uuid.clone()
        }
    );
    assert_eq!(
        f.harness.state().resolved_device(),
        ResolvedDevice::Gpu(&gpus[3])
    );
    assert_eq!(f.harness.query_all_by_label(TARGET_BADGE).count(), 1);
}

#[test]
fn picking_the_cpu_removes_the_badge() {
    let mut f = fixture(vec![sample(vec![busy_gpu(0)])]);
    f.harness
        .get_by_role_and_label(Role::ComboBox, "Transcription device")
        .click();
    f.harness.run();
    f.harness.get_by_label(CPU_LABEL).click();
    f.harness.run();
    assert_eq!(f.harness.state().settings().device, DeviceChoice::Cpu);
    assert!(f.harness.query_by_label(TARGET_BADGE).is_none());
    f.harness.get_by_label("Runs on the CPU");
}

#[test]
fn no_driver_is_explained() {
    let f = fixture(vec![GpuStatus::Unavailable(GpuInitError::NoDriver {
        detail: "libnvidia-ml.so.1: cannot open shared object file".to_owned(),
    })]);
    let h = &f.harness;
    assert!(
        h.query_all_by_label("No NVIDIA driver found — transcription runs on the CPU")
            .count()
            >= 1
    );
    h.get_by_label("libnvidia-ml.so.1: cannot open shared object file");
    assert_eq!(
        h.state().resolved_device(),
        ResolvedDevice::Cpu(gpuscribe::gpu::CpuReason::NoGpu)
    );
    h.get_by_label("Runs on the CPU");
    assert!(h.query_by_label(TARGET_BADGE).is_none());
}

#[test]
fn driver_without_gpus_says_so() {
    let f = fixture(vec![sample(Vec::new())]);
    f.harness
        .get_by_label("No NVIDIA GPU found — transcription runs on the CPU");
}

#[test]
fn nvml_error_shows_on_its_panel_and_clears() {
    let mut broken = fake_gpu(1);
    broken.error = Some("temperature: the GPU has fallen off the bus".to_owned());
    broken.temperature_c = None;
    let mut f = fixture(vec![sample(vec![fake_gpu(0), broken])]);
    assert_eq!(
        f.harness
            .query_all_by_label_contains(
                "⚠ NVML error: temperature: the GPU has fallen off the bus"
            )
            .count(),
        1
    );
    f.send(sample(vec![fake_gpu(0), fake_gpu(1)]));
    assert!(f.harness.query_by_label_contains("NVML error").is_none());
}

#[test]
fn vanished_gpu_is_marked() {
    let mut f = fixture(vec![sample(vec![fake_gpu(0), fake_gpu(1)])]);
    f.send(sample(vec![fake_gpu(0)]));
    f.harness
        .get_by_label_contains("No longer reported by the driver");
    assert_eq!(f.harness.state().gpu_view().gpus().len(), 1);
}

#[test]
fn device_from_the_command_line_wins_without_being_saved() {
    let gpus: Vec<GpuSnapshot> = (0..3).map(fake_gpu).collect();
    let chosen = DeviceChoice::Gpu {
        uuid: gpus[2].uuid.clone(),
    };
    let from_cli = chosen.clone();
    let mut f = fixture_with(vec![sample(gpus.clone())], move |deps| {
        deps.device_from_cli = Some(from_cli);
    });
    assert_eq!(f.harness.state().device_choice(), &chosen);
    assert_eq!(
        f.harness.state().resolved_device(),
        ResolvedDevice::Gpu(&gpus[2])
    );
    assert_eq!(f.harness.state().settings().device, DeviceChoice::Auto);
    // A chosen GPU that disappears falls back to the CPU, with a warning.
    f.send(sample(gpus[..2].to_vec()));
    f.harness
        .get_by_label("⚠ chosen GPU not present — transcription runs on the CPU");
}

#[test]
fn plot_window_buttons_change_the_setting() {
    let mut f = fixture(vec![sample(vec![fake_gpu(0)])]);
    f.harness.get_by_label("10 min").click();
    f.harness.run();
    assert_eq!(
        f.harness.state().settings().plot_window,
        PlotWindow::TenMinutes
    );
}

#[test]
fn history_fills_from_the_feed() {
    let start = Instant::now();
    let statuses: Vec<GpuStatus> = (0..20u64)
        .map(|i| {
            let mut status = sample(vec![busy_gpu(0)]);
            if let GpuStatus::Sample(s) = &mut status {
                s.taken_at = start + Duration::from_millis(500 * i);
            }
            status
        })
        .collect();
    let f = fixture(statuses);
    let uuid = busy_gpu(0).uuid;
    assert_eq!(
        f.harness.state().gpu_view().history.points(&uuid).count(),
        20
    );
}

#[test]
fn settings_persist_across_runs() {
    let gpus = vec![fake_gpu(0), fake_gpu(1)];
    let mut f = fixture(vec![sample(gpus.clone())]);
    f.harness.get_by_label("1 min").click();
    f.harness.run();
    f.harness
        .get_by_role_and_label(Role::ComboBox, "Transcription device")
        .click();
    f.harness.run();
    f.harness.get_by_label(&gpu_entry_label(&gpus[1])).click();
    f.harness.run();
    let mut storage = MemoryStorage::default();
    eframe::App::save(f.harness.state_mut(), &mut storage);
    let saved: Settings = eframe::get_value(&storage, eframe::APP_KEY).expect("saved");
    assert_eq!(saved.plot_window, PlotWindow::OneMinute);

    // A second run restores the choice.
    let (_tx, rx) = bounded(4);
    let mut harness = Harness::builder()
        .with_size([1400.0, 900.0])
        // New rows and the theme can take a few frames to settle; 4 (the default) is tight.
        .with_max_steps(16)
        .build_eframe(|cc| {
            cc.storage = Some(&storage);
            GpuScribeApp::new(
                cc,
                AppDeps::new(GpuFeed::from_receiver(rx), silent_engine()),
            )
        });
    harness.run();
    assert_eq!(harness.state().settings(), &saved);
    assert_eq!(
        harness.state().device_choice(),
        &DeviceChoice::Gpu {
            uuid: gpus[1].uuid.clone()
        }
    );
}
