use super::*;
use crate::gpu::{fake_gpu, set_fake_used_bytes};

const GIB: u64 = 1 << 30;

/// Two GPUs whose NVML order is the reverse of their PCI order, to catch index mix-ups.
fn reversed_pair() -> Vec<GpuSnapshot> {
    let mut a = fake_gpu(0);
    a.pci_bus_id = "00000000:5D:00.0".to_owned();
    let mut b = fake_gpu(1);
    b.pci_bus_id = "00000000:18:00.0".to_owned();
    vec![a, b]
}

fn with_used(index: u32, used_gib: u64) -> GpuSnapshot {
    let mut gpu = fake_gpu(index);
    set_fake_used_bytes(&mut gpu, used_gib * GIB);
    gpu
}

#[test]
fn keywords_parse_case_insensitively() {
    let gpus = reversed_pair();
    assert_eq!(
        DeviceChoice::parse("auto", &gpus, None),
        Ok(DeviceChoice::Auto)
    );
    assert_eq!(
        DeviceChoice::parse(" AUTO ", &gpus, None),
        Ok(DeviceChoice::Auto)
    );
    assert_eq!(
        DeviceChoice::parse("Cpu", &gpus, None),
        Ok(DeviceChoice::Cpu)
    );
    // Auto and CPU are valid without any GPU.
    assert_eq!(DeviceChoice::parse("cpu", &[], None), Ok(DeviceChoice::Cpu));
    assert_eq!(
        DeviceChoice::parse("auto", &[], None),
        Ok(DeviceChoice::Auto)
    );
}

#[test]
fn cuda_ordinal_follows_pci_order_not_nvml_order() {
    let gpus = reversed_pair();
    let first_on_bus = gpus[1].uuid.clone();
    assert_eq!(
        DeviceChoice::parse("cuda:0", &gpus, None),
        Ok(DeviceChoice::Gpu {
            uuid: first_on_bus.clone()
        })
    );
    assert_eq!(
        DeviceChoice::parse("cuda", &gpus, None),
        Ok(DeviceChoice::Gpu { uuid: first_on_bus })
    );
    assert_eq!(
        DeviceChoice::parse("CUDA:1", &gpus, None),
        Ok(DeviceChoice::Gpu {
            uuid: gpus[0].uuid.clone()
        })
    );
    assert_eq!(cuda_ordinal(&gpus[0].uuid, &gpus, None), Some(1));
    assert_eq!(cuda_ordinal(&gpus[1].uuid, &gpus, None), Some(0));
    assert_eq!(cuda_ordinal("GPU-missing", &gpus, None), None);
}

#[test]
fn out_of_range_ordinal_lists_the_valid_choices() {
    let gpus = reversed_pair();
    let err = DeviceChoice::parse("cuda:2", &gpus, None).expect_err("only two GPUs");
    assert_eq!(err.reason, "there is no CUDA device 2 (2 visible)");
    let message = err.to_string();
    assert!(
        message.starts_with("invalid device \"cuda:2\""),
        "{message}"
    );
    for expected in [
        "auto",
        "cpu",
        "all (every GPU, one worker each)",
        "cuda:0",
        "cuda:1",
        &gpus[0].uuid,
        &gpus[1].uuid,
    ] {
        assert!(
            message.contains(expected),
            "{expected} missing in {message}"
        );
    }
}

#[test]
fn gpu_choices_without_gpus_say_so() {
    let err = DeviceChoice::parse("cuda:0", &[], None).expect_err("no GPUs");
    assert_eq!(err.reason, "no NVIDIA GPU found");
    assert_eq!(err.valid_choices, "auto, cpu, all (no NVIDIA GPU found)");
    let err = DeviceChoice::parse(&fake_gpu(0).uuid, &[], None).expect_err("no GPUs");
    assert_eq!(err.reason, "no GPU has that UUID");
}

#[test]
fn malformed_values_are_rejected() {
    let gpus = reversed_pair();
    for (value, reason) in [
        ("cuda:x", "\"x\" is not a CUDA device number"),
        ("cuda:-1", "\"-1\" is not a CUDA device number"),
        ("cuda0", "expected cuda:N, e.g. cuda:0"),
        ("gpu", "not a known device"),
        ("", "not a known device"),
        ("metal", "not a known device"),
    ] {
        let err = DeviceChoice::parse(value, &gpus, None).expect_err(value);
        assert_eq!(err.reason, reason, "for {value:?}");
    }
}

#[test]
fn uuids_match_whole_or_by_unique_prefix() {
    let gpus = reversed_pair();
    let uuid = gpus[0].uuid.clone();
    let want = Ok(DeviceChoice::Gpu { uuid: uuid.clone() });
    assert_eq!(DeviceChoice::parse(&uuid, &gpus, None), want);
    assert_eq!(DeviceChoice::parse(&uuid.to_uppercase(), &gpus, None), want);
    assert_eq!(DeviceChoice::parse(short_uuid_of(&uuid), &gpus, None), want);
    let err = DeviceChoice::parse(&uuid[..8], &gpus, None).expect_err("too short");
    assert_eq!(
        err.reason,
        "give at least GPU- and 8 hex digits of the UUID"
    );
    let err = DeviceChoice::parse("GPU-00000000", &gpus, None).expect_err("unknown");
    assert_eq!(err.reason, "no GPU has that UUID");
}

fn short_uuid_of(uuid: &str) -> &str {
    crate::gpu::short_uuid(uuid)
}

#[test]
fn ambiguous_uuid_prefix_is_rejected() {
    let mut gpus = reversed_pair();
    gpus[0].uuid = "GPU-12345678-aaaa-0000-0000-000000000000".to_owned();
    gpus[1].uuid = "GPU-12345678-bbbb-0000-0000-000000000000".to_owned();
    let err = DeviceChoice::parse("GPU-12345678", &gpus, None).expect_err("two match");
    assert_eq!(err.reason, "that UUID prefix matches several GPUs");
    assert!(DeviceChoice::parse("GPU-12345678-b", &gpus, None).is_ok());
}

#[test]
fn hidden_gpu_cannot_be_chosen() {
    let gpus = reversed_pair();
    // Index 0 in PCI order is gpus[1]; gpus[0] is hidden.
    let err = DeviceChoice::parse(&gpus[0].uuid, &gpus, Some("0")).expect_err("hidden");
    assert_eq!(err.reason, "that GPU is hidden by CUDA_VISIBLE_DEVICES");
    assert!(!err.valid_choices.contains(&gpus[0].uuid));
    assert!(DeviceChoice::parse("cuda:1", &gpus, Some("0")).is_err());
}

#[test]
fn auto_prefers_most_free_vram_then_lowest_index() {
    let gpus = [with_used(0, 40), with_used(1, 10), with_used(2, 10)];
    let all: Vec<&GpuSnapshot> = gpus.iter().collect();
    assert_eq!(auto_pick(&all).map(|g| g.nvml_index), Some(1));
    let gpus = [with_used(0, 5), with_used(1, 5)];
    let all: Vec<&GpuSnapshot> = gpus.iter().collect();
    assert_eq!(auto_pick(&all).map(|g| g.nvml_index), Some(0));
    // Tie order must not depend on the slice order.
    let reversed: Vec<&GpuSnapshot> = gpus.iter().rev().collect();
    assert_eq!(auto_pick(&reversed).map(|g| g.nvml_index), Some(0));
}

#[test]
fn auto_skips_gpus_without_memory_readings() {
    let mut broken = with_used(0, 0);
    broken.memory = None;
    let gpus = vec![broken, with_used(1, 70)];
    assert_eq!(
        DeviceChoice::Auto.resolve(&gpus, None),
        ResolvedDevice::Gpu(&gpus[1])
    );
    assert_eq!(
        DeviceChoice::Auto.resolve(&gpus[..1], None),
        ResolvedDevice::Cpu(CpuReason::NoGpu)
    );
    assert_eq!(
        DeviceChoice::Auto.resolve(&[], None),
        ResolvedDevice::Cpu(CpuReason::NoGpu)
    );
}

#[test]
fn auto_only_considers_visible_gpus() {
    let gpus = vec![with_used(0, 0), with_used(1, 50)];
    // PCI order equals NVML order for fake GPUs; "1" leaves only the busier GPU.
    assert_eq!(
        DeviceChoice::Auto.resolve(&gpus, Some("1")),
        ResolvedDevice::Gpu(&gpus[1])
    );
}

#[test]
fn resolve_gpu_and_cpu_choices() {
    let gpus = reversed_pair();
    let choice = DeviceChoice::Gpu {
        uuid: gpus[0].uuid.clone(),
    };
    assert_eq!(choice.resolve(&gpus, None), ResolvedDevice::Gpu(&gpus[0]));
    assert_eq!(
        choice.resolve(&gpus[1..], None),
        ResolvedDevice::Cpu(CpuReason::ChosenGpuMissing)
    );
    assert_eq!(
        DeviceChoice::Cpu.resolve(&gpus, None),
        ResolvedDevice::Cpu(CpuReason::Chosen)
    );
}

#[test]
fn cuda_visible_devices_like_cuda() {
    let gpus: Vec<GpuSnapshot> = (0..4).map(fake_gpu).collect();
    let indices = |list: Option<&str>| -> Vec<u32> {
        cuda_visible_gpus(&gpus, list)
            .iter()
            .map(|g| g.nvml_index)
            .collect()
    };
    assert_eq!(indices(None), [0, 1, 2, 3]);
    assert_eq!(indices(Some("2,0")), [2, 0]);
    assert_eq!(indices(Some(" 3 , 1 ")), [3, 1]);
    // The list ends at the first invalid, out-of-range or repeated entry.
    assert_eq!(indices(Some("1,7,0")), [1]);
    assert_eq!(indices(Some("1,1,0")), [1]);
    assert_eq!(indices(Some("0,MIG-abc,1")), [0]);
    assert_eq!(indices(Some("")), Vec::<u32>::new());
    assert_eq!(indices(Some("-1")), Vec::<u32>::new());
    let by_uuid = format!("{},0", crate::gpu::short_uuid(&gpus[2].uuid));
    assert_eq!(indices(Some(&by_uuid)), [2, 0]);
    assert_eq!(cuda_ordinal(&gpus[0].uuid, &gpus, Some(&by_uuid)), Some(1));
    assert_eq!(cuda_ordinal(&gpus[1].uuid, &gpus, Some(&by_uuid)), None);
}

#[test]
fn pci_ids_sort_numerically_across_formats() {
    assert!(pci_sort_key("0000:3b:00.0") > pci_sort_key("00000000:2A:00.0"));
    assert_eq!(
        pci_sort_key("0000:3b:00.0"),
        pci_sort_key("00000000:3B:00.0")
    );
    assert!(pci_sort_key("00000001:00:00.0") > pci_sort_key("00000000:FF:00.0"));
    assert!(pci_sort_key("garbage") > pci_sort_key("00000000:FF:1F.7"));
}

#[test]
fn choice_round_trips_through_settings_json() {
    for choice in [
        DeviceChoice::Auto,
        DeviceChoice::Cpu,
        DeviceChoice::Gpu {
            uuid: fake_gpu(3).uuid,
        },
        DeviceChoice::All,
    ] {
        let json = serde_json::to_string(&choice).expect("serialise");
        let back: DeviceChoice = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, choice, "{json}");
    }
    assert_eq!(
        serde_json::to_string(&DeviceChoice::Cpu).expect("serialise"),
        r#"{"kind":"cpu"}"#
    );
    assert_eq!(
        serde_json::to_string(&DeviceChoice::All).expect("serialise"),
        r#"{"kind":"all"}"#
    );
}

#[test]
fn display_is_accepted_back() {
    let gpus = reversed_pair();
    for choice in [
        DeviceChoice::Auto,
        DeviceChoice::Cpu,
        DeviceChoice::Gpu {
            uuid: gpus[1].uuid.clone(),
        },
        DeviceChoice::All,
    ] {
        assert_eq!(
            DeviceChoice::parse(&choice.to_string(), &gpus, None),
            Ok(choice)
        );
    }
}

#[test]
fn all_parses_case_insensitively_with_or_without_gpus() {
    let gpus = reversed_pair();
    for value in ["all", " ALL ", "All"] {
        assert_eq!(
            DeviceChoice::parse(value, &gpus, None),
            Ok(DeviceChoice::All)
        );
    }
    assert_eq!(DeviceChoice::parse("all", &[], None), Ok(DeviceChoice::All));
    assert_eq!(DeviceChoice::All.to_string(), "all");
    let err = DeviceChoice::parse("alll", &gpus, None).expect_err("typo");
    assert_eq!(err.reason, "not a known device");
}

#[test]
fn all_resolves_to_every_usable_visible_gpu() {
    let mut unreadable = with_used(2, 0);
    unreadable.memory = None;
    let gpus = vec![with_used(0, 10), with_used(1, 70), unreadable];
    let indices = |list: Option<&str>| -> Vec<u32> {
        DeviceChoice::All
            .target_gpus(&gpus, list)
            .iter()
            .map(|g| g.nvml_index)
            .collect()
    };
    // The GPU without a memory reading is skipped, as the engine never hears of it.
    assert_eq!(
        DeviceChoice::All.resolve(&gpus, None),
        ResolvedDevice::AllGpus { count: 2 }
    );
    assert_eq!(indices(None), [0, 1]);
    assert_eq!(
        DeviceChoice::All.resolve(&gpus, Some("1")),
        ResolvedDevice::AllGpus { count: 1 }
    );
    assert_eq!(indices(Some("1")), [1]);
    // No usable GPU: the CPU, for the same reason as Auto.
    assert_eq!(
        DeviceChoice::All.resolve(&gpus[2..], None),
        ResolvedDevice::Cpu(CpuReason::NoGpu)
    );
    assert_eq!(
        DeviceChoice::All.resolve(&gpus, Some("")),
        ResolvedDevice::Cpu(CpuReason::NoGpu)
    );
    assert_eq!(indices(Some("")), Vec::<u32>::new());
}

#[test]
fn target_gpus_of_single_device_choices() {
    let gpus = vec![with_used(0, 10), with_used(1, 70)];
    let uuids = |choice: &DeviceChoice| -> Vec<String> {
        choice
            .target_gpus(&gpus, None)
            .iter()
            .map(|g| g.uuid.clone())
            .collect()
    };
    assert_eq!(uuids(&DeviceChoice::Auto), [gpus[0].uuid.clone()]);
    assert_eq!(uuids(&DeviceChoice::Cpu), Vec::<String>::new());
    let second = DeviceChoice::Gpu {
        uuid: gpus[1].uuid.clone(),
    };
    assert_eq!(uuids(&second), [gpus[1].uuid.clone()]);
}
