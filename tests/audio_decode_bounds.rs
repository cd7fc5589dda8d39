//! The decoder against containers that lie about their length, and its progress when a
//! container states no length: crafted WAV and FLAC files written here, byte by byte.

// Test helpers panic on purpose: a failed fixture write or decode is a failed test.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::Path;

use gpuscribe::audio::decode::{MAX_AUDIO_BASE_S, MAX_AUDIO_S_PER_BYTE, max_audio_s};
use gpuscribe::audio::{DecodeError, DecodeProgress, decode_file, decode_file_to};

#[path = "common/flac.rs"]
mod flac;
use flac::write_dense_flac;

/// 16 kHz mono s16 WAV of `seconds` (a tone), with `data_len` written as the data chunk's
/// length and `riff_len` as the RIFF length (the true ones when `None`).
fn write_wav(path: &Path, seconds: f64, riff_len: Option<u32>, data_len: Option<u32>) {
    let frames = (seconds * 16_000.0) as usize;
    let data: Vec<u8> = (0..frames)
        .flat_map(|i| {
            let t = i as f64 / 16_000.0;
            let v = (0.3 * (2.0 * std::f64::consts::PI * 440.0 * t).sin() * 32767.0) as i16;
            v.to_le_bytes()
        })
        .collect();
    let true_data = u32::try_from(data.len()).unwrap();
    let mut out = Vec::with_capacity(data.len() + 44);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.unwrap_or(36 + true_data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.unwrap_or(true_data).to_le_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn progress_of(path: &Path) -> (Vec<DecodeProgress>, f64) {
    let mut reports = Vec::new();
    let audio = decode_file(path, &mut |p| reports.push(p)).unwrap();
    (reports, audio.duration_s)
}

#[test]
fn progress_goes_by_the_header_when_it_states_a_length_and_by_the_bytes_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let stated = dir.path().join("stated.wav");
    write_wav(&stated, 60.0, None, None);
    // What a recorder writing to a pipe leaves: both lengths 0xFFFFFFFF, "until the end".
    let streamed = dir.path().join("streamed.wav");
    write_wav(&streamed, 60.0, Some(u32::MAX), Some(u32::MAX));

    let (reports, duration) = progress_of(&stated);
    assert!((duration - 60.0).abs() < 1e-6, "{duration}");
    assert!(reports.len() > 10, "{reports:?}");
    for p in &reports {
        assert_eq!(p.total_s, Some(60.0), "{p:?}");
        assert_eq!(p.estimated_total_s(), Some(60.0), "{p:?}");
    }

    let (reports, duration) = progress_of(&streamed);
    assert!((duration - 60.0).abs() < 1e-6, "{duration}");
    // Its end is the end of the audio, not a truncation.
    let clean = decode_file(&streamed, &mut |_| {}).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.ended_early);
    assert!(reports.len() > 10, "{reports:?}");
    let mut last_fraction = 0.0;
    for p in &reports {
        assert_eq!(p.total_s, None, "{p:?}");
        assert!(p.total_bytes > 1_900_000, "{p:?}");
        let fraction = p.fraction().expect("a fraction from the bytes read");
        assert!(fraction >= last_fraction, "{p:?}");
        last_fraction = fraction;
        let estimate = p
            .estimated_total_s()
            .expect("an estimate from the bytes read");
        assert!(estimate >= p.decoded_s);
        if p.decoded_s >= 30.0 {
            // The reader reads ahead (64 KiB, 2 s here), so the estimate is a little short.
            assert!((estimate - 60.0).abs() < 6.0, "{p:?}: {estimate}");
        }
    }
    let last = reports.last().unwrap();
    assert!(
        (last.estimated_total_s().unwrap() - 60.0).abs() < 0.01,
        "{last:?}"
    );
    assert!(last.fraction().unwrap() > 0.999, "{last:?}");
}

#[test]
fn a_wav_header_that_claims_hours_decodes_what_is_there_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.wav");
    // 0x7FFFFFF0 bytes of data claimed (18.6 hours at 32 kB/s), 20 s there.
    write_wav(&path, 20.0, Some(0x8000_0014), Some(0x7FFF_FFF0));
    let mut reports = Vec::new();
    let audio = decode_file(&path, &mut |p| reports.push(p)).unwrap();
    assert!(
        (audio.duration_s - 20.0).abs() < 1e-6,
        "{}",
        audio.duration_s
    );
    assert_eq!(audio.samples.len(), 320_000);
    let early = audio
        .ended_early
        .as_ref()
        .expect("the shortfall is reported");
    assert!(early.reason.contains("truncated"), "{early:?}");
    // The header's 67,108 s fits what 640 kB could hold at the loosest bound, but the bytes
    // read give it the lie: progress goes by the bytes once a tenth of the file is read.
    let claimed = reports[0].total_s.expect("the header's length");
    assert!(
        claimed > 60_000.0 && claimed < max_audio_s(640_044),
        "{claimed}"
    );
    for p in reports.iter().filter(|p| p.decoded_s >= 4.0) {
        let estimate = p.estimated_total_s().unwrap();
        assert!((estimate - 20.0).abs() < 3.0, "{p:?}: {estimate}");
    }
    // The streaming entry point gives the same and holds only chunks.
    let mut streamed = 0usize;
    let mut largest = 0usize;
    let summary = decode_file_to(&path, &mut |_| {}, &mut |chunk| {
        streamed += chunk.len();
        largest = largest.max(chunk.len());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(streamed, 320_000);
    assert!(largest <= 64_000, "{largest}");
    assert!(summary.samples.is_empty() && summary.ended_early.is_some());
}

#[test]
fn a_file_that_decodes_to_far_more_audio_than_its_size_allows_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // One frame: 65.5 s from 53 bytes, under the bound (60 s + 0.5 s per byte = 86.5 s).
    let one = dir.path().join("one.flac");
    write_dense_flac(&one, 1);
    let audio = decode_file(&one, &mut |_| {}).expect("one dense frame is within the bound");
    assert!(
        (audio.duration_s - 65.535).abs() < 0.01,
        "{}",
        audio.duration_s
    );

    let many = dir.path().join("many.flac");
    write_dense_flac(&many, 100);
    let bytes = std::fs::metadata(&many).unwrap().len();
    let limit_s = MAX_AUDIO_BASE_S + bytes as f64 * MAX_AUDIO_S_PER_BYTE;
    for streaming in [false, true] {
        let mut decoded = 0usize;
        let result = if streaming {
            decode_file_to(&many, &mut |_| {}, &mut |chunk| {
                decoded += chunk.len();
                ControlFlow::Continue(())
            })
        } else {
            decode_file(&many, &mut |_| {})
        };
        let err = result.expect_err("6,500 s from about a kilobyte is refused");
        assert!(
            matches!(err, DecodeError::TooMuchAudio { bytes: b, .. } if b == bytes),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("many.flac"), "{text}");
        // Stopped within one frame of the bound, not at the 6,553 s the frames hold.
        assert!(decoded as f64 / 16_000.0 <= limit_s + 66.0, "{decoded}");
    }
}
