//! Where the release model's files (SenseVoice-Small, or the chosen Whisper size's repository)
//! are when no local folder is set. The engine never downloads:
//! it asks the model store for the verified snapshot folder (cache and records only, no network,
//! no hashing); until the store has fetched and verified the files, loading fails with a message
//! that says how to get them. The window holds jobs until the store is ready, and
//! `gpuscribe transcribe` runs the store before it starts the engine.

use std::path::PathBuf;

use crate::model_store::{StoreConfig, ready_dir};

/// The verified folder of `engine`'s release files.
pub(super) fn resolve(engine: &super::SpeechEngine) -> anyhow::Result<PathBuf> {
    Ok(ready_dir(&StoreConfig::from_env().for_engine(engine))?)
}
