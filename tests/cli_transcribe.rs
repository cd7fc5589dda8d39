//! `gpuscribe transcribe` as one shard of an array job, run as a cluster would run it: real
//! processes (several at once, one killed with SIGKILL), the real worker on the CPU with the tiny
//! FunASR-made model, outputs compared byte for byte with a single-process run of the same list.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/flac.rs"]
mod flac;
use flac::write_dense_flac;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice")
}

/// The binary with a clean environment: CPU, the tiny model, no scheduler variables.
fn gpuscribe(args: &[&std::ffi::OsStr]) -> Command {
    gpuscribe_with_model(&data().join("tiny"), args)
}

fn gpuscribe_with_model(model_dir: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuscribe"));
    for var in [
        "GPUSCRIBE_FAKE_GPUS",
        "SENSEVOICE_DEVICE",
        "GPUSCRIBE_SHARD",
        "GPUSCRIBE_SHARD_COUNT",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HUB_OFFLINE", "1")
        .arg("transcribe")
        .arg("--device")
        .arg("cpu")
        .arg("--model-dir")
        .arg(model_dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A WAV of `clip` repeated `times` (longer files keep a shard busy long enough to kill it).
fn make_wav(path: &Path, clip: &str, times: usize) {
    let mut reader =
        hound::WavReader::open(data().join("audio").join(format!("{clip}.wav"))).expect("clip");
    let spec = reader.spec();
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut writer = hound::WavWriter::create(path, spec).expect("create wav");
    for _ in 0..times {
        for &s in &samples {
            writer.write_sample(s).expect("write");
        }
    }
    writer.finalize().expect("finalize");
}

const CLIPS: [&str; 3] = ["en_short", "zh_mid", "ja_long"];

/// `count` audio files (two of them with the same stem) and a list of them.
fn inputs(dir: &Path, count: usize, times: usize) -> (Vec<PathBuf>, PathBuf) {
    let mut paths = Vec::new();
    for i in 0..count {
        let path = match i {
            0 => dir.join("in/a/talk.wav"),
            1 => dir.join("in/b/talk.wav"),
            _ => dir.join(format!("in/c/clip{i:02}.wav")),
        };
        make_wav(&path, CLIPS[i % CLIPS.len()], times);
        paths.push(path);
    }
    let list = dir.join("list.txt");
    let mut text = String::new();
    for path in &paths {
        text.push_str(&format!("{}\n", path.display()));
    }
    std::fs::write(&list, text).expect("list");
    (paths, list)
}

/// Every output file under `dir`, name → bytes: not the summary folder, nor the hidden temporary
/// files that outputs are written through (a killed run may leave one; nothing reads them).
fn outputs(dir: &Path) -> BTreeMap<OsString, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("output dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().expect("type").is_file())
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .map(|e| (e.file_name(), std::fs::read(e.path()).expect("read")))
        .collect()
}

fn summary(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary")).expect("summary JSON")
}

fn inputs_of(summary: &Value, key: &str) -> Vec<String> {
    summary[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {summary}"))
        .iter()
        .map(|entry| {
            entry
                .get("input")
                .unwrap_or(entry)
                .get("path")
                .and_then(Value::as_str)
                .expect("a path")
                .to_owned()
        })
        .collect()
}

/// The whole list in one process: the outputs every sharded run must reproduce.
fn reference(dir: &Path, list: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let out = dir.join("reference");
    let output = run(&mut gpuscribe(&[
        os("--files-from"),
        list.as_os_str(),
        os("--format"),
        os("json"),
        os("--output-dir"),
        out.as_os_str(),
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    outputs(&out)
}

fn shard(list: &Path, out: &Path, shard: &str, extra: &[&str]) -> Command {
    shard_with_model(&data().join("tiny"), list, out, shard, extra)
}

fn shard_with_model(model: &Path, list: &Path, out: &Path, shard: &str, extra: &[&str]) -> Command {
    let mut args = vec![
        os("--files-from"),
        list.as_os_str(),
        os("--format"),
        os("json"),
        os("--output-dir"),
        out.as_os_str(),
        os("--shard"),
        os(shard),
    ];
    args.extend(extra.iter().map(|a| os(a)));
    gpuscribe_with_model(model, &args)
}

#[test]
fn four_shards_at_once_transcribe_every_file_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, list) = inputs(dir.path(), 12, 1);
    let expected = reference(dir.path(), &list);
    assert_eq!(expected.len(), 12, "same stems got distinct outputs");

    let out = dir.path().join("out");
    let children: Vec<Child> = (0..4)
        .map(|k| {
            shard(&list, &out, &format!("{k}/4"), &[])
                .spawn()
                .expect("spawn a shard")
        })
        .collect();
    let mut done: Vec<String> = Vec::new();
    for (k, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().expect("shard exits");
        assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
        let summary = summary(&out.join(format!("summary/shard-{k}-of-4.json")));
        assert_eq!(summary["status"], "ok");
        assert_eq!(summary["shard_index"], k);
        assert_eq!(summary["listed"], 12);
        assert!(summary["failed"].as_array().expect("failed").is_empty());
        assert!(summary["wall_s"].as_f64().expect("wall_s") > 0.0);
        let mine = inputs_of(&summary, "done");
        assert_eq!(summary["assigned"], mine.len());
        let audio: f64 = summary["done"]
            .as_array()
            .expect("done")
            .iter()
            .map(|d| d["audio_s"].as_f64().expect("audio_s"))
            .sum();
        assert!((summary["audio_s"].as_f64().expect("audio_s") - audio).abs() < 1e-9);
        done.extend(mine);
    }
    done.sort();
    let mut listed: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    listed.sort();
    assert_eq!(done, listed, "every file exactly once over the four shards");
    assert_eq!(outputs(&out), expected);
}

#[test]
fn a_shard_killed_mid_way_completes_on_rerun_with_no_output_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, list) = inputs(dir.path(), 14, 4);
    let expected = reference(dir.path(), &list);
    let out = dir.path().join("out");

    let other = run(&mut shard(&list, &out, "1/2", &[]));
    assert_eq!(other.status.code(), Some(0), "{}", stderr_of(&other));
    let before = outputs(&out).len();
    let mut victim = shard(&list, &out, "0/2", &[]).spawn().expect("spawn");
    let start = Instant::now();
    while outputs(&out).len() == before {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no output appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reaped");
    let partial = outputs(&out);
    assert!(
        partial.len() < expected.len(),
        "the shard finished before it was killed: the test proves nothing"
    );
    for (name, bytes) in &partial {
        assert_eq!(Some(bytes), expected.get(name), "{name:?} is corrupt");
    }

    let rerun = run(&mut shard(&list, &out, "0/2", &["--skip-existing"]));
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr_of(&rerun));
    let summary = summary(&out.join("summary/shard-0-of-2.json"));
    let skipped = inputs_of(&summary, "skipped").len();
    let done = inputs_of(&summary, "done").len();
    assert!(skipped >= 1, "{summary}");
    assert_eq!(
        skipped + done,
        summary["assigned"].as_u64().expect("n") as usize
    );
    assert_eq!(
        skipped,
        partial.len() - before,
        "only what was missing ran again"
    );
    assert_eq!(outputs(&out), expected);
}

#[test]
fn a_bad_file_is_named_in_the_summary_and_exits_3_and_same_stems_do_not_collide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, _) = inputs(dir.path(), 2, 1);
    let bad = dir.path().join("in/broken.wav");
    std::fs::write(&bad, "this is text, not audio").expect("bad file");
    let mut list: Vec<u8> = Vec::new();
    for path in [&paths[0], &bad, &paths[1]] {
        list.extend_from_slice(path.as_os_str().as_encoded_bytes());
        list.push(b'\n');
    }
    #[cfg(unix)]
    let odd = {
        use std::os::unix::ffi::OsStrExt as _;
        let odd = dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"in/caf\xe9.wav"));
        make_wav(&odd, "zh_mid", 1);
        list.extend_from_slice(odd.as_os_str().as_bytes());
        list.push(b'\n');
        odd
    };
    let out = dir.path().join("out");
    let mut cmd = gpuscribe(&[
        os("--files-from"),
        os("-"),
        os("--format"),
        os("json"),
        os("--output-dir"),
        out.as_os_str(),
    ]);
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&list)
        .expect("list on stdin");
    let output = child.wait_with_output().expect("exits");
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("broken.wav"), "{stderr}");
    assert!(stderr.contains("has the same name as"), "{stderr}");

    let summary = summary(&out.join("summary/shard-0-of-1.json"));
    assert_eq!(summary["status"], "some_failed");
    assert_eq!(summary["exit_code"], 3);
    let failed = &summary["failed"];
    assert_eq!(failed.as_array().expect("failed").len(), 1, "{summary}");
    assert_eq!(failed[0]["input"]["path"], bad.display().to_string());
    assert_eq!(failed[0]["cause"], "input");
    assert!(!failed[0]["reason"].as_str().expect("reason").is_empty());

    // Two inputs called talk.wav: two outputs, each holding its own input's transcript.
    let files = outputs(&out);
    let talks: Vec<(&OsString, Value)> = files
        .iter()
        .filter(|(name, _)| name.to_string_lossy().starts_with("talk."))
        .map(|(name, bytes)| (name, serde_json::from_slice(bytes).expect("JSON")))
        .collect();
    assert_eq!(talks.len(), 2, "{files:?}");
    assert_eq!(talks[1].0, "talk.json");
    assert_eq!(
        talks[1].1["path"],
        paths[0].display().to_string(),
        "the first keeps the name"
    );
    let sources: BTreeSet<String> = talks
        .iter()
        .map(|(_, json)| json["path"].as_str().expect("path").to_owned())
        .collect();
    let wanted: BTreeSet<String> = paths.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(sources, wanted);
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        assert!(files.contains_key(std::ffi::OsStr::from_bytes(b"caf\xe9.json")));
        let hex: String = odd
            .as_os_str()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let done = summary["done"].as_array().expect("done");
        assert!(done.iter().any(|d| d["input"]["path_hex"] == hex.as_str()));
    }
}

#[test]
fn a_node_that_cannot_load_the_model_exits_4_and_a_bad_shard_value_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, list) = inputs(dir.path(), 3, 1);
    let out = dir.path().join("out");

    // Missing model folder: nothing is tried; a Slurm array starting at 1 is shard 1 of 2.
    let mut cmd = shard_with_model(&dir.path().join("no-model"), &list, &out, "auto", &[]);
    cmd.env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2");
    let output = run(&mut cmd);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    let summary_1 = summary(&out.join("summary/shard-1-of-2.json"));
    assert_eq!(summary_1["status"], "node_failed");
    assert!(
        summary_1["node_error"]
            .as_str()
            .expect("why")
            .contains("no-model")
    );
    assert_eq!(
        inputs_of(&summary_1, "not_run").len(),
        summary_1["assigned"].as_u64().expect("n") as usize
    );

    // Model files present but unloadable: the audio decodes, so the node is to blame.
    let broken = dir.path().join("broken-model");
    std::fs::create_dir_all(&broken).expect("mkdir");
    for name in [
        "model.safetensors",
        "am.mvn",
        "chn_jpn_yue_eng_ko_spectok.bpe.model",
        "config.yaml",
    ] {
        std::fs::write(broken.join(name), "not a model").expect("write");
    }
    let summary_path = dir.path().join("summary.json");
    let mut cmd = shard_with_model(&broken, &list, &out, "0/1", &[]);
    cmd.arg("--summary").arg(&summary_path);
    let output = run(&mut cmd);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&summary_path.display().to_string()),
        "{stderr}"
    );
    let summary = summary(&summary_path);
    assert_eq!(summary["exit_code"], 4);
    let failed = summary["failed"].as_array().expect("failed");
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|f| f["cause"] == "node"), "{summary}");
    let accounted = failed.len() + inputs_of(&summary, "not_run").len();
    assert_eq!(accounted, paths.len());
    assert!(outputs(&out).is_empty(), "no output from a failed node");

    for bad in ["auto", "4/4", "x"] {
        let output = run(&mut shard(&list, &out, bad, &[]));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad}: {}",
            stderr_of(&output)
        );
    }
}

#[test]
fn a_file_that_fails_part_way_keeps_what_was_done_in_its_partial_output_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("in/dense.flac");
    std::fs::create_dir_all(bad.parent().expect("parent")).expect("mkdir");
    write_dense_flac(&bad, 100);
    let bytes = std::fs::metadata(&bad).expect("size").len();
    let limit_s = gpuscribe::audio::decode::max_audio_s(bytes);
    let out = dir.path().join("out");
    let data_dir = dir.path().join("data");
    let output = run(gpuscribe(&[
        os("--format"),
        os("json"),
        os("--output-dir"),
        out.as_os_str(),
        bad.as_os_str(),
    ])
    .env("GPUSCRIBE_DATA_DIR", &data_dir));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("dense.flac"), "{stderr}");
    assert!(stderr.contains("dense.partial.json"), "{stderr}");
    assert!(!out.join("dense.json").exists(), "no complete output");

    // The part done: every segment up to the decoder's bound, in order, and nothing past it.
    let partial: Value =
        serde_json::from_slice(&std::fs::read(out.join("dense.partial.json")).expect("partial"))
            .expect("partial JSON");
    let segments = partial["segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "{partial}");
    let ends: Vec<f64> = segments
        .iter()
        .map(|s| s["end_s"].as_f64().expect("end"))
        .collect();
    assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{ends:?}");
    let covered = partial["duration_s"].as_f64().expect("duration");
    // The decoder stops within one 65.5-s frame past its bound.
    assert!(
        covered > 60.0 && covered <= limit_s + 66.0,
        "{covered} of {limit_s}"
    );
    assert!(ends[ends.len() - 1] <= covered + 1e-6, "{ends:?} {covered}");

    // The history has the job, failed, with the same pieces.
    let history = Command::new(env!("CARGO_BIN_EXE_gpuscribe"))
        .env("GPUSCRIBE_DATA_DIR", &data_dir)
        .args(["history", "--json"])
        .output()
        .expect("history");
    let rows: Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    let id = rows[0]["id"].as_i64().expect("id").to_string();
    let export = Command::new(env!("CARGO_BIN_EXE_gpuscribe"))
        .env("GPUSCRIBE_DATA_DIR", &data_dir)
        .args(["history", "export", &id, "--format", "json"])
        .output()
        .expect("export");
    let stored: Value = serde_json::from_slice(&export.stdout).expect("export JSON");
    for key in ["segments", "tokens", "words"] {
        assert_eq!(stored[key], partial[key], "{key}");
    }
}
