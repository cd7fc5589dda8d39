//! Where the SenseVoice model files come from: a local folder or the Hugging Face hub.
//!
//! Nothing downloads unless [`resolve`] is called with [`ModelSource::HuggingFace`] while not
//! offline. The hub cache is the standard `huggingface_hub` layout (`$HF_HOME/hub` or
//! `~/.cache/huggingface/hub`), shared with Python tools; `HF_ENDPOINT` selects a mirror and
//! `HF_HUB_OFFLINE=1` restricts resolution to the cache. Runs on the caller's thread (the
//! engine worker); downloads block.

use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// The Hugging Face repository of the release model.
pub const HF_REPO_ID: &str = "FunAudioLLM/SenseVoiceSmall";
/// The branch resolved on the hub.
pub const HF_REVISION: &str = "main";
/// Weights file of the release.
pub const WEIGHTS_PT: &str = "model.pt";
/// Optional converted weights, preferred in a local folder when present.
pub const WEIGHTS_SAFETENSORS: &str = "model.safetensors";
/// CMVN statistics.
pub const CMVN_FILE: &str = "am.mvn";
/// Tokenizer of the release.
pub const TOKENIZER_FILE: &str = "chn_jpn_yue_eng_ko_spectok.bpe.model";
/// Model configuration.
pub const CONFIG_FILE: &str = "config.yaml";
/// The files fetched from the hub, largest first.
pub const HUB_FILES: [&str; 4] = [WEIGHTS_PT, CMVN_FILE, TOKENIZER_FILE, CONFIG_FILE];

/// Errors finding or fetching model files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A local model folder lacks files.
    #[error(
        "the model folder {dir} lacks {missing}; it must hold model.pt (or model.safetensors), am.mvn, a *.bpe.model tokenizer and config.yaml"
    )]
    IncompleteDir {
        /// The folder.
        dir: PathBuf,
        /// The missing files, comma-separated.
        missing: String,
    },
    /// Offline and the hub cache lacks files.
    #[error(
        "offline (HF_HUB_OFFLINE is set) and the Hugging Face cache {cache} lacks {missing} of {repo}. \
         Download them from https://huggingface.co/{repo} and either put them in one folder and choose it \
         as the model folder, or go online once"
    )]
    NotCached {
        /// The cache root searched.
        cache: PathBuf,
        /// Repository id.
        repo: String,
        /// The missing files, comma-separated.
        missing: String,
    },
    /// The hub request failed.
    #[error("cannot download {file} from {repo} (endpoint {endpoint}): {message}")]
    Download {
        /// Repository id.
        repo: String,
        /// The file.
        file: String,
        /// The endpoint used (HF_ENDPOINT or huggingface.co).
        endpoint: String,
        /// What hf-hub said.
        message: String,
    },
}

/// Where to take the model from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face repository (normally [`HF_REPO_ID`] at [`HF_REVISION`]).
    HuggingFace {
        /// Repository id, e.g. "FunAudioLLM/SenseVoiceSmall".
        repo: String,
        /// Branch, tag or commit.
        revision: String,
    },
    /// A folder holding the files.
    LocalDir(PathBuf),
}

impl Default for ModelSource {
    fn default() -> Self {
        Self::HuggingFace {
            repo: HF_REPO_ID.to_owned(),
            revision: HF_REVISION.to_owned(),
        }
    }
}

/// The four files a model needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `model.pt` or `model.safetensors`.
    pub weights: PathBuf,
    /// `am.mvn`.
    pub cmvn: PathBuf,
    /// The SentencePiece model.
    pub tokenizer: PathBuf,
    /// `config.yaml`.
    pub config: PathBuf,
}

impl ModelFiles {
    /// Finds the files in a folder: `model.safetensors` is preferred over `model.pt`, and the
    /// release tokenizer name over any other `*.bpe.model`.
    pub fn from_dir(dir: &Path) -> Result<Self, FilesError> {
        let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let weights = file(WEIGHTS_SAFETENSORS).or_else(|| file(WEIGHTS_PT));
        let tokenizer = file(TOKENIZER_FILE).or_else(|| any_bpe_model(dir));
        let cmvn = file(CMVN_FILE);
        let config = file(CONFIG_FILE);
        match (weights, cmvn, tokenizer, config) {
            (Some(weights), Some(cmvn), Some(tokenizer), Some(config)) => Ok(Self {
                weights,
                cmvn,
                tokenizer,
                config,
            }),
            (w, c, t, y) => {
                let missing = [
                    (w.is_none(), WEIGHTS_PT),
                    (c.is_none(), CMVN_FILE),
                    (t.is_none(), TOKENIZER_FILE),
                    (y.is_none(), CONFIG_FILE),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ");
                Err(FilesError::IncompleteDir {
                    dir: dir.to_owned(),
                    missing,
                })
            }
        }
    }
}

fn any_bpe_model(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".bpe.model"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Byte progress of one file download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadProgress {
    /// The file being fetched.
    pub file: String,
    /// Bytes received so far.
    pub done_bytes: u64,
    /// Total bytes (0 when unknown).
    pub total_bytes: u64,
}

/// How to resolve a hub source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Only look in the cache (also forced by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Hub cache root; `None` means `$HF_HOME/hub` or `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
}

/// True when `HF_HUB_OFFLINE` is set to a true value ("1", "true", "yes", "on").
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

struct ProgressAdapter<'a> {
    file: String,
    done: u64,
    total: u64,
    callback: &'a mut dyn FnMut(&DownloadProgress),
}

impl ProgressAdapter<'_> {
    fn report(&mut self) {
        (self.callback)(&DownloadProgress {
            file: self.file.clone(),
            done_bytes: self.done,
            total_bytes: self.total,
        });
    }
}

impl Progress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        self.done = 0;
        self.report();
    }

    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.report();
    }

    fn finish(&mut self) {
        self.done = self.total.max(self.done);
        self.report();
    }
}

/// Resolves `source` to local files, downloading missing hub files unless offline.
/// `progress` is called with byte counts while a file downloads.
pub fn resolve(
    source: &ModelSource,
    options: &ResolveOptions,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<ModelFiles, FilesError> {
    let (repo_id, revision) = match source {
        ModelSource::LocalDir(dir) => return ModelFiles::from_dir(dir),
        ModelSource::HuggingFace { repo, revision } => (repo, revision),
    };
    let cache = options
        .cache_dir
        .clone()
        .map_or_else(Cache::from_env, Cache::new);
    let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
    let cached = |name: &str| cache.repo(repo.clone()).get(name);
    let offline = options.offline || offline_from_env();
    let mut paths = Vec::with_capacity(HUB_FILES.len());
    if offline {
        let missing: Vec<&str> = HUB_FILES
            .iter()
            .copied()
            .filter(|f| cached(f).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(FilesError::NotCached {
                cache: cache.path().clone(),
                repo: repo_id.clone(),
                missing: missing.join(", "),
            });
        }
        paths.extend(HUB_FILES.iter().filter_map(|f| cached(f)));
    } else {
        let endpoint =
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_owned());
        let download_err = |file: &str, message: String| FilesError::Download {
            repo: repo_id.clone(),
            file: file.to_owned(),
            endpoint: endpoint.clone(),
            message,
        };
        let mut builder = ApiBuilder::from_env().with_progress(false).with_retries(3);
        if let Some(dir) = &options.cache_dir {
            builder = builder.with_cache_dir(dir.clone());
        }
        let api = builder
            .build()
            .map_err(|e| download_err(HUB_FILES[0], e.to_string()))?;
        let api_repo = api.repo(repo.clone());
        for file in HUB_FILES {
            if let Some(p) = cached(file) {
                paths.push(p);
                continue;
            }
            let adapter = ProgressAdapter {
                file: file.to_owned(),
                done: 0,
                total: 0,
                callback: &mut *progress,
            };
            // hf-hub asserts on some cache states; a panic must not take the worker down.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                api_repo.download_with_progress(file, adapter)
            }));
            let p = match result {
                Ok(r) => r.map_err(|e| download_err(file, e.to_string()))?,
                Err(_) => {
                    return Err(download_err(
                        file,
                        "the downloader failed unexpectedly".to_owned(),
                    ));
                }
            };
            paths.push(p);
        }
    }
    match paths.as_slice() {
        [weights, cmvn, tokenizer, config] => Ok(ModelFiles {
            weights: weights.clone(),
            cmvn: cmvn.clone(),
            tokenizer: tokenizer.clone(),
            config: config.clone(),
        }),
        _ => Err(FilesError::NotCached {
            cache: cache.path().clone(),
            repo: repo_id.clone(),
            missing: HUB_FILES.join(", "),
        }),
    }
}
