//! Where the model's files come from when no local folder is set: the Hugging Face cache,
//! downloading on first use (unless `HF_HUB_OFFLINE` is set).

use std::path::PathBuf;

use crate::model::files::{ModelSource, ResolveOptions, resolve as resolve_files};

/// Finds (downloading if needed and allowed) the release model and returns its folder.
pub(super) fn resolve() -> anyhow::Result<PathBuf> {
    let mut last_percent = None;
    let files = resolve_files(
        &ModelSource::default(),
        &ResolveOptions::default(),
        &mut |p| {
            let percent = (p.done_bytes * 100).checked_div(p.total_bytes);
            if percent != last_percent {
                last_percent = percent;
                tracing::info!(
                    "downloading {}: {} / {} bytes",
                    p.file,
                    p.done_bytes,
                    p.total_bytes
                );
            }
        },
    )?;
    // Every file of a hub snapshot sits in one folder.
    files
        .config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{} has no parent folder", files.config.display()))
}
