//! Where the release model's files are when no local folder is set. The engine never downloads:
//! it asks the model store for the verified snapshot folder (cache and records only, no network,
//! no hashing); until the store has fetched and verified the files, loading fails with a message
//! that says how to get them. The window holds jobs until the store is ready, and
//! `gpuscribe transcribe` runs the store before it starts the engine.

use std::path::PathBuf;

use crate::model_store::{StoreConfig, ready_dir};

/// The verified release model's folder.
pub(super) fn resolve() -> anyhow::Result<PathBuf> {
    Ok(ready_dir(&StoreConfig::from_env())?)
}
