//! The model store: gets the release files of SenseVoice-Small, or of a Whisper size
//! ([`StoreConfig::for_whisper`]), into the Hugging Face cache, on its own thread
//! (`model-store`), verified, with progress, resume, timeouts, retries and cancel.
//!
//! - **Where:** the standard cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!   `~/.cache/huggingface/hub`), in the layout `huggingface_hub` uses (see [`cache`]), so
//!   Python tools share the files. `HF_ENDPOINT` picks a mirror; `HF_HUB_OFFLINE=1` reads the
//!   cache only.
//! - **What:** [`PINNED_REVISION`] of [`HF_REPO_ID`], overridable with `GPUSCRIBE_MODEL_REVISION`
//!   (or `gpuscribe model … --revision`).
//! - **Verified:** a file enters `snapshots/<commit>/` only when its size and hash match the hub:
//!   LFS files (`X-Linked-Size`, `X-Linked-Etag`): size and sha256; files kept in git: size and
//!   the git blob sha1 (the `ETag`), or the size alone when the `ETag` is not a 40-hex hash.
//!   A verified file is recorded (size, mtime, sha256) and hashed again only when it changed.
//!
//! **The seam with the engine:** the engine never downloads. It asks [`ready_dir`], which reads
//! the cache and the verification records (no network, no hashing) and fails with "not
//! downloaded yet" otherwise. The window holds dropped files until the store reports
//! [`StoreEvent::Ready`]; `gpuscribe transcribe` runs the store before it starts the engine.

pub mod cache;
pub mod fetch;
pub mod hub;
mod thread;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use fetch::{ByteCount, Rehash};
pub use thread::{ModelStore, Progress, RateMeter, StoreEvent};

use crate::model::files::{HF_REPO_ID, HUB_FILES};
use cache::{RepoCache, VerifiedRecord};

/// The commit of [`HF_REPO_ID`] the project has checked (`main` as of the release files of
/// July 2024: model.pt 936,291,369 bytes, sha256 833ca2dc…a3ea).
pub const PINNED_REVISION: &str = "3847d57b6bdf2dd8875cb1508d2af43d80a16bf7";
/// Overrides [`PINNED_REVISION`] (a commit hash, branch or tag).
pub const REVISION_ENV: &str = "GPUSCRIBE_MODEL_REVISION";
/// Sizes of [`HUB_FILES`] at [`PINNED_REVISION`], shown before anything is asked of the hub.
pub const PINNED_SIZES: [u64; 4] = [936_291_369, 11_203, 377_341, 1_855];
/// The default hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The files of a Whisper repository the app loads (`src/model/whisper/config.rs`).
pub const WHISPER_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "model.safetensors",
];
/// The revision of every Whisper repository (a commit hash, branch or tag); default `main`,
/// verified file by file against the hub's sizes and hashes like SenseVoice's files.
pub const WHISPER_REVISION_ENV: &str = "GPUSCRIBE_WHISPER_REVISION";

/// Where and how the store fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// `HF_ENDPOINT` or [`DEFAULT_ENDPOINT`].
    pub endpoint: String,
    /// The hub cache root.
    pub hub_dir: PathBuf,
    /// Repository id.
    pub repo: String,
    /// Commit hash, branch or tag.
    pub revision: String,
    /// The files to fetch.
    pub files: Vec<String>,
    /// Cache only (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// `HF_TOKEN`, sent to the endpoint only.
    pub token: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the answer or for any read of the body.
    pub read_timeout: Duration,
    /// Retries of a failed request or a cut download.
    pub retries: u32,
    /// First wait before a retry (doubled each time, at most 30 s).
    pub backoff: Duration,
}

impl StoreConfig {
    /// The release model from the environment: `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME`,
    /// `HF_HUB_OFFLINE`, `HF_TOKEN`, [`REVISION_ENV`].
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            hub_dir: default_hub_dir(),
            repo: HF_REPO_ID.to_owned(),
            revision: var(REVISION_ENV).unwrap_or_else(|| PINNED_REVISION.to_owned()),
            files: HUB_FILES.iter().map(|f| (*f).to_owned()).collect(),
            offline: crate::model::files::offline_from_env(),
            token: var("HF_TOKEN"),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            retries: 5,
            backoff: Duration::from_secs(1),
        }
    }

    /// The same hub, cache and network settings for a Whisper size: its repository
    /// ([`WhisperSize::repo`](crate::model::whisper::sizes::WhisperSize)) at
    /// `GPUSCRIBE_WHISPER_REVISION` (default `main`), the files in [`WHISPER_FILES`].
    pub fn for_whisper(&self, size: &crate::model::whisper::sizes::WhisperSize) -> Self {
        let revision = std::env::var(WHISPER_REVISION_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "main".to_owned());
        Self {
            repo: size.repo.to_owned(),
            revision,
            files: WHISPER_FILES.iter().map(|f| (*f).to_owned()).collect(),
            ..self.clone()
        }
    }

    /// The store for `engine`: this one for SenseVoice, [`Self::for_whisper`] for a Whisper size.
    pub fn for_engine(&self, engine: &crate::engine::SpeechEngine) -> Self {
        match engine.whisper_size() {
            Some(size) => self.for_whisper(size),
            None => self.clone(),
        }
    }

    /// The HTTP client for this configuration.
    pub fn hub(&self) -> hub::Hub {
        hub::Hub::new(
            &self.endpoint,
            &self.repo,
            self.token.clone(),
            self.connect_timeout,
            self.read_timeout,
        )
    }

    /// The total size, when known without asking the hub (the pinned release).
    pub fn known_total_bytes(&self) -> Option<u64> {
        let release = self.repo == HF_REPO_ID
            && self.revision == PINNED_REVISION
            && self.files.iter().map(String::as_str).eq(HUB_FILES);
        if release {
            return Some(PINNED_SIZES.iter().sum());
        }
        // A Whisper repository: the weights' size from the architecture (the small JSON files
        // are not counted), shown until the hub answers with the real sizes.
        crate::model::whisper::sizes::SIZES
            .iter()
            .find(|s| s.repo == self.repo)
            .map(|s| s.download_bytes())
    }

    /// The cache of the repository.
    pub fn cache(&self) -> RepoCache {
        RepoCache::new(&self.hub_dir, &self.repo)
    }
}

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub` (as `huggingface_hub` decides).
pub fn default_hub_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let cache = var("XDG_CACHE_HOME").unwrap_or_else(|| {
        directories::BaseDirs::new()
            .map_or_else(|| PathBuf::from(".cache"), |d| d.home_dir().join(".cache"))
    });
    cache.join("huggingface").join("hub")
}

/// Errors of the store; each names the file and the repository or path concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The hub has no such file.
    #[error("{file} was not found in {repo} at revision {revision} ({url} answered 404)")]
    NotFound {
        /// Repository id.
        repo: String,
        /// The file.
        file: String,
        /// The revision asked for.
        revision: String,
        /// The URL.
        url: String,
    },
    /// Another HTTP status.
    #[error("cannot get {file} from {repo}: {url} answered HTTP {status}")]
    Status {
        /// Repository id.
        repo: String,
        /// The file.
        file: String,
        /// The status.
        status: u16,
        /// The URL.
        url: String,
    },
    /// Connecting or reading failed (after the retries).
    #[error("cannot download {file} from {repo} (endpoint {endpoint}): {message}")]
    Network {
        /// Repository id.
        repo: String,
        /// The file.
        file: String,
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The hub's answer lacks what is needed to verify the file.
    #[error("cannot verify {file} of {repo}: {message} ({url})")]
    Metadata {
        /// Repository id.
        repo: String,
        /// The file.
        file: String,
        /// The URL.
        url: String,
        /// What is missing.
        message: String,
    },
    /// The downloaded bytes do not match the hub's size or hash: nothing was kept.
    #[error(
        "refused {file} from {repo}: its {what} is {got} but the hub says {expected}; nothing was kept"
    )]
    Mismatch {
        /// Repository id.
        repo: String,
        /// The file.
        file: String,
        /// "size", "sha256" or "git-sha1".
        what: String,
        /// The hub's value.
        expected: String,
        /// What arrived.
        got: String,
    },
    /// A cached file no longer matches its hash.
    #[error(
        "{path} is damaged: its {what} is {got} but should be {expected}; delete it and download again (gpuscribe model download)"
    )]
    Damaged {
        /// The file.
        file: String,
        /// Where it is.
        path: PathBuf,
        /// "sha256" or "git-sha1".
        what: String,
        /// Expected.
        expected: String,
        /// Found.
        got: String,
    },
    /// A cached file that is not a link to a blob cannot be checked without the hub.
    #[error("{path} ({file}) cannot be verified offline: it is not a link into the cache's blobs")]
    Unverifiable {
        /// The file.
        file: String,
        /// Where it is.
        path: PathBuf,
    },
    /// The cache lacks files (offline, or nothing downloaded yet).
    #[error("{}", not_cached_message(*offline, folder, repo, revision, endpoint, missing))]
    NotCached {
        /// `HF_HUB_OFFLINE` is set.
        offline: bool,
        /// The snapshot folder the files belong in.
        folder: PathBuf,
        /// Repository id.
        repo: String,
        /// Revision.
        revision: String,
        /// The endpoint.
        endpoint: String,
        /// The missing files.
        missing: Vec<String>,
    },
    /// Another process holds the download lock.
    #[error("another program is downloading {file} (it holds {lock}); try again when it is done")]
    Busy {
        /// The file.
        file: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// Reading or writing the cache failed.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// The user cancelled.
    #[error("the download was cancelled")]
    Cancelled,
}

fn not_cached_message(
    offline: bool,
    folder: &Path,
    repo: &str,
    revision: &str,
    endpoint: &str,
    missing: &[String],
) -> String {
    let why = if offline {
        "offline (HF_HUB_OFFLINE is set) and the model is not in the Hugging Face cache"
    } else {
        "the model is not downloaded yet"
    };
    format!(
        "{why}: missing {} of {repo} (revision {revision}). Either download them from \
         {endpoint}/{repo}/tree/{revision} into one folder and choose it as the model folder \
         (--model-dir), or go online and run `gpuscribe model download` (the files then live in {})",
        missing.join(", "),
        folder.display()
    )
}

impl StoreError {
    /// Worth another try: network trouble and server errors (5xx, 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// What is known about one cached file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Verified; the record says how.
    Verified(VerifiedRecord),
    /// Present, not verified yet.
    Unverified,
    /// Not in the cache.
    Missing,
}

/// One file of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    /// Its name in the repository.
    pub name: String,
    /// `snapshots/<commit>/<name>`.
    pub path: PathBuf,
    /// Verified, unverified or missing.
    pub state: FileState,
}

/// A model whose files are all present and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyModel {
    /// The snapshot folder (give it to the engine as the model folder).
    pub dir: PathBuf,
    /// The commit.
    pub commit: String,
    /// Every file.
    pub files: Vec<CachedFile>,
}

/// The cache's state without hashing or network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelStatus {
    /// Repository id.
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit it stands for, if the cache knows.
    pub commit: Option<String>,
    /// The snapshot folder.
    pub dir: PathBuf,
    /// Every file.
    pub files: Vec<CachedFile>,
    /// `HF_HUB_OFFLINE` is set.
    pub offline: bool,
}

impl ModelStatus {
    /// Every file verified.
    pub fn is_ready(&self) -> bool {
        self.files
            .iter()
            .all(|f| matches!(f.state, FileState::Verified(_)))
    }
}

/// Reads the cache's state: present files and valid records (no hashing, no network).
pub fn status(config: &StoreConfig) -> ModelStatus {
    let cache = config.cache();
    let commit = cache.commit_for(&config.revision);
    let dir = cache.snapshot_dir(commit.as_deref().unwrap_or(&config.revision));
    let files = config
        .files
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let state = match &commit {
                Some(c) if path.is_file() => cache
                    .valid_record(c, name)
                    .map_or(FileState::Unverified, FileState::Verified),
                _ => FileState::Missing,
            };
            CachedFile {
                name: name.clone(),
                path,
                state,
            }
        })
        .collect();
    ModelStatus {
        repo: config.repo.clone(),
        revision: config.revision.clone(),
        commit,
        dir,
        files,
        offline: config.offline,
    }
}

/// The engine's question: the snapshot folder if every file is present and verified. Reads the
/// cache and the records only: no network and no hashing, so it is quick on any thread.
pub fn ready_dir(config: &StoreConfig) -> Result<PathBuf, StoreError> {
    let status = status(config);
    if status.is_ready() {
        return Ok(status.dir);
    }
    let missing: Vec<String> = status
        .files
        .iter()
        .filter(|f| !matches!(f.state, FileState::Verified(_)))
        .map(|f| f.name.clone())
        .collect();
    Err(StoreError::NotCached {
        offline: config.offline,
        folder: status.dir,
        repo: config.repo.clone(),
        revision: config.revision.clone(),
        endpoint: config.endpoint.clone(),
        missing,
    })
}

/// Human bytes: "937 MB", "11.2 kB".
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e7 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// "1 h 05 min", "3 min 20 s", "12 s".
pub fn format_eta(eta: Duration) -> String {
    let s = eta.as_secs();
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_sizes_make_the_download_label() {
        let mut config = StoreConfig::from_env();
        config.revision = PINNED_REVISION.to_owned();
        config.repo = HF_REPO_ID.to_owned();
        assert_eq!(config.known_total_bytes(), Some(936_681_768));
        assert_eq!(format_bytes(936_681_768), "937 MB");
        config.revision = "main".to_owned();
        assert_eq!(config.known_total_bytes(), None);
    }

    #[test]
    fn whisper_sizes_get_their_repository_and_files() {
        let base = StoreConfig::from_env();
        let size = crate::model::whisper::sizes::by_name("base").expect("base");
        let whisper = base.for_whisper(size);
        assert_eq!(whisper.repo, "openai/whisper-base");
        assert_eq!(whisper.files, WHISPER_FILES);
        assert_eq!(whisper.hub_dir, base.hub_dir);
        assert_eq!(whisper.endpoint, base.endpoint);
        assert_eq!(whisper.known_total_bytes(), Some(size.download_bytes()));
        let engine = crate::engine::SpeechEngine::Whisper {
            model: "tiny".into(),
        };
        assert_eq!(base.for_engine(&engine).repo, "openai/whisper-tiny");
        assert_eq!(
            base.for_engine(&crate::engine::SpeechEngine::SenseVoice),
            base
        );
    }

    #[test]
    fn offline_message_lists_files_and_folder() {
        let err = StoreError::NotCached {
            offline: true,
            folder: PathBuf::from("/h/models--a--b/snapshots/r"),
            repo: "a/b".into(),
            revision: "r".into(),
            endpoint: DEFAULT_ENDPOINT.into(),
            missing: vec!["model.pt".into(), "am.mvn".into()],
        };
        let text = err.to_string();
        assert!(text.contains("HF_HUB_OFFLINE"), "{text}");
        assert!(text.contains("model.pt, am.mvn"), "{text}");
        assert!(text.contains("/h/models--a--b/snapshots/r"), "{text}");
        assert!(text.contains("--model-dir"), "{text}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_eta(Duration::from_secs(3900)), "1 h 05 min");
        assert_eq!(format_eta(Duration::from_secs(200)), "3 min 20 s");
    }
}
