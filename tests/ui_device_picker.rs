//! The device picker's "All GPUs" entry, driven by egui_kittest through the real `eframe::App`
//! with fake GPUs and a fake engine (the test reads the requests the UI sends): the entry only
//! with two or more visible GPUs, choosing it sends `DeviceTarget::All` and marks every GPU's
//! panel, the choice persists, and without a GPU it runs on the CPU.

mod common;

use std::sync::{Arc, Mutex};

use common::{FakeEngine, MemoryStorage, fake_engine};
use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use gpuscribe::app::{
    AUTO_LABEL, AppDeps, CPU_LABEL, GpuScribeApp, Settings, all_gpus_label, gpu_entry_label,
};
use gpuscribe::engine::{DeviceTarget, EngineConfig, Event, Request};
use gpuscribe::gpu::{
    CpuReason, DeviceChoice, DriverInfo, GpuFeed, GpuSample, GpuSnapshot, GpuStatus,
    ResolvedDevice, fake_gpu,
};

const TARGET_BADGE: &str = "▶ transcription runs here";
const PICKER: &str = "Transcription device";

struct Fixture {
    harness: Harness<'static, GpuScribeApp>,
    requests: Receiver<Request>,
    configs: Arc<Mutex<Vec<EngineConfig>>>,
    // Kept so that the feed and the engine's event channel stay open.
    _gpu_tx: Sender<GpuStatus>,
    _events: Sender<Event>,
}

fn sample(gpus: Vec<GpuSnapshot>) -> GpuStatus {
    GpuStatus::Sample(GpuSample::now(gpus, 10, DriverInfo::default()))
}

impl Fixture {
    fn new(gpus: Vec<GpuSnapshot>, edit: impl FnOnce(&mut AppDeps)) -> Self {
        Self::with_storage(gpus, edit, None)
    }

    fn with_storage(
        gpus: Vec<GpuSnapshot>,
        edit: impl FnOnce(&mut AppDeps),
        storage: Option<&'static MemoryStorage>,
    ) -> Self {
        let (gpu_tx, gpu_rx) = bounded(64);
        gpu_tx.try_send(sample(gpus)).expect("room for a sample");
        let (factory, engine) = fake_engine();
        let FakeEngine {
            requests,
            events,
            configs,
        } = engine;
        let mut deps = AppDeps::new(GpuFeed::from_receiver(gpu_rx), factory);
        edit(&mut deps);
        let mut harness = Harness::builder()
            .with_size([1400.0, 900.0])
            // New rows and the theme can take a few frames to settle; 4 (the default) is tight.
            .with_max_steps(16)
            .build_eframe(move |cc| {
                if let Some(storage) = storage {
                    cc.storage = Some(storage);
                }
                GpuScribeApp::new(cc, deps)
            });
        harness.run();
        Self {
            harness,
            requests,
            configs,
            _gpu_tx: gpu_tx,
            _events: events,
        }
    }

    fn open_picker(&mut self) {
        self.harness
            .get_by_role_and_label(Role::ComboBox, PICKER)
            .click();
        self.harness.run();
    }

    /// The text the closed picker shows.
    fn picker_text(&self) -> Option<String> {
        self.harness
            .get_by_role_and_label(Role::ComboBox, PICKER)
            .accesskit_node()
            .value()
    }

    /// The targets of every `SetTarget` request sent since the last call.
    fn targets_sent(&self) -> Vec<DeviceTarget> {
        self.requests
            .try_iter()
            .filter_map(|r| match r {
                Request::SetTarget(target) => Some(target),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn choosing_all_gpus_targets_every_gpu_and_persists() {
    let gpus: Vec<GpuSnapshot> = (0..2).map(fake_gpu).collect();
    let mut f = Fixture::new(gpus.clone(), |_| {});
    assert_eq!(f.harness.query_all_by_label(TARGET_BADGE).count(), 1);
    assert!(
        f.picker_text().is_some_and(|t| t.starts_with("Auto → GPU")),
        "{:?}",
        f.picker_text()
    );
    assert_eq!(f.targets_sent(), Vec::<DeviceTarget>::new());

    f.open_picker();
    // The entry sits between the GPUs and the CPU.
    let top = |label: &str| f.harness.get_by_label(label).rect().top();
    let all_top = top(&all_gpus_label(2));
    assert!(top(&gpu_entry_label(&gpus[1])) < all_top);
    assert!(all_top < top(CPU_LABEL));
    f.harness.get_by_label(&all_gpus_label(2)).click();
    f.harness.run();

    assert_eq!(f.targets_sent(), vec![DeviceTarget::All]);
    assert_eq!(f.harness.state().settings().device, DeviceChoice::All);
    assert_eq!(
        f.harness.state().resolved_device(),
        ResolvedDevice::AllGpus { count: 2 }
    );
    // Both panels say transcription runs there; the closed picker names the choice.
    assert_eq!(f.harness.query_all_by_label(TARGET_BADGE).count(), 2);
    assert!(
        f.harness.query_by_label(AUTO_LABEL).is_none(),
        "popup closed"
    );
    assert_eq!(f.picker_text(), Some(all_gpus_label(2)));
    f.harness
        .get_by_label("Runs on all GPUs (2), one worker each");

    // The choice is saved, and the next run starts its engine on every GPU.
    let mut storage = MemoryStorage::default();
    eframe::App::save(f.harness.state_mut(), &mut storage);
    let saved: Settings = eframe::get_value(&storage, eframe::APP_KEY).expect("saved");
    assert_eq!(saved.device, DeviceChoice::All);
    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
    let again = Fixture::with_storage(gpus, |_| {}, Some(storage));
    assert_eq!(again.harness.state().device_choice(), &DeviceChoice::All);
    assert_eq!(
        again.configs.lock().expect("lock")[0].target,
        DeviceTarget::All
    );
    assert_eq!(again.harness.query_all_by_label(TARGET_BADGE).count(), 2);
}

#[test]
fn one_gpu_has_no_all_entry() {
    let mut f = Fixture::new(vec![fake_gpu(0)], |_| {});
    f.open_picker();
    f.harness.get_by_label(AUTO_LABEL);
    f.harness.get_by_label(CPU_LABEL);
    assert!(
        f.harness.query_by_label_contains("All GPUs").is_none(),
        "one GPU: nothing to spread over"
    );
}

#[test]
fn hidden_gpus_are_not_counted() {
    // Three GPUs, CUDA sees two: the entry counts two, and only their panels are marked.
    let gpus: Vec<GpuSnapshot> = (0..3).map(fake_gpu).collect();
    let mut f = Fixture::new(gpus, |deps| {
        deps.cuda_visible_devices = Some("0,2".to_owned());
    });
    f.open_picker();
    assert!(f.harness.query_by_label(&all_gpus_label(3)).is_none());
    f.harness.get_by_label(&all_gpus_label(2)).click();
    f.harness.run();
    assert_eq!(f.targets_sent(), vec![DeviceTarget::All]);
    assert_eq!(f.harness.query_all_by_label(TARGET_BADGE).count(), 2);
}

#[test]
fn all_from_the_command_line_without_a_gpu_runs_on_the_cpu() {
    let f = Fixture::new(Vec::new(), |deps| {
        deps.device_from_cli = Some(DeviceChoice::All);
    });
    assert_eq!(
        f.harness.state().resolved_device(),
        ResolvedDevice::Cpu(CpuReason::NoGpu)
    );
    assert_eq!(f.configs.lock().expect("lock")[0].target, DeviceTarget::All);
    assert_eq!(f.picker_text().as_deref(), Some("All GPUs → CPU"));
    f.harness.get_by_label("Runs on the CPU");
    // The command line's choice is not saved over the user's.
    assert_eq!(f.harness.state().settings().device, DeviceChoice::Auto);
}
