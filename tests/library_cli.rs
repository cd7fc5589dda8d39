//! The transcript library with real processes: `gpuscribe transcribe` (the tiny FunASR-made
//! model on the CPU) killed with SIGKILL mid-queue, a damaged library file, `gpuscribe history`
//! and its export, and the CLI and the window's library thread writing one file at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuscribe::engine::{DecodeSettings, Event, FileTranscript, Segment};
use gpuscribe::library::service::{LibraryReply, LibraryRequest, LibraryService};
use gpuscribe::library::{DATA_DIR_ENV, JobState, LIBRARY_FILE, Library, NewJob};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gpuscribe"))
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice")
}

/// `n` copies of the model's test clips (a second or more of speech each) in `dir`.
fn clips(dir: &Path, n: usize) -> Vec<PathBuf> {
    let sources = ["en_short", "zh_mid", "ja_long"];
    (0..n)
        .map(|i| {
            let name = sources[i % sources.len()];
            let path = dir.join(format!("{i:03}-{name}.wav"));
            std::fs::copy(data().join("audio").join(format!("{name}.wav")), &path)
                .expect("copy clip");
            path
        })
        .collect()
}

fn gpuscribe(data_dir: &Path) -> Command {
    let mut cmd = Command::new(exe());
    cmd.env(DATA_DIR_ENV, data_dir)
        .env("SENSEVOICE_DEVICE", "cpu")
        .env_remove("CUDA_VISIBLE_DEVICES");
    cmd
}

fn transcribe(data_dir: &Path, files: &[PathBuf]) -> Command {
    let mut cmd = gpuscribe(data_dir);
    cmd.arg("transcribe")
        .arg("--model-dir")
        .arg(data().join("tiny"))
        .arg("--format")
        .arg("json")
        .args(files);
    cmd
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn states(library: &Library) -> Vec<(PathBuf, JobState)> {
    let mut rows: Vec<_> = library
        .list(None, 10_000)
        .expect("list")
        .into_iter()
        .map(|e| (e.path, e.state))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[test]
fn sigkill_mid_queue_keeps_finished_transcripts_and_marks_the_rest_interrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let files = clips(dir.path(), 120);
    let child = transcribe(&data_dir, &files)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gpuscribe transcribe");
    let mut child = KillOnDrop(child);
    let library_path = data_dir.join(LIBRARY_FILE);

    // Wait until some are done and some are not, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done_before_kill;
    loop {
        assert!(Instant::now() < deadline, "no transcript finished in time");
        assert!(
            child.0.try_wait().expect("poll").is_none(),
            "gpuscribe finished all files before it could be killed"
        );
        if library_path.exists()
            && let Ok((library, _)) = Library::open(&library_path)
        {
            let rows = states(&library);
            done_before_kill = rows.iter().filter(|r| r.1 == JobState::Done).count();
            if rows.len() == files.len() && done_before_kill >= 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reap");

    // The next process on the same file: the finished ones intact, the rest interrupted.
    let (library, report) = Library::open(&library_path).expect("reopen");
    let rows = states(&library);
    let done: Vec<_> = rows.iter().filter(|r| r.1 == JobState::Done).collect();
    let interrupted = rows.iter().filter(|r| r.1 == JobState::Interrupted).count();
    assert_eq!(rows.len(), files.len(), "every queued file has a row");
    assert!(done.len() >= done_before_kill, "{rows:?}");
    assert_eq!(done.len() + interrupted, files.len(), "{rows:?}");
    assert!(interrupted > 0, "the kill came before the end: {rows:?}");
    assert_eq!(report.interrupted, interrupted);

    // A finished transcript is exactly what a clean run of the same file gives.
    let (path, _) = done[0];
    let clean = transcribe(&dir.path().join("elsewhere"), std::slice::from_ref(path))
        .arg("--no-history")
        .output()
        .expect("clean run");
    assert!(clean.status.success(), "{clean:?}");
    let expected: Vec<FileTranscript> =
        serde_json::from_slice(&clean.stdout).expect("JSON transcripts");
    // The library keeps everything the JSON has: text, tags, segments, token and word times.
    assert!(!expected[0].tokens.is_empty(), "the clip has tokens");
    let id = library
        .list(None, 10_000)
        .expect("list")
        .into_iter()
        .find(|e| &e.path == path)
        .expect("row")
        .id;
    let stored = library.get(id).expect("get").expect("present");
    assert_eq!(stored.transcript, expected[0]);
    assert_eq!(stored.entry.device.as_deref(), Some("CPU"));
    assert_eq!(stored.device_request, "cpu");
    // --no-history left no library behind.
    assert!(!dir.path().join("elsewhere").join(LIBRARY_FILE).exists());
}

fn sample_transcript(path: &Path, text: &str) -> FileTranscript {
    FileTranscript {
        path: path.to_owned(),
        duration_s: 2.5,
        language: "en".into(),
        emotion: "NEUTRAL".into(),
        event: "Speech".into(),
        text: text.into(),
        raw_text: format!("<|en|><|NEUTRAL|><|Speech|><|woitn|>{text}"),
        segments: vec![Segment {
            start_s: 0.0,
            end_s: 2.5,
            text: text.into(),
            language: "en".into(),
            emotion: "NEUTRAL".into(),
            event: "Speech".into(),
        }],
        tokens: Vec::new(),
        words: Vec::new(),
    }
}

#[test]
fn history_lists_searches_and_exports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let id = {
        let (mut library, _) = Library::open(&data_dir.join(LIBRARY_FILE)).expect("open");
        let path = dir.path().join("standup.wav");
        let id = library
            .add_job(&NewJob {
                path: path.clone(),
                settings: DecodeSettings::default(),
                device_request: "auto".into(),
                model: "m".into(),
                model_revision: None,
                recording: None,
                parts: Vec::new(),
            })
            .expect("add");
        library
            .job_done(id, &sample_transcript(&path, "budget review at noon"), 10.0)
            .expect("done");
        id
    };
    let out = gpuscribe(&data_dir)
        .args(["history", "--json", "--search", "budg"])
        .output()
        .expect("history");
    assert!(out.status.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows[0]["id"], id);
    assert_eq!(rows[0]["state"], "done");
    assert_eq!(rows[0]["preview"], "budget review at noon");
    let none = gpuscribe(&data_dir)
        .args(["history", "--json", "--search", "holiday"])
        .output()
        .expect("history");
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "[]");
    let table = gpuscribe(&data_dir)
        .args(["history", "--limit", "5"])
        .output()
        .expect("history");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("standup.wav") && table.contains("budget review"),
        "{table}"
    );

    let srt = gpuscribe(&data_dir)
        .args(["history", "export", &id.to_string(), "--format", "srt"])
        .output()
        .expect("export");
    assert_eq!(
        String::from_utf8_lossy(&srt.stdout),
        "1\n00:00:00,000 --> 00:00:02,500\nbudget review at noon\n\n"
    );
    let missing = gpuscribe(&data_dir)
        .args(["history", "export", "999", "--format", "txt"])
        .output()
        .expect("export");
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no transcript with id 999"),
        "{missing:?}"
    );
}

#[test]
fn a_damaged_library_is_kept_and_a_new_one_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(data_dir.join(LIBRARY_FILE), &garbage).expect("write");
    let out = gpuscribe(&data_dir)
        .args(["history"])
        .output()
        .expect("history");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was damaged"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no transcripts"
    );
    let kept: Vec<PathBuf> = std::fs::read_dir(&data_dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).expect("read"), garbage);
    assert!(stderr.contains(&kept[0].display().to_string()), "{stderr}");
    // The new library works.
    let (library, _) = Library::open(&data_dir.join(LIBRARY_FILE)).expect("new library");
    assert_eq!(library.count().expect("count"), 0);
}

#[test]
fn the_cli_and_the_window_writer_lose_no_rows_when_writing_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let library_path = data_dir.join(LIBRARY_FILE);
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    let files = clips(dir.path(), 12);
    let child = transcribe(&data_dir, &files)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gpuscribe transcribe");
    let mut child = KillOnDrop(child);

    // The window's writer, at the same time: jobs with segments and results, as fast as it can.
    let mut service =
        LibraryService::spawn(library_path.clone(), Arc::new(|| {})).expect("library thread");
    const WINDOW_JOBS: u64 = 300;
    for job_id in 1..=WINDOW_JOBS {
        let path = dir.path().join(format!("window-{job_id}.wav"));
        service.send(LibraryRequest::Queued {
            job_id,
            job: NewJob {
                path: path.clone(),
                settings: DecodeSettings::default(),
                device_request: "auto".into(),
                model: "m".into(),
                model_revision: None,
                recording: None,
                parts: Vec::new(),
            },
        });
        service.send(LibraryRequest::Event(Event::JobStarted {
            job_id,
            device: "GPU 0".into(),
        }));
        service.send(LibraryRequest::Event(Event::JobDone {
            job_id,
            transcript: sample_transcript(&path, &format!("window job {job_id}")),
            ms: 1.0,
        }));
        service.flush();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.backlog() > 0 {
        assert!(Instant::now() < deadline, "the library thread is stuck");
        std::thread::sleep(Duration::from_millis(5));
        service.flush();
    }
    let status = child.0.wait().expect("wait for gpuscribe");
    assert!(status.success(), "{status}");
    let errors: Vec<String> = service
        .drain()
        .into_iter()
        .filter_map(|r| match r {
            LibraryReply::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    drop(service);
    assert!(errors.is_empty(), "{errors:?}");

    let (library, _) = Library::open(&library_path).expect("open");
    let rows = states(&library);
    let total = usize::try_from(WINDOW_JOBS).expect("small") + files.len();
    assert_eq!(rows.len(), total);
    assert!(rows.iter().all(|r| r.1 == JobState::Done), "{rows:?}");
    for file in &files {
        assert!(rows.iter().any(|r| &r.0 == file), "{file:?} missing");
    }
    assert_eq!(
        library
            .list(Some("window job"), 1000)
            .expect("search")
            .len(),
        usize::try_from(WINDOW_JOBS).expect("small")
    );
}

/// A WAV of the three test clips one after another, `times` over (7 s each time).
fn long_wav(path: &Path, times: usize) {
    let clips: Vec<Vec<i16>> = ["ja_long", "zh_mid", "en_short"]
        .iter()
        .map(|name| {
            hound::WavReader::open(data().join("audio").join(format!("{name}.wav")))
                .expect("clip")
                .samples::<i16>()
                .map(|s| s.expect("sample"))
                .collect()
        })
        .collect();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("create");
    for _ in 0..times {
        for clip in &clips {
            clip.iter()
                .chain(&[0i16; 9_600])
                .for_each(|&s| writer.write_sample(s).expect("write"));
        }
    }
    writer.finalize().expect("finalize");
}

#[test]
fn a_long_file_is_stored_in_pieces_and_reads_back_as_transcribe_printed_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let audio = dir.path().join("long.wav");
    // About 12 minutes: more than one planning window, so the transcript comes in pieces.
    long_wav(&audio, 100);
    let out = transcribe(&data_dir, std::slice::from_ref(&audio))
        .output()
        .expect("transcribe");
    assert!(out.status.success(), "{out:?}");
    let printed: Vec<FileTranscript> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        printed[0].segments.len() > 16,
        "{}",
        printed[0].segments.len()
    );

    let library_path = data_dir.join(LIBRARY_FILE);
    let pieces: i64 = rusqlite::Connection::open(&library_path)
        .expect("open")
        .query_row("SELECT COUNT(*) FROM timings WHERE job_id = 1", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert!(pieces > 1, "stored in {pieces} piece(s)");
    let (library, _) = Library::open(&library_path).expect("open");
    let stored = library.get(1).expect("get").expect("present");
    assert_eq!(stored.entry.state, JobState::Done);
    assert_eq!(stored.transcript, printed[0]);
    // `gpuscribe history export` gives what `transcribe` printed, to the byte.
    let exported = gpuscribe(&data_dir)
        .args(["history", "export", "1", "--format", "json"])
        .output()
        .expect("export");
    assert!(exported.status.success(), "{exported:?}");
    let again = gpuscribe(&data_dir)
        .arg("transcribe")
        .arg("--model-dir")
        .arg(data().join("tiny"))
        .arg("--format")
        .arg("json")
        .arg("--no-history")
        .arg("--output-dir")
        .arg(dir.path().join("out"))
        .arg(&audio)
        .output()
        .expect("transcribe");
    assert!(again.status.success(), "{again:?}");
    let written = std::fs::read(dir.path().join("out/long.json")).expect("output");
    assert_eq!(
        String::from_utf8_lossy(&exported.stdout),
        String::from_utf8_lossy(&written)
    );
}
