//! Writes and reads: jobs as they move, their segments and transcripts, recordings, the history
//! list and full-text search. Each write is one short transaction.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension as _, Row, params};
use serde::Serialize;

use super::query::{fts_query, search_form};
use super::{HistoryEntry, JobState, Library, LibraryError, now_ms};
use crate::engine::{DecodeSettings, FileTranscript, Segment};

/// A job to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// The audio file.
    pub path: PathBuf,
    /// Language, ITN, emoji.
    pub settings: DecodeSettings,
    /// The device asked for (`auto`, `cpu`, `cuda:0`, `all`, a UUID).
    pub device_request: String,
    /// The model: its folder, or the release model's name.
    pub model: String,
    /// The model's revision (see [`super::revision`]); `None`: found from `model` when the
    /// job is added.
    pub model_revision: Option<String>,
    /// The recording (and part, from 0) this job transcribes.
    pub recording: Option<(i64, u32)>,
    /// A recording's files, in order, transcribed as this one job with times counted from the
    /// recording's start (empty: `path` alone).
    pub parts: Vec<PathBuf>,
}

/// A recording as the history shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordingInfo {
    /// The library's id.
    pub id: i64,
    /// The first part's file.
    #[serde(serialize_with = "super::lossy_path")]
    pub path: PathBuf,
    /// The input device's name.
    pub input_device: String,
    /// Length of all parts, once stopped.
    pub duration_s: Option<f64>,
    /// Frames lost because the writer fell behind.
    pub dropped_frames: u64,
    /// Files the recording was written to (a new one past the WAV size limit).
    pub parts: u32,
    /// `recording`, `done`, `failed` or `interrupted`.
    pub state: String,
}

/// Everything stored about one job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredJob {
    /// The history row.
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// What it was asked for.
    pub settings: DecodeSettings,
    /// The device asked for.
    pub device_request: String,
    /// The model used.
    pub model: String,
    /// The model's revision: a commit hash, or the folder's content fingerprint (see
    /// [`super::revision`]); empty for jobs stored before revisions were.
    pub model_revision: String,
    /// A recording's files, in order (empty for a file that is not a recording).
    #[serde(serialize_with = "lossy_paths")]
    pub parts: Vec<PathBuf>,
    /// Where each of `parts` starts, seconds from the recording's start.
    pub part_offsets_s: Vec<f64>,
    /// Size of the audio file when queued.
    pub file_size: Option<u64>,
    /// Modification time of the audio file when queued, ms since the epoch.
    pub file_mtime_ms: Option<i64>,
    /// Wall time the engine took, ms.
    pub wall_ms: Option<f64>,
    /// The transcript: the finished one, or what has arrived so far (segments only). For a
    /// recording written in several parts, all parts joined, times counted from its start.
    pub transcript: FileTranscript,
}

fn lossy_paths<S: serde::Serializer>(paths: &[PathBuf], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}

/// The path as OS bytes, so that any file name round-trips.
#[cfg(unix)]
pub(super) fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt as _;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
pub(super) fn path_bytes(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
pub(super) fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
pub(super) fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

fn mtime_ms(meta: &std::fs::Metadata) -> Option<i64> {
    let since = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// Columns of [`entry_from_row`], in order.
const ENTRY_COLUMNS: &str = "j.id, j.created_at_ms, j.path, j.state,
    COALESCE(NULLIF(t.language, ''), j.language), j.device, j.duration_s,
    COALESCE(substr(t.text, 1, 160), ''), j.error,
    r.id, r.path, r.input_device, r.duration_s, r.dropped_frames, r.parts, r.state";

const ENTRY_FROM: &str = "jobs j LEFT JOIN transcripts t ON t.job_id = j.id
    LEFT JOIN recordings r ON r.id = j.recording_id";

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<HistoryEntry> {
    let recording = match row.get::<_, Option<i64>>(9)? {
        Some(id) => Some(RecordingInfo {
            id,
            path: path_from_bytes(row.get(10)?),
            input_device: row.get(11)?,
            duration_s: row.get(12)?,
            dropped_frames: row.get::<_, i64>(13)?.max(0).cast_unsigned(),
            parts: u32::try_from(row.get::<_, i64>(14)?).unwrap_or(1),
            state: row.get(15)?,
        }),
        None => None,
    };
    Ok(HistoryEntry {
        id: row.get(0)?,
        created_at_ms: row.get(1)?,
        path: path_from_bytes(row.get(2)?),
        state: JobState::parse(&row.get::<_, String>(3)?),
        language: row.get(4)?,
        device: row.get(5)?,
        duration_s: row.get(6)?,
        preview: row.get(7)?,
        error: row.get(8)?,
        recording,
    })
}

fn segment_from_row(row: &Row<'_>) -> rusqlite::Result<Segment> {
    Ok(Segment {
        start_s: row.get(0)?,
        end_s: row.get(1)?,
        text: row.get(2)?,
        language: row.get(3)?,
        emotion: row.get(4)?,
        event: row.get(5)?,
    })
}

impl Library {
    /// Records a queued job (with its parts, for a recording in several files); returns its id.
    pub fn add_job(&mut self, job: &NewJob) -> Result<i64, LibraryError> {
        self.insert_job(job, JobState::Queued)
    }

    pub(super) fn insert_job(
        &mut self,
        job: &NewJob,
        state: JobState,
    ) -> Result<i64, LibraryError> {
        let meta = std::fs::metadata(&job.path).ok();
        let (recording_id, recording_part) = job.recording.unzip();
        let revision = job
            .model_revision
            .clone()
            .unwrap_or_else(|| super::model_revision(&job.model));
        let session_id = self.session_id;
        self.in_transaction(|tx| {
            tx.execute(
                "INSERT INTO jobs (session_id, created_at_ms, path, path_text, file_size,
                    file_mtime_ms, language, use_itn, rich, device_request, model, recording_id,
                    recording_part, state, model_revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    session_id,
                    now_ms(),
                    path_bytes(&job.path),
                    job.path.to_string_lossy(),
                    meta.as_ref().and_then(|m| i64::try_from(m.len()).ok()),
                    meta.as_ref().and_then(mtime_ms),
                    job.settings.language,
                    job.settings.use_itn,
                    job.settings.rich,
                    job.device_request,
                    job.model,
                    recording_id,
                    recording_part,
                    state.as_str(),
                    revision,
                ],
            )?;
            let id = tx.last_insert_rowid();
            super::parts::insert_parts(tx, id, &job.parts)?;
            Ok(id)
        })
    }

    /// Puts an interrupted (or failed) job back in the queue under this session; returns what
    /// it was asked for, to queue it with the engine again.
    pub fn requeue(&mut self, id: i64) -> Result<NewJob, LibraryError> {
        let job = self.get(id)?.ok_or(LibraryError::NotFound(id))?;
        let session_id = self.session_id;
        self.in_transaction(|tx| {
            tx.execute("DELETE FROM segments WHERE job_id = ?1", [id])?;
            tx.execute("DELETE FROM timings WHERE job_id = ?1", [id])?;
            tx.execute("DELETE FROM text_pieces WHERE job_id = ?1", [id])?;
            // A recording's parts start over, their offsets read again from the files.
            tx.execute("DELETE FROM job_parts WHERE job_id = ?1", [id])?;
            super::parts::insert_parts(tx, id, &job.parts)?;
            tx.execute(
                "UPDATE jobs SET state = 'queued', session_id = ?2, error = NULL,
                    started_at_ms = NULL, finished_at_ms = NULL, wall_ms = NULL
                 WHERE id = ?1",
                params![id, session_id],
            )?;
            Ok(())
        })?;
        Ok(NewJob {
            path: job.entry.path,
            settings: job.settings,
            device_request: job.device_request,
            model: job.model,
            model_revision: Some(job.model_revision),
            recording: job.entry.recording.map(|r| (r.id, 0)),
            parts: job.parts,
        })
    }

    /// The job started on `device`.
    pub fn job_started(&mut self, id: i64, device: &str) -> Result<(), LibraryError> {
        self.conn
            .execute(
                "UPDATE jobs SET state = 'running', device = ?2,
                    started_at_ms = COALESCE(started_at_ms, ?3)
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id, device, now_ms()],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// The job's audio is decoded.
    pub fn job_decoded(&mut self, id: i64, duration_s: f64) -> Result<(), LibraryError> {
        self.conn
            .execute(
                "UPDATE jobs SET duration_s = ?2 WHERE id = ?1",
                params![id, duration_s],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Appends segments as they arrive.
    pub fn job_segments(&mut self, id: i64, segments: &[Segment]) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM segments WHERE job_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            insert_segments(tx, id, next, 0, segments)
        })
    }

    /// The job finished: its transcript replaces the segments that arrived on the way; its
    /// token and word times are kept with it.
    pub fn job_done(
        &mut self,
        id: i64,
        transcript: &FileTranscript,
        wall_ms: f64,
    ) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            write_done(tx, id, transcript, Some(wall_ms))?;
            tx.execute("DELETE FROM segments WHERE job_id = ?1", [id])?;
            insert_segments(tx, id, 0, 0, &transcript.segments)?;
            super::parts::write_timings(tx, id, 0, &transcript.tokens, &transcript.words)?;
            tx.execute("DELETE FROM text_pieces WHERE job_id = ?1", [id])?;
            Ok(())
        })
    }

    /// The job failed or was cancelled.
    pub fn job_failed(
        &mut self,
        id: i64,
        message: &str,
        cancelled: bool,
    ) -> Result<(), LibraryError> {
        let state = if cancelled { "cancelled" } else { "failed" };
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2, error = ?3, finished_at_ms = ?4
                 WHERE id = ?1 AND state != 'done'",
                params![id, state, message, now_ms()],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// The job was stopped before it finished (its engine went away); it can be resumed.
    pub fn job_interrupted(&mut self, id: i64) -> Result<(), LibraryError> {
        self.conn
            .execute(
                "UPDATE jobs SET state = 'interrupted', finished_at_ms = ?2
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id, now_ms()],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Hides a job from the history (undone by [`Library::undelete`]; removed for good after
    /// [`super::PURGE_DELETED_AFTER`]).
    pub fn delete(&mut self, id: i64) -> Result<(), LibraryError> {
        self.conn
            .execute(
                "UPDATE jobs SET deleted_at_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Brings a deleted job back.
    pub fn undelete(&mut self, id: i64) -> Result<(), LibraryError> {
        self.conn
            .execute("UPDATE jobs SET deleted_at_ms = NULL WHERE id = ?1", [id])
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Removes a job and everything stored with it.
    pub(super) fn purge(&mut self, id: i64) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            tx.execute("DELETE FROM transcript_fts WHERE rowid = ?1", [id])?;
            tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Records a recording that has started; returns its id.
    pub fn add_recording(
        &mut self,
        path: &Path,
        input_device: &str,
        sample_rate_hz: u32,
    ) -> Result<i64, LibraryError> {
        self.conn
            .execute(
                "INSERT INTO recordings (session_id, created_at_ms, path, path_text, input_device,
                    sample_rate_hz, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'recording')",
                params![
                    self.session_id,
                    now_ms(),
                    path_bytes(path),
                    path.to_string_lossy(),
                    input_device,
                    sample_rate_hz
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The recording stopped (`ok`: normally; else it failed, and what was written is kept).
    pub fn recording_finished(
        &mut self,
        id: i64,
        duration_s: f64,
        dropped_frames: u64,
        parts: u32,
        ok: bool,
    ) -> Result<(), LibraryError> {
        self.conn
            .execute(
                "UPDATE recordings SET duration_s = ?2, dropped_frames = ?3, parts = ?4, state = ?5
                 WHERE id = ?1",
                params![
                    id,
                    duration_s,
                    i64::try_from(dropped_frames).unwrap_or(i64::MAX),
                    parts,
                    if ok { "done" } else { "failed" }
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// The history, newest first: all of it, or what matches `search` (see
    /// [`super::fts_query`]). A recording written in several parts is one row (its first part).
    pub fn list(
        &self,
        search: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, LibraryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let search = search.map(str::trim).filter(|s| !s.is_empty());
        let result = match search {
            None => {
                let sql = format!(
                    "SELECT {ENTRY_COLUMNS} FROM {ENTRY_FROM}
                     WHERE j.deleted_at_ms IS NULL AND COALESCE(j.recording_part, 0) = 0
                     ORDER BY j.created_at_ms DESC, j.id DESC LIMIT ?1"
                );
                self.conn
                    .prepare_cached(&sql)
                    .and_then(|mut stmt| stmt.query_map([limit], entry_from_row)?.collect())
            }
            Some(text) => {
                // Newest first by id (ids grow with time): FTS5 walks its index backwards and
                // stops at the limit, instead of sorting every match.
                let Some(query) = fts_query(text) else {
                    return Ok(Vec::new());
                };
                let sql = format!(
                    "SELECT {ENTRY_COLUMNS} FROM transcript_fts f JOIN jobs j ON j.id = f.rowid
                     LEFT JOIN transcripts t ON t.job_id = j.id
                     LEFT JOIN recordings r ON r.id = j.recording_id
                     WHERE transcript_fts MATCH ?1 AND j.deleted_at_ms IS NULL
                     ORDER BY f.rowid DESC LIMIT ?2"
                );
                self.conn.prepare_cached(&sql).and_then(|mut stmt| {
                    stmt.query_map(params![query, limit], entry_from_row)?
                        .collect()
                })
            }
        };
        result.map_err(|e| self.sql(e))
    }

    /// Everything stored about job `id` (`None` if there is none, or it was deleted).
    pub fn get(&self, id: i64) -> Result<Option<StoredJob>, LibraryError> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS}, j.language, j.use_itn, j.rich, j.device_request, j.model,
                j.file_size, j.file_mtime_ms, j.wall_ms,
                t.text, t.raw_text, t.emotion, t.event, j.recording_part, j.model_revision
             FROM {ENTRY_FROM} WHERE j.id = ?1 AND j.deleted_at_ms IS NULL"
        );
        let found = self
            .conn
            .query_row(&sql, [id], |row| {
                let entry = entry_from_row(row)?;
                let settings = DecodeSettings {
                    language: row.get(16)?,
                    use_itn: row.get(17)?,
                    rich: row.get(18)?,
                    translate: false,
                };
                let text: Option<String> = row.get(24)?;
                let transcript = FileTranscript {
                    path: entry.path.clone(),
                    duration_s: entry.duration_s.unwrap_or(0.0),
                    language: if text.is_some() {
                        entry.language.clone()
                    } else {
                        String::new()
                    },
                    emotion: row.get::<_, Option<String>>(26)?.unwrap_or_default(),
                    event: row.get::<_, Option<String>>(27)?.unwrap_or_default(),
                    text: text.unwrap_or_default(),
                    raw_text: row.get::<_, Option<String>>(25)?.unwrap_or_default(),
                    segments: Vec::new(),
                    tokens: Vec::new(),
                    words: Vec::new(),
                };
                Ok((
                    StoredJob {
                        entry,
                        settings,
                        device_request: row.get(19)?,
                        model: row.get(20)?,
                        model_revision: row.get(29)?,
                        parts: Vec::new(),
                        part_offsets_s: Vec::new(),
                        file_size: row.get::<_, Option<i64>>(21)?.map(i64::cast_unsigned),
                        file_mtime_ms: row.get(22)?,
                        wall_ms: row.get(23)?,
                        transcript,
                    },
                    row.get::<_, Option<i64>>(28)?,
                ))
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some((mut job, part)) = found else {
            return Ok(None);
        };
        job.parts = self.part_paths(id)?;
        job.part_offsets_s = self.part_offsets(id)?;
        match (&job.entry.recording, part) {
            // Stored before a recording's parts were one job: each part is a job of its own.
            (Some(recording), Some(0)) if recording.parts > 1 && job.parts.is_empty() => {
                self.join_parts(recording.id, &mut job.transcript)?;
            }
            _ => {
                job.transcript.segments = self.segments(id)?;
                (job.transcript.tokens, job.transcript.words) = self.timings(id)?;
                if job.transcript.text.is_empty() && !job.parts.is_empty() {
                    self.parts_text_so_far(id, &mut job.transcript)?;
                }
            }
        }
        if job.transcript.text.is_empty() {
            job.transcript.text = job
                .transcript
                .segments
                .iter()
                .map(|s| s.text.trim())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        }
        Ok(Some(job))
    }

    pub(super) fn segments(&self, id: i64) -> Result<Vec<Segment>, LibraryError> {
        self.conn
            .prepare_cached(
                "SELECT start_s, end_s, text, language, emotion, event FROM segments
                 WHERE job_id = ?1 ORDER BY part, idx",
            )
            .and_then(|mut stmt| stmt.query_map([id], segment_from_row)?.collect())
            .map_err(|e| self.sql(e))
    }

    /// A recording's parts as one transcript: segments shifted by the parts before them, texts
    /// and raw texts joined.
    fn join_parts(&self, recording_id: i64, into: &mut FileTranscript) -> Result<(), LibraryError> {
        let parts: Vec<PartRow> = self
            .conn
            .prepare_cached(
                "SELECT j.id, j.duration_s, t.text, t.raw_text FROM jobs j
                 LEFT JOIN transcripts t ON t.job_id = j.id
                 WHERE j.recording_id = ?1 AND j.deleted_at_ms IS NULL
                 ORDER BY j.recording_part, j.id",
            )
            .and_then(|mut stmt| {
                stmt.query_map([recording_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        let mut offset = 0.0;
        let mut texts = Vec::new();
        let mut raws = Vec::new();
        into.segments.clear();
        for (job_id, duration_s, text, raw) in parts {
            for mut segment in self.segments(job_id)? {
                segment.start_s += offset;
                segment.end_s += offset;
                into.segments.push(segment);
            }
            texts.extend(text.filter(|t| !t.is_empty()));
            raws.extend(raw.filter(|t| !t.is_empty()));
            offset += duration_s.unwrap_or(0.0);
        }
        into.text = texts.join(" ");
        into.raw_text = raws.join(" ");
        into.duration_s = offset;
        Ok(())
    }

    /// How many jobs are stored, deleted ones excluded.
    pub fn count(&self) -> Result<u64, LibraryError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE deleted_at_ms IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(i64::cast_unsigned)
            .map_err(|e| self.sql(e))
    }
}

/// A recording part: job id, length, text, raw text.
type PartRow = (i64, Option<f64>, Option<String>, Option<String>);

/// Marks a job done with `transcript` (its text; segments and timings are written apart) and
/// indexes it for search. `wall_ms`: `None` keeps what was summed up already.
pub(super) fn write_done(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    transcript: &FileTranscript,
    wall_ms: Option<f64>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'done', finished_at_ms = ?2, duration_s = ?3,
            wall_ms = COALESCE(?4, wall_ms), error = NULL
         WHERE id = ?1",
        params![id, now_ms(), transcript.duration_s, wall_ms],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO transcripts
            (job_id, text, raw_text, language, emotion, event, duration_s)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            transcript.text,
            transcript.raw_text,
            transcript.language,
            transcript.emotion,
            transcript.event,
            transcript.duration_s
        ],
    )?;
    tx.execute("DELETE FROM transcript_fts WHERE rowid = ?1", [id])?;
    let body = format!(
        "{}\n{}",
        search_form(&transcript.text),
        search_form(&transcript.path.to_string_lossy())
    );
    tx.execute(
        "INSERT INTO transcript_fts (rowid, body) VALUES (?1, ?2)",
        params![id, body],
    )?;
    Ok(())
}

/// Writes segments of `part` from index `first_idx` on.
pub(super) fn insert_segments(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    first_idx: i64,
    part: u32,
    segments: &[Segment],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO segments
            (job_id, idx, start_s, end_s, text, language, emotion, event, part)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (i, s) in segments.iter().enumerate() {
        stmt.execute(params![
            id,
            first_idx + i64::try_from(i).unwrap_or(0),
            s.start_s,
            s.end_s,
            s.text,
            s.language,
            s.emotion,
            s.event,
            part
        ])?;
    }
    Ok(())
}
