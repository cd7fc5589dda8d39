//! A transcript stored in pieces (the command line's streamed engine) reads back exactly as the
//! same transcript stored whole (the window's), a schema-2 file's token times survive the
//! migration, and a streamed job that fails part way keeps its pieces; on a real SQLite file.

use super::test_support::{job, open_in, wav};
use super::*;
use crate::engine::transcript::{ExportFormat, FirstTags, render};
use crate::engine::{
    Event, FileTranscript, Segment, SegmentResult, TokenTime, TranscriptAssembler, WordTime,
};

/// One model segment's result over `start_s..end_s`: `text` in two timed spans, a token per
/// span, a word per span; tags from `language`.
fn result(start_s: f64, end_s: f64, text: &str, language: &str) -> SegmentResult {
    let mid = f64::midpoint(start_s, end_s);
    let halves: Vec<String> = if text.is_empty() {
        Vec::new()
    } else {
        let chars: Vec<char> = text.chars().collect();
        let (a, b) = chars.split_at(chars.len().div_ceil(2));
        [a, b]
            .iter()
            .map(|h| h.iter().collect::<String>())
            .filter(|h| !h.is_empty())
            .collect()
    };
    let spans = [(start_s, mid), (mid, end_s)];
    SegmentResult {
        start_s,
        end_s,
        text: text.into(),
        raw_text: format!("<|{language}|><|NEUTRAL|><|Speech|><|woitn|>{text}"),
        language: language.into(),
        emotion: "NEUTRAL".into(),
        event: if text.is_empty() { "BGM" } else { "Speech" }.into(),
        segments: halves
            .iter()
            .zip(&spans)
            .map(|(h, &(s, e))| Segment {
                start_s: s,
                end_s: e,
                text: h.clone(),
                language: language.into(),
                emotion: "NEUTRAL".into(),
                event: "Speech".into(),
            })
            .collect(),
        tokens: halves
            .iter()
            .zip(&spans)
            .map(|(h, &(s, e))| TokenTime {
                token: format!("▁{h}"),
                start_s: s + 0.05,
                end_s: e - 0.05,
            })
            .collect(),
        words: halves
            .iter()
            .zip(&spans)
            .map(|(h, &(s, e))| WordTime {
                word: h.clone(),
                start_ms: (s * 1000.0).round() as i64 + 50,
                end_ms: (e * 1000.0).round() as i64 - 50,
            })
            .collect(),
    }
}

/// A file's results: silence first (no text, its own tags), then Chinese, English and Japanese
/// text, an empty result in the middle.
fn results() -> Vec<SegmentResult> {
    vec![
        result(0.0, 3.0, "", "nospeech"),
        result(3.0, 30.0, "明天的会议在三点。", "zh"),
        result(30.0, 58.5, "Budget review notes", "en"),
        result(58.5, 60.0, "", "nospeech"),
        result(60.0, 88.0, "quarterly figures", "en"),
        result(88.0, 90.0, "ありがとう", "ja"),
    ]
}

/// What the window's engine sends at the end: the whole transcript.
fn whole(path: &Path, results: &[SegmentResult], duration_s: f64) -> FileTranscript {
    let mut assembler = TranscriptAssembler::default();
    results.iter().for_each(|r| assembler.push(r.clone()));
    assembler.finish(path.to_owned(), duration_s)
}

/// What the command line's (streaming) engine sends at the end: length and tags only.
fn head(path: &Path, results: &[SegmentResult], duration_s: f64) -> FileTranscript {
    let mut tags = FirstTags::default();
    results.iter().for_each(|r| tags.see(r));
    let (language, emotion, event) = tags.get();
    FileTranscript {
        path: path.to_owned(),
        duration_s,
        language,
        emotion,
        event,
        ..FileTranscript::default()
    }
}

/// The events of one job, as the engine sends them: progress with each batch's segments (batches
/// finish out of order), then either the pieces and a head (`streamed`) or the whole transcript;
/// `fail_after`: the job fails after that many pieces instead.
fn events(job_id: u64, path: &Path, streamed: bool, fail_after: Option<usize>) -> Vec<Event> {
    let results = results();
    let duration_s = 90.0;
    let mut out = vec![
        Event::JobStarted {
            job_id,
            device: "CPU".into(),
        },
        Event::JobDecoded {
            job_id,
            duration_s,
            warning: None,
        },
    ];
    let pieces: [&[SegmentResult]; 3] = [&results[..2], &results[2..3], &results[3..]];
    for (n, piece) in pieces.iter().enumerate() {
        if fail_after == Some(n) {
            out.push(Event::JobFailed {
                job_id,
                message: format!("{}: decoding failed at 30.0 s", path.display()),
                cancelled: false,
            });
            return out;
        }
        // A later batch's segments first: progress comes in the order batches finish.
        let mut segments: Vec<Segment> = piece.iter().flat_map(|r| r.segments.clone()).collect();
        segments.reverse();
        out.push(Event::JobProgress {
            job_id,
            done_s: piece.last().map_or(0.0, |r| r.end_s),
            total_s: duration_s,
            segments,
        });
        if streamed {
            out.push(Event::JobTranscribed {
                job_id,
                results: piece.to_vec(),
            });
        }
    }
    out.push(Event::JobDone {
        job_id,
        transcript: if streamed {
            head(path, &results, duration_s)
        } else {
            whole(path, &results, duration_s)
        },
        ms: 1234.5,
    });
    out
}

/// A library in `dir` with one job for `audio`, run through `events` by a recorder of the
/// window's kind or the command line's (`streamed`).
fn stored(dir: &Path, audio: &Path, streamed: bool, fail_after: Option<usize>) -> (Library, i64) {
    let mut lib = open_in(dir);
    let mut recorder = if streamed {
        JobRecorder::streamed()
    } else {
        JobRecorder::new()
    };
    let id = recorder.queued(&mut lib, 1, &job(audio)).expect("queued");
    for event in events(1, audio, streamed, fail_after) {
        recorder.on_event(&mut lib, &event).expect("event");
    }
    (lib, id)
}

/// A stored job without what differs between two runs of it (when it was queued).
fn comparable(mut job: StoredJob) -> StoredJob {
    job.entry.created_at_ms = 0;
    job
}

fn entries(lib: &Library, search: Option<&str>) -> Vec<HistoryEntry> {
    let mut entries = lib.list(search, 100).expect("list");
    entries.iter_mut().for_each(|e| e.created_at_ms = 0);
    entries
}

#[test]
fn a_streamed_job_reads_back_exactly_as_the_same_job_stored_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audio = dir.path().join("会议 notes.wav");
    std::fs::write(&audio, b"RIFF....").expect("audio");
    let (whole_dir, streamed_dir) = (dir.path().join("whole"), dir.path().join("streamed"));
    let (whole_lib, whole_id) = stored(&whole_dir, &audio, false, None);
    let (streamed_lib, streamed_id) = stored(&streamed_dir, &audio, true, None);
    assert_eq!(whole_id, streamed_id);

    let expected = whole(&audio, &results(), 90.0);
    let a = comparable(whole_lib.get(whole_id).expect("get").expect("present"));
    let b = comparable(
        streamed_lib
            .get(streamed_id)
            .expect("get")
            .expect("present"),
    );
    assert_eq!(a.transcript, expected, "the window's path is unchanged");
    assert_eq!(b, a);
    assert_eq!(b.entry.state, JobState::Done);
    assert_eq!(b.wall_ms, Some(1234.5));
    assert_eq!(
        b.transcript.language, "zh",
        "the tags of the first result with text"
    );
    assert_eq!(
        b.transcript.text,
        "明天的会议在三点。 Budget review notes quarterly figures ありがとう"
    );
    // What `gpuscribe history --json` and `history export` print.
    assert_eq!(
        serde_json::to_string(&b).expect("json"),
        serde_json::to_string(&a).expect("json")
    );
    for format in [
        ExportFormat::Txt,
        ExportFormat::Srt,
        ExportFormat::Vtt,
        ExportFormat::Json,
    ] {
        assert_eq!(render(&b.transcript, format), render(&a.transcript, format));
    }
    // The list and search: the same rows, and terms of different pieces match together.
    assert_eq!(entries(&streamed_lib, None), entries(&whole_lib, None));
    for query in [
        "会议",
        "budget",
        "figur",
        "三点 quarterly",
        "ありがとう",
        "notes.wav",
        "missing",
    ] {
        let found = entries(&streamed_lib, Some(query));
        assert_eq!(found, entries(&whole_lib, Some(query)), "search {query:?}");
        let hits = usize::from(!matches!(query, "missing"));
        assert_eq!(found.len(), hits, "search {query:?}");
    }
    // The pieces' texts are gone once the job is done: the transcript holds them.
    let left: i64 = streamed_lib
        .conn
        .query_row("SELECT COUNT(*) FROM text_pieces", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0);
    let rows: i64 = streamed_lib
        .conn
        .query_row("SELECT COUNT(*) FROM timings", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 3, "one timings row per piece");
}

#[test]
fn a_streamed_job_that_fails_part_way_keeps_its_pieces_marked_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audio = dir.path().join("talk.wav");
    std::fs::write(&audio, b"RIFF....").expect("audio");
    let (mut lib, id) = stored(dir.path(), &audio, true, Some(2));
    let job = lib.get(id).expect("get").expect("present");
    assert_eq!(job.entry.state, JobState::Failed);
    assert!(
        job.entry
            .error
            .as_deref()
            .is_some_and(|e| e.contains("decoding failed at 30.0 s")),
        "{:?}",
        job.entry.error
    );
    // Every piece that came before the failure, segments and times, in order.
    let kept = whole(&audio, &results()[..3], 90.0);
    assert_eq!(job.transcript.segments, kept.segments);
    assert_eq!(job.transcript.tokens, kept.tokens);
    assert_eq!(job.transcript.words, kept.words);
    assert_eq!(
        job.transcript.text,
        "明天的会议 在三点。 Budget rev iew notes"
    );
    // Its texts are kept too, for a later look.
    let texts: Vec<String> = lib
        .conn
        .prepare("SELECT text FROM text_pieces WHERE job_id = ?1 ORDER BY chunk")
        .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
        .expect("texts");
    assert_eq!(texts, ["明天的会议在三点。", "Budget review notes"]);

    // Resumed, it starts over and ends as a job that never failed.
    let again = lib.requeue(id).expect("requeue");
    assert_eq!(again.path, audio);
    let mut recorder = JobRecorder::streamed();
    recorder.resumed(2, id, None);
    for event in events(2, &audio, true, None) {
        recorder.on_event(&mut lib, &event).expect("event");
    }
    let done = lib.get(id).expect("get").expect("present");
    assert_eq!(done.entry.state, JobState::Done);
    assert_eq!(done.transcript, whole(&audio, &results(), 90.0));
}

#[test]
fn a_recording_streamed_in_parts_reads_back_as_the_same_recording_stored_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<PathBuf> = ["rec.wav", "rec-part2.wav"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for file in &files {
        wav(file, 90.0);
    }
    let run = |name: &str, streamed: bool| {
        let mut lib = open_in(&dir.path().join(name));
        let rec = lib
            .add_recording(&files[0], "mic", 16_000)
            .expect("recording");
        let mut new = job(&files[0]);
        new.recording = Some((rec, 0));
        new.parts.clone_from(&files);
        let mut recorder = if streamed {
            JobRecorder::streamed()
        } else {
            JobRecorder::new()
        };
        let id = recorder
            .queued_parts(&mut lib, &[1, 2], &new, None)
            .expect("queued");
        lib.recording_finished(rec, 180.0, 0, 2, true)
            .expect("finished");
        // The second part finishes first.
        for (job_id, file) in [(2, &files[1]), (1, &files[0])] {
            for event in events(job_id, file, streamed, None) {
                recorder.on_event(&mut lib, &event).expect("event");
            }
        }
        let job = lib.get(id).expect("get").expect("present");
        (
            comparable(job),
            entries(&lib, None),
            entries(&lib, Some("budget")),
        )
    };
    let (a, a_list, a_found) = run("whole", false);
    let (b, b_list, b_found) = run("streamed", true);
    assert_eq!(a.entry.state, JobState::Done);
    assert_eq!(a.part_offsets_s, [0.0, 90.0]);
    assert_eq!(a.transcript.segments.len(), 2 * 8);
    assert_eq!(
        a.transcript.segments[8].start_s, 93.0,
        "moved by the first part"
    );
    assert_eq!(b, a);
    assert_eq!(b_list, a_list);
    assert_eq!(b_found, a_found);
    assert_eq!(b_found.len(), 1);
}

/// Token times as schema version 2 stored them: one JSON text each per job and part.
fn v2_timings(tokens: &[TokenTime], words: &[WordTime]) -> (String, String) {
    (
        serde_json::to_string(tokens).expect("json"),
        serde_json::to_string(words).expect("json"),
    )
}

#[test]
fn a_schema_2_library_with_token_times_is_migrated_and_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audio = dir.path().join("old.wav");
    std::fs::write(&audio, b"RIFF....").expect("audio");
    let transcript = whole(&audio, &results(), 90.0);
    // The same job stored by this version, to compare with.
    let (fresh_lib, fresh_id) = stored(&dir.path().join("fresh"), &audio, false, None);
    let fresh = fresh_lib.get(fresh_id).expect("get").expect("present");

    // A version-2 file written row by row as version 2 wrote a finished job: its transcript,
    // segments, one timings row, the search index; and a recording of two parts (a timings row
    // each).
    let path = dir.path().join(LIBRARY_FILE);
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        for migration in &schema::MIGRATIONS[..2] {
            conn.execute_batch(migration).expect("migration");
        }
        conn.pragma_update(None, "user_version", 2)
            .expect("version");
        conn.execute(
            "INSERT INTO jobs (id, session_id, created_at_ms, path, path_text, file_size,
                file_mtime_ms, language, use_itn, rich, device_request, model, state, device,
                started_at_ms, finished_at_ms, duration_s, wall_ms, model_revision)
             VALUES (1, 1, 1000, ?1, ?2, ?3, ?4, 'auto', 0, 0, 'cpu', 'm', 'done', 'CPU',
                1001, 1002, 90.0, 1234.5, 'rev')",
            rusqlite::params![
                store::path_bytes(&audio),
                audio.to_string_lossy(),
                fresh.file_size.map(u64::cast_signed),
                fresh.file_mtime_ms
            ],
        )
        .expect("job");
        conn.execute(
            "INSERT INTO transcripts VALUES (1, ?1, ?2, ?3, ?4, ?5, 90.0)",
            rusqlite::params![
                transcript.text,
                transcript.raw_text,
                transcript.language,
                transcript.emotion,
                transcript.event
            ],
        )
        .expect("transcript");
        for (idx, s) in (0i64..).zip(&transcript.segments) {
            conn.execute(
                "INSERT INTO segments VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
                rusqlite::params![
                    idx, s.start_s, s.end_s, s.text, s.language, s.emotion, s.event
                ],
            )
            .expect("segment");
        }
        let (tokens, words) = v2_timings(&transcript.tokens, &transcript.words);
        conn.execute(
            "INSERT INTO timings VALUES (1, 0, ?1, ?2)",
            rusqlite::params![tokens, words],
        )
        .expect("timings");
        conn.execute(
            "INSERT INTO transcript_fts (rowid, body) VALUES (1, ?1)",
            [format!(
                "{}\n{}",
                search_form(&transcript.text),
                search_form(&audio.to_string_lossy())
            )],
        )
        .expect("fts");
        // A recording job of two parts, its part 1's times stored before part 0's.
        conn.execute(
            "INSERT INTO jobs (id, session_id, created_at_ms, path, path_text, language,
                use_itn, rich, device_request, model, state, duration_s, model_revision)
             VALUES (2, 1, 2000, x'72', 'r', 'auto', 0, 0, 'cpu', 'm', 'done', 4.0, 'rev')",
            [],
        )
        .expect("recording job");
        let token = |t: &str, s: f64| TokenTime {
            token: t.into(),
            start_s: s,
            end_s: s + 0.5,
        };
        let word = |w: &str, s: i64| WordTime {
            word: w.into(),
            start_ms: s,
            end_ms: s + 500,
        };
        for (part, t) in [(1, token("▁b", 2.5)), (0, token("▁a", 0.5))] {
            let (tokens, words) = v2_timings(std::slice::from_ref(&t), &[word(&t.token[3..], 0)]);
            conn.execute(
                "INSERT INTO timings VALUES (2, ?1, ?2, ?3)",
                rusqlite::params![part, tokens, words],
            )
            .expect("part timings");
        }
    }

    let (lib, _) = Library::open(&path).expect("migrated");
    let version: i64 = lib
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, schema::latest_version());
    assert_eq!(version, 3);
    let old = lib.get(1).expect("get").expect("present");
    assert_eq!(old.transcript, transcript);
    assert_eq!(old.transcript, fresh.transcript);
    assert_eq!(old.entry.state, JobState::Done);
    assert_eq!(old.wall_ms, fresh.wall_ms);
    assert_eq!(
        lib.list(Some("budget"), 10).expect("search")[0].id,
        1,
        "the search index is kept"
    );
    let recording = lib.get(2).expect("get").expect("present");
    assert_eq!(
        recording
            .transcript
            .tokens
            .iter()
            .map(|t| t.token.as_str())
            .collect::<Vec<_>>(),
        ["▁a", "▁b"],
        "parts in order"
    );
    assert_eq!(recording.transcript.words.len(), 2);
    let chunks: Vec<(i64, i64, i64)> = lib
        .conn
        .prepare("SELECT job_id, part, chunk FROM timings ORDER BY job_id, part")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .expect("rows");
    assert_eq!(chunks, [(1, 0, 0), (2, 0, 0), (2, 1, 0)]);
}
