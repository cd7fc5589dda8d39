//! Getting the files into the cache: metadata from the hub, then for each file the cached copy
//! (verified once) or a download into `blobs/<etag>.incomplete`, resumed with a Range after a
//! cut, retried with back-off, and moved into place only when size and hash match.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cache::{Check, FileStamp, Hashes, RepoCache, VerifiedRecord, hash_file};
use super::hub::{FileMeta, Hub};
use super::{CachedFile, FileState, ReadyModel, StoreConfig, StoreError};

/// Bytes done so far, as the fetch reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteCount {
    /// The file being fetched or checked.
    pub file: String,
    /// Bytes of that file done.
    pub file_done: u64,
    /// That file's size.
    pub file_total: u64,
    /// Bytes of all files done (files already cached count as done).
    pub done: u64,
    /// Bytes of all files.
    pub total: u64,
}

/// One fetch of every file.
pub struct Fetch<'a> {
    config: &'a StoreConfig,
    cache: RepoCache,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(&ByteCount),
}

impl<'a> Fetch<'a> {
    /// A fetch for `config`; `cancel` stops it between chunks.
    pub fn new(
        config: &'a StoreConfig,
        cancel: &'a AtomicBool,
        progress: &'a mut dyn FnMut(&ByteCount),
    ) -> Self {
        Self {
            cache: RepoCache::new(&config.hub_dir, &config.repo),
            config,
            cancel,
            progress,
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Makes every file present and verified; offline, checks the cache only.
    pub fn run(&mut self) -> Result<ReadyModel, StoreError> {
        if self.config.offline {
            return cached_model(self.config, Rehash::Unrecorded, self.cancel);
        }
        let hub = self.config.hub();
        let mut metas = Vec::with_capacity(self.config.files.len());
        for file in &self.config.files {
            metas.push(self.retrying(|| hub.meta(&self.config.revision, file))?);
        }
        // A pinned commit names the snapshot; a branch or tag goes by what the hub says.
        let commit = metas
            .first()
            .map(|m| {
                if super::cache::is_commit_hash(&self.config.revision) {
                    if !m.commit.eq_ignore_ascii_case(&self.config.revision) {
                        tracing::warn!(
                            "the hub says {} is commit {}",
                            self.config.revision,
                            m.commit
                        );
                    }
                    self.config.revision.clone()
                } else {
                    m.commit.clone()
                }
            })
            .ok_or_else(|| StoreError::Metadata {
                repo: self.config.repo.clone(),
                file: String::new(),
                url: self.config.endpoint.clone(),
                message: "no files to fetch".to_owned(),
            })?;
        let total = metas.iter().map(|m| m.size).sum();
        let mut done = 0;
        let mut files = Vec::with_capacity(metas.len());
        for mut meta in metas {
            // Every file comes from the commit the first one resolved to.
            meta.commit.clone_from(&commit);
            files.push(self.ensure_file(&hub, &meta, done, total)?);
            done += meta.size;
        }
        self.cache
            .write_ref(&self.config.revision, &commit)
            .map_err(|e| io_err(&self.cache.ref_file(&self.config.revision), &e))?;
        Ok(ReadyModel {
            dir: self.cache.snapshot_dir(&commit),
            commit,
            files,
        })
    }

    fn report(&mut self, meta: &FileMeta, file_done: u64, done_before: u64, total: u64) {
        (self.progress)(&ByteCount {
            file: meta.file.clone(),
            file_done,
            file_total: meta.size,
            done: done_before + file_done,
            total,
        });
    }

    /// One file: the recorded copy, a cached blob verified now, or a download.
    fn ensure_file(
        &mut self,
        hub: &Hub,
        meta: &FileMeta,
        done_before: u64,
        total: u64,
    ) -> Result<CachedFile, StoreError> {
        let path = self.cache.snapshot_dir(&meta.commit).join(&meta.file);
        if let Some(record) = self.cache.valid_record(&meta.commit, &meta.file)
            && record.etag == meta.etag
            && record.stamp.size == meta.size
        {
            self.report(meta, meta.size, done_before, total);
            return Ok(cached_file(&meta.file, path, FileState::Verified(record)));
        }
        let blob = self.cache.blob(&meta.etag);
        if blob.is_file() {
            let mut hashes = Hashes::new(meta.size);
            hash_file(&blob, &mut hashes, &|| self.cancelled())
                .map_err(|e| self.io_or_cancel(&blob, &e))?;
            match verify(meta, hashes, &self.config.repo) {
                Ok((sha256, check)) => {
                    let record = self.install(meta, &sha256, check)?;
                    self.report(meta, meta.size, done_before, total);
                    return Ok(cached_file(&meta.file, path, FileState::Verified(record)));
                }
                Err(err) => {
                    tracing::warn!("{err}; fetching it again");
                    self.cache.forget(&meta.commit, &meta.file);
                    std::fs::remove_file(&blob).map_err(|e| io_err(&blob, &e))?;
                }
            }
        }
        let (sha256, check) = self.download(hub, meta, done_before, total)?;
        let record = self.install(meta, &sha256, check)?;
        Ok(cached_file(&meta.file, path, FileState::Verified(record)))
    }

    /// Links the verified blob into the snapshot and records it.
    fn install(
        &self,
        meta: &FileMeta,
        sha256: &str,
        check: Check,
    ) -> Result<VerifiedRecord, StoreError> {
        let link = self
            .cache
            .link_snapshot(&meta.commit, &meta.file, &meta.etag)
            .map_err(|e| io_err(&self.cache.snapshot_dir(&meta.commit), &e))?;
        let stamp = FileStamp::of(&link).map_err(|e| io_err(&link, &e))?;
        let record = VerifiedRecord {
            etag: meta.etag.clone(),
            stamp,
            sha256: sha256.to_owned(),
            checked_by: check.name().to_owned(),
        };
        self.cache
            .write_record(&meta.commit, &meta.file, &record)
            .map_err(|e| io_err(&link, &e))?;
        Ok(record)
    }

    /// Downloads into the partial file (resuming), then verifies and moves it to `blobs/`.
    fn download(
        &mut self,
        hub: &Hub,
        meta: &FileMeta,
        done_before: u64,
        total: u64,
    ) -> Result<(String, Check), StoreError> {
        let lock_path = self.cache.lock_file(&meta.etag);
        let _lock = lock(&lock_path, &meta.file)?;
        let partial = self.cache.partial(&meta.etag);
        if let Some(dir) = partial.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, &e))?;
        }
        let hashes = self
            .retrying_mut(|fetch| fetch.download_once(hub, meta, &partial, done_before, total))?;
        let verified = verify(meta, hashes, &self.config.repo);
        if verified.is_err() {
            std::fs::remove_file(&partial).ok();
        }
        let (sha256, check) = verified?;
        let blob = self.cache.blob(&meta.etag);
        std::fs::rename(&partial, &blob).map_err(|e| io_err(&blob, &e))?;
        Ok((sha256, check))
    }

    /// One attempt: continue the partial file from where it ends.
    fn download_once(
        &mut self,
        hub: &Hub,
        meta: &FileMeta,
        partial: &Path,
        done_before: u64,
        total: u64,
    ) -> Result<Hashes, StoreError> {
        let mut have = std::fs::metadata(partial).map_or(0, |m| m.len());
        if have > meta.size {
            truncate(partial)?;
            have = 0;
        }
        let mut hashes = Hashes::new(meta.size);
        if have > 0 {
            hash_file(partial, &mut hashes, &|| self.cancelled())
                .map_err(|e| self.io_or_cancel(partial, &e))?;
            have = hashes.len();
        }
        if have == meta.size {
            return Ok(hashes);
        }
        let Some(mut body) = hub.open(meta, have, &self.config.revision)? else {
            truncate(partial)?;
            return Err(self.network(meta, "the server refused to resume the download".to_owned()));
        };
        if body.start == 0 && have > 0 {
            // The server ignored the Range: start over.
            truncate(partial)?;
            hashes = Hashes::new(meta.size);
            have = 0;
        }
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .map_err(|e| io_err(partial, &e))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut last_report = Instant::now();
        self.report(meta, have, done_before, total);
        loop {
            if self.cancelled() {
                return Err(StoreError::Cancelled);
            }
            let n = match body.reader.read(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(self.network(
                        meta,
                        format!(
                            "the download stopped after {have} of {} bytes: {err}",
                            meta.size
                        ),
                    ));
                }
            };
            if n == 0 {
                break;
            }
            let room = usize::try_from(meta.size - have).unwrap_or(usize::MAX);
            if n > room {
                return Err(StoreError::Mismatch {
                    repo: self.config.repo.clone(),
                    file: meta.file.clone(),
                    what: "size".to_owned(),
                    expected: meta.size.to_string(),
                    got: format!("more than {}", meta.size),
                });
            }
            out.write_all(&buf[..n]).map_err(|e| io_err(partial, &e))?;
            hashes.update(&buf[..n]);
            have += n as u64;
            if last_report.elapsed() >= Duration::from_millis(100) {
                last_report = Instant::now();
                self.report(meta, have, done_before, total);
            }
        }
        out.flush().map_err(|e| io_err(partial, &e))?;
        self.report(meta, have, done_before, total);
        if have < meta.size {
            return Err(self.network(
                meta,
                format!("the connection closed after {have} of {} bytes", meta.size),
            ));
        }
        Ok(hashes)
    }

    fn network(&self, meta: &FileMeta, message: String) -> StoreError {
        StoreError::Network {
            repo: self.config.repo.clone(),
            file: meta.file.clone(),
            endpoint: self.config.endpoint.clone(),
            message,
        }
    }

    fn io_or_cancel(&self, path: &Path, err: &io::Error) -> StoreError {
        if self.cancelled() {
            StoreError::Cancelled
        } else {
            io_err(path, err)
        }
    }

    fn retrying<T>(&self, mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(err) if err.is_retryable() && attempt < self.config.retries => {
                    attempt += 1;
                    tracing::warn!("{err}; retry {attempt} of {}", self.config.retries);
                    self.back_off(attempt)?;
                }
                other => return other,
            }
        }
    }

    fn retrying_mut<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            match f(self) {
                Err(err) if err.is_retryable() && attempt < self.config.retries => {
                    attempt += 1;
                    tracing::warn!("{err}; retry {attempt} of {}", self.config.retries);
                    self.back_off(attempt)?;
                }
                other => return other,
            }
        }
    }

    /// Waits `backoff × 2^(attempt-1)` (at most 30 s), returning early on cancel.
    fn back_off(&self, attempt: u32) -> Result<(), StoreError> {
        let factor = 1u32 << attempt.saturating_sub(1).min(5);
        let wait = (self.config.backoff * factor).min(Duration::from_secs(30));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.cancelled() {
                return Err(StoreError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(20).min(wait));
        }
        Ok(())
    }
}

fn cached_file(name: &str, path: PathBuf, state: FileState) -> CachedFile {
    CachedFile {
        name: name.to_owned(),
        path,
        state,
    }
}

/// Size and hash against the hub's metadata: `(sha256, how it was checked)`.
fn verify(meta: &FileMeta, hashes: Hashes, repo: &str) -> Result<(String, Check), StoreError> {
    let len = hashes.len();
    let mismatch = |what: &str, expected: String, got: String| StoreError::Mismatch {
        repo: repo.to_owned(),
        file: meta.file.clone(),
        what: what.to_owned(),
        expected,
        got,
    };
    if len != meta.size {
        return Err(mismatch("size", meta.size.to_string(), len.to_string()));
    }
    let check = Check::for_etag(&meta.etag, meta.lfs);
    let (sha256, git_sha1) = hashes.finish();
    if let Some(got) = check.mismatch(&meta.etag, &sha256, &git_sha1) {
        return Err(mismatch(check.name(), meta.etag.clone(), got));
    }
    Ok((sha256, check))
}

/// When the cache is read without the hub, which files are hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rehash {
    /// Only files with no valid record.
    Unrecorded,
    /// Every file (`gpuscribe model verify`).
    All,
}

/// The model from the cache alone: every file present, each verified against its blob's name
/// (the hub's etag) unless a valid record says it already was.
pub fn cached_model(
    config: &StoreConfig,
    rehash: Rehash,
    cancel: &AtomicBool,
) -> Result<ReadyModel, StoreError> {
    let cache = RepoCache::new(&config.hub_dir, &config.repo);
    let commit = cache.commit_for(&config.revision);
    let missing: Vec<String> = config
        .files
        .iter()
        .filter(|f| {
            commit
                .as_ref()
                .is_none_or(|c| !cache.snapshot_dir(c).join(f).is_file())
        })
        .cloned()
        .collect();
    let commit = match commit {
        Some(commit) if missing.is_empty() => commit,
        other => {
            return Err(StoreError::NotCached {
                offline: config.offline,
                folder: cache.snapshot_dir(other.as_deref().unwrap_or(&config.revision)),
                repo: config.repo.clone(),
                revision: config.revision.clone(),
                endpoint: config.endpoint.clone(),
                missing,
            });
        }
    };
    let mut files = Vec::with_capacity(config.files.len());
    for name in &config.files {
        let path = cache.snapshot_dir(&commit).join(name);
        if rehash == Rehash::Unrecorded
            && let Some(record) = cache.valid_record(&commit, name)
        {
            files.push(cached_file(name, path, FileState::Verified(record)));
            continue;
        }
        let Some(etag) = cache.linked_etag(&commit, name) else {
            return Err(StoreError::Unverifiable {
                file: name.clone(),
                path,
            });
        };
        let size = std::fs::metadata(&path)
            .map_err(|e| io_err(&path, &e))?
            .len();
        let mut hashes = Hashes::new(size);
        hash_file(&path, &mut hashes, &|| cancel.load(Ordering::Relaxed)).map_err(|e| {
            if cancel.load(Ordering::Relaxed) {
                StoreError::Cancelled
            } else {
                io_err(&path, &e)
            }
        })?;
        let meta = FileMeta {
            file: name.clone(),
            commit: commit.clone(),
            lfs: etag.len() == 64,
            etag,
            size,
            url: String::new(),
        };
        let (sha256, check) = verify(&meta, hashes, &config.repo).map_err(|err| match err {
            StoreError::Mismatch {
                what,
                expected,
                got,
                ..
            } => StoreError::Damaged {
                file: name.clone(),
                path: path.clone(),
                what,
                expected,
                got,
            },
            other => other,
        })?;
        let record = VerifiedRecord {
            etag: meta.etag,
            stamp: FileStamp::of(&path).map_err(|e| io_err(&path, &e))?,
            sha256,
            checked_by: check.name().to_owned(),
        };
        cache
            .write_record(&commit, name, &record)
            .map_err(|e| io_err(&path, &e))?;
        files.push(cached_file(name, path, FileState::Verified(record)));
    }
    Ok(ReadyModel {
        dir: cache.snapshot_dir(&commit),
        commit,
        files,
    })
}

fn truncate(path: &Path) -> Result<(), StoreError> {
    File::create(path).map(drop).map_err(|e| io_err(path, &e))
}

fn lock(path: &Path, file: &str) -> Result<File, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, &e))?;
    }
    let handle = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, &e))?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Busy {
            file: file.to_owned(),
            lock: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(path, &e)),
    }
}

pub(super) fn io_err(path: &Path, err: &io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        message: err.to_string(),
    }
}
