//! The model store against a local server that answers like the Hugging Face hub
//! (`tests/hub_server`), serving the tiny test model: clean download into the standard cache
//! layout, resume after a cut and after a cancel, a stalled server, a wrong sha256, a 404, and
//! offline mode.

mod hub_server;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuscribe::model::files::ModelFiles;
use gpuscribe::model_store::{
    ModelStore, ReadyModel, StoreConfig, StoreError, StoreEvent, ready_dir,
};
use hub_server::{COMMIT, HubServer, Quirks, REPO, tiny_files};

const MODEL: &str = "model.pt";

fn config(endpoint: &str, hub: &Path) -> StoreConfig {
    StoreConfig {
        endpoint: endpoint.to_owned(),
        hub_dir: hub.to_owned(),
        repo: REPO.to_owned(),
        revision: "main".to_owned(),
        files: tiny_files().into_iter().map(|(name, _)| name).collect(),
        offline: false,
        token: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        retries: 2,
        backoff: Duration::from_millis(20),
    }
}

fn quirks(file: &str, q: Quirks) -> HashMap<String, Quirks> {
    HashMap::from([(file.to_owned(), q)])
}

/// Runs one download on the store's thread; returns the final event and the progress seen.
fn download(config: StoreConfig) -> (StoreEvent, Vec<StoreEvent>) {
    let store = ModelStore::spawn(config, Arc::new(|| ())).expect("spawn store");
    assert!(store.download());
    wait_final(&store, Duration::from_secs(30))
}

fn wait_final(store: &ModelStore, limit: Duration) -> (StoreEvent, Vec<StoreEvent>) {
    let until = Instant::now() + limit;
    let mut progress = Vec::new();
    while Instant::now() < until {
        match store.recv_timeout(Duration::from_millis(50)) {
            Some(event @ StoreEvent::Progress(_)) => progress.push(event),
            Some(other) => return (other, progress),
            None => {}
        }
    }
    panic!("no final event from the model store within {limit:?}");
}

fn ready(event: StoreEvent) -> ReadyModel {
    match event {
        StoreEvent::Ready(model) => model,
        other => panic!("expected Ready, got {other:?}"),
    }
}

fn failed(event: StoreEvent) -> StoreError {
    match event {
        StoreEvent::Failed(err) => err,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn repo_dir(hub: &Path) -> std::path::PathBuf {
    hub.join("models--FunAudioLLM--SenseVoiceSmall")
}

#[test]
fn clean_download_lands_verified_in_the_hugging_face_layout() {
    let server = HubServer::start(tiny_files(), HashMap::new());
    let hub = tempfile::tempdir().expect("tempdir");
    let cfg = config(&server.endpoint(), hub.path());
    let (last, progress) = download(cfg.clone());
    let model = ready(last);
    let snapshot = repo_dir(hub.path()).join("snapshots").join(COMMIT);
    assert_eq!(model.dir, snapshot);
    assert_eq!(model.commit, COMMIT);
    assert_eq!(
        std::fs::read_to_string(repo_dir(hub.path()).join("refs/main")).expect("refs/main"),
        COMMIT
    );
    for (name, bytes) in tiny_files() {
        let link = snapshot.join(&name);
        let target = std::fs::read_link(&link).expect("snapshot entries are symlinks");
        assert!(target.starts_with("../../blobs"), "{}", target.display());
        assert_eq!(std::fs::read(&link).expect("read"), bytes, "{name}");
        // Each file came exactly once.
        assert_eq!(server.served(&name), bytes.len() as u64, "{name}");
    }
    // LFS files are named by sha256, like huggingface_hub does.
    assert!(
        repo_dir(hub.path())
            .join("blobs")
            .join(server.sha256(MODEL))
            .is_file()
    );
    let Some(StoreEvent::Progress(p)) = progress.last() else {
        panic!("no progress events");
    };
    assert_eq!(p.bytes.done, p.bytes.total);
    let all: u64 = tiny_files().iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(p.bytes.total, all, "{p:?}");
    // The engine's question is answered from the records alone, and the folder loads.
    assert_eq!(ready_dir(&cfg).expect("ready"), snapshot);
    ModelFiles::from_dir(&snapshot).expect("a complete model folder");

    // A second run asks the hub for metadata only: nothing is fetched again.
    let (last, _) = download(cfg);
    ready(last);
    assert_eq!(server.served(MODEL), tiny_files()[0].1.len() as u64);
}

#[test]
fn a_cut_download_resumes_with_a_range_and_fetches_no_byte_twice() {
    let size = tiny_files()[0].1.len() as u64;
    let half = size / 2;
    let server = HubServer::start(
        tiny_files(),
        quirks(
            MODEL,
            Quirks {
                cut_first_get_at: Some(half),
                ..Quirks::default()
            },
        ),
    );
    let hub = tempfile::tempdir().expect("tempdir");
    let model = ready(download(config(&server.endpoint(), hub.path())).0);
    assert_eq!(
        std::fs::read(model.dir.join(MODEL)).expect("read"),
        tiny_files()[0].1
    );
    let served = server.served(MODEL);
    assert!(
        served <= size + 64 * 1024,
        "served {served} bytes of a {size}-byte file"
    );
    let ranges: Vec<String> = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/"))
        .filter_map(|s| s.range)
        .collect();
    assert_eq!(ranges, vec![format!("bytes={half}-")]);
}

#[test]
fn a_cancelled_download_resumes_from_its_partial_file() {
    let size = tiny_files()[0].1.len() as u64;
    let server = HubServer::start(
        tiny_files(),
        quirks(
            MODEL,
            Quirks {
                delay_per_chunk: Some(Duration::from_millis(15)),
                ..Quirks::default()
            },
        ),
    );
    let hub = tempfile::tempdir().expect("tempdir");
    let cfg = config(&server.endpoint(), hub.path());
    let store = ModelStore::spawn(cfg.clone(), Arc::new(|| ())).expect("spawn");
    assert!(store.download());
    let until = Instant::now() + Duration::from_secs(20);
    while server.served(MODEL) < size / 4 {
        assert!(Instant::now() < until, "the download did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    store.cancel();
    let (last, _) = wait_final(&store, Duration::from_secs(10));
    assert_eq!(last, StoreEvent::Cancelled);
    drop(store);
    let partial = repo_dir(hub.path())
        .join("blobs")
        .join(format!("{}.incomplete", server.sha256(MODEL)));
    let kept = std::fs::metadata(&partial)
        .expect("partial file kept")
        .len();
    assert!(kept > 0 && kept < size, "kept {kept}");
    assert!(
        ready_dir(&cfg).is_err(),
        "not visible before it is complete"
    );

    let model = ready(download(cfg).0);
    assert_eq!(
        std::fs::read(model.dir.join(MODEL)).expect("read"),
        tiny_files()[0].1
    );
    assert!(!partial.exists());
    let last_range = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/"))
        .filter_map(|s| s.range)
        .next_back();
    assert_eq!(last_range, Some(format!("bytes={kept}-")));
    // What was sent after the cancel and never written is at most a few chunks.
    assert!(server.served(MODEL) <= size + 256 * 1024);
}

#[test]
fn a_stalled_server_gives_an_error_within_the_timeout() {
    let server = HubServer::start(
        tiny_files(),
        quirks(
            MODEL,
            Quirks {
                stall_after: Some(100_000),
                ..Quirks::default()
            },
        ),
    );
    let hub = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&server.endpoint(), hub.path());
    cfg.read_timeout = Duration::from_millis(700);
    cfg.retries = 1;
    let started = Instant::now();
    let err = failed(download(cfg.clone()).0);
    let took = started.elapsed();
    // Two attempts of one read timeout each, plus the back-off.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(matches!(err, StoreError::Network { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(MODEL) && text.contains(REPO), "{text}");
    assert!(
        !repo_dir(hub.path())
            .join("snapshots")
            .join(COMMIT)
            .join(MODEL)
            .exists()
    );
    assert!(ready_dir(&cfg).is_err());
}

#[test]
fn a_wrong_sha256_is_refused_and_nothing_enters_the_cache() {
    let server = HubServer::start(
        tiny_files(),
        quirks(
            MODEL,
            Quirks {
                corrupt: true,
                ..Quirks::default()
            },
        ),
    );
    let hub = tempfile::tempdir().expect("tempdir");
    let cfg = config(&server.endpoint(), hub.path());
    let err = failed(download(cfg.clone()).0);
    match &err {
        StoreError::Mismatch { file, what, .. } => {
            assert_eq!(file, MODEL);
            assert_eq!(what, "sha256");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("nothing was kept"), "{err}");
    let blobs: Vec<String> = std::fs::read_dir(repo_dir(hub.path()).join("blobs"))
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let sha = server.sha256(MODEL);
    assert!(
        !blobs.iter().any(|b| b.starts_with(&sha)),
        "the bad bytes stayed: {blobs:?}"
    );
    assert!(
        !repo_dir(hub.path())
            .join("snapshots")
            .join(COMMIT)
            .join(MODEL)
            .exists()
    );
    assert!(ready_dir(&cfg).is_err());
}

#[test]
fn a_missing_file_names_the_file_and_the_repository() {
    let server = HubServer::start(tiny_files(), HashMap::new());
    let hub = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&server.endpoint(), hub.path());
    cfg.files.push("tokens.json".to_owned());
    let err = failed(download(cfg).0);
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("tokens.json"), "{text}");
    assert!(text.contains(REPO), "{text}");
    assert!(text.contains("404"), "{text}");
}

#[test]
fn offline_lists_the_files_and_where_they_go_then_uses_the_cache() {
    let hub = tempfile::tempdir().expect("tempdir");
    // Nothing listens here: offline must not try.
    let mut cfg = config("http://127.0.0.1:9", hub.path());
    cfg.offline = true;
    let err = failed(download(cfg.clone()).0);
    let text = err.to_string();
    for (name, _) in tiny_files() {
        assert!(text.contains(&name), "{name} not in: {text}");
    }
    assert!(text.contains("HF_HUB_OFFLINE"), "{text}");
    assert!(
        text.contains(&repo_dir(hub.path()).display().to_string()),
        "{text}"
    );

    // Once downloaded, offline works from the cache alone.
    let server = HubServer::start(tiny_files(), HashMap::new());
    ready(download(config(&server.endpoint(), hub.path())).0);
    drop(server);
    let model = ready(download(cfg).0);
    assert_eq!(model.commit, COMMIT);
}

#[test]
fn a_damaged_cached_file_is_reported_offline_and_fetched_again_online() {
    let server = HubServer::start(tiny_files(), HashMap::new());
    let hub = tempfile::tempdir().expect("tempdir");
    let cfg = config(&server.endpoint(), hub.path());
    let model = ready(download(cfg.clone()).0);
    let path = model.dir.join(MODEL);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[1000] ^= 1;
    std::fs::write(&path, &bytes).expect("write through the link");

    let mut offline = cfg.clone();
    offline.offline = true;
    let err = failed(download(offline).0);
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains(MODEL), "{err}");
    assert!(ready_dir(&cfg).is_err(), "a changed file is not ready");

    let model = ready(download(cfg).0);
    assert_eq!(
        std::fs::read(model.dir.join(MODEL)).expect("read"),
        tiny_files()[0].1
    );
    assert_eq!(server.served(MODEL), 2 * tiny_files()[0].1.len() as u64);
}
