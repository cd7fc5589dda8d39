//! A recording in several files as one job, token times, model revisions and what a crash
//! leaves of a recording, on a real SQLite file.

use super::test_support::{job, lose_session_lock, open_in, wav};
use super::*;
use crate::engine::transcript::{ExportFormat, render};
use crate::engine::{Event, FileTranscript, Segment, TokenTime, WordTime};

/// A part's transcript: one segment and two tokens/words, times from the part's start.
fn part(path: &Path, text: &str, duration_s: f64) -> FileTranscript {
    FileTranscript {
        path: path.to_owned(),
        duration_s,
        language: "en".into(),
        emotion: "NEUTRAL".into(),
        event: "Speech".into(),
        text: text.into(),
        raw_text: format!("<|en|>{text}"),
        segments: vec![Segment {
            start_s: 0.1,
            end_s: duration_s - 0.1,
            text: text.into(),
            language: "en".into(),
            ..Segment::default()
        }],
        tokens: vec![
            TokenTime {
                token: format!("▁{text}"),
                start_s: 0.2,
                end_s: 0.4,
            },
            TokenTime {
                token: "s".into(),
                start_s: 0.4,
                end_s: 0.5,
            },
        ],
        words: vec![WordTime {
            word: format!("{text}s"),
            start_ms: 200,
            end_ms: 500,
        }],
    }
}

fn done(job_id: u64, transcript: FileTranscript) -> Event {
    Event::JobDone {
        job_id,
        transcript,
        ms: 10.0,
    }
}

#[test]
fn a_recording_in_three_files_is_one_job_with_continuous_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lib = open_in(dir.path());
    let files: Vec<PathBuf> = ["rec.wav", "rec-part2.wav", "rec-part3.wav"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for (file, secs) in files.iter().zip([2.0, 2.0, 0.5]) {
        wav(file, secs);
    }
    let rec = lib
        .add_recording(&files[0], "mic", 16_000)
        .expect("recording");
    let mut new = job(&files[0]);
    new.recording = Some((rec, 0));
    new.parts.clone_from(&files);
    let mut recorder = JobRecorder::new();
    let id = recorder
        .queued_parts(&mut lib, &[11, 12, 13], &new, None)
        .expect("queued");
    lib.recording_finished(rec, 4.5, 0, 3, true)
        .expect("finished");
    assert_eq!(lib.part_offsets(id).expect("offsets"), [0.0, 2.0, 4.0]);

    // Parts finish out of order; the job is done with the last one.
    let ev = |lib: &mut Library, recorder: &mut JobRecorder, e: Event| {
        recorder.on_event(lib, &e).expect("event");
    };
    ev(
        &mut lib,
        &mut recorder,
        Event::JobStarted {
            job_id: 13,
            device: "CPU".into(),
        },
    );
    ev(
        &mut lib,
        &mut recorder,
        Event::JobProgress {
            job_id: 13,
            done_s: 0.5,
            total_s: 0.5,
            segments: part(&files[2], "gamma", 0.5).segments,
        },
    );
    let so_far = lib.get(id).expect("get").expect("present");
    assert_eq!(so_far.entry.state, JobState::Running);
    assert_eq!(so_far.transcript.segments[0].start_s, 4.1, "moved by 4 s");
    ev(
        &mut lib,
        &mut recorder,
        done(13, part(&files[2], "gamma", 0.5)),
    );
    ev(
        &mut lib,
        &mut recorder,
        done(11, part(&files[0], "alpha", 2.0)),
    );
    let partial = lib.get(id).expect("get").expect("present");
    assert_eq!(partial.entry.state, JobState::Running);
    assert_eq!(partial.transcript.text, "alpha gamma");
    ev(
        &mut lib,
        &mut recorder,
        done(12, part(&files[1], "beta", 2.0)),
    );

    let listed = lib.list(None, 10).expect("list");
    assert_eq!(listed.len(), 1, "one history row: {listed:?}");
    let whole = lib.get(id).expect("get").expect("present");
    assert_eq!(whole.entry.state, JobState::Done);
    assert_eq!(whole.parts, files);
    let t = &whole.transcript;
    assert_eq!(t.text, "alpha beta gamma");
    assert_eq!(t.raw_text, "<|en|>alpha <|en|>beta <|en|>gamma");
    assert!((t.duration_s - 4.5).abs() < 1e-9, "{}", t.duration_s);
    let starts: Vec<f64> = t.segments.iter().map(|s| s.start_s).collect();
    assert_eq!(starts, [0.1, 2.1, 4.1]);
    let token_starts: Vec<f64> = t.tokens.iter().map(|s| s.start_s).collect();
    assert_eq!(token_starts, [0.2, 0.4, 2.2, 2.4, 4.2, 4.4]);
    let words: Vec<(&str, i64)> = t
        .words
        .iter()
        .map(|w| (w.word.as_str(), w.start_ms))
        .collect();
    assert_eq!(words, [("alphas", 200), ("betas", 2200), ("gammas", 4200)]);
    assert_eq!(whole.wall_ms, Some(30.0));
    // Search finds the last part's words; the export covers all parts.
    assert_eq!(lib.list(Some("gamma"), 10).expect("search")[0].id, id);
    let srt = render(t, ExportFormat::Srt);
    assert!(srt.contains("alphas") && srt.contains("gammas"), "{srt}");
    // The last cue ends in the third part (its start may move earlier to reach the shortest
    // cue length, since the audio ends at 4.5 s).
    assert!(
        srt.contains("--> 00:00:04,"),
        "a cue in the third part: {srt}"
    );

    // Resume starts every part over, with the offsets read again.
    let again = lib.requeue(id).expect("requeue");
    assert_eq!(again.parts, files);
    assert_eq!(lib.part_offsets(id).expect("offsets"), [0.0, 2.0, 4.0]);
    let cleared = lib.get(id).expect("get").expect("present");
    assert!(cleared.transcript.tokens.is_empty());
}

#[test]
fn a_failed_part_fails_the_job_and_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lib = open_in(dir.path());
    let files = [dir.path().join("r.wav"), dir.path().join("r-part2.wav")];
    wav(&files[0], 1.0);
    wav(&files[1], 1.0);
    let mut new = job(&files[0]);
    new.parts = files.to_vec();
    let mut recorder = JobRecorder::new();
    let id = recorder
        .queued_parts(&mut lib, &[1, 2], &new, None)
        .expect("queued");
    recorder
        .on_event(
            &mut lib,
            &Event::JobFailed {
                job_id: 2,
                message: "r-part2.wav: not audio".into(),
                cancelled: false,
            },
        )
        .expect("failed");
    recorder
        .on_event(&mut lib, &done(1, part(&files[0], "one", 1.0)))
        .expect("done");
    let stored = lib.get(id).expect("get").expect("present");
    assert_eq!(stored.entry.state, JobState::Failed);
    assert_eq!(
        stored.entry.error.as_deref(),
        Some("part 2 of the recording: r-part2.wav: not audio")
    );
}

#[test]
fn token_and_word_times_are_kept_and_exported_like_a_fresh_transcript() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lib = open_in(dir.path());
    let audio = dir.path().join("talk.wav");
    let id = lib.add_job(&job(&audio)).expect("add");
    let t = part(&audio, "hello", 3.0);
    lib.job_done(id, &t, 1.0).expect("done");
    let stored = lib.get(id).expect("get").expect("present");
    assert_eq!(stored.transcript, t);
    for format in [ExportFormat::Srt, ExportFormat::Vtt, ExportFormat::Json] {
        assert_eq!(render(&stored.transcript, format), render(&t, format));
    }
    let json: serde_json::Value =
        serde_json::from_str(&render(&stored.transcript, ExportFormat::Json)).expect("json");
    assert_eq!(json["tokens"][1]["token"], "s");
    assert_eq!(json["words"][0]["end_ms"], 500);
}

#[test]
fn the_model_revision_is_the_snapshot_commit_or_the_folder_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = dir
        .path()
        .join("hub/models--FunAudioLLM--SenseVoiceSmall/snapshots")
        .join(commit);
    std::fs::create_dir_all(&snapshot).expect("mkdir");
    std::fs::write(snapshot.join("config.yaml"), "a: 1").expect("write");
    assert_eq!(revision::folder_revision(&snapshot), commit);
    #[cfg(unix)]
    {
        let link = dir.path().join("model-link");
        std::os::unix::fs::symlink(&snapshot, &link).expect("symlink");
        assert_eq!(revision::folder_revision(&link), commit);
    }

    // The store: a branch resolves through refs/, a missing one says so.
    let mut config = crate::model_store::StoreConfig::from_env();
    config.hub_dir = dir.path().join("hub");
    config.revision = "main".into();
    assert_eq!(revision::release_revision(&config), "main (not downloaded)");
    config.cache().write_ref("main", commit).expect("ref");
    assert_eq!(revision::release_revision(&config), commit);

    // Any other folder: its content. Same size, other bytes → another fingerprint.
    let plain = dir.path().join("my-model");
    std::fs::create_dir_all(&plain).expect("mkdir");
    std::fs::write(plain.join("config.yaml"), "a: 1").expect("write");
    std::fs::write(plain.join("model.pt"), vec![7u8; 1000]).expect("write");
    let first = revision::folder_revision(&plain);
    assert!(first.starts_with(revision::FINGERPRINT_PREFIX), "{first}");
    assert_eq!(first.len(), revision::FINGERPRINT_PREFIX.len() + 64);
    assert_eq!(revision::folder_revision(&plain), first, "stable");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(plain.join("config.yaml"), "a: 2").expect("write");
    let second = revision::folder_revision(&plain);
    assert_ne!(second, first, "an edited config is another revision");
    let missing = revision::folder_revision(&dir.path().join("gone"));
    assert!(
        missing.starts_with("unreadable: ") && missing.contains("gone"),
        "{missing}"
    );

    // A job stores the revision of its model.
    let mut lib = open_in(dir.path());
    let mut new = job(&dir.path().join("a.wav"));
    new.model = plain.display().to_string();
    new.model_revision = None;
    let id = lib.add_job(&new).expect("add");
    assert_eq!(
        lib.get(id).expect("get").expect("present").model_revision,
        second
    );
}

#[test]
fn a_recording_cut_off_by_a_crash_is_repaired_and_listed_interrupted() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(LIBRARY_FILE);
    let first_part = dir.path().join("rec.wav");
    let (mut first, _) = Library::open(&path).expect("open");
    let rec = first
        .add_recording(&first_part, "mic", 16_000)
        .expect("recording");
    let mut new = job(&first_part);
    new.recording = Some((rec, 0));
    let id = first.recording_job(&new).expect("job");
    assert_eq!(
        first.list(None, 10).expect("list")[0].state,
        JobState::Recording
    );
    // What the recorder left: a finished first part, and a second whose header counts 0.5 s
    // of the 1.5 s it holds.
    wav(&first_part, 2.0);
    let second = dir.path().join("rec-part2.wav");
    wav(&second, 0.5);
    let mut file = std::fs::File::options()
        .append(true)
        .open(&second)
        .expect("open");
    file.write_all(&vec![0u8; 16_000 * 2]).expect("append");
    drop(file);

    // The process dies (its lock goes with it).
    lose_session_lock(&mut first);
    let (mut next, report) = Library::open(&path).expect("open after the crash");
    assert_eq!(report.interrupted, 1);
    let stored = next.get(id).expect("get").expect("present");
    assert_eq!(stored.entry.state, JobState::Interrupted);
    assert_eq!(stored.parts, [first_part.clone(), second.clone()]);
    assert!((stored.entry.duration_s.expect("length") - 3.5).abs() < 1e-9);
    let info = stored.entry.recording.expect("recording");
    assert_eq!((info.parts, info.state.as_str()), (2, "interrupted"));
    assert!((crate::audio::wav_duration_s(&second).expect("repaired") - 1.5).abs() < 1e-9);
    // Resume queues both parts.
    let again = next.requeue(id).expect("requeue");
    assert_eq!(again.parts, [first_part, second]);
    assert_eq!(next.part_offsets(id).expect("offsets"), [0.0, 2.0]);
    drop(next);
    drop(first);
}
