//! The transcript library: every job, its result as it arrives, and every recording, in one
//! SQLite file (`library.sqlite3` in the app's data folder, WAL, bundled SQLite with FTS5).
//!
//! Nothing the user transcribed or recorded is only in memory: a job is a row from the moment it
//! is queued, segments are written as the engine reports them, the transcript when it is done.
//! Several processes (the window, `gpuscribe transcribe`) write one file at a time through
//! SQLite's locking with a busy timeout.
//!
//! **Crash recovery.** Every process that opens the library registers a session and holds an
//! exclusive lock on `sessions/<id>.lock` for as long as it runs. Whoever opens the library next
//! finds sessions whose lock is free (their process is gone, `kill -9` included) and marks their
//! queued and running jobs as [`JobState::Interrupted`]; the window offers Resume for those.
//!
//! **Corruption.** A file SQLite says is not a database (or is corrupt) is moved aside as
//! `library.sqlite3.corrupt-<unix ms>` and a new library is started; [`OpenReport`] says so.
//!
//! Threads: a [`Library`] is one connection, used on one thread. The window talks to it through
//! [`service::LibraryService`] (its own `library` thread, bounded channels); the CLI uses it
//! directly.

mod parts;
mod pieces;
mod query;
pub mod recorder;
pub mod revision;
mod schema;
pub mod service;
mod store;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, Transaction, params};
use serde::Serialize;

pub use query::{fts_query, search_form};
pub use recorder::{CliHistory, JobRecorder, device_request_text, model_text};
pub use revision::model_revision;
pub use store::{NewJob, RecordingInfo, StoredJob};

/// The library's file name inside the data folder.
pub const LIBRARY_FILE: &str = "library.sqlite3";

/// Environment variable that moves the data folder (library, recordings, session locks).
pub const DATA_DIR_ENV: &str = "GPUSCRIBE_DATA_DIR";

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Soft-deleted transcripts older than this are removed for good when a library opens.
pub const PURGE_DELETED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The app's data folder: `$GPUSCRIBE_DATA_DIR`, else `~/.local/share/gpuscribe` (the XDG data
/// folder), else a folder in the temp dir.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("io.github", "gpuscribe", "GpuScribe").map_or_else(
        || std::env::temp_dir().join("gpuscribe"),
        |dirs| dirs.data_dir().to_path_buf(),
    )
}

/// The library file in the data folder.
pub fn default_library_path() -> PathBuf {
    data_dir().join(LIBRARY_FILE)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why the library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// SQLite refused.
    #[error("the transcript library {path}: {source}")]
    Sqlite {
        /// The library file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file next to the library could not be made or moved.
    #[error("the transcript library {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was written by a newer GPU Scribe; it is left untouched.
    #[error(
        "the transcript library {path} has schema version {found}, newer than this GPU Scribe knows ({known}); it was left untouched"
    )]
    TooNew {
        /// The library file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// No transcript with this id.
    #[error("no transcript with id {0} in the library")]
    NotFound(i64),
}

/// A job's state in the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// A recording in progress (transcribed once it stops).
    Recording,
    /// Waiting for the engine.
    Queued,
    /// Being transcribed.
    Running,
    /// Finished with a transcript.
    Done,
    /// Failed (the error says why).
    Failed,
    /// Cancelled by the user.
    Cancelled,
    /// Its process ended before it finished (crash, kill, closed window); can be resumed.
    Interrupted,
}

impl JobState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    /// Parses the stored text (unknown text reads as failed).
    pub fn parse(text: &str) -> Self {
        match text {
            "recording" => Self::Recording,
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "cancelled" => Self::Cancelled,
            "interrupted" => Self::Interrupted,
            _ => Self::Failed,
        }
    }

    /// True for recording, queued and running.
    pub fn is_unfinished(self) -> bool {
        matches!(self, Self::Recording | Self::Queued | Self::Running)
    }
}

/// One row of the history list (newest first).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// The library's id (what `gpuscribe history export ID` takes).
    pub id: i64,
    /// When the job was queued, ms since the epoch.
    pub created_at_ms: i64,
    /// The audio file (in JSON as text; a name that is not UTF-8 is shown with U+FFFD).
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Where it stands.
    pub state: JobState,
    /// Detected language once done, else the requested one.
    pub language: String,
    /// Where it ran ("CPU", "GPU 0"), once started.
    pub device: Option<String>,
    /// Audio length, once decoded.
    pub duration_s: Option<f64>,
    /// The start of the text.
    pub preview: String,
    /// The error of a failed job.
    pub error: Option<String>,
    /// The recording this job transcribes, if any.
    pub recording: Option<RecordingInfo>,
}

/// Serialises a path as text even when it is not UTF-8 (serde's own refuses such paths).
pub fn lossy_path<S: serde::Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.to_string_lossy())
}

/// What happened while opening the library, for the user.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// The file was not a usable database: it was moved here and a new library started.
    pub corrupt_backup: Option<PathBuf>,
    /// Jobs of earlier processes that had not finished, now marked interrupted.
    pub interrupted: usize,
}

impl OpenReport {
    /// Lines to tell the user (empty when all was well).
    pub fn messages(&self, path: &Path) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(backup) = &self.corrupt_backup {
            out.push(format!(
                "the transcript library {} was damaged: it was kept as {} and a new, empty library was started",
                path.display(),
                backup.display()
            ));
        }
        if self.interrupted > 0 {
            out.push(format!(
                "{} transcription(s) were interrupted when GPU Scribe last stopped; they are in History with Resume",
                self.interrupted
            ));
        }
        out
    }
}

/// One open library: a connection and this process's session.
pub struct Library {
    conn: Connection,
    path: PathBuf,
    session_id: i64,
    /// Held (locked) while this session lives; its lock is what tells others we are alive.
    _session_lock: Option<File>,
    lock_path: Option<PathBuf>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

fn is_corruption(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

impl Library {
    /// Opens (or creates) the library in the data folder.
    pub fn open_default() -> Result<(Self, OpenReport), LibraryError> {
        Self::open(&default_library_path())
    }

    /// Opens (or creates) the library at `path`, migrates it, registers this process's session
    /// and marks jobs of dead sessions interrupted. A damaged file is moved aside (see the module
    /// docs); a file from a newer version is left alone and refused.
    pub fn open(path: &Path) -> Result<(Self, OpenReport), LibraryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LibraryError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut report = OpenReport::default();
        let conn = match Self::connect(path) {
            Ok(conn) => conn,
            Err(LibraryError::Sqlite { source, .. }) if is_corruption(&source) => {
                let backup = move_aside(path)?;
                tracing::warn!(
                    "the transcript library {} is damaged ({source}); kept as {}",
                    path.display(),
                    backup.display()
                );
                report.corrupt_backup = Some(backup);
                Self::connect(path)?
            }
            Err(err) => return Err(err),
        };
        let mut library = Self {
            conn,
            path: path.to_owned(),
            session_id: 0,
            _session_lock: None,
            lock_path: None,
        };
        library.start_session()?;
        report.interrupted = library.recover_dead_sessions()?;
        library.purge_deleted()?;
        Ok((library, report))
    }

    fn connect(path: &Path) -> Result<Connection, LibraryError> {
        let sql = |source| LibraryError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        // Reading the version makes SQLite read the header: a non-database fails here. A file
        // from a newer version is refused before anything (the journal mode too) is changed.
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if found > schema::latest_version() {
            return Err(LibraryError::TooNew {
                path: path.to_owned(),
                found,
                known: schema::latest_version(),
            });
        }
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(sql)?;
        schema::migrate(&mut conn, path)?;
        // A damaged page elsewhere shows up here rather than in the middle of a write later.
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(sql)?;
        if check != "ok" {
            return Err(sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        Ok(conn)
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's session id.
    pub fn session_id(&self) -> i64 {
        self.session_id
    }

    fn sql(&self, source: rusqlite::Error) -> LibraryError {
        LibraryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one transaction, committed when `f` succeeds and rolled back when it fails.
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, LibraryError> {
        let tx = self.conn.transaction().map_err(|e| LibraryError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        let result = f(&tx).and_then(|value| tx.commit().map(|()| value));
        result.map_err(|e| self.sql(e))
    }

    fn sessions_dir(&self) -> PathBuf {
        self.path.with_file_name("sessions")
    }

    fn start_session(&mut self) -> Result<(), LibraryError> {
        // Lock first, then register: a session row whose lock is not yet held would look dead.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lock_name = format!("{}-{}-{n}.lock", std::process::id(), now_ms());
        let dir = self.sessions_dir();
        let lock_path = dir.join(&lock_name);
        let lock = std::fs::create_dir_all(&dir)
            .and_then(|()| File::create_new(&lock_path))
            .and_then(|file| file.lock().map(|()| file));
        match lock {
            Ok(file) => {
                self._session_lock = Some(file);
                self.lock_path = Some(lock_path);
            }
            // Without a lock, others cannot tell we are alive and would mark our jobs
            // interrupted: say so, but keep recording (nothing is lost, Resume redoes them).
            Err(err) => tracing::warn!(
                "cannot lock {} ({err}); other GPU Scribe processes may list this one's jobs as interrupted",
                lock_path.display()
            ),
        }
        self.conn
            .execute(
                "INSERT INTO sessions (pid, started_at_ms, lock_name) VALUES (?1, ?2, ?3)",
                params![std::process::id(), now_ms(), lock_name],
            )
            .map_err(|e| self.sql(e))?;
        self.session_id = self.conn.last_insert_rowid();
        Ok(())
    }

    /// True when the session's process is gone: its lock file is missing or can be locked.
    fn session_is_dead(&self, lock_name: &str) -> bool {
        let lock_path = self.sessions_dir().join(lock_name);
        let Ok(file) = File::options().read(true).write(true).open(&lock_path) else {
            return true;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                true
            }
            Err(_) => false,
        }
    }

    /// Marks unfinished jobs and recordings of dead sessions interrupted; returns the jobs marked.
    /// A recording cut off by its process's death has its WAV header repaired first (see
    /// [`crate::audio::repair_wav`]), so it can be resumed as a transcription.
    pub fn recover_dead_sessions(&mut self) -> Result<usize, LibraryError> {
        let others: Vec<(i64, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, lock_name FROM sessions WHERE id != ?1")
                .map_err(|e| self.sql(e))?;
            stmt.query_map([self.session_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(|e| self.sql(e))?
        };
        let mut marked = 0;
        for (session, lock_name) in others {
            if !self.session_is_dead(&lock_name) {
                continue;
            }
            self.close_recordings(session, true)?;
            marked += self.end_session(session)?;
            let _ = std::fs::remove_file(self.sessions_dir().join(&lock_name));
        }
        Ok(marked)
    }

    /// Marks a session's unfinished jobs and recordings interrupted and forgets the session.
    fn end_session(&mut self, session: i64) -> Result<usize, LibraryError> {
        self.in_transaction(|tx| {
            let marked = tx.execute(
                "UPDATE jobs SET state = 'interrupted', finished_at_ms = ?2
                 WHERE session_id = ?1 AND state IN ('recording', 'queued', 'running')",
                params![session, now_ms()],
            )?;
            tx.execute(
                "UPDATE recordings SET state = 'interrupted'
                 WHERE session_id = ?1 AND state = 'recording'",
                [session],
            )?;
            tx.execute("DELETE FROM sessions WHERE id = ?1", [session])?;
            Ok(marked)
        })
    }

    fn purge_deleted(&mut self) -> Result<(), LibraryError> {
        let cutoff = now_ms() - i64::try_from(PURGE_DELETED_AFTER.as_millis()).unwrap_or(0);
        let ids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id FROM jobs WHERE deleted_at_ms IS NOT NULL AND deleted_at_ms < ?1",
                )
                .map_err(|e| self.sql(e))?;
            stmt.query_map([cutoff], |r| r.get(0))
                .and_then(Iterator::collect)
                .map_err(|e| self.sql(e))?
        };
        for id in ids {
            self.purge(id)?;
        }
        Ok(())
    }

    /// Whether a session row exists (tests).
    pub fn has_session(&self, session_id: i64) -> Result<bool, LibraryError> {
        self.conn
            .query_row("SELECT 1 FROM sessions WHERE id = ?1", [session_id], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.sql(e))
    }
}

impl Drop for Library {
    /// A clean exit: this session's unfinished jobs become interrupted now (not at the next
    /// start), and its lock file goes.
    fn drop(&mut self) {
        // A recording still running is finalised by its recorder: only its parts are listed.
        if let Err(err) = self
            .close_recordings(self.session_id, false)
            .and_then(|()| self.end_session(self.session_id).map(|_| ()))
        {
            tracing::warn!("closing the transcript library: {err}");
        }
        if let Some(lock_path) = &self.lock_path {
            let _ = std::fs::remove_file(lock_path);
        }
    }
}

/// Moves a damaged library (and its WAL and shared-memory files) aside; returns the new name.
fn move_aside(path: &Path) -> Result<PathBuf, LibraryError> {
    let name = path
        .file_name()
        .map_or_else(|| LIBRARY_FILE.into(), |n| n.to_string_lossy().into_owned());
    let mut backup = path.with_file_name(format!("{name}.corrupt-{}", now_ms()));
    let mut n = 1;
    while backup.exists() {
        n += 1;
        backup = path.with_file_name(format!("{name}.corrupt-{}-{n}", now_ms()));
    }
    std::fs::rename(path, &backup).map_err(|source| LibraryError::Io {
        path: path.to_owned(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = path.with_file_name(format!("{name}{suffix}"));
        if side.exists() {
            let kept = backup.with_file_name(format!(
                "{}{suffix}",
                backup
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
            let _ = std::fs::rename(&side, kept);
        }
    }
    Ok(backup)
}

#[cfg(test)]
mod parts_tests;
#[cfg(test)]
mod pieces_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

/// `ms` since the epoch as `2026-12-01 08:45:03` (UTC).
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
