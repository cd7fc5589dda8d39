//! Model-file resolution without network: local folders and a hand-made Hugging Face cache.

// Test helpers outside #[test] functions panic on purpose: a failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use gpuscribe::model::files::{
    FilesError, HUB_FILES, ModelFiles, ModelSource, ResolveOptions, TOKENIZER_FILE, resolve,
};

fn touch(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        std::fs::write(dir.join(n), n.as_bytes()).unwrap();
    }
}

fn hub_source() -> ModelSource {
    ModelSource::default()
}

#[test]
fn offline_resolves_a_hand_made_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--FunAudioLLM--SenseVoiceSmall");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "3847d57b").unwrap();
    touch(&repo.join("snapshots/3847d57b"), &HUB_FILES);
    let opts = ResolveOptions {
        offline: true,
        cache_dir: Some(cache.path().to_owned()),
    };
    let mut calls = 0;
    let files = resolve(&hub_source(), &opts, &mut |_| calls += 1).unwrap();
    let snap = repo.join("snapshots/3847d57b");
    assert_eq!(files.weights, snap.join("model.pt"));
    assert_eq!(files.cmvn, snap.join("am.mvn"));
    assert_eq!(files.tokenizer, snap.join(TOKENIZER_FILE));
    assert_eq!(files.config, snap.join("config.yaml"));
    assert_eq!(calls, 0, "nothing may download offline");

    std::fs::remove_file(snap.join("am.mvn")).unwrap();
    std::fs::remove_file(snap.join("model.pt")).unwrap();
    let e = resolve(&hub_source(), &opts, &mut |_| ()).unwrap_err();
    assert!(matches!(e, FilesError::NotCached { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("model.pt, am.mvn") && msg.contains("FunAudioLLM/SenseVoiceSmall"),
        "{msg}"
    );
    assert!(msg.contains(&cache.path().display().to_string()), "{msg}");
}

#[test]
fn offline_with_an_empty_cache_lists_every_file() {
    let cache = tempfile::tempdir().unwrap();
    let opts = ResolveOptions {
        offline: true,
        cache_dir: Some(cache.path().to_owned()),
    };
    let msg = resolve(&hub_source(), &opts, &mut |_| ())
        .unwrap_err()
        .to_string();
    for f in HUB_FILES {
        assert!(msg.contains(f), "{msg}");
    }
}

#[test]
fn local_dir_rules() {
    let dir = tempfile::tempdir().unwrap();
    touch(
        dir.path(),
        &["model.pt", "am.mvn", "config.yaml", "other.bpe.model"],
    );
    let f = resolve(
        &ModelSource::LocalDir(dir.path().to_owned()),
        &ResolveOptions::default(),
        &mut |_| (),
    )
    .unwrap();
    assert_eq!(f.weights, dir.path().join("model.pt"));
    assert_eq!(f.tokenizer, dir.path().join("other.bpe.model"));
    // Converted weights and the release tokenizer name win.
    touch(dir.path(), &["model.safetensors", TOKENIZER_FILE]);
    let f = ModelFiles::from_dir(dir.path()).unwrap();
    assert_eq!(f.weights, dir.path().join("model.safetensors"));
    assert_eq!(f.tokenizer, dir.path().join(TOKENIZER_FILE));

    let empty = tempfile::tempdir().unwrap();
    touch(empty.path(), &["config.yaml"]);
    let msg = ModelFiles::from_dir(empty.path()).unwrap_err().to_string();
    assert!(
        msg.contains("model.pt, am.mvn, chn_jpn_yue_eng_ko_spectok.bpe.model"),
        "{msg}"
    );
    assert!(!msg.contains("lacks config.yaml"), "{msg}");
}
