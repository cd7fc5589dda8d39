//! The Hugging Face cache layout, as `huggingface_hub` writes it, so Python tools share the files:
//!
//! ```text
//! <hub>/models--<owner>--<name>/
//!     blobs/<etag>                      the file's bytes (etag: sha256 for LFS files, git blob sha1 otherwise)
//!     blobs/<etag>.incomplete           a download in progress (resumed with an HTTP Range)
//!     snapshots/<commit>/<file>         a relative symlink to ../../blobs/<etag>
//!     refs/<branch>                     the commit a branch or tag resolved to
//!     .gpuscribe/verified/<commit>/<file>.json   our record that the file was verified
//! <hub>/.locks/models--<owner>--<name>/<etag>.lock   held while a blob is written
//! ```
//!
//! A snapshot entry exists only once its bytes matched the hub's size and hash. The record keeps
//! the size, modification time and sha256 of the verified file: while size and mtime still
//! match, the file is not hashed again.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha1::Digest as _;

/// Paths of one repository in a hub cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoCache {
    /// The hub cache root (`$HF_HOME/hub`).
    pub hub: PathBuf,
    /// `<hub>/models--owner--name`.
    pub repo_dir: PathBuf,
    folder: String,
}

impl RepoCache {
    /// The cache of model repository `repo` ("owner/name") under `hub`.
    pub fn new(hub: &Path, repo: &str) -> Self {
        let folder = format!("models--{}", repo.replace('/', "--"));
        Self {
            hub: hub.to_owned(),
            repo_dir: hub.join(&folder),
            folder,
        }
    }

    /// `blobs/<etag>`.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.repo_dir.join("blobs").join(etag)
    }

    /// `blobs/<etag>.incomplete`.
    pub fn partial(&self, etag: &str) -> PathBuf {
        self.repo_dir
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    /// `snapshots/<commit>`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.repo_dir.join("snapshots").join(commit)
    }

    /// `refs/<name>`.
    pub fn ref_file(&self, name: &str) -> PathBuf {
        self.repo_dir.join("refs").join(name)
    }

    /// `<hub>/.locks/models--owner--name/<etag>.lock`.
    pub fn lock_file(&self, etag: &str) -> PathBuf {
        self.hub
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"))
    }

    fn record_file(&self, commit: &str, file: &str) -> PathBuf {
        self.repo_dir
            .join(".gpuscribe")
            .join("verified")
            .join(commit)
            .join(format!("{file}.json"))
    }

    /// The commit `revision` stands for without asking the hub: itself if it is a commit hash,
    /// else what `refs/<revision>` says.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_owned());
        }
        let text = std::fs::read_to_string(self.ref_file(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_owned())
    }

    /// Writes `refs/<name>` = `commit` (not for commit hashes, as `huggingface_hub` does).
    pub fn write_ref(&self, name: &str, commit: &str) -> io::Result<()> {
        if name == commit {
            return Ok(());
        }
        let path = self.ref_file(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, commit)
    }

    /// Makes `snapshots/<commit>/<file>` point at `blobs/<etag>` (a relative symlink, or a copy
    /// where symlinks cannot be made).
    pub fn link_snapshot(&self, commit: &str, file: &str, etag: &str) -> io::Result<PathBuf> {
        let dir = self.snapshot_dir(commit);
        std::fs::create_dir_all(&dir)?;
        let link = dir.join(file);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        #[cfg(unix)]
        {
            let target = Path::new("../../blobs").join(etag);
            if std::os::unix::fs::symlink(&target, &link).is_ok() {
                return Ok(link);
            }
        }
        std::fs::copy(self.blob(etag), &link)?;
        Ok(link)
    }

    /// The blob's etag a snapshot entry points at, if it is a symlink into `blobs/`.
    pub fn linked_etag(&self, commit: &str, file: &str) -> Option<String> {
        let target = std::fs::read_link(self.snapshot_dir(commit).join(file)).ok()?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
    }

    /// Removes a snapshot entry (and the verification record) of a file found bad.
    pub fn forget(&self, commit: &str, file: &str) {
        std::fs::remove_file(self.snapshot_dir(commit).join(file)).ok();
        std::fs::remove_file(self.record_file(commit, file)).ok();
    }

    /// The verification record of `file`, if it still describes the file on disk.
    pub fn valid_record(&self, commit: &str, file: &str) -> Option<VerifiedRecord> {
        let text = std::fs::read_to_string(self.record_file(commit, file)).ok()?;
        let record: VerifiedRecord = serde_json::from_str(&text).ok()?;
        let now = FileStamp::of(&self.snapshot_dir(commit).join(file)).ok()?;
        let linked = self.linked_etag(commit, file);
        let same_blob = linked.is_none_or(|etag| etag == record.etag);
        (now == record.stamp && same_blob).then_some(record)
    }

    /// Records that `file` of `commit` was verified.
    pub fn write_record(
        &self,
        commit: &str,
        file: &str,
        record: &VerifiedRecord,
    ) -> io::Result<()> {
        let path = self.record_file(commit, file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }
}

/// Size and modification time of a file (following symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

impl FileStamp {
    /// The stamp of `path`.
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Self {
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// What was verified about a cached file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedRecord {
    /// The blob's etag (its file name in `blobs/`).
    pub etag: String,
    /// Size and mtime when it was verified.
    pub stamp: FileStamp,
    /// sha256 of the bytes, lowercase hex.
    pub sha256: String,
    /// How it was checked: "sha256" (LFS), "git-sha1" (a git blob) or "size".
    pub checked_by: String,
}

/// True for a 40-hex-digit commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Incremental sha256 and git blob sha1 of one file's bytes.
pub struct Hashes {
    sha256: sha2::Sha256,
    git_sha1: sha1::Sha1,
    len: u64,
}

impl Hashes {
    /// Hashes for a file of `total` bytes (the git blob header needs the length up front).
    pub fn new(total: u64) -> Self {
        let mut git_sha1 = sha1::Sha1::new();
        git_sha1.update(format!("blob {total}\0").as_bytes());
        Self {
            sha256: sha2::Sha256::new(),
            git_sha1,
            len: 0,
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.git_sha1.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before any byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(sha256, git blob sha1)`, lowercase hex.
    pub fn finish(self) -> (String, String) {
        (hex(&self.sha256.finalize()), hex(&self.git_sha1.finalize()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads `path` through `hashes`, checking `cancelled` between chunks.
pub fn hash_file(path: &Path, hashes: &mut Hashes, cancelled: &dyn Fn() -> bool) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hashes.update(&buf[..n]);
    }
}

/// How the bytes of a file are checked against an etag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The etag is the sha256 (LFS files).
    Sha256,
    /// The etag is the git blob sha1 (files kept in git).
    GitSha1,
    /// The etag is neither; only the size is checked.
    SizeOnly,
}

impl Check {
    /// The check an etag allows: a 64-hex etag is a sha256 (LFS), a 40-hex one a git blob hash.
    pub fn for_etag(etag: &str, lfs: bool) -> Self {
        let hexdigits = etag.bytes().all(|b| b.is_ascii_hexdigit());
        match etag.len() {
            64 if hexdigits => Self::Sha256,
            40 if hexdigits && !lfs => Self::GitSha1,
            _ => Self::SizeOnly,
        }
    }

    /// The record's name of this check.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::GitSha1 => "git-sha1",
            Self::SizeOnly => "size",
        }
    }

    /// `None` when `(sha256, git_sha1)` match `etag`, else what was found.
    pub fn mismatch(self, etag: &str, sha256: &str, git_sha1: &str) -> Option<String> {
        let got = match self {
            Self::Sha256 => sha256,
            Self::GitSha1 => git_sha1,
            Self::SizeOnly => return None,
        };
        (!got.eq_ignore_ascii_case(etag)).then(|| got.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_hash_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = Hashes::new(6);
        h.update(b"hello\n");
        let (sha256, git) = h.finish();
        assert_eq!(git, "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }

    #[test]
    fn etag_kinds() {
        assert_eq!(Check::for_etag(&"a".repeat(64), true), Check::Sha256);
        assert_eq!(Check::for_etag(&"a".repeat(40), false), Check::GitSha1);
        assert_eq!(Check::for_etag("W/abc-12", false), Check::SizeOnly);
    }

    #[test]
    fn layout_matches_huggingface_hub() {
        let c = RepoCache::new(Path::new("/h"), "FunAudioLLM/SenseVoiceSmall");
        assert_eq!(
            c.repo_dir,
            Path::new("/h/models--FunAudioLLM--SenseVoiceSmall")
        );
        assert_eq!(
            c.lock_file("e"),
            Path::new("/h/.locks/models--FunAudioLLM--SenseVoiceSmall/e.lock")
        );
        assert_eq!(
            c.partial("e"),
            Path::new("/h/models--FunAudioLLM--SenseVoiceSmall/blobs/e.incomplete")
        );
    }
}
