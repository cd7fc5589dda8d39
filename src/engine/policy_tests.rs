use std::path::Path;

use super::*;

const GIB: u64 = 1 << 30;

fn gpu(index: u32, free_gib: u64) -> GpuFree {
    GpuFree {
        uuid: format!("GPU-{index}"),
        index,
        cuda_ordinal: index as usize,
        free_bytes: free_gib * GIB,
        total_bytes: 80 * GIB,
    }
}

fn input<'a>(
    target: &'a DeviceTarget,
    gpus: &'a [GpuFree],
    slots: &'a [SlotView],
) -> PolicyInput<'a> {
    PolicyInput {
        target,
        pinned_fallback: PinnedFallback::Auto,
        gpus,
        slots,
        cuda_built: true,
        vram_margin: 0.1,
        precision: Precision::Auto,
        engine: &SpeechEngine::SenseVoice,
    }
}

fn on(placement: &Placement) -> (DeviceKey, Option<String>) {
    match placement {
        Placement::Run { device, notice } => (DeviceKey::of(device), notice.clone()),
        Placement::Fail { message } => panic!("failed: {message}"),
    }
}

fn gpu_key(index: u32) -> DeviceKey {
    DeviceKey::Gpu(format!("GPU-{index}"))
}

fn file() -> &'static Path {
    Path::new("/a/talk.wav")
}

#[test]
fn auto_picks_the_gpu_with_most_free_memory_that_fits() {
    let gpus = [gpu(0, 4), gpu(1, 30), gpu(2, 12)];
    let (key, notice) = on(&place(file(), &[], &input(&DeviceTarget::Auto, &gpus, &[])));
    assert_eq!(key, gpu_key(1));
    assert_eq!(notice, None, "the normal pick needs no word");
    // Ties go to the lowest index.
    let gpus = [gpu(3, 20), gpu(1, 20)];
    let (key, _) = on(&place(file(), &[], &input(&DeviceTarget::Auto, &gpus, &[])));
    assert_eq!(key, gpu_key(1));
}

#[test]
fn fit_fails_then_next_gpu_then_cpu_and_each_step_is_told() {
    // 0 MiB free on GPU 1 (most free of nothing), 300 MiB on GPU 0: neither fits the model.
    let mut tiny = gpu(0, 0);
    tiny.free_bytes = 300 << 20;
    let gpus = [tiny.clone(), gpu(1, 0), gpu(2, 8)];
    let (key, notice) = on(&place(file(), &[], &input(&DeviceTarget::Auto, &gpus, &[])));
    assert_eq!(key, gpu_key(2), "the one that fits");
    assert_eq!(notice, None, "the one with most free memory fits");

    let gpus = [tiny, gpu(1, 0)];
    let (key, notice) = on(&place(file(), &[], &input(&DeviceTarget::Auto, &gpus, &[])));
    assert_eq!(key, DeviceKey::Cpu);
    let notice = notice.expect("the way down is told");
    assert!(notice.contains("running on CPU"), "{notice}");
    assert!(notice.contains("GPU 0 has 300 MiB free"), "{notice}");
    assert!(notice.contains("GPU 1 has 0 MiB free"), "{notice}");
    assert!(notice.contains("/a/talk.wav"), "{notice}");
}

#[test]
fn a_pinned_gpu_goes_first_even_with_less_free_memory() {
    let gpus = [gpu(0, 40), gpu(1, 8)];
    let target = DeviceTarget::Gpu {
        uuid: "GPU-1".into(),
    };
    let (key, notice) = on(&place(file(), &[], &input(&target, &gpus, &[])));
    assert_eq!(key, gpu_key(1));
    assert_eq!(notice, None);
}

#[test]
fn a_pinned_gpu_that_vanished_is_told_then_the_chosen_fallback_applies() {
    let gpus = [gpu(0, 40)];
    let target = DeviceTarget::Gpu {
        uuid: "GPU-7".into(),
    };
    let mut policy = input(&target, &gpus, &[]);
    let (key, notice) = on(&place(file(), &[], &policy));
    assert_eq!(key, gpu_key(0), "Auto's pick");
    let notice = notice.expect("told");
    assert!(notice.contains("GPU-7 is not present any more"), "{notice}");

    policy.pinned_fallback = PinnedFallback::Cpu;
    let (key, notice) = on(&place(file(), &[], &policy));
    assert_eq!(key, DeviceKey::Cpu);
    assert!(
        notice
            .expect("told")
            .contains("GPU-7 is not present any more")
    );

    policy.pinned_fallback = PinnedFallback::Fail;
    match place(file(), &[], &policy) {
        Placement::Fail { message } => {
            assert!(
                message.contains("GPU-7 is not present any more"),
                "{message}"
            );
            assert!(message.contains("/a/talk.wav"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_memory_moves_the_job_to_the_next_device_then_fails_when_none_is_left() {
    assert_eq!(
        after_job_failure(JobErrorKind::OutOfMemory),
        JobStep::NextDevice
    );
    let gpus = [gpu(0, 40), gpu(1, 20)];
    let target = DeviceTarget::Auto;
    let policy = input(&target, &gpus, &[]);
    let (key, notice) = on(&place(file(), &[gpu_key(0)], &policy));
    assert_eq!(key, gpu_key(1));
    assert_eq!(notice, None);
    let (key, _) = on(&place(file(), &[gpu_key(0), gpu_key(1)], &policy));
    assert_eq!(key, DeviceKey::Cpu);
    match place(file(), &[gpu_key(0), gpu_key(1), DeviceKey::Cpu], &policy) {
        Placement::Fail { message } => {
            assert!(message.contains("no device left"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn all_spreads_jobs_over_the_gpus_and_skips_an_unavailable_one() {
    let gpus = [gpu(0, 40), gpu(1, 40), gpu(2, 40)];
    let slot = |index: u32, jobs: usize, unavailable: Option<&str>| SlotView {
        key: gpu_key(index),
        residency: Residency::Ready,
        unavailable: unavailable.map(str::to_owned),
        jobs,
    };
    let slots = [slot(0, 2, None), slot(1, 1, None), slot(2, 0, None)];
    let (key, _) = on(&place(
        file(),
        &[],
        &input(&DeviceTarget::All, &gpus, &slots),
    ));
    assert_eq!(key, gpu_key(2), "the shortest queue");
    // GPU 2 failed: the others still get work, and the reason is told.
    let slots = [
        slot(0, 2, None),
        slot(1, 1, None),
        slot(2, 0, Some("CUDA initialisation failed")),
    ];
    let (key, notice) = on(&place(
        file(),
        &[],
        &input(&DeviceTarget::All, &gpus, &slots),
    ));
    assert_eq!(key, gpu_key(1));
    assert!(
        notice
            .expect("told")
            .contains("GPU 2: CUDA initialisation failed")
    );
}

#[test]
fn a_build_without_cuda_runs_on_the_cpu_and_says_so() {
    let gpus = [gpu(0, 40)];
    let target = DeviceTarget::Auto;
    let mut policy = input(&target, &gpus, &[]);
    policy.cuda_built = false;
    let (key, notice) = on(&place(file(), &[], &policy));
    assert_eq!(key, DeviceKey::Cpu);
    assert!(notice.expect("told").contains("no CUDA support"));
    // The CPU target needs no word.
    let target = DeviceTarget::Cpu;
    let (key, notice) = on(&place(file(), &[], &input(&target, &gpus, &[])));
    assert_eq!(key, DeviceKey::Cpu);
    assert_eq!(notice, None);
}

#[test]
fn a_bad_model_fails_its_jobs_without_disabling_the_device() {
    let step = after_load_failure(LoadErrorKind::BadModel);
    assert!(step.fail_jobs);
    assert!(!step.mark_unavailable);
    let step = after_load_failure(LoadErrorKind::DeviceUnavailable);
    assert!(!step.fail_jobs);
    assert!(step.mark_unavailable);
    let step = after_load_failure(LoadErrorKind::OutOfMemory);
    assert!(!step.fail_jobs && !step.mark_unavailable && step.out_of_memory);
}

#[test]
fn a_lost_worker_is_retried_once_then_the_job_fails() {
    assert_eq!(after_worker_loss(1), LossStep::Retry);
    assert_eq!(after_worker_loss(2), LossStep::Fail);
    assert_eq!(after_job_failure(JobErrorKind::BadInput), JobStep::Fail);
    assert_eq!(
        after_job_failure(JobErrorKind::Cancelled),
        JobStep::Cancelled
    );
}

#[test]
fn the_silence_bound_is_the_larger_of_the_floor_and_three_passes() {
    let config = WatchdogConfig::default();
    assert_eq!(silence_bound(&config, None), Duration::from_secs(30));
    assert_eq!(
        silence_bound(&config, Some(Duration::from_secs(1))),
        Duration::from_secs(10)
    );
    assert_eq!(
        silence_bound(&config, Some(Duration::from_secs(7))),
        Duration::from_secs(21)
    );
}

#[test]
fn the_batch_budget_follows_free_memory_and_is_one_segment_on_the_cpu() {
    let gpus = [gpu(0, 40), gpu(1, 1)];
    let big = batch_budget_s(
        &WorkerDevice::Cuda {
            ordinal: 0,
            uuid: "GPU-0".into(),
        },
        &gpus,
        Precision::Auto,
        0.1,
        16,
    );
    assert!((big - 16.0 * MAX_SEGMENT_SECS).abs() < 1e-9, "{big}");
    let cpu = batch_budget_s(&WorkerDevice::Cpu, &gpus, Precision::Auto, 0.1, 16);
    assert!((cpu - MAX_SEGMENT_SECS).abs() < 1e-9);
}
