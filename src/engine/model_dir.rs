//! Where the model's files come from when no local folder is set.

use std::path::PathBuf;

/// Finds (downloading if needed and allowed) the release model folder.
pub(super) fn resolve() -> anyhow::Result<PathBuf> {
    anyhow::bail!("no model folder set: pass --model-dir DIR")
}
