//! The window's side of the model store: what the model bar shows, and the files that wait for
//! the model while it downloads. UI thread only; no egui here, and nothing that blocks: the
//! store's requests are `try_send` and its events are drained in `logic()`.

use std::path::PathBuf;

use crate::model_store::{FileState, ModelStore, Progress, StoreError, StoreEvent, format_bytes};

/// What the model bar shows.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelState {
    /// The store is reading the cache.
    Checking,
    /// Not downloaded; `total_bytes` when known before asking the hub.
    Missing {
        /// Size of the download, if known.
        total_bytes: Option<u64>,
        /// The files not in the cache.
        files: Vec<String>,
    },
    /// Downloading; `None` until the first bytes.
    Downloading(Option<Progress>),
    /// Offline and not cached: the message lists the files and where they go.
    Offline(String),
    /// The last check or download failed.
    Failed(String),
    /// Every file is present and verified, in this folder.
    Ready(PathBuf),
}

/// The store, its state for the bar, and the files waiting for it.
pub struct ModelGate {
    store: ModelStore,
    /// The model's name in the bar ("SenseVoice-Small", "Whisper base").
    pub label: String,
    /// What the bar shows.
    pub state: ModelState,
    /// Files queued before the model was ready, oldest first.
    pub waiting: Vec<PathBuf>,
}

/// The download button's text: "Download SenseVoice-Small (937 MB)".
pub fn download_label(total_bytes: Option<u64>) -> String {
    download_label_for("SenseVoice-Small", total_bytes)
}

/// The download button's text for `model`: "Download Whisper base (290 MB)".
pub fn download_label_for(model: &str, total_bytes: Option<u64>) -> String {
    match total_bytes {
        Some(bytes) => format!("Download {model} ({})", format_bytes(bytes)),
        None => format!("Download {model}"),
    }
}

impl ModelGate {
    /// Starts from a store for the model called `label`; asks it to check the cache.
    pub fn new(store: ModelStore, label: String) -> Self {
        let state = if store.check() {
            ModelState::Checking
        } else {
            ModelState::Failed("the model store did not start".to_owned())
        };
        Self {
            store,
            label,
            state,
            waiting: Vec::new(),
        }
    }

    /// True once the files are ready.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, ModelState::Ready(_))
    }

    /// Starts (or resumes) the download unless one runs or the model is ready.
    pub fn start_download(&mut self) {
        if matches!(
            self.state,
            ModelState::Downloading(_) | ModelState::Ready(_) | ModelState::Checking
        ) {
            return;
        }
        if self.store.download() {
            self.state = ModelState::Downloading(None);
        }
    }

    /// Stops the download (the partial file stays for a resume).
    pub fn cancel(&self) {
        self.store.cancel();
    }

    /// Holds `path` until the model is ready; starts the download if it can.
    pub fn wait_for_model(&mut self, path: PathBuf) {
        self.waiting.push(path);
        if matches!(
            self.state,
            ModelState::Missing { .. } | ModelState::Failed(_)
        ) {
            self.start_download();
        }
    }

    /// Applies the store's events; returns log lines `(text, is_error)` and whether the model
    /// just became ready.
    pub fn drain(&mut self) -> (Vec<(String, bool)>, bool) {
        let mut log = Vec::new();
        let mut became_ready = false;
        let events: Vec<StoreEvent> = self.store.try_events().collect();
        for event in events {
            match event {
                StoreEvent::Status(status) => {
                    let files: Vec<String> = status
                        .files
                        .iter()
                        .filter(|f| !matches!(f.state, FileState::Verified(_)))
                        .map(|f| f.name.clone())
                        .collect();
                    self.state = if status.offline {
                        ModelState::Offline(
                            StoreError::NotCached {
                                offline: true,
                                folder: status.dir,
                                repo: status.repo,
                                revision: status.revision,
                                endpoint: self.store.config().endpoint.clone(),
                                missing: files,
                            }
                            .to_string(),
                        )
                    } else {
                        ModelState::Missing {
                            total_bytes: self.store.config().known_total_bytes(),
                            files,
                        }
                    };
                    if !self.waiting.is_empty() {
                        self.start_download();
                    }
                }
                StoreEvent::Progress(p) => {
                    if matches!(self.state, ModelState::Downloading(_)) {
                        self.state = ModelState::Downloading(Some(p));
                    }
                }
                StoreEvent::Ready(model) => {
                    log.push((
                        format!(
                            "model ready: {} (commit {})",
                            model.dir.display(),
                            model.commit
                        ),
                        false,
                    ));
                    self.state = ModelState::Ready(model.dir);
                    became_ready = true;
                }
                StoreEvent::Failed(err) => {
                    let text = err.to_string();
                    log.push((text.clone(), true));
                    self.state = match err {
                        StoreError::NotCached { offline: true, .. } => ModelState::Offline(text),
                        _ => ModelState::Failed(text),
                    };
                }
                StoreEvent::Cancelled => {
                    log.push((
                        "model download cancelled; it resumes where it stopped".to_owned(),
                        false,
                    ));
                    self.state = ModelState::Missing {
                        total_bytes: self.store.config().known_total_bytes(),
                        files: self.store.config().files.clone(),
                    };
                }
            }
        }
        (log, became_ready)
    }

    /// Takes the waiting files (to queue them now).
    pub fn take_waiting(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.waiting)
    }
}
