//! `gpuscribe model status|download|verify --json` as a process, with `HF_ENDPOINT` at a local
//! hub (`tests/hub_server`) and a fresh `HF_HOME`.

mod hub_server;

use std::collections::HashMap;
use std::path::Path;

use assert_cmd::Command;
use hub_server::{COMMIT, HubServer, tiny_files};

fn gpuscribe(endpoint: &str, home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("gpuscribe").expect("the gpuscribe binary");
    cmd.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("GPUSCRIBE_MODEL_REVISION", "main")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
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
