//! A transcript stored in pieces as it comes: `gpuscribe transcribe` streams each file's
//! transcript ([`crate::engine::Event::JobTranscribed`]) and holds none of it whole, so the
//! library takes each piece as it arrives — its segments, its token and word times (one
//! `timings` row per piece) and its texts (`text_pieces`) — and the job's final `JobDone`, which
//! then carries only the length and the tags, finishes the job from what is stored: the text,
//! the raw text and the search body are joined in SQL, as [`crate::engine::TranscriptAssembler`]
//! joins them (non-empty pieces with " "), and the pieces' texts are removed. A job that fails
//! part way keeps every piece stored before, marked failed.
//!
//! What a job reads back is the same whether it was stored in pieces or whole
//! ([`Library::job_done`], the window's path): see `pieces_tests`.

use rusqlite::{Transaction, params};

use super::parts::{finish_part, insert_timings, next_idx, offset_of};
use super::query::search_form;
use super::store::insert_segments;
use super::{Library, LibraryError, now_ms};
use crate::engine::transcript::join_text;
use crate::engine::{FileTranscript, Segment, SegmentResult, TokenTime, WordTime};

/// The joined texts of job `id`'s `part` as the assembler joins them: non-empty pieces with " ".
const JOINED_TEXT: &str = "SELECT COALESCE(group_concat(text, ' ' ORDER BY chunk), '')
    FROM text_pieces WHERE job_id = ?1 AND part = ?2 AND text != ''";
const JOINED_RAW_TEXT: &str = "SELECT COALESCE(group_concat(raw_text, ' ' ORDER BY chunk), '')
    FROM text_pieces WHERE job_id = ?1 AND part = ?2 AND raw_text != ''";
const JOINED_SEARCH_TEXT: &str =
    "SELECT COALESCE(group_concat(search_text, ' ' ORDER BY chunk), '')
    FROM text_pieces WHERE job_id = ?1 AND part = ?2 AND text != ''";

/// One piece (the results of one event), its times moved `offset_s` later.
struct Piece {
    text: String,
    raw_text: String,
    segments: Vec<Segment>,
    tokens: Vec<TokenTime>,
    words: Vec<WordTime>,
}

impl Piece {
    fn new(results: &[SegmentResult], offset_s: f64) -> Self {
        let offset_ms = (offset_s * 1000.0).round() as i64;
        let mut piece = Self {
            text: String::new(),
            raw_text: String::new(),
            segments: Vec::new(),
            tokens: Vec::new(),
            words: Vec::new(),
        };
        for r in results {
            join_text(&mut piece.text, &r.text);
            join_text(&mut piece.raw_text, &r.raw_text);
            piece.segments.extend(r.segments.iter().map(|s| Segment {
                start_s: s.start_s + offset_s,
                end_s: s.end_s + offset_s,
                ..s.clone()
            }));
            piece.tokens.extend(r.tokens.iter().map(|t| TokenTime {
                start_s: t.start_s + offset_s,
                end_s: t.end_s + offset_s,
                ..t.clone()
            }));
            piece.words.extend(r.words.iter().map(|w| WordTime {
                start_ms: w.start_ms + offset_ms,
                end_ms: w.end_ms + offset_ms,
                ..w.clone()
            }));
        }
        piece
    }
}

/// Marks job `id` done with `head`'s length and tags and, from its stored pieces (part 0), its
/// text, raw text and search body (as [`write_done`](super::store::write_done) writes them from a
/// whole transcript); the pieces' texts are removed.
fn write_done_from_pieces(
    tx: &Transaction<'_>,
    id: i64,
    head: &FileTranscript,
    wall_ms: f64,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE jobs SET state = 'done', finished_at_ms = ?2, duration_s = ?3, wall_ms = ?4,
            error = NULL
         WHERE id = ?1",
        params![id, now_ms(), head.duration_s, wall_ms],
    )?;
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO transcripts
                (job_id, text, raw_text, language, emotion, event, duration_s)
             VALUES (?1, ({JOINED_TEXT}), ({JOINED_RAW_TEXT}), ?3, ?4, ?5, ?6)"
        ),
        params![
            id,
            0,
            head.language,
            head.emotion,
            head.event,
            head.duration_s
        ],
    )?;
    tx.execute("DELETE FROM transcript_fts WHERE rowid = ?1", [id])?;
    // search_form works character by character, so the pieces' search forms joined with " "
    // are the search form of their texts joined with " " (what `write_done` indexes).
    tx.execute(
        &format!(
            "INSERT INTO transcript_fts (rowid, body)
             VALUES (?1, ({JOINED_SEARCH_TEXT}) || char(10) || ?3)"
        ),
        params![id, 0, search_form(&head.path.to_string_lossy())],
    )?;
    tx.execute("DELETE FROM text_pieces WHERE job_id = ?1", [id])?;
    Ok(())
}

impl Library {
    /// The next results of job `id`'s `part` (0 for a single file), in time order after those
    /// stored before: their segments, token and word times (moved to the recording's times for
    /// a part) and texts are stored at once, as one piece.
    pub fn job_pieces(
        &mut self,
        id: i64,
        part: u32,
        results: &[SegmentResult],
    ) -> Result<(), LibraryError> {
        if results.is_empty() {
            return Ok(());
        }
        self.in_transaction(|tx| {
            let piece = Piece::new(results, offset_of(tx, id, part)?);
            let chunk: i64 = tx.query_row(
                "SELECT COALESCE(MAX(chunk) + 1, 0) FROM text_pieces
                 WHERE job_id = ?1 AND part = ?2",
                params![id, part],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO text_pieces (job_id, part, chunk, text, raw_text, search_text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    part,
                    chunk,
                    piece.text,
                    piece.raw_text,
                    search_form(&piece.text)
                ],
            )?;
            let next = next_idx(tx, id)?;
            insert_segments(tx, id, next, part, &piece.segments)?;
            insert_timings(tx, id, part, chunk, &piece.tokens, &piece.words)
        })
    }

    /// A streamed job finished: `head` holds its length and tags only (its text came in the
    /// pieces stored by [`Library::job_pieces`], which make its transcript now).
    pub fn job_done_streamed(
        &mut self,
        id: i64,
        head: &FileTranscript,
        wall_ms: f64,
    ) -> Result<(), LibraryError> {
        self.in_transaction(|tx| write_done_from_pieces(tx, id, head, wall_ms))
    }

    /// A streamed part finished (`head`: its length and tags, times of the part); when it was
    /// the last, the job is done with the parts joined, as [`Library::part_done`] does.
    pub fn part_done_streamed(
        &mut self,
        id: i64,
        part: u32,
        head: &FileTranscript,
        wall_ms: f64,
    ) -> Result<(), LibraryError> {
        self.in_transaction(|tx| {
            tx.execute(
                &format!(
                    "UPDATE job_parts SET state = 'done', duration_s = ?3,
                        text = ({JOINED_TEXT}), raw_text = ({JOINED_RAW_TEXT}),
                        language = ?4, emotion = ?5, event = ?6
                     WHERE job_id = ?1 AND part = ?2"
                ),
                params![
                    id,
                    part,
                    head.duration_s,
                    head.language,
                    head.emotion,
                    head.event
                ],
            )?;
            tx.execute(
                "DELETE FROM text_pieces WHERE job_id = ?1 AND part = ?2",
                params![id, part],
            )?;
            finish_part(tx, id, wall_ms)
        })
    }
}
