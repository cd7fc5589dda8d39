//! The live pipeline end to end on the CPU: the spoken fixtures played through the capture path
//! (ring buffer, sink loop, WAV copy, live tap) at real-time pace, cut by the VAD, transcribed by
//! the real `gpuscribe-worker` with the tiny FunASR-made model; and `gpuscribe listen`.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuscribe::engine::batch::transcribe_files;
use gpuscribe::engine::{
    DecodeSettings, EngineConfig, EngineHandle, Event, IdlePolicy, Pcm16, Request, Residency,
    ResidencyConfig,
};
use gpuscribe::live::{
    Handled, JobKind, LiveConfig, LiveDriver, LiveLine, LiveUpdate, Pace, SegmenterConfig, WavFeed,
    run_live,
};

use common::alsa::tiny_cpu_engine;
use common::sensevoice::data;

fn read_wav(path: &Path) -> Vec<i16> {
    let mut reader = hound::WavReader::open(path).unwrap();
    reader.samples::<i16>().map(Result::unwrap).collect()
}

fn write_wav(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
}

/// The three fixtures, 0.5 s of silence before, 1 s after each: 9.9 s of audio.
fn spoken_wav(dir: &Path) -> (PathBuf, Vec<i16>) {
    let mut samples = vec![0i16; 8_000];
    for name in ["en_short", "zh_mid", "ja_long"] {
        samples.extend(read_wav(&data().join("audio").join(format!("{name}.wav"))));
        samples.extend(vec![0i16; 16_000]);
    }
    let path = dir.join("spoken.wav");
    write_wav(&path, &samples);
    (path, samples)
}

/// What the offline path (`transcribe` of a file) makes of each line's stretch of the audio.
fn offline_texts(dir: &Path, samples: &[i16], lines: &[&LiveLine]) -> Vec<String> {
    let paths: Vec<PathBuf> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let from = (line.start * 16_000.0).round() as usize;
            let to = ((line.end * 16_000.0).round() as usize).min(samples.len());
            let path = dir.join(format!("cut{i}.wav"));
            write_wav(&path, &samples[from..to]);
            path
        })
        .collect();
    transcribe_files(
        &paths,
        tiny_cpu_engine(),
        Vec::new(),
        &DecodeSettings::default(),
        &mut |_| {},
    )
    .unwrap()
    .into_iter()
    .map(|r| r.unwrap().raw_text)
    .collect()
}

#[test]
fn live_lines_come_while_the_audio_plays_and_finals_equal_offline_text_of_their_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, samples) = spoken_wav(dir.path());
    let engine = EngineHandle::spawn(tiny_cpu_engine(), Arc::new(|| {})).unwrap();
    let settings = DecodeSettings::default();
    gpuscribe::live::warm_up(&engine, &settings, &mut |_| {}).unwrap();

    let copy = dir.path().join("copy.wav");
    let feed = WavFeed::start(&wav, Pace::RealTime, &copy).unwrap();
    let started = Instant::now();
    let mut driver = LiveDriver::new(LiveConfig::default(), settings);
    let mut seen: Vec<(f64, LiveLine)> = Vec::new();
    run_live(
        &feed.tap,
        &engine,
        &mut driver,
        &mut |update| match update {
            LiveUpdate::Line(line) => seen.push((started.elapsed().as_secs_f64(), line.clone())),
            other => panic!("{other:?}"),
        },
        &mut |_| {},
    );
    let duration_s = feed.duration_s;
    let copy = feed.join().unwrap();
    // The capture path kept every sample (the WAV writer scales by 32767, so loud samples may
    // come back one step off).
    let kept = read_wav(&copy);
    assert_eq!(kept.len(), samples.len());
    assert!(
        kept.iter()
            .zip(&samples)
            .all(|(a, b)| (i32::from(*a) - i32::from(*b)).abs() <= 1)
    );

    let finals: Vec<&LiveLine> = seen
        .iter()
        .filter(|(_, l)| !l.partial)
        .map(|(_, l)| l)
        .collect();
    assert_eq!(finals.len(), 3, "{seen:#?}");
    // Partials and finals came while the audio was still playing.
    let first_partial = seen.iter().find(|(_, l)| l.partial).expect("a partial");
    assert!(
        first_partial.0 < duration_s - 1.0,
        "{first_partial:?} of {duration_s} s"
    );
    let (at, first_final) = seen.iter().find(|(_, l)| !l.partial).unwrap();
    assert!(*at < duration_s, "first final at {at} s of {duration_s} s");
    // Each final line, a real-time stream's utterance end plus at most 2 s on these cores.
    for (at, line) in seen.iter().filter(|(_, l)| !l.partial) {
        assert!(*at - line.end < 2.0, "{line:?} came at {at} s");
    }
    assert!(first_final.text.len() + first_final.raw_text.len() > 0);

    // The live finals are exactly what the offline path makes of the same stretches of audio.
    // (Offline transcription of the whole 9.9 s file is one ≤30 s segment, a different cut: the
    // tiny random model's text for it differs, so only the cut-for-cut comparison is exact.)
    let offline = offline_texts(dir.path(), &samples, &finals);
    let live: Vec<String> = finals.iter().map(|l| l.raw_text.clone()).collect();
    assert_eq!(live, offline);
}

#[test]
fn listen_from_wav_fast_json_prints_lines_and_finals_match_offline_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, samples) = spoken_wav(dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscribe"))
        .args([
            "--device",
            "cpu",
            "listen",
            "--fast",
            "--json",
            "--model-dir",
        ])
        .arg(data().join("tiny"))
        .arg("--from-wav")
        .arg(&wav)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<LiveLine> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            for key in [
                "start", "end", "text", "partial", "language", "emotion", "event",
            ] {
                assert!(v.get(key).is_some(), "{key} missing in {l}");
            }
            LiveLine {
                utterance: v["utterance"].as_u64().unwrap(),
                start: v["start"].as_f64().unwrap(),
                end: v["end"].as_f64().unwrap(),
                text: v["text"].as_str().unwrap().to_owned(),
                partial: v["partial"].as_bool().unwrap(),
                language: v["language"].as_str().unwrap().to_owned(),
                emotion: v["emotion"].as_str().unwrap().to_owned(),
                event: v["event"].as_str().unwrap().to_owned(),
                raw_text: v["raw_text"].as_str().unwrap().to_owned(),
            }
        })
        .collect();
    let finals: Vec<&LiveLine> = lines.iter().filter(|l| !l.partial).collect();
    assert_eq!(finals.len(), 3, "{lines:#?}\n{stderr}");
    assert!(stderr.contains("3 utterance(s)"), "{stderr}");
    let offline = offline_texts(dir.path(), &samples, &finals);
    let live: Vec<String> = finals.iter().map(|l| l.raw_text.clone()).collect();
    assert_eq!(live, offline);
}

#[test]
fn listen_names_a_missing_file() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscribe"))
        .args([
            "--device",
            "cpu",
            "listen",
            "--from-wav",
            "/nonexistent/talk.wav",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/talk.wav"), "{stderr}");
}

/// The last `Status` the engine sends within `window`, or the first one `stop` accepts.
fn watch_status(
    engine: &EngineHandle,
    window: Duration,
    stop: &dyn Fn(Residency) -> bool,
) -> Option<Residency> {
    let deadline = Instant::now() + window;
    let mut last = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(Event::Status(slots)) = engine.recv_timeout(left) {
            last = slots.first().map(|s| s.residency);
            if last.is_some_and(stop) {
                break;
            }
        }
    }
    last
}

#[test]
fn the_model_stays_loaded_while_recording_also_when_it_loads_after_the_recording_began() {
    // Offload after 1 idle second, so a paused timer is seen quickly.
    let config = EngineConfig {
        residency: ResidencyConfig {
            offload: IdlePolicy::AfterSecs(1),
            release_after_secs: None,
        },
        ..tiny_cpu_engine()
    };
    let engine = EngineHandle::spawn(config, Arc::new(|| {})).unwrap();
    // As the window does: Record first; the first live clip then loads the model.
    engine.send(Request::Recording(true));
    let job = engine.transcribe_samples(
        "live clip".to_owned(),
        Pcm16::from_f32(&[0.0; 8_000]),
        DecodeSettings::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.checked_duration_since(Instant::now()).unwrap();
        match engine.recv_timeout(left) {
            Some(Event::JobDone { job_id, .. }) if job_id == job => break,
            Some(Event::JobFailed { message, .. }) => panic!("{message}"),
            Some(_) => {}
            None => panic!("no answer"),
        }
    }
    // Three idle seconds while recording: nothing may leave the device.
    let during = watch_status(&engine, Duration::from_secs(3), &|r| r != Residency::Ready);
    assert!(
        matches!(during, None | Some(Residency::Ready)),
        "while recording: {during:?}"
    );
    // The recording ends: the (paused) idle second runs out and the weights go.
    engine.send(Request::Recording(false));
    let after = watch_status(&engine, Duration::from_secs(20), &|r| {
        matches!(r, Residency::Offloaded | Residency::Released)
    });
    assert!(
        matches!(after, Some(Residency::Offloaded | Residency::Released)),
        "after the recording: {after:?}"
    );
}

/// Runs the engine's events until `until` says stop (or 60 s pass), routing them to `driver`.
fn events_until(
    engine: &EngineHandle,
    driver: &mut LiveDriver,
    lines: &mut Vec<LiveLine>,
    until: &dyn Fn(&LiveDriver, &[LiveLine]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(driver, lines) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("the engine answered in time");
        if let Some(event) = engine.recv_timeout(left.min(Duration::from_millis(50)))
            && let Handled::Live(Some(LiveUpdate::Line(line))) = driver.on_event(&event)
        {
            lines.push(line);
        }
        driver.pump(engine);
    }
}

#[test]
fn a_final_goes_to_the_engine_while_a_partial_is_out_and_the_partial_is_dropped() {
    let engine = EngineHandle::spawn(tiny_cpu_engine(), Arc::new(|| {})).unwrap();
    let settings = DecodeSettings::default();
    gpuscribe::live::warm_up(&engine, &settings, &mut |_| {}).unwrap();
    let clip = hound::WavReader::open(data().join("audio/ja_long.wav"))
        .unwrap()
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect::<Vec<f32>>();
    let mut driver = LiveDriver::new(LiveConfig::default(), settings);
    let mut updates = Vec::new();
    let mut samples = clip.chunks(160);
    // Audio until a partial is out (the engine's answers are not read meanwhile).
    for chunk in samples.by_ref() {
        driver.push(chunk, &mut updates);
        driver.pump(&engine);
        if driver.is_busy() {
            break;
        }
    }
    assert_eq!(driver.jobs_out().len(), 1, "no partial went out");
    // The rest of the utterance and its end, still without reading any answer: the final goes
    // out at once, next to the partial.
    for chunk in samples {
        driver.push(chunk, &mut updates);
    }
    driver.finish(&mut updates);
    driver.pump(&engine);
    assert_eq!(driver.jobs_out().len(), 2);
    assert_eq!(driver.stats().finals_past_stale_partial, 1);
    let mut lines = Vec::new();
    events_until(&engine, &mut driver, &mut lines, &|d, _| d.is_idle());
    // The partial's answer showed nothing; the final's is the one line.
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(!lines[0].partial);
    assert_eq!(driver.stats().partials_stale, 1);
    let kinds: Vec<JobKind> = driver.timings().iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [JobKind::Partial, JobKind::Final]);
    assert!(updates.is_empty(), "{updates:?}");
}

#[test]
fn a_long_utterance_is_cut_for_length_and_its_finals_equal_offline_text_of_their_cuts() {
    let dir = tempfile::tempdir().unwrap();
    // The three fixtures back to back, no silence between them: speech for 6.4 s.
    let mut samples = Vec::new();
    for name in ["en_short", "zh_mid", "ja_long"] {
        samples.extend(read_wav(&data().join("audio").join(format!("{name}.wav"))));
    }
    let wav = dir.path().join("long.wav");
    write_wav(&wav, &samples);
    let engine = EngineHandle::spawn(tiny_cpu_engine(), Arc::new(|| {})).unwrap();
    let settings = DecodeSettings::default();
    gpuscribe::live::warm_up(&engine, &settings, &mut |_| {}).unwrap();
    let live_config = LiveConfig {
        segmenter: SegmenterConfig {
            soft_max_frames: 94,       // 1.5 s
            max_utterance_frames: 157, // 2.5 s
            ..SegmenterConfig::default()
        },
        lockstep: true,
        ..LiveConfig::default()
    };
    let copy = dir.path().join("copy.wav");
    let feed = WavFeed::start(&wav, Pace::Fast, &copy).unwrap();
    let mut driver = LiveDriver::new(live_config, settings);
    let mut finals = Vec::new();
    run_live(
        &feed.tap,
        &engine,
        &mut driver,
        &mut |update| match update {
            LiveUpdate::Line(line) if !line.partial => finals.push(line.clone()),
            LiveUpdate::Line(_) => {}
            other => panic!("{other:?}"),
        },
        &mut |_| {},
    );
    feed.join().unwrap();
    assert!(finals.len() >= 3, "{finals:#?}");
    for line in &finals {
        assert!(line.end - line.start <= 2.5 + 1e-9, "{line:?}");
    }
    for pair in finals.windows(2) {
        assert!(pair[0].end <= pair[1].start, "{pair:?}");
    }
    let lines: Vec<&LiveLine> = finals.iter().collect();
    let offline = offline_texts(dir.path(), &samples, &lines);
    let live: Vec<String> = finals.iter().map(|l| l.raw_text.clone()).collect();
    assert_eq!(live, offline);
}
