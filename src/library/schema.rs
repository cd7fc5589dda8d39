//! The library's schema, versioned through SQLite's `user_version`: migration N takes a file
//! from version N to N+1, in one transaction. Add a migration by appending to [`MIGRATIONS`];
//! never edit one that has shipped.

use std::path::Path;

use rusqlite::Connection;

use super::LibraryError;

/// Each entry moves the schema one version up.
pub const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        pid INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        lock_name TEXT NOT NULL
    );
    CREATE TABLE recordings (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        -- The first part's path: OS bytes (any file name round-trips) and a readable form.
        path BLOB NOT NULL,
        path_text TEXT NOT NULL,
        input_device TEXT NOT NULL,
        sample_rate_hz INTEGER NOT NULL,
        duration_s REAL,
        dropped_frames INTEGER NOT NULL DEFAULT 0,
        parts INTEGER NOT NULL DEFAULT 1,
        -- recording | done | failed | interrupted
        state TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        path BLOB NOT NULL,
        path_text TEXT NOT NULL,
        file_size INTEGER,
        file_mtime_ms INTEGER,
        language TEXT NOT NULL,
        use_itn INTEGER NOT NULL,
        rich INTEGER NOT NULL,
        device_request TEXT NOT NULL,
        model TEXT NOT NULL,
        recording_id INTEGER REFERENCES recordings(id) ON DELETE SET NULL,
        recording_part INTEGER,
        -- queued | running | done | failed | cancelled | interrupted
        state TEXT NOT NULL,
        device TEXT,
        started_at_ms INTEGER,
        finished_at_ms INTEGER,
        duration_s REAL,
        wall_ms REAL,
        error TEXT,
        deleted_at_ms INTEGER
    );
    CREATE INDEX jobs_newest ON jobs (created_at_ms DESC, id DESC);
    CREATE INDEX jobs_session ON jobs (session_id, state);
    CREATE INDEX jobs_recording ON jobs (recording_id, recording_part);
    CREATE TABLE transcripts (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        raw_text TEXT NOT NULL,
        language TEXT NOT NULL,
        emotion TEXT NOT NULL,
        event TEXT NOT NULL,
        duration_s REAL NOT NULL
    );
    CREATE TABLE segments (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        start_s REAL NOT NULL,
        end_s REAL NOT NULL,
        text TEXT NOT NULL,
        language TEXT NOT NULL,
        emotion TEXT NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (job_id, idx)
    ) WITHOUT ROWID;
    -- Full-text search over finished transcripts (rowid = jobs.id). The indexed text is the
    -- transcript in search form (see query::search_form): CJK characters one token each.
    CREATE VIRTUAL TABLE transcript_fts USING fts5(body, content='', contentless_delete=1);
    ",
    // 1 → 2: the model's revision; a recording in several files as one job (its parts, with
    // the offset of each from the recording's start); token and word times.
    "
    -- A commit hash (the model store, or a folder in the Hugging Face cache layout) or
    -- `content-sha256:<hex>` of the model folder; empty for jobs recorded before version 2.
    ALTER TABLE jobs ADD COLUMN model_revision TEXT NOT NULL DEFAULT '';
    -- Which part of a recording a segment came from (0 for a single file).
    ALTER TABLE segments ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE job_parts (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        part INTEGER NOT NULL,
        path BLOB NOT NULL,
        path_text TEXT NOT NULL,
        -- Seconds from the recording's start to this part's first sample.
        offset_s REAL NOT NULL,
        duration_s REAL,
        -- queued | done | failed
        state TEXT NOT NULL,
        text TEXT NOT NULL DEFAULT '',
        raw_text TEXT NOT NULL DEFAULT '',
        language TEXT NOT NULL DEFAULT '',
        emotion TEXT NOT NULL DEFAULT '',
        event TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (job_id, part)
    ) WITHOUT ROWID;
    -- Token and word times of a finished job (or part), as JSON arrays of
    -- engine::transcript::TokenTime and WordTime, times from the job's start.
    CREATE TABLE timings (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        part INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        words TEXT NOT NULL,
        PRIMARY KEY (job_id, part)
    ) WITHOUT ROWID;
    ",
    // 2 → 3: a transcript stored in pieces as it comes (`gpuscribe transcribe` streams it), so
    // that nothing holds a long file's whole transcript: token and word times one row per
    // piece, and the pieces' texts until the job is done.
    "
    -- Token and word times of a job (or part) as JSON arrays of engine::transcript::TokenTime
    -- and WordTime, times from the job's start: one row per piece, in `chunk` order (a
    -- transcript stored whole is the one piece 0).
    CREATE TABLE timings_v3 (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        part INTEGER NOT NULL,
        chunk INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        words TEXT NOT NULL,
        PRIMARY KEY (job_id, part, chunk)
    ) WITHOUT ROWID;
    INSERT INTO timings_v3 (job_id, part, chunk, tokens, words)
        SELECT job_id, part, 0, tokens, words FROM timings;
    DROP TABLE timings;
    ALTER TABLE timings_v3 RENAME TO timings;
    -- The texts of a streamed job's (or part's) pieces, in `chunk` order, until it is done:
    -- then they become its transcript's text, raw text and search body, and are removed.
    -- `search_text` is `text` in search form (see query::search_form).
    CREATE TABLE text_pieces (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        part INTEGER NOT NULL,
        chunk INTEGER NOT NULL,
        text TEXT NOT NULL,
        raw_text TEXT NOT NULL,
        search_text TEXT NOT NULL,
        PRIMARY KEY (job_id, part, chunk)
    ) WITHOUT ROWID;
    ",
];

/// The newest version this build knows.
pub fn latest_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings the file at `path` (open as `conn`) up to [`latest_version`].
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), LibraryError> {
    let sql = |source| LibraryError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    let known = latest_version();
    if found > known {
        return Err(LibraryError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    if found == known {
        return Ok(());
    }
    // IMMEDIATE: two processes opening a new file at once migrate it one after the other.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    for (version, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(usize::MAX))
    {
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(version + 1).unwrap_or(i64::MAX),
        )
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)
}
