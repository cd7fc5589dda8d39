//! The recording's writer loop, driven through its ring buffer and channels with no device.

// Test code: a panic is how a failure is reported, also from helper functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use gpuscribe::audio::wav_sink::{SinkEnd, StreamFault, WavSink, run_sink_loop};
use gpuscribe::audio::{RecordError, RecordEvent, Recorder};

const RATE_HZ: u32 = 16_000;

fn tone(n: usize, offset: usize) -> Vec<f32> {
    (offset..offset + n)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / RATE_HZ as f32).sin())
        .collect()
}

fn read_i16(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    (spec, reader.samples::<i16>().map(Result::unwrap).collect())
}

fn to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16
}

#[test]
fn flushed_file_is_readable_mid_recording_and_complete_after_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.wav");
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(RATE_HZ as usize);
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let (_fault_tx, fault_rx) = bounded::<StreamFault>(1);
    let (events_tx, events_rx) = bounded(64);

    let writer_path = path.clone();
    let writer = std::thread::Builder::new()
        .name("test-sink".into())
        .spawn(move || {
            let mut sink =
                WavSink::create(&writer_path, RATE_HZ, Duration::from_millis(50)).unwrap();
            let end =
                run_sink_loop(&mut consumer, &mut sink, &stop_rx, &fault_rx, &events_tx).unwrap();
            sink.drain(&mut consumer).unwrap();
            (end, sink.finish().unwrap())
        })
        .unwrap();

    // First half: push, then wait for a flush that covers it.
    let first = tone(8_000, 0);
    producer.push_entire_slice(&first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let event = events_rx
            .recv_timeout(deadline - Instant::now())
            .expect("no Saved event");
        if let RecordEvent::Saved { recorded_s } = event
            && recorded_s >= 0.5
        {
            break;
        }
    }
    // The writer still has the file open: this is what a crash right now would leave behind.
    let (spec, mid) = read_i16(&path);
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, RATE_HZ, 16)
    );
    assert!(
        mid.len() >= first.len(),
        "only {} samples readable mid-recording",
        mid.len()
    );
    assert_eq!(
        mid[..first.len()],
        first.iter().map(|&x| to_i16(x)).collect::<Vec<_>>()[..]
    );

    let second = tone(8_000, 8_000);
    producer.push_entire_slice(&second).unwrap();
    stop_tx.send(()).unwrap();
    let (end, (final_path, recorded_s)) = writer.join().unwrap();
    assert_eq!(end, SinkEnd::Stopped);
    assert_eq!(final_path, path);
    assert!((recorded_s - 1.0).abs() < 1e-9, "{recorded_s}");
    let (_, all) = read_i16(&path);
    let expected: Vec<i16> = first.iter().chain(&second).map(|&x| to_i16(x)).collect();
    assert_eq!(all, expected);
}

#[test]
fn stream_fault_ends_the_loop_and_keeps_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lost.wav");
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(4_096);
    let (_stop_tx, stop_rx) = bounded::<()>(1);
    let (fault_tx, fault_rx) = bounded::<StreamFault>(1);
    let (events_tx, _events_rx) = bounded(64);
    let mut sink = WavSink::create(&path, RATE_HZ, Duration::from_secs(1)).unwrap();
    producer.push_entire_slice(&tone(1_600, 0)).unwrap();
    let fault = StreamFault {
        device_lost: true,
        message: "device unplugged".into(),
    };
    fault_tx.send(fault.clone()).unwrap();
    let end = run_sink_loop(&mut consumer, &mut sink, &stop_rx, &fault_rx, &events_tx).unwrap();
    assert_eq!(end, SinkEnd::Fault(fault));
    let (_, recorded_s) = sink.finish().unwrap();
    assert!((recorded_s - 0.1).abs() < 1e-9);
    assert_eq!(read_i16(&path).1.len(), 1_600);
}

#[test]
fn producer_going_away_ends_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.wav");
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(1_024);
    let (_stop_tx, stop_rx) = bounded::<()>(1);
    let (fault_tx, fault_rx) = bounded::<StreamFault>(1);
    // A dropped error callback must not make the loop spin or end on its own.
    drop(fault_tx);
    let (events_tx, _events_rx) = bounded(64);
    let mut sink = WavSink::create(&path, RATE_HZ, Duration::from_secs(1)).unwrap();
    producer.push_entire_slice(&tone(100, 0)).unwrap();
    drop(producer);
    let end = run_sink_loop(&mut consumer, &mut sink, &stop_rx, &fault_rx, &events_tx).unwrap();
    assert_eq!(end, SinkEnd::ProducerGone);
    sink.finish().unwrap();
    assert_eq!(read_i16(&path).1.len(), 100);
}

#[test]
fn wav_in_a_missing_folder_is_a_create_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/folder/rec.wav");
    let err = WavSink::create(&path, RATE_HZ, Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(matches!(err, RecordError::CreateWav { .. }), "{err:?}");
    assert!(err.to_string().contains("rec.wav"), "{err}");
}

#[test]
fn unknown_device_fails_to_start_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.wav");
    let err = Recorder::start(Some("alsa:gpuscribe-no-such-device"), &path)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            RecordError::DeviceNotFound { .. }
                | RecordError::OpenDevice { .. }
                | RecordError::NoInputDevice
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("gpuscribe-no-such-device") || matches!(err, RecordError::NoInputDevice),
        "{text}"
    );
}

#[test]
fn past_the_part_limit_the_recording_goes_on_in_a_next_file_without_losing_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.wav");
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(8_192);
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let (_fault_tx, fault_rx) = bounded::<StreamFault>(1);
    let (events_tx, _events_rx) = bounded(64);
    // 1,000 frames (2,000 bytes) per part; 2,500 frames → three files.
    let mut sink = WavSink::create(&path, RATE_HZ, Duration::from_millis(10))
        .unwrap()
        .with_part_limit(2_000);
    let audio = tone(2_500, 0);
    for chunk in audio.chunks(300) {
        producer.push_entire_slice(chunk).unwrap();
        sink.drain(&mut consumer).unwrap();
    }
    stop_tx.send(()).unwrap();
    run_sink_loop(&mut consumer, &mut sink, &stop_rx, &fault_rx, &events_tx).unwrap();
    let (parts, recorded_s) = sink.finish_parts().unwrap();
    assert_eq!(
        parts,
        [
            path.clone(),
            dir.path().join("long-part2.wav"),
            dir.path().join("long-part3.wav")
        ]
    );
    assert!((recorded_s - 2_500.0 / f64::from(RATE_HZ)).abs() < 1e-9);
    let mut joined = Vec::new();
    let mut lengths = Vec::new();
    for part in &parts {
        let (spec, samples) = read_i16(part);
        assert_eq!((spec.channels, spec.sample_rate), (1, RATE_HZ));
        lengths.push(samples.len());
        joined.extend(samples);
    }
    assert_eq!(lengths, [1_000, 1_000, 500]);
    let expected: Vec<i16> = audio.iter().map(|&x| to_i16(x)).collect();
    assert_eq!(joined, expected, "every frame, in order, across the parts");
}

#[test]
fn a_recording_never_overwrites_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("20261201-090000.123Z.wav");
    std::fs::write(&path, b"an earlier recording").unwrap();
    let (mut producer, mut consumer) = rtrb::RingBuffer::<f32>::new(1_024);
    let mut first = WavSink::create(&path, RATE_HZ, Duration::from_secs(1)).unwrap();
    let mut second = WavSink::create(&path, RATE_HZ, Duration::from_secs(1)).unwrap();
    let taken = dir.path().join("20261201-090000.123Z-2.wav");
    assert_eq!(first.path(), taken);
    assert_eq!(second.path(), dir.path().join("20261201-090000.123Z-3.wav"));
    producer.push_entire_slice(&tone(10, 0)).unwrap();
    first.drain(&mut consumer).unwrap();
    producer.push_entire_slice(&tone(20, 0)).unwrap();
    second.drain(&mut consumer).unwrap();
    let (second_path, _) = second.finish().unwrap();
    let (first_path, _) = first.finish().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"an earlier recording");
    assert_eq!(read_i16(&first_path).1.len(), 10);
    assert_eq!(read_i16(&second_path).1.len(), 20);
}
