use super::test_support::{lose_session_lock, open_in};
use super::*;
use crate::engine::{DecodeSettings, Event, FileTranscript, Segment};

fn job(path: &str) -> NewJob {
    NewJob {
        path: path.into(),
        settings: DecodeSettings {
            language: "zh".into(),
            use_itn: true,
            rich: false,
            translate: false,
        },
        device_request: "cpu".into(),
        model: "tests/data/sensevoice/tiny".into(),
        model_revision: None,
        recording: None,
        parts: Vec::new(),
    }
}

fn transcript(path: &str, text: &str, duration_s: f64) -> FileTranscript {
    FileTranscript {
        path: path.into(),
        duration_s,
        language: "zh".into(),
        emotion: "NEUTRAL".into(),
        event: "Speech".into(),
        text: text.into(),
        raw_text: format!("<|zh|><|NEUTRAL|><|Speech|><|withitn|>{text}"),
        segments: vec![Segment {
            start_s: 0.0,
            end_s: duration_s,
            text: text.into(),
            language: "zh".into(),
            emotion: "NEUTRAL".into(),
            event: "Speech".into(),
        }],
        tokens: Vec::new(),
        words: Vec::new(),
    }
}

#[test]
fn jobs_are_written_as_results_arrive_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LIBRARY_FILE);
    let (mut lib, report) = Library::open(&path).expect("open");
    assert!(report.corrupt_backup.is_none());
    let audio = dir.path().join("会议.wav");
    std::fs::write(&audio, b"RIFF....").expect("write");
    let mut recorder = JobRecorder::new();
    let id = recorder
        .queued(&mut lib, 7, &job(&audio.to_string_lossy()))
        .expect("queued");
    let listed = lib.list(None, 10).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, JobState::Queued);
    assert_eq!(listed[0].language, "zh");

    recorder
        .on_event(
            &mut lib,
            &Event::JobStarted {
                job_id: 7,
                device: "CPU".into(),
            },
        )
        .expect("started");
    let segment = Segment {
        start_s: 0.0,
        end_s: 2.0,
        text: "明天开会".into(),
        ..Segment::default()
    };
    recorder
        .on_event(
            &mut lib,
            &Event::JobProgress {
                job_id: 7,
                done_s: 2.0,
                total_s: 4.0,
                segments: vec![segment.clone()],
            },
        )
        .expect("progress");
    // Mid-job: the segment is stored already.
    let stored = lib.get(id).expect("get").expect("present");
    assert_eq!(stored.entry.state, JobState::Running);
    assert_eq!(stored.entry.device.as_deref(), Some("CPU"));
    assert_eq!(stored.transcript.segments, vec![segment]);
    assert_eq!(stored.file_size, Some(8));
    assert!(stored.settings.use_itn);

    let done = transcript(&audio.to_string_lossy(), "明天的会议在三点。", 4.0);
    recorder
        .on_event(
            &mut lib,
            &Event::JobDone {
                job_id: 7,
                transcript: done.clone(),
                ms: 321.0,
            },
        )
        .expect("done");
    let stored = lib.get(id).expect("get").expect("present");
    assert_eq!(stored.entry.state, JobState::Done);
    assert_eq!(stored.transcript, done);
    assert_eq!(stored.wall_ms, Some(321.0));
    // Full-text search finds a word inside unspaced Chinese text, and the file's name.
    let found = lib.list(Some("会议"), 10).expect("search");
    assert_eq!(found.iter().map(|e| e.id).collect::<Vec<_>>(), [id]);
    assert_eq!(
        lib.list(Some("会议"), 10).expect("search")[0].preview,
        done.text
    );
    assert!(lib.list(Some("下午"), 10).expect("search").is_empty());
    assert_eq!(lib.list(Some("会议.wav"), 10).expect("search").len(), 1);

    lib.delete(id).expect("delete");
    assert!(lib.list(None, 10).expect("list").is_empty());
    assert!(lib.list(Some("会议"), 10).expect("search").is_empty());
    assert!(lib.get(id).expect("get").is_none());
    lib.undelete(id).expect("undelete");
    assert_eq!(lib.list(Some("会议"), 10).expect("search").len(), 1);
}

#[test]
fn english_words_match_by_prefix_and_all_terms_must_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lib = open_in(dir.path());
    let a = lib.add_job(&job("a.wav")).expect("add");
    lib.job_done(
        a,
        &transcript("a.wav", "The quarterly meeting starts", 1.0),
        1.0,
    )
    .expect("done");
    let b = lib.add_job(&job("b.wav")).expect("add");
    lib.job_done(b, &transcript("b.wav", "A meeting about budgets", 1.0), 1.0)
        .expect("done");
    let ids = |q: &str| -> Vec<i64> {
        lib.list(Some(q), 10)
            .expect("search")
            .iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(ids("meet"), [b, a], "newest first");
    assert_eq!(ids("MEETING budg"), [b]);
    assert_eq!(ids("quarterly"), [a]);
    assert!(ids("\"").is_empty());
    assert_eq!(lib.list(None, 1).expect("list").len(), 1);
}

#[test]
fn jobs_of_a_dead_session_become_interrupted_and_can_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LIBRARY_FILE);
    let (mut first, _) = Library::open(&path).expect("open");
    let done = first.add_job(&job("done.wav")).expect("add");
    first
        .job_done(done, &transcript("done.wav", "kept", 1.0), 5.0)
        .expect("done");
    let running = first.add_job(&job("running.wav")).expect("add");
    first.job_started(running, "CPU").expect("started");
    let queued = first.add_job(&job("queued.wav")).expect("add");

    // A live session's jobs are left alone.
    let (second, report) = Library::open(&path).expect("open again");
    assert_eq!(report.interrupted, 0);
    let state = |lib: &Library, id| lib.get(id).expect("get").expect("present").entry.state;
    assert_eq!(state(&second, running), JobState::Running);
    drop(second);

    // The first session dies without closing: its lock goes with its process.
    lose_session_lock(&mut first);
    let (mut third, report) = Library::open(&path).expect("open after the crash");
    assert_eq!(report.interrupted, 2);
    assert!(report.messages(&path)[0].contains("interrupted"));
    assert_eq!(state(&third, done), JobState::Done);
    assert_eq!(state(&third, running), JobState::Interrupted);
    assert_eq!(state(&third, queued), JobState::Interrupted);
    assert_eq!(
        third
            .get(done)
            .expect("get")
            .expect("present")
            .transcript
            .text,
        "kept"
    );

    let again = third.requeue(running).expect("requeue");
    assert_eq!(again.path, PathBuf::from("running.wav"));
    assert_eq!(again.settings.language, "zh");
    assert_eq!(state(&third, running), JobState::Queued);
    // A clean close marks what is still unfinished interrupted at once.
    drop(third);
    drop(first);
    let (fourth, _) = Library::open(&path).expect("open");
    assert_eq!(state(&fourth, running), JobState::Interrupted);
}

#[test]
fn a_damaged_file_is_kept_aside_and_a_new_library_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LIBRARY_FILE);
    let garbage = b"this is not a database, just bytes \x00\x01\x02".repeat(200);
    std::fs::write(&path, &garbage).expect("write");
    let (mut lib, report) = Library::open(&path).expect("open");
    let backup = report.corrupt_backup.clone().expect("backup");
    assert_eq!(std::fs::read(&backup).expect("read backup"), garbage);
    assert!(report.messages(&path)[0].contains("damaged"));
    assert!(lib.list(None, 10).expect("list").is_empty());
    lib.add_job(&job("a.wav")).expect("the new library works");
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LIBRARY_FILE);
    {
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("set");
    }
    let before = std::fs::read(&path).expect("read");
    let err = Library::open(&path).expect_err("too new");
    assert!(
        matches!(err, LibraryError::TooNew { found: 99, .. }),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[test]
fn recording_parts_read_as_one_transcript() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lib = open_in(dir.path());
    let rec = lib
        .add_recording(Path::new("rec.wav"), "Built-in mic", 48_000)
        .expect("recording");
    let mut ids = Vec::new();
    for (part, text) in [(0, "first"), (1, "second")] {
        let mut j = job(&format!("rec-{part}.wav"));
        j.recording = Some((rec, part));
        let id = lib.add_job(&j).expect("add");
        lib.job_done(id, &transcript(&format!("rec-{part}.wav"), text, 10.0), 1.0)
            .expect("done");
        ids.push(id);
    }
    lib.recording_finished(rec, 20.0, 3, 2, true)
        .expect("finished");
    let listed = lib.list(None, 10).expect("list");
    assert_eq!(listed.len(), 1, "one row per recording: {listed:?}");
    let info = listed[0].recording.clone().expect("a recording");
    assert_eq!((info.parts, info.dropped_frames), (2, 3));
    let whole = lib.get(ids[0]).expect("get").expect("present");
    assert_eq!(whole.transcript.text, "first second");
    assert_eq!(whole.transcript.duration_s, 20.0);
    let starts: Vec<f64> = whole
        .transcript
        .segments
        .iter()
        .map(|s| s.start_s)
        .collect();
    assert_eq!(starts, [0.0, 10.0]);
}

#[cfg(unix)]
#[test]
fn any_file_name_round_trips() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lib = open_in(dir.path());
    let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe bad name.wav"));
    let mut j = job("x");
    j.path = odd.clone();
    let id = lib.add_job(&j).expect("add");
    assert_eq!(lib.get(id).expect("get").expect("present").entry.path, odd);
}
