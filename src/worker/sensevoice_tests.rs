//! The worker with the tiny SenseVoice model on the CPU: file jobs streamed through the
//! pipeline give exactly the transcripts of the whole-file way, and report progress from the
//! container's length or from the bytes read.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::load;
use crate::engine::protocol::{
    DecodeSettings, Precision, WorkerDevice, WorkerEvent, WorkerRequest, to_line,
};
use crate::worker::run_worker;
use crate::worker::source::{Opener, StreamSource, WholeSource};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Runs the worker with the tiny model over `files`, opening them with `opener`.
fn run_files(opener: &Opener, files: &[PathBuf], budget_s: f64) -> Vec<WorkerEvent> {
    let mut requests = vec![WorkerRequest::Load {
        model_dir: data().join("sensevoice/tiny"),
        device: WorkerDevice::Cpu,
        precision: Precision::F32,
    }];
    for (i, path) in files.iter().enumerate() {
        requests.push(WorkerRequest::Transcribe {
            job_id: i as u64 + 1,
            path: path.clone(),
            settings: DecodeSettings::default(),
            batch_budget_s: budget_s,
        });
    }
    requests.push(WorkerRequest::Shutdown);
    let input: String = requests.iter().map(|r| to_line(r).unwrap()).collect();
    let mut out = Vec::new();
    assert_eq!(
        run_worker(
            Cursor::new(input.into_bytes()),
            &mut out,
            &load,
            opener,
            false
        ),
        0
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A job's segments (as text), its decode summary (length, warning) and its end (as text).
type Outcome = (Vec<String>, Option<(f64, Option<String>)>, String);

/// Each job's events apart from heartbeats and timings: its segments from the progress events
/// (sorted by time; their grouping follows the batches), its decode summary, its end.
fn outcome(events: &[WorkerEvent], job: u64) -> Outcome {
    let mut segments = Vec::new();
    let mut decoded = None;
    let mut end = String::new();
    for e in events {
        match e {
            WorkerEvent::Progress {
                job_id,
                segments: s,
                ..
            } if *job_id == job => segments.extend(s.iter().map(|s| format!("{s:?}"))),
            WorkerEvent::Decoded {
                job_id,
                duration_s,
                warning,
            } if *job_id == job => decoded = Some((*duration_s, warning.clone())),
            WorkerEvent::Done {
                job_id, transcript, ..
            } if *job_id == job => end = format!("{transcript:?}"),
            WorkerEvent::JobFailed {
                job_id,
                kind,
                message,
            } if *job_id == job => end = format!("{kind:?}: {message}"),
            _ => {}
        }
    }
    segments.sort();
    (segments, decoded, end)
}

/// About `seconds` of the three speech clips one after another at varying gain, with pauses of
/// varying length between them, so the cutter finds its cuts in different places.
fn speech(seconds: f64) -> Vec<f32> {
    let clips: Vec<Vec<f32>> = ["ja_long", "zh_mid", "en_short"]
        .iter()
        .map(|name| {
            let path = data().join(format!("sensevoice/audio/{name}.wav"));
            crate::audio::decode_file(&path, &mut |_| {})
                .unwrap()
                .samples
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0usize;
    while (out.len() as f64) < seconds * 16_000.0 {
        let gain = 0.4 + 0.6 * ((i * 7) % 10) as f32 / 10.0;
        out.extend(clips[i % 3].iter().map(|s| s * gain));
        let pause = 800 + (i * 2_357) % 12_000;
        out.extend(std::iter::repeat_n(0.0005, pause));
        i += 1;
    }
    out
}

fn write_wav(path: &Path, samples: &[f32], streamed: bool) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    if streamed {
        // What a recorder writing to a pipe leaves: no lengths (0xFFFFFFFF, "until the end").
        let mut bytes = std::fs::read(path).unwrap();
        let data_at = bytes.windows(4).position(|w| w == b"data").unwrap();
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[data_at + 4..data_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn streamed_file_jobs_give_exactly_the_whole_file_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.wav");
    let samples = speech(600.0);
    write_wav(&long, &samples, false);
    let segments = crate::engine::segment::split_at_pauses(&samples, 30.0, 15.0).len();
    // More segments than one planning window: the stream plans its batches among fewer
    // segments at a time than the whole buffer does.
    assert!(
        segments > crate::engine::pipeline::DEFAULT_WINDOW,
        "{segments}"
    );
    let mut files: Vec<PathBuf> = ["en_short", "ja_long", "zh_mid"]
        .iter()
        .map(|n| data().join(format!("sensevoice/audio/{n}.wav")))
        .collect();
    files.push(data().join("sensevoice/long/long_mix.wav"));
    for name in [
        "speech.mp3",
        "speech.flac",
        "speech.ogg",
        "speech.m4a",
        "speech_44k_stereo.wav",
        "bad_truncated.mp3",
        "bad_corrupt_middle.mp3",
        "bad_text.wav",
        "speech.opus",
    ] {
        files.push(data().join("audio").join(name));
    }
    files.push(long);
    let whole = run_files(&WholeSource::open_file, &files, 120.0);
    let streamed = run_files(&StreamSource::open, &files, 120.0);
    for (i, path) in files.iter().enumerate() {
        let job = i as u64 + 1;
        let want = outcome(&whole, job);
        let got = outcome(&streamed, job);
        assert_eq!(got, want, "{}", path.display());
        assert!(!want.2.is_empty(), "{}: no end", path.display());
    }
    // The cases are what they claim: good files done, warnings kept, bad files named.
    let (long_segments, decoded, end) = outcome(&streamed, files.len() as u64);
    assert_eq!(long_segments.len(), segments);
    assert_eq!(decoded, Some((samples.len() as f64 / 16_000.0, None)));
    assert!(end.starts_with("FileTranscript"), "{end}");
    let warned = outcome(&streamed, 10).1.and_then(|d| d.1);
    assert!(
        warned.is_some_and(|w| w.contains("bad_truncated.mp3")),
        "{streamed:?}"
    );
    for job in [12, 13] {
        let end = outcome(&streamed, job).2;
        assert!(end.starts_with("BadInput"), "{end}");
        assert!(
            end.contains(
                files[job as usize - 1]
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            )
        );
    }
}

#[test]
fn progress_goes_by_the_header_length_or_by_the_bytes_read() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than the channel and two planning windows of 30 s segments, so the first batches
    // run while the decoder is still reading (it is never more than that ahead).
    use crate::engine::pipeline::{CHANNEL_SEGMENTS, DEFAULT_WINDOW};
    let samples = speech(30.0 * (CHANNEL_SEGMENTS + 2 * DEFAULT_WINDOW) as f64);
    let duration = samples.len() as f64 / 16_000.0;
    let stated = dir.path().join("stated.wav");
    write_wav(&stated, &samples, false);
    let unstated = dir.path().join("unstated.wav");
    write_wav(&unstated, &samples, true);
    // Batches of one segment: a progress event for each.
    let events = run_files(&StreamSource::open, &[stated, unstated], 30.0);
    let progress = |job: u64| -> Vec<(f64, f64)> {
        events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Progress {
                    job_id,
                    done_s,
                    total_s,
                    ..
                } if *job_id == job => Some((*done_s, *total_s)),
                _ => None,
            })
            .collect()
    };
    let stated = progress(1);
    assert!(stated.len() >= 10, "{stated:?}");
    for &(_, total_s) in &stated {
        assert!((total_s - duration).abs() < 1e-9, "{stated:?}");
    }
    let unstated = progress(2);
    assert_eq!(unstated.len(), stated.len());
    for &(done_s, total_s) in &unstated {
        assert!(total_s >= done_s);
        // From the bytes read (the reader reads 64 KiB, 2 s, ahead).
        assert!((total_s - duration).abs() < 0.02 * duration, "{unstated:?}");
    }
    assert!(
        unstated.iter().any(|&(_, t)| t != duration),
        "some progress came before the end of decoding: {unstated:?}"
    );
    let last = unstated.last().unwrap();
    assert!((last.0 - duration).abs() < 1e-6 && (last.1 - duration).abs() < 1e-6);
    // Both files hold the same samples: the same transcript.
    let (a, b) = (outcome(&events, 1), outcome(&events, 2));
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, Some((duration, None)));
    assert_eq!(b.1, Some((duration, None)));
    assert_eq!(
        a.2.replace("stated.wav", "X"),
        b.2.replace("unstated.wav", "X")
    );
}

#[test]
fn an_mp3_of_copies_that_keep_their_headers_is_transcribed_whole_with_steady_progress() {
    let dir = tempfile::tempdir().unwrap();
    // 100 copies of the fixture, each with its ID3 tag and LAME header: the first header
    // states 2.4 s of a 4-minute file.
    let one = std::fs::read(data().join("audio/speech.mp3")).unwrap();
    let path = dir.path().join("copies.mp3");
    std::fs::write(&path, one.repeat(100)).unwrap();
    let decoded = crate::audio::decode_file(&path, &mut |_| {}).unwrap();
    let alone = crate::audio::decode_file(&data().join("audio/speech.mp3"), &mut |_| {}).unwrap();
    assert!(
        decoded.duration_s >= 100.0 * alone.duration_s,
        "{}",
        decoded.duration_s
    );

    let events = run_files(&StreamSource::open, &[path], 30.0);
    let (segments, summary, end) = outcome(&events, 1);
    assert_eq!(summary, Some((decoded.duration_s, None)), "{end}");
    assert!(segments.len() >= 8, "{segments:?}");
    let progress: Vec<(f64, f64)> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Progress {
                done_s, total_s, ..
            } => Some((*done_s, *total_s)),
            _ => None,
        })
        .collect();
    assert!(progress.len() >= 8, "{progress:?}");
    let mut last = 0.0;
    for &(done_s, total_s) in &progress {
        let fraction = done_s / total_s;
        assert!(fraction >= last && fraction <= 1.0, "{progress:?}");
        last = fraction;
        // The bytes tell the length from the first report on, not the header's 2.4 s.
        assert!(
            (total_s - decoded.duration_s).abs() < 0.1 * decoded.duration_s,
            "{progress:?}"
        );
    }
}

/// Every segment's result by the bits of the segment's samples.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Vec<u32>, crate::worker::SegmentText)>>>;

/// The real model, recording every segment's result by the segment's samples.
struct Recording {
    inner: Box<dyn crate::worker::SpeechModel>,
    seen: Seen,
}

impl crate::worker::SpeechModel for Recording {
    fn transcribe_batch(
        &mut self,
        clips: &[&[f32]],
        next: &[&[f32]],
        settings: &DecodeSettings,
    ) -> Result<Vec<crate::worker::SegmentText>, crate::worker::RunError> {
        let texts = self.inner.transcribe_batch(clips, next, settings)?;
        let mut seen = self.seen.lock().unwrap();
        for (clip, text) in clips.iter().zip(&texts) {
            seen.push((clip.iter().map(|s| s.to_bits()).collect(), text.clone()));
        }
        Ok(texts)
    }
    fn end_job(&mut self) {
        self.inner.end_job();
    }
    fn offload(&mut self) -> Result<(), String> {
        self.inner.offload()
    }
    fn restore(&mut self) -> Result<(), crate::worker::RunError> {
        self.inner.restore()
    }
    fn weight_bytes(&self) -> u64 {
        self.inner.weight_bytes()
    }
    fn dtype_label(&self) -> String {
        self.inner.dtype_label()
    }
}

#[test]
fn streamed_results_reassemble_to_the_whole_transcript_of_the_merge() {
    // The worker sends each file's results in pieces as they follow on; joined again they are
    // exactly the transcript the whole-file merge makes of the same segment results (text
    // joining, segments, token and word times moved by their segment's start, the tags).
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.wav");
    write_wav(&long, &speech(600.0), false);
    let mut files: Vec<PathBuf> = ["en_short", "ja_long", "zh_mid"]
        .iter()
        .map(|n| data().join(format!("sensevoice/audio/{n}.wav")))
        .collect();
    files.push(data().join("sensevoice/long/long_mix.wav"));
    files.push(data().join("audio/speech.mp3"));
    files.push(long);
    for (i, path) in files.iter().enumerate() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = {
            let seen = std::sync::Arc::clone(&seen);
            move |dir: &Path, device: &WorkerDevice, precision: Precision| {
                let inner = load(dir, device, precision)?;
                Ok(Box::new(Recording {
                    inner,
                    seen: std::sync::Arc::clone(&seen),
                }) as Box<dyn crate::worker::SpeechModel>)
            }
        };
        let requests = [
            WorkerRequest::Load {
                model_dir: data().join("sensevoice/tiny"),
                device: WorkerDevice::Cpu,
                precision: Precision::F32,
            },
            WorkerRequest::Transcribe {
                job_id: 1,
                path: path.clone(),
                settings: DecodeSettings::default(),
                batch_budget_s: 120.0,
            },
            WorkerRequest::Shutdown,
        ];
        let input: String = requests.iter().map(|r| to_line(r).unwrap()).collect();
        let mut out = Vec::new();
        let opener: &Opener = &StreamSource::open;
        run_worker(
            Cursor::new(input.into_bytes()),
            &mut out,
            &recorder,
            opener,
            false,
        );
        let events: Vec<WorkerEvent> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got = crate::worker::assembled(&events, 1).unwrap();
        // The whole-file reference: the same results by the segments' places in the audio.
        let audio = crate::audio::decode_file(path, &mut |_| {}).unwrap();
        let ranges = crate::engine::segment::split_at_pauses(
            &audio.samples,
            crate::engine::segment::MAX_SEGMENT_SECS,
            crate::engine::segment::MIN_SEGMENT_SECS,
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), ranges.len(), "{}", path.display());
        let results: Vec<_> = ranges
            .iter()
            .map(|r| {
                let bits: Vec<u32> = audio.samples[r.clone()]
                    .iter()
                    .map(|s| s.to_bits())
                    .collect();
                let text = seen
                    .iter()
                    .find(|(b, _)| *b == bits)
                    .map(|(_, t)| t.clone())
                    .unwrap();
                (r.clone(), text)
            })
            .collect();
        let want = crate::worker::merge(&got.path, audio.duration_s, &results);
        assert_eq!(got, want, "{}", path.display());
        // The command line writes every format from the pieces as it renders the whole.
        let mut pieces = Vec::new();
        let mut head = None;
        for event in &events {
            match event {
                WorkerEvent::Transcribed { results, .. } => pieces.extend(results.iter().cloned()),
                WorkerEvent::Done { transcript, .. } => head = Some(transcript.clone()),
                _ => {}
            }
        }
        crate::cli_transcribe::writer::tests::assert_streams_like_whole(&pieces, &head.unwrap());
        assert!(!want.tokens.is_empty(), "{}", path.display());
        if i + 1 == files.len() {
            let pieces = events
                .iter()
                .filter(|e| matches!(e, WorkerEvent::Transcribed { .. }))
                .count();
            assert!(pieces >= 3, "{pieces} pieces for {} segments", ranges.len());
        }
    }
}
