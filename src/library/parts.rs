//! A recording in several files (past the WAV size limit) as one job: its parts are rows of
//! `job_parts`, each with its offset from the recording's start (read from the WAV headers);
//! the engine transcribes each part as it would a file, and everything a part brings (segments,
//! token and word times) is stored shifted by its offset, so the job reads as one transcript
//! with continuous times. The job is done when every part is; its text is the parts' texts
//! joined. Token and word times of every job live in `timings`, as JSON (one row per piece of a
//! transcript stored as it came, see [`super::pieces`]).
//!
//! Also here: the recordings a dead process left behind ([`Library::close_recordings`]).

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension as _, Transaction, params};

use super::store::{insert_segments, path_bytes, path_from_bytes, write_done};
use super::{JobState, Library, LibraryError, NewJob, now_ms};
use crate::engine::{FileTranscript, Segment, TokenTime, WordTime};

/// Records the parts of job `id` (none: a single file), offsets from the files' headers; a
/// part whose header cannot be read counts 0 s (its transcription will say what is wrong).
pub(super) fn insert_parts(
    tx: &Transaction<'_>,
    id: i64,
    parts: &[PathBuf],
) -> rusqlite::Result<()> {
    if parts.is_empty() {
        return Ok(());
    }
    let mut offset = 0.0;
    for (part, path) in (0u32..).zip(parts) {
        let duration = match crate::audio::wav_duration_s(path) {
            Ok(d) => Some(d),
            Err(err) => {
                tracing::warn!("recording part {}: {err}", part + 1);
                None
            }
        };
        tx.execute(
            "INSERT OR REPLACE INTO job_parts (job_id, part, path, path_text, offset_s, duration_s, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued')",
            params![id, part, path_bytes(path), path.to_string_lossy(), offset, duration],
        )?;
        offset += duration.unwrap_or(0.0);
    }
    tx.execute(
        "UPDATE jobs SET duration_s = ?2 WHERE id = ?1",
        params![id, offset],
    )?;
    Ok(())
}

/// Stores the token and word times of job `id`'s `part` (already counted from the job's start).
pub(super) fn write_timings(
    tx: &Transaction<'_>,
    id: i64,
    part: u32,
    tokens: &[TokenTime],
    words: &[WordTime],
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM timings WHERE job_id = ?1 AND part = ?2",
        params![id, part],
    )?;
    insert_timings(tx, id, part, 0, tokens, words)
}

/// Stores the token and word times of piece `chunk` of job `id`'s `part` (nothing when both are
/// empty).
pub(super) fn insert_timings(
    tx: &Transaction<'_>,
    id: i64,
    part: u32,
    chunk: i64,
    tokens: &[TokenTime],
    words: &[WordTime],
) -> rusqlite::Result<()> {
    if tokens.is_empty() && words.is_empty() {
        return Ok(());
    }
    let json = |r: serde_json::Result<String>| {
        r.map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    };
    tx.execute(
        "INSERT OR REPLACE INTO timings (job_id, part, chunk, tokens, words)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            part,
            chunk,
            json(serde_json::to_string(tokens))?,
            json(serde_json::to_string(words))?
        ],
    )?;
    Ok(())
}

/// `transcript`'s times moved `offset_s` later (a part's times → the recording's).
fn shifted(transcript: &FileTranscript, offset_s: f64) -> FileTranscript {
    let mut out = transcript.clone();
    let offset_ms = (offset_s * 1000.0).round() as i64;
    for s in &mut out.segments {
        s.start_s += offset_s;
        s.end_s += offset_s;
    }
    for t in &mut out.tokens {
        t.start_s += offset_s;
        t.end_s += offset_s;
    }
    for w in &mut out.words {
        w.start_ms += offset_ms;
        w.end_ms += offset_ms;
    }
    out
}

fn shift_segments(segments: &[Segment], offset_s: f64) -> Vec<Segment> {
    segments
        .iter()
        .map(|s| Segment {
            start_s: s.start_s + offset_s,
            end_s: s.end_s + offset_s,
            ..s.clone()
        })
        .collect()
}

pub(super) fn offset_of(tx: &Transaction<'_>, id: i64, part: u32) -> rusqlite::Result<f64> {
    Ok(tx
        .query_row(
            "SELECT offset_s FROM job_parts WHERE job_id = ?1 AND part = ?2",
            params![id, part],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0.0))
}

pub(super) fn next_idx(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM segments WHERE job_id = ?1",
        [id],
        |r| r.get(0),
    )
}

/// A part's text, raw text, language, emotion, event and where it ends.
type PartText = (String, String, String, String, String, f64);

/// The parts' texts as one transcript: texts and raw texts joined with " ", the tags of the
/// first part with text, the length of all parts.
pub(super) fn joined(tx: &rusqlite::Connection, id: i64) -> rusqlite::Result<FileTranscript> {
    let mut stmt = tx.prepare_cached(
        "SELECT text, raw_text, language, emotion, event, offset_s + COALESCE(duration_s, 0)
         FROM job_parts WHERE job_id = ?1 ORDER BY part",
    )?;
    let rows: Vec<PartText> = stmt
        .query_map([id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let path: Vec<u8> = tx.query_row("SELECT path FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
    let mut out = FileTranscript {
        path: path_from_bytes(path),
        ..FileTranscript::default()
    };
    let speaking = rows
        .iter()
        .find(|r| !r.0.trim().is_empty())
        .or(rows.first());
    if let Some((_, _, language, emotion, event, _)) = speaking {
        out.language.clone_from(language);
        out.emotion.clone_from(emotion);
        out.event.clone_from(event);
    }
    let join = |pick: fn(&PartText) -> &String| {
        rows.iter()
            .map(pick)
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.text = join(|r| &r.0);
    out.raw_text = join(|r| &r.1);
    out.duration_s = rows.iter().map(|r| r.5).fold(0.0, f64::max);
    Ok(out)
}

/// Adds a finished part's `wall_ms` to job `id`'s and, when no part is left and the job is
/// still unfinished, marks it done with the parts joined.
pub(super) fn finish_part(tx: &Transaction<'_>, id: i64, wall_ms: f64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET wall_ms = COALESCE(wall_ms, 0) + ?2 WHERE id = ?1",
        params![id, wall_ms],
    )?;
    let left: i64 = tx.query_row(
        "SELECT COUNT(*) FROM job_parts WHERE job_id = ?1 AND state != 'done'",
        [id],
        |r| r.get(0),
    )?;
    let state: String = tx.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))?;
    if left == 0 && JobState::parse(&state).is_unfinished() {
        write_done(tx, id, &joined(tx, id)?, None)?;
    }
    Ok(())
}

impl Library {
    /// A recording has started: its job is a row now (state `recording`), so a crash leaves it
    /// listed as interrupted. `job.parts` is empty; [`Library::recording_queued`] sets them.
    pub fn recording_job(&mut self, job: &NewJob) -> Result<i64, LibraryError> {
        self.insert_job(job, JobState::Recording)
    }

    /// The recording of job `id` stopped and its parts were queued with `job`'s settings.
    pub fn recording_queued(&mut self, id: i64, job: &NewJob) -> Result<(), LibraryError> {
        let revision = job
            .model_revision
            .clone()
            .unwrap_or_else(|| super::model_revision(&job.model));
        self.in_transaction(|tx| {
            tx.execute(
                "UPDATE jobs SET state = 'queued', language = ?2, use_itn = ?3, rich = ?4,
                    device_request = ?5, model = ?6, model_revision = ?7, error = NULL
                 WHERE id = ?1",
                params![
                    id,
                    job.settings.language,
                    job.settings.use_itn,
                    job.settings.rich,
                    job.device_request,
                    job.model,
                    revision
                ],
            )?;
            tx.execute("DELETE FROM job_parts WHERE job_id = ?1", [id])?;
            insert_parts(tx, id, &job.parts)?;
            Ok(())
        })
    }

    /// A part's audio is decoded: its length, and the job's (all parts known so far).
    pub fn part_decoded(
        &mut self,
        id: i64,
        part: u32,
        duration_s: f64,
    ) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            tx.execute(
                "UPDATE job_parts SET duration_s = ?3 WHERE job_id = ?1 AND part = ?2",
                params![id, part, duration_s],
            )?;
            tx.execute(
                "UPDATE jobs SET duration_s = (SELECT MAX(offset_s + COALESCE(duration_s, 0))
                    FROM job_parts WHERE job_id = ?1) WHERE id = ?1",
                [id],
            )?;
            Ok(())
        })
    }

    /// Segments of a part as they arrive, moved to the recording's times.
    pub fn part_segments(
        &mut self,
        id: i64,
        part: u32,
        segments: &[Segment],
    ) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            let offset = offset_of(tx, id, part)?;
            let next = next_idx(tx, id)?;
            insert_segments(tx, id, next, part, &shift_segments(segments, offset))
        })
    }

    /// A part finished; when it was the last, the job is done with the parts joined.
    pub fn part_done(
        &mut self,
        id: i64,
        part: u32,
        transcript: &FileTranscript,
        wall_ms: f64,
    ) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            let t = shifted(transcript, offset_of(tx, id, part)?);
            tx.execute(
                "UPDATE job_parts SET state = 'done', duration_s = ?3, text = ?4, raw_text = ?5,
                    language = ?6, emotion = ?7, event = ?8
                 WHERE job_id = ?1 AND part = ?2",
                params![
                    id,
                    part,
                    transcript.duration_s,
                    t.text,
                    t.raw_text,
                    t.language,
                    t.emotion,
                    t.event
                ],
            )?;
            tx.execute(
                "DELETE FROM segments WHERE job_id = ?1 AND part = ?2",
                params![id, part],
            )?;
            let next = next_idx(tx, id)?;
            insert_segments(tx, id, next, part, &t.segments)?;
            write_timings(tx, id, part, &t.tokens, &t.words)?;
            finish_part(tx, id, wall_ms)
        })
    }

    /// A part failed or was cancelled: so is the job (Resume transcribes every part again).
    pub fn part_failed(
        &mut self,
        id: i64,
        part: u32,
        message: &str,
        cancelled: bool,
    ) -> Result<(), LibraryError> {
        self.conn
            .execute(
                "UPDATE job_parts SET state = 'failed' WHERE job_id = ?1 AND part = ?2",
                params![id, part],
            )
            .map_err(|e| self.sql(e))?;
        self.job_failed(
            id,
            &format!("part {} of the recording: {message}", part + 1),
            cancelled,
        )
    }

    /// Where each of job `id`'s parts starts, seconds from the recording's start (empty for a
    /// single file).
    pub fn part_offsets(&self, id: i64) -> Result<Vec<f64>, LibraryError> {
        self.conn
            .prepare_cached("SELECT offset_s FROM job_parts WHERE job_id = ?1 ORDER BY part")
            .and_then(|mut stmt| stmt.query_map([id], |r| r.get(0))?.collect())
            .map_err(|e| self.sql(e))
    }

    /// The files of job `id`'s parts, in order (empty for a single file).
    pub(super) fn part_paths(&self, id: i64) -> Result<Vec<PathBuf>, LibraryError> {
        self.conn
            .prepare_cached("SELECT path FROM job_parts WHERE job_id = ?1 ORDER BY part")
            .and_then(|mut stmt| {
                stmt.query_map([id], |r| r.get::<_, Vec<u8>>(0).map(path_from_bytes))?
                    .collect()
            })
            .map_err(|e| self.sql(e))
    }

    /// Token and word times of job `id`, all parts in order. A row that does not parse is
    /// skipped with a warning (the transcript itself is still there).
    pub(super) fn timings(&self, id: i64) -> Result<(Vec<TokenTime>, Vec<WordTime>), LibraryError> {
        let rows: Vec<(u32, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT part, tokens, words FROM timings WHERE job_id = ?1 ORDER BY part, chunk",
            )
            .and_then(|mut stmt| {
                stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        let mut tokens = Vec::new();
        let mut words = Vec::new();
        for (part, t, w) in rows {
            match (
                serde_json::from_str::<Vec<TokenTime>>(&t),
                serde_json::from_str::<Vec<WordTime>>(&w),
            ) {
                (Ok(t), Ok(w)) => {
                    tokens.extend(t);
                    words.extend(w);
                }
                (Err(err), _) | (_, Err(err)) => tracing::warn!(
                    "{}: the token times of transcript {id} (part {part}) are damaged: {err}",
                    self.path.display()
                ),
            }
        }
        Ok((tokens, words))
    }

    /// The text of the parts done so far (a recording still being transcribed).
    pub(super) fn parts_text_so_far(
        &self,
        id: i64,
        into: &mut FileTranscript,
    ) -> Result<(), LibraryError> {
        let so_far = joined(&self.conn, id).map_err(|e| self.sql(e))?;
        into.text = so_far.text;
        into.raw_text = so_far.raw_text;
        Ok(())
    }

    /// The recordings session `session` was still making when it ended: their parts are listed
    /// with their jobs (found on disk by name), and with `dead` (the process is gone, so nothing
    /// writes them any more) each file's header is repaired first. The jobs are then marked
    /// interrupted by `end_session`, with Resume to transcribe them.
    pub(super) fn close_recordings(
        &mut self,
        session: i64,
        dead: bool,
    ) -> Result<(), LibraryError> {
        let open: Vec<(i64, i64, Vec<u8>)> = self
            .conn
            .prepare(
                "SELECT j.id, r.id, r.path FROM jobs j JOIN recordings r ON r.id = j.recording_id
                 WHERE j.session_id = ?1 AND j.state = 'recording'",
            )
            .and_then(|mut stmt| {
                stmt.query_map([session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        for (job_id, recording_id, first) in open {
            let first = path_from_bytes(first);
            let parts = crate::audio::recording_parts(&first);
            if dead {
                for part in &parts {
                    repair(part);
                }
            }
            self.in_transaction(|tx| {
                tx.execute("DELETE FROM job_parts WHERE job_id = ?1", [job_id])?;
                insert_parts(tx, job_id, &parts)?;
                if parts.is_empty() {
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', finished_at_ms = ?2, error = ?3 WHERE id = ?1",
                        params![
                            job_id,
                            now_ms(),
                            format!("the recording {} is gone", first.display())
                        ],
                    )?;
                }
                tx.execute(
                    "UPDATE recordings SET parts = ?2,
                        duration_s = (SELECT duration_s FROM jobs WHERE id = ?3)
                     WHERE id = ?1",
                    params![
                        recording_id,
                        i64::try_from(parts.len()).unwrap_or(i64::MAX),
                        job_id
                    ],
                )?;
                Ok(())
            })?;
        }
        Ok(())
    }
}

fn repair(path: &Path) {
    match crate::audio::repair_wav(path) {
        Ok(check) if check.repaired => tracing::warn!(
            "{}: the recording was cut off; its header now covers the {:.1} s on disk",
            path.display(),
            check.duration_s()
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!("cannot repair an interrupted recording: {err}"),
    }
}
