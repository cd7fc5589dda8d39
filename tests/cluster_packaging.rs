//! `packaging/cluster/`: the Slurm array script run for real (the binary on the CPU with the tiny
//! model, a stand-in `scontrol` on PATH), and the Kubernetes manifest checked against the CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser as _;
use gpuscribe::cli::{Cli, Command as CliCommand};
use gpuscribe::cli_transcribe::{EXIT_NODE_FAILED, EXIT_SOME_FAILED};
use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The script as a Slurm array task would run it, with a stand-in `scontrol` that records its
/// arguments in `dir/scontrol.log`.
fn sbatch_task(
    dir: &Path,
    list: &Path,
    out: &Path,
    model_dir: &Path,
    env: &[(&str, &str)],
) -> Output {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let scontrol = bin.join("scontrol");
    std::fs::write(
        &scontrol,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n",
            dir.join("scontrol.log").display()
        ),
    )
    .expect("scontrol");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(scontrol, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("packaging/cluster/gpuscribe-array.sbatch"))
        .arg(list)
        .arg(out)
        .env("PATH", path)
        .env("GPUSCRIBE", env!("CARGO_BIN_EXE_gpuscribe"))
        .env("GPUSCRIBE_DEVICE", "cpu")
        .env("GPUSCRIBE_REQUIRE_GPU", "0")
        .env("GPUSCRIBE_FORMAT", "txt")
        .env("GPUSCRIBE_MODEL_DIR", model_dir)
        .env("SLURM_JOB_ID", "4242")
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "1");
    for var in [
        "SENSEVOICE_DEVICE",
        "GPUSCRIBE_SHARD",
        "GPUSCRIBE_SHARD_COUNT",
        "SLURM_RESTART_COUNT",
        "SLURM_ARRAY_TASK_STEP",
        "JOB_COMPLETION_INDEX",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("bash runs")
}

#[test]
fn the_slurm_script_runs_its_shard_and_requeues_a_node_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clips = root().join("tests/data/sensevoice/audio");
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{}\n{}\n",
            clips.join("en_short.wav").display(),
            clips.join("zh_mid.wav").display()
        ),
    )
    .expect("list");
    let out = dir.path().join("out");
    let tiny = root().join("tests/data/sensevoice/tiny");
    let output = sbatch_task(dir.path(), &list, &out, &tiny, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        out.join("en_short.txt").is_file() && out.join("zh_mid.txt").is_file(),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("summary/shard-0-of-1.json")).expect("summary"),
    )
    .expect("JSON");
    assert_eq!(summary["done"].as_array().map(Vec::len), Some(2));
    assert!(
        !dir.path().join("scontrol.log").exists(),
        "no requeue when all is done"
    );

    // No model on this node: exit 4 → the task is put back in the queue…
    let missing = dir.path().join("no-model");
    let output = sbatch_task(
        dir.path(),
        &list,
        &out,
        &missing,
        &[("SLURM_RESTART_COUNT", "1")],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(dir.path().join("scontrol.log")).expect("scontrol ran");
    assert_eq!(log, "requeue 4242\n");
    // …until the retries are spent: then the task fails with 4.
    let output = sbatch_task(
        dir.path(),
        &list,
        &out,
        &missing,
        &[("SLURM_RESTART_COUNT", "3")],
    );
    assert_eq!(output.status.code(), Some(i32::from(EXIT_NODE_FAILED)));
    let log = std::fs::read_to_string(dir.path().join("scontrol.log")).expect("log");
    assert_eq!(log, "requeue 4242\n", "no further requeue");
}

fn get<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| &v[*key])
}

#[test]
fn the_kubernetes_indexed_job_runs_a_valid_command_on_a_gpu_with_a_shared_volume() {
    let text = std::fs::read_to_string(root().join("packaging/cluster/gpuscribe-indexed-job.yaml"))
        .expect("manifest");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .collect();
    let job = docs.iter().find(|d| d["kind"] == "Job").expect("a Job");
    let claim = docs
        .iter()
        .find(|d| d["kind"] == "PersistentVolumeClaim")
        .expect("a claim");
    assert_eq!(get(job, &["spec", "completionMode"]), "Indexed");
    let completions = get(job, &["spec", "completions"])
        .as_u64()
        .expect("completions");
    let pod = get(job, &["spec", "template", "spec"]);
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    let shard_count = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "GPUSCRIBE_SHARD_COUNT")
        .and_then(|e| e["value"].as_str())
        .expect("GPUSCRIBE_SHARD_COUNT");
    assert_eq!(shard_count, completions.to_string());
    assert_eq!(
        get(container, &["resources", "limits", "nvidia.com/gpu"]).as_u64(),
        Some(1)
    );

    // The command is one the CLI accepts, as one shard of the Job.
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("string"))
        .collect();
    let cli = Cli::try_parse_from(command.iter().copied()).expect("the manifest's command parses");
    let Some(CliCommand::Transcribe(args)) = cli.command else {
        panic!("not transcribe: {command:?}");
    };
    assert_eq!(args.shard.as_deref(), Some("auto"));
    assert!(args.skip_existing && args.require_gpu);
    assert_eq!(cli.device.as_deref(), Some("all"));
    let out = args.output_dir.expect("--output-dir");

    // The outputs live on the ReadWriteMany claim.
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .find(|m| out.starts_with(m["mountPath"].as_str().expect("path")))
        .expect("the output folder is on a mounted volume");
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the volume");
    assert_eq!(
        get(volume, &["persistentVolumeClaim", "claimName"]),
        &claim["metadata"]["name"]
    );
    assert_eq!(get(claim, &["spec", "accessModes"])[0], "ReadWriteMany");

    // Exit 3 (bad inputs) fails the index without retries.
    let rules = get(job, &["spec", "podFailurePolicy", "rules"])
        .as_sequence()
        .expect("rules");
    let fail_index = rules
        .iter()
        .find(|r| r["action"] == "FailIndex")
        .expect("FailIndex");
    assert_eq!(
        get(fail_index, &["onExitCodes", "values"])[0].as_u64(),
        Some(u64::from(EXIT_SOME_FAILED))
    );
}
