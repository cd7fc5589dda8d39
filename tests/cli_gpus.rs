//! `gpuscribe gpus [--json]` and `--device` validation, run as a user would run the binary.
//! Without `GPUSCRIBE_FAKE_GPUS` these expect a machine without an NVIDIA driver (CI).

use assert_cmd::Command;
use serde_json::Value;

fn gpuscribe() -> Command {
    let mut cmd = Command::cargo_bin("gpuscribe").expect("the binary is built");
    for var in [
        "GPUSCRIBE_FAKE_GPUS",
        "SENSEVOICE_DEVICE",
        "CUDA_VISIBLE_DEVICES",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn has_nvidia_driver() -> bool {
    gpuscribe::gpu::NvmlSource::init().is_ok()
}

fn json_of(output: &[u8]) -> Value {
    serde_json::from_slice(output).expect("stdout is JSON")
}

#[test]
fn json_without_driver_is_the_documented_no_gpu_shape() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let output = gpuscribe().args(["gpus", "--json"]).assert().success();
    let json = json_of(&output.get_output().stdout);
    let mut keys: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "auto_device",
            "cuda_driver_version",
            "driver_version",
            "gpus",
            "message",
            "sample_cost_us",
            "schema_version",
            "selected_device",
            "status",
            "taken_at_unix_ms",
        ]
    );
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["status"], "no_driver");
    assert_eq!(
        json["message"],
        "No NVIDIA driver found — transcription runs on the CPU"
    );
    assert_eq!(json["gpus"], Value::Array(Vec::new()));
    assert_eq!(json["auto_device"], serde_json::json!({ "kind": "cpu" }));
    assert_eq!(
        json["selected_device"],
        serde_json::json!({ "kind": "cpu" })
    );
    assert!(json["driver_version"].is_null());
}

#[test]
fn table_without_driver_says_no_gpu_and_exits_zero() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let output = gpuscribe().arg("gpus").assert().success();
    let stdout = String::from_utf8(output.get_output().stdout.clone()).expect("utf-8");
    assert!(stdout.starts_with("no NVIDIA GPU found"), "{stdout}");
    assert!(stdout.contains("Auto would pick: CPU"), "{stdout}");
}

#[test]
fn fake_gpus_fill_the_report() {
    let output = gpuscribe()
        .args(["gpus", "--json", "--device", "cuda:1"])
        .env("GPUSCRIBE_FAKE_GPUS", "3")
        .assert()
        .success();
    let json = json_of(&output.get_output().stdout);
    assert_eq!(json["status"], "ok");
    let gpus = json["gpus"].as_array().expect("gpus array");
    assert_eq!(gpus.len(), 3);
    for (index, gpu) in gpus.iter().enumerate() {
        assert_eq!(gpu["nvml_index"], index);
        assert_eq!(gpu["cuda_ordinal"], index);
        assert!(gpu["uuid"].as_str().is_some_and(|u| u.starts_with("GPU-")));
        let memory = &gpu["memory"];
        let sum = memory["used_bytes"].as_u64().expect("used")
            + memory["free_bytes"].as_u64().expect("free")
            + memory["reserved_bytes"].as_u64().expect("reserved");
        assert_eq!(Some(sum), memory["total_bytes"].as_u64());
    }
    // The demo's GPU 2 has no processes, so it has the most free VRAM.
    assert_eq!(json["auto_device"]["kind"], "gpu");
    assert_eq!(json["auto_device"]["nvml_index"], 2);
    assert_eq!(json["selected_device"]["nvml_index"], 1);
    let processes = gpus[0]["processes"].as_array().expect("processes");
    assert!(processes.iter().any(|p| p["name"] == "转写服务"));
    assert!(
        processes
            .windows(2)
            .all(|w| w[0]["used_bytes"].as_u64() >= w[1]["used_bytes"].as_u64()),
        "sorted by VRAM"
    );
}

#[test]
fn fake_gpus_table_lists_processes_and_auto_pick() {
    let output = gpuscribe()
        .arg("gpus")
        .env("GPUSCRIBE_FAKE_GPUS", "2")
        .assert()
        .success();
    let stdout = String::from_utf8(output.get_output().stdout.clone()).expect("utf-8");
    assert!(stdout.contains("NVIDIA H100 80GB HBM3"), "{stdout}");
    assert!(stdout.contains("pid 4012"), "{stdout}");
    assert!(stdout.contains("转写服务"), "{stdout}");
    assert!(stdout.contains("Auto would pick: GPU 0"), "{stdout}");
}

#[test]
fn invalid_device_from_env_lists_the_choices() {
    let output = gpuscribe()
        .arg("gpus")
        .env("GPUSCRIBE_FAKE_GPUS", "2")
        .env("SENSEVOICE_DEVICE", "cuda:5")
        .assert()
        .failure();
    let stderr = String::from_utf8(output.get_output().stderr.clone()).expect("utf-8");
    assert!(
        stderr.contains("invalid device \"cuda:5\": there is no CUDA device 5 (2 visible)"),
        "{stderr}"
    );
    for choice in ["auto", "cpu", "cuda:0", "cuda:1"] {
        assert!(stderr.contains(choice), "{choice} missing: {stderr}");
    }
}

#[test]
fn flag_overrides_env() {
    let output = gpuscribe()
        .args(["gpus", "--json", "--device", "cpu"])
        .env("GPUSCRIBE_FAKE_GPUS", "1")
        .env("SENSEVOICE_DEVICE", "cuda:7")
        .assert()
        .success();
    let json = json_of(&output.get_output().stdout);
    assert_eq!(
        json["selected_device"],
        serde_json::json!({ "kind": "cpu" })
    );
}

#[test]
fn gpu_device_without_gpus_is_a_startup_error() {
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let output = gpuscribe().args(["--device", "bogus"]).assert().failure();
    let stderr = String::from_utf8(output.get_output().stderr.clone()).expect("utf-8");
    assert!(
        stderr.contains("invalid device \"bogus\": not a known device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("auto, cpu, all (no NVIDIA GPU found)"),
        "{stderr}"
    );
    gpuscribe()
        .args(["gpus", "--device", "cpu"])
        .assert()
        .success();
}

#[test]
fn cuda_visible_devices_renumbers_ordinals() {
    let output = gpuscribe()
        .args(["gpus", "--json", "--device", "cuda:0"])
        .env("GPUSCRIBE_FAKE_GPUS", "2")
        .env("CUDA_VISIBLE_DEVICES", "1")
        .assert()
        .success();
    let json = json_of(&output.get_output().stdout);
    assert!(json["gpus"][0]["cuda_ordinal"].is_null());
    assert_eq!(json["gpus"][1]["cuda_ordinal"], 0);
    assert_eq!(json["selected_device"]["nvml_index"], 1);
    assert_eq!(json["auto_device"]["nvml_index"], 1);
}
