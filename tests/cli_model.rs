//! `gpuscribe model status|download|verify --json` as a process, with `HF_ENDPOINT` at a local
//! hub (`tests/hub_server`) and a fresh `HF_HOME`.

mod hub_server;

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use hub_server::{COMMIT, HubServer, Quirks, tiny_files, whisper_files};

fn gpuscribe(endpoint: &str, home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("gpuscribe").expect("the gpuscribe binary");
    cmd.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("GPUSCRIBE_MODEL_REVISION", "main")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("GPUSCRIBE_WHISPER_REVISION")
        .timeout(std::time::Duration::from_secs(60));
    cmd
}

fn json(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).expect("JSON on stdout")
}

#[test]
fn status_download_verify_report_the_files() {
    let server = HubServer::start(tiny_files(), HashMap::new());
    let home = tempfile::tempdir().expect("tempdir");

    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "status", "--json"])
        .output()
        .expect("run");
    assert!(!out.status.success(), "status says not ready with exit 1");
    let report = json(&out.stdout);
    assert_eq!(report["ready"], false);
    assert_eq!(report["files"][0]["state"], "missing");
    assert!(
        server.seen().is_empty(),
        "status must not touch the network"
    );

    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "download", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out.stdout);
    assert_eq!(report["ready"], true);
    assert_eq!(report["commit"], COMMIT);
    let folder = home
        .path()
        .join("hub/models--FunAudioLLM--SenseVoiceSmall/snapshots")
        .join(COMMIT);
    assert_eq!(report["folder"], folder.display().to_string());
    let files = report["files"].as_array().expect("files");
    assert_eq!(files.len(), 4);
    for f in files {
        assert_eq!(f["state"], "verified", "{f}");
    }
    assert_eq!(files[0]["sha256"], server.sha256("model.pt"));
    assert_eq!(files[0]["checked_by"], "sha256");
    assert_eq!(files[1]["checked_by"], "git-sha1");

    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "verify"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ready: every file is present and verified"),
        "{text}"
    );
}

#[test]
fn download_of_a_missing_file_fails_naming_it() {
    let mut files = tiny_files();
    files.retain(|(name, _)| name != "am.mvn");
    let server = HubServer::start(files, HashMap::new());
    let home = tempfile::tempdir().expect("tempdir");
    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "download"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("am.mvn")
            && err.contains("FunAudioLLM/SenseVoiceSmall")
            && err.contains("404"),
        "{err}"
    );
}

#[test]
fn whisper_downloads_through_the_store_and_transcribe_uses_it() {
    let server = HubServer::start_repo("openai/whisper-tiny", whisper_files(), HashMap::new());
    let home = tempfile::tempdir().expect("tempdir");
    let whisper = ["--engine", "whisper", "--whisper-model", "tiny"];

    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "status", "--json"])
        .args(whisper)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let report = json(&out.stdout);
    assert_eq!(report["repo"], "openai/whisper-tiny");
    assert_eq!(report["revision"], "main");
    assert!(
        server.seen().is_empty(),
        "status must not touch the network"
    );

    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "download", "--json"])
        .args(whisper)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out.stdout);
    assert_eq!(report["ready"], true);
    let folder = home
        .path()
        .join("hub/models--openai--whisper-tiny/snapshots")
        .join(COMMIT);
    assert_eq!(report["folder"], folder.display().to_string());
    let files = report["files"].as_array().expect("files");
    let names: Vec<&str> = files.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model.safetensors"
        ]
    );
    for f in files {
        assert_eq!(f["state"], "verified", "{f}");
    }
    assert_eq!(files[0]["checked_by"], "git-sha1");
    assert_eq!(files[3]["checked_by"], "sha256");
    assert_eq!(files[3]["sha256"], server.sha256("model.safetensors"));

    // `transcribe --engine whisper` without --model-dir runs on the verified snapshot and
    // downloads nothing more.
    let served = server.served("model.safetensors");
    let clip =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/audio/en_short.wav");
    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["transcribe", "--no-history", "--device", "cpu"])
        .args(whisper)
        .args(["--language", "fr", "--format", "json"])
        .arg(&clip)
        .env("GPUSCRIBE_WORKER", env!("CARGO_BIN_EXE_gpuscribe-worker"))
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let transcript = json(&out.stdout);
    assert_eq!(transcript[0]["language"], "fr");
    assert!(
        !transcript[0]["segments"]
            .as_array()
            .expect("segments")
            .is_empty()
    );
    assert_eq!(server.served("model.safetensors"), served);
}

#[test]
fn a_corrupt_whisper_download_is_refused_and_not_kept() {
    let quirks = HashMap::from([(
        "model.safetensors".to_owned(),
        Quirks {
            corrupt: true,
            ..Quirks::default()
        },
    )]);
    let server = HubServer::start_repo("openai/whisper-base", whisper_files(), quirks);
    let home = tempfile::tempdir().expect("tempdir");
    let out = gpuscribe(&server.endpoint(), home.path())
        .args(["model", "download", "--engine", "whisper"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused model.safetensors from openai/whisper-base")
            && err.contains("nothing was kept"),
        "{err}"
    );
    let snapshot = home
        .path()
        .join("hub/models--openai--whisper-base/snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    assert!(!snapshot.exists(), "{}", snapshot.display());
}
