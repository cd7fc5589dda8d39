//! Decoding tests against the fixtures made by `tools/audio-fixtures/make.sh`.
//!
//! Expected lengths, rates and channel counts come from `fixtures.json`, which the script fills
//! from soxi/ffprobe; the waveform reference is sox's own 16 kHz resample of the source.

// Test code: a panic is how a failure is reported, also from helper functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gpuscribe::audio::{DecodeError, DecodedAudio, MODEL_SAMPLE_RATE_HZ, decode_file};
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audio")
}

fn fixtures() -> Value {
    let text = std::fs::read_to_string(data_dir().join("fixtures.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn decode(name: &str) -> Result<DecodedAudio, DecodeError> {
    decode_file(&data_dir().join(name), &mut |_| {})
}

fn read_wav_mono(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap();
    assert_eq!(reader.spec().channels, 1);
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Normalised cross-correlation of `a` and `b` shifted by `lag` (b[i + lag] against a[i]).
fn correlation_at(a: &[f32], b: &[f32], lag: isize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (i, &x) in a.iter().enumerate() {
        let j = i as isize + lag;
        if j < 0 || j as usize >= b.len() {
            continue;
        }
        let y = b[j as usize];
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-12)
}

/// The lag in `-max_lag..=max_lag` with the highest correlation, and that correlation.
fn best_alignment(reference: &[f32], decoded: &[f32], max_lag: isize) -> (isize, f64) {
    (-max_lag..=max_lag)
        .map(|lag| (lag, correlation_at(reference, decoded, lag)))
        .fold(
            (0, f64::MIN),
            |best, cur| if cur.1 > best.1 { cur } else { best },
        )
}

#[test]
fn every_format_decodes_to_the_source_length_rate_and_channels() {
    let fx = fixtures();
    let source_frames = fx["source"]["frames"].as_f64().unwrap();
    let source_rate = fx["source"]["sample_rate_hz"].as_f64().unwrap();
    let expected_s = source_frames / source_rate;
    for entry in fx["decodable"].as_array().unwrap() {
        let name = entry["file"].as_str().unwrap();
        let audio = decode(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            audio.is_clean(),
            "{name}: skipped {:?}, ended early {:?}",
            audio.skipped,
            audio.ended_early
        );
        assert!(
            (audio.duration_s - expected_s).abs() <= 0.060,
            "{name}: decoded {:.4} s, source {:.4} s",
            audio.duration_s,
            expected_s
        );
        assert_eq!(
            u64::from(audio.source_sample_rate_hz),
            entry["sample_rate_hz"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(audio.source_channels),
            entry["channels"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            audio.samples.len() as f64 / f64::from(MODEL_SAMPLE_RATE_HZ),
            audio.duration_s
        );
    }
}

#[test]
fn waveform_matches_the_sox_reference() {
    let fx = fixtures();
    let reference = read_wav_mono(&data_dir().join(fx["reference_16k"]["file"].as_str().unwrap()));
    assert_eq!(
        reference.len() as u64,
        fx["reference_16k"]["frames"].as_u64().unwrap()
    );
    // (file, minimum correlation, largest allowed lag in samples, RMS tolerance).
    // Lossless files at the source rate must line up exactly (the remaining difference is the
    // two resamplers' anti-alias filters, which differ near 8 kHz); lossy codecs are allowed their
    // coding noise; AAC is not gapless (its encoder delay stays, about 43 ms); the 11.025 kHz
    // variants lost everything above 5.5 kHz before we saw them.
    let cases: [(&str, f64, isize, f32); 10] = [
        ("speech_44k_stereo.wav", 0.99, 0, 0.01),
        ("speech.flac", 0.99, 0, 0.01),
        ("speech.mp3", 0.97, 2, 0.10),
        ("speech.ogg", 0.95, 2, 0.10),
        ("speech.m4a", 0.93, 1_000, 0.10),
        ("speech_u8.wav", 0.97, 1, 0.05),
        ("speech_s16.wav", 0.97, 1, 0.05),
        ("speech_s24.wav", 0.97, 1, 0.05),
        ("speech_s32.wav", 0.97, 1, 0.05),
        ("speech_f32.wav", 0.97, 1, 0.05),
    ];
    let ref_rms = rms(&reference);
    for (name, min_corr, max_lag, rms_tol) in cases {
        let audio = decode(name).unwrap();
        let (lag, corr) = best_alignment(&reference, &audio.samples, 1_000);
        eprintln!(
            "{name}: lag {lag}, correlation {corr:.4}, RMS {:.5} (reference {ref_rms:.5})",
            rms(&audio.samples)
        );
        assert!(
            lag.abs() <= max_lag,
            "{name}: best lag {lag} samples (corr {corr:.4})"
        );
        assert!(
            corr >= min_corr,
            "{name}: correlation {corr:.4} < {min_corr}"
        );
        let dec_rms = rms(&audio.samples);
        assert!(
            ((dec_rms - ref_rms) / ref_rms).abs() <= rms_tol,
            "{name}: RMS {dec_rms:.5} vs reference {ref_rms:.5}"
        );
    }
}

/// Writes a stereo 1 kHz sine of amplitude 0.5 at `rate_hz` to a float WAV.
fn write_sine(path: &Path, rate_hz: u32, seconds: f64) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate_hz,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let frames = (seconds * f64::from(rate_hz)) as usize;
    for i in 0..frames {
        let v = 0.5 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / f64::from(rate_hz)).sin();
        w.write_sample(v as f32).unwrap();
        w.write_sample(v as f32).unwrap();
    }
    w.finalize().unwrap();
}

/// Frequency from the first and last rising zero crossings (linear interpolation between samples).
fn estimate_frequency_hz(x: &[f32], rate_hz: f64) -> f64 {
    let crossings: Vec<f64> = x
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + f64::from(-w[0] / (w[1] - w[0])))
        .collect();
    let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
    (crossings.len() - 1) as f64 * rate_hz / (last - first)
}

#[test]
fn resampler_keeps_a_1khz_sine_frequency_and_amplitude() {
    let dir = tempfile::tempdir().unwrap();
    for rate in [8_000_u32, 22_050, 44_100, 48_000, 96_000, 44_101] {
        let path = dir.path().join(format!("sine_{rate}.wav"));
        write_sine(&path, rate, 2.0);
        let audio = decode_file(&path, &mut |_| {}).unwrap();
        assert!(
            (audio.duration_s - 2.0).abs() < 0.001,
            "{rate}: {}",
            audio.duration_s
        );
        // Ignore the edges, where the band-limited filter rings against the hard start/stop.
        let middle = &audio.samples[1_600..audio.samples.len() - 1_600];
        let f = estimate_frequency_hz(middle, f64::from(MODEL_SAMPLE_RATE_HZ));
        assert!(
            (f - 1000.0).abs() < 0.05,
            "{rate} Hz source: measured {f:.4} Hz"
        );
        let amplitude_rms = rms(middle);
        let expected = 0.5 / 2f32.sqrt();
        assert!(
            (amplitude_rms - expected).abs() / expected < 0.01,
            "{rate} Hz source: RMS {amplitude_rms}"
        );
        let peak = middle.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.5).abs() < 0.01, "{rate} Hz source: peak {peak}");
    }
}

#[test]
fn progress_is_reported_and_reaches_the_end() {
    let mut reports = Vec::new();
    let audio = decode_file(&data_dir().join("speech.flac"), &mut |p| reports.push(p)).unwrap();
    assert!(reports.len() >= 2, "{reports:?}");
    assert!(reports.windows(2).all(|w| w[0].decoded_s <= w[1].decoded_s));
    let last = reports.last().unwrap();
    assert!((last.decoded_s - audio.duration_s).abs() < 0.01, "{last:?}");
    assert!(last.fraction().unwrap() > 0.99, "{last:?}");
}

fn assert_names_file(err: &DecodeError, name: &str) {
    let text = err.to_string();
    assert!(text.contains(name), "message does not name {name}: {text}");
}

#[test]
fn empty_file_is_reported_as_empty() {
    let err = decode("bad_empty.wav").unwrap_err();
    assert!(matches!(err, DecodeError::EmptyFile { .. }), "{err:?}");
    assert_names_file(&err, "bad_empty.wav");
}

#[test]
fn zero_length_audio_is_reported_as_zero_length() {
    let err = decode("bad_zero_length.wav").unwrap_err();
    assert!(matches!(err, DecodeError::ZeroLength { .. }), "{err:?}");
    assert_names_file(&err, "bad_zero_length.wav");
}

#[test]
fn text_named_wav_is_not_recognised() {
    let err = decode("bad_text.wav").unwrap_err();
    assert!(
        matches!(err, DecodeError::UnrecognizedFormat { .. }),
        "{err:?}"
    );
    assert_names_file(&err, "bad_text.wav");
}

#[test]
fn random_bytes_are_not_recognised() {
    let err = decode("bad_random.mp3").unwrap_err();
    assert!(
        matches!(err, DecodeError::UnrecognizedFormat { .. }),
        "{err:?}"
    );
    assert_names_file(&err, "bad_random.mp3");
}

#[test]
fn opus_is_an_unsupported_codec() {
    let err = decode("speech.opus").unwrap_err();
    assert!(
        matches!(&err, DecodeError::UnsupportedCodec { codec, .. } if codec == "Opus"),
        "{err:?}"
    );
    assert_names_file(&err, "speech.opus");
}

#[test]
fn missing_file_is_an_open_error() {
    let err = decode("does_not_exist.wav").unwrap_err();
    assert!(matches!(err, DecodeError::Open { .. }), "{err:?}");
    assert_names_file(&err, "does_not_exist.wav");
}

#[test]
fn truncated_mp3_keeps_what_decodes() {
    let fx = fixtures();
    let full_s =
        fx["source"]["frames"].as_f64().unwrap() / fx["source"]["sample_rate_hz"].as_f64().unwrap();
    let audio = decode("bad_truncated.mp3").unwrap();
    // The script keeps the first 40 % of the bytes; a constant-bitrate file decodes about as
    // much of its length.
    assert!(
        audio.duration_s > 0.25 * full_s && audio.duration_s < 0.55 * full_s,
        "{}",
        audio.duration_s
    );
    let early = audio
        .ended_early
        .as_ref()
        .expect("truncation was not reported");
    assert!((early.at_s - audio.duration_s).abs() < 0.05, "{early:?}");
}

#[test]
fn corrupt_frames_in_the_middle_are_skipped_and_reported() {
    let fx = fixtures();
    let full_s =
        fx["source"]["frames"].as_f64().unwrap() / fx["source"]["sample_rate_hz"].as_f64().unwrap();
    let audio = decode("bad_corrupt_middle.mp3").unwrap();
    assert!(!audio.skipped.is_empty(), "no skipped range reported");
    let first = &audio.skipped[0];
    // The script damages bytes starting 35 % into the file.
    assert!(
        first.start_s > 0.2 * full_s && first.start_s < 0.6 * full_s,
        "{first:?}"
    );
    // The MP3 reader resynchronises past the garbage and drops those frames without a word, so
    // only the packets that reached the decoder and failed are reported (and filled with
    // silence). The rest of the file must still be there.
    assert!(
        audio.duration_s > 0.8 * full_s && audio.duration_s < full_s + 0.06,
        "{} vs {full_s}",
        audio.duration_s
    );
}
