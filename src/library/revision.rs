//! Which model made a transcript: the revision stored with every job.
//!
//! * The release model (from the model store) is stored as the commit hash of its snapshot in
//!   the Hugging Face cache (`snapshots/<commit>/`; a branch or tag asked for is resolved
//!   through `refs/<name>`, as [`crate::model_store::cache::RepoCache::commit_for`] does).
//! * A model folder inside that cache layout (`…/models--<org>--<name>/snapshots/<commit>`,
//!   also through a symlink) is stored as its commit hash too.
//! * Any other folder is stored as `content-sha256:<hex>`: SHA-256 over, for each regular file
//!   directly in the folder in name order, its name, its size and its bytes (files above
//!   [`WHOLE_FILE_BYTES`] contribute their first and last [`SAMPLE_BYTES`] only, so a 900 MB
//!   checkpoint costs 2 MiB of reading). Any edit to a config, tokenizer or weights file, or a
//!   replaced checkpoint, changes it. The result is kept per process and read again only when
//!   a file's size or modification time changes.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use sha2::{Digest as _, Sha256};

use crate::model::files::HF_REPO_ID;
use crate::model_store::StoreConfig;
use crate::model_store::cache::is_commit_hash;

/// Files up to this size are hashed whole.
pub const WHOLE_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes hashed from each end of a larger file.
pub const SAMPLE_BYTES: u64 = 1024 * 1024;

/// The prefix of a folder's content fingerprint.
pub const FINGERPRINT_PREFIX: &str = "content-sha256:";

/// Name, size and modification time of each file: what a cached fingerprint is checked against.
type Stamps = Vec<(std::ffi::OsString, u64, u128)>;

static FINGERPRINTS: Mutex<Option<HashMap<PathBuf, (Stamps, String)>>> = Mutex::new(None);

/// The revision of `model` as [`super::model_text`] writes it: the release model's repository
/// id, or a folder. Never fails: what cannot be read is said in the text.
pub fn model_revision(model: &str) -> String {
    if model == HF_REPO_ID {
        return release_revision(&StoreConfig::from_env());
    }
    folder_revision(Path::new(model))
}

/// The commit the store's cache resolves the configured revision to (the revision as asked,
/// with "not downloaded", when the cache does not know it).
pub fn release_revision(config: &StoreConfig) -> String {
    config
        .cache()
        .commit_for(&config.revision)
        .unwrap_or_else(|| format!("{} (not downloaded)", config.revision))
}

/// The commit of a snapshot folder in the Hugging Face cache layout, else the folder's content
/// fingerprint.
pub fn folder_revision(dir: &Path) -> String {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    if let Some(commit) = snapshot_commit(&real).or_else(|| snapshot_commit(dir)) {
        return commit;
    }
    match fingerprint(&real) {
        Ok(fp) => fp,
        Err(err) => format!("unreadable: {}: {err}", dir.display()),
    }
}

/// `<commit>` of `…/models--<org>--<name>/snapshots/<commit>`.
fn snapshot_commit(dir: &Path) -> Option<String> {
    let mut parts = dir.components().rev();
    let commit = match parts.next()? {
        Component::Normal(c) => c.to_str()?.to_owned(),
        _ => return None,
    };
    let snapshots = parts.next()?;
    let repo = parts.next()?;
    let in_layout = snapshots.as_os_str() == "snapshots"
        && repo
            .as_os_str()
            .to_str()
            .is_some_and(|r| r.starts_with("models--"));
    (in_layout && is_commit_hash(&commit)).then(|| commit.to_ascii_lowercase())
}

fn stamps(dir: &Path) -> std::io::Result<Stamps> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Follows symlinks: a folder of links is fingerprinted by what they point at.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        out.push((entry.file_name(), meta.len(), mtime));
    }
    out.sort();
    Ok(out)
}

/// `content-sha256:<hex>` of the folder (see the module docs).
pub fn fingerprint(dir: &Path) -> std::io::Result<String> {
    let now = stamps(dir)?;
    if let Ok(cache) = FINGERPRINTS.lock()
        && let Some((seen, fp)) = cache.as_ref().and_then(|c| c.get(dir))
        && *seen == now
    {
        return Ok(fp.clone());
    }
    let mut hasher = Sha256::new();
    for (file_name, size, _) in &now {
        let name = file_name.as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(size.to_le_bytes());
        if *size <= WHOLE_FILE_BYTES {
            hasher.update(std::fs::read(dir.join(file_name))?);
        } else {
            let mut file = std::fs::File::open(dir.join(file_name))?;
            let mut buf = Vec::new();
            (&mut file).take(SAMPLE_BYTES).read_to_end(&mut buf)?;
            hasher.update(&buf);
            buf.clear();
            file.seek(SeekFrom::Start(size - SAMPLE_BYTES))?;
            file.take(SAMPLE_BYTES).read_to_end(&mut buf)?;
            hasher.update(&buf);
        }
    }
    let fp = format!(
        "{FINGERPRINT_PREFIX}{}",
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if let Ok(mut cache) = FINGERPRINTS.lock() {
        cache
            .get_or_insert_with(HashMap::new)
            .insert(dir.to_owned(), (now, fp.clone()));
    }
    Ok(fp)
}
