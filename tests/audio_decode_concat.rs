//! MP3s made of concatenated copies that each keep their own header (ID3 tag and LAME/Xing
//! frame): the first header states the first copy's length only, and the decoder must go on
//! past it while packets keep coming. Built here from the committed `speech.mp3`.

// Test helpers panic on purpose: a failed fixture write or decode is a failed test.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use gpuscribe::audio::{DecodeProgress, DecodedAudio, decode_file, decode_file_to};

/// Samples in one MPEG-1 Layer III frame.
const MP3_FRAME: f64 = 1152.0;

fn speech_mp3() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audio/speech.mp3")
}

/// `copies` copies of `speech.mp3`, byte for byte, one after the other.
fn concatenated(dir: &Path, copies: usize) -> PathBuf {
    let one = std::fs::read(speech_mp3()).unwrap();
    let path = dir.join(format!("speech_x{copies}.mp3"));
    std::fs::write(&path, one.repeat(copies)).unwrap();
    path
}

fn decode_with_progress(path: &Path) -> (DecodedAudio, Vec<DecodeProgress>) {
    let mut reports = Vec::new();
    let audio = decode_file(path, &mut |p| reports.push(p)).unwrap();
    (audio, reports)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn concatenated_mp3s_with_their_headers_decode_to_the_sum_of_their_parts() {
    let dir = tempfile::tempdir().unwrap();
    let one = decode_file(&speech_mp3(), &mut |_| {}).unwrap();
    assert!(one.is_clean(), "{:?} {:?}", one.skipped, one.ended_early);
    let n = one.samples.len();
    let rate = f64::from(one.source_sample_rate_hz);
    for copies in [2usize, 5] {
        let path = concatenated(dir.path(), copies);
        let (all, _) = decode_with_progress(&path);
        // Each copy after the first adds its encoder delay and the one before it its padding
        // (a plain decoder cannot tell them from audio): at most two MP3 frames per copy.
        let slack = (copies as f64 * 2.0 * MP3_FRAME / rate * 16_000.0).ceil() as usize;
        let sum = copies * n;
        assert!(
            all.samples.len() >= sum && all.samples.len() <= sum + slack,
            "{copies} copies: {} samples decoded, the parts give {sum} (+ up to {slack})",
            all.samples.len()
        );
        assert!(
            (all.duration_s - all.samples.len() as f64 / 16_000.0).abs() < 1e-9,
            "{}",
            all.duration_s
        );
        // Longer than the header says is not an early end nor a skip.
        assert!(all.is_clean(), "{:?} {:?}", all.skipped, all.ended_early);
        // The first copy comes out as it does alone (up to the resampler's last chunk, which
        // alone is padded with zeros), and the last copy is speech, not silence.
        let same = n - 16_000;
        assert_eq!(all.samples[..same], one.samples[..same], "{copies} copies");
        let last = &all.samples[all.samples.len() - n..];
        assert!(
            rms(last) > 0.8 * rms(&one.samples),
            "{copies} copies: the last copy's RMS {} against {} alone",
            rms(last),
            rms(&one.samples)
        );

        // The streaming entry point gives the same samples.
        let mut streamed = Vec::new();
        let summary = decode_file_to(&path, &mut |_| {}, &mut |chunk| {
            streamed.extend_from_slice(chunk);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(streamed, all.samples, "{copies} copies, streamed");
        assert!(summary.is_clean(), "{:?}", summary.ended_early);
    }
}

#[test]
fn progress_of_a_header_that_states_too_short_a_length_never_goes_back_nor_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    for copies in [5usize, 100] {
        let path = concatenated(dir.path(), copies);
        let (audio, reports) = decode_with_progress(&path);
        let header_s = reports[0]
            .total_s
            .expect("the first copy's header states a length");
        assert!(
            audio.duration_s > (copies - 1) as f64 * header_s,
            "{} s decoded, the header says {header_s} s",
            audio.duration_s
        );
        assert!(reports.len() > 2 * copies, "{reports:?}");
        let mut last = 0.0f32;
        for p in &reports {
            let fraction = p.fraction().expect("a fraction once audio was decoded");
            assert!((0.0..=1.0).contains(&fraction), "{p:?}: {fraction}");
            assert!(fraction >= last, "{p:?}: {fraction} after {last}");
            last = fraction;
            let estimate = p.estimated_total_s().unwrap();
            assert!(estimate >= p.decoded_s, "{p:?}: {estimate}");
            // Past the header's length, the header is not believed any more.
            if p.decoded_s > header_s {
                assert!(estimate > header_s, "{p:?}: {estimate}");
            }
            // The fraction reaches the end only at the end.
            if p.decoded_s < audio.duration_s - 1.0 {
                assert!(fraction < 1.0, "{p:?}: {fraction}");
            }
            // In a file long enough for the bytes to tell, the header is found out at once
            // and the fraction keeps up with the audio (the reader reads ahead by at most
            // 64 KiB, 8 s of this 64 kbit/s file, 3 % of it).
            if copies == 100 {
                let actual = p.decoded_s / audio.duration_s;
                assert!(
                    (f64::from(fraction) - actual).abs() < 0.05,
                    "{p:?}: {fraction} at {actual}"
                );
            }
        }
        let end = reports.last().unwrap();
        assert_eq!(end.fraction(), Some(1.0), "{end:?}");
        assert!(
            (end.estimated_total_s().unwrap() - end.decoded_s).abs() < 1e-9,
            "{end:?}"
        );
    }
}

#[test]
fn a_steady_fraction_never_goes_back_and_spreads_the_rest_when_the_estimate_grows() {
    use gpuscribe::audio::decode::{MAX_FRACTION_BEFORE_END, SteadyFraction};
    // The estimate of the total: a header's 2.4 s, then the bytes' 100 s, then 80 s.
    let estimate = |done: f64| match done {
        d if d < 2.0 => 2.4,
        d if d < 50.0 => 100.0,
        _ => 80.0,
    };
    let mut steady = SteadyFraction::default();
    let mut last = 0.0;
    let mut at_jump = None;
    let mut done = 0.0;
    while done <= 80.0 {
        let plain = done / estimate(done);
        let fraction = steady.update(done, estimate(done));
        assert!(fraction >= last, "at {done} s: {fraction} after {last}");
        assert!(
            fraction <= MAX_FRACTION_BEFORE_END,
            "at {done} s: {fraction}"
        );
        if done < 2.0 {
            // Nothing holds it back while the estimate stands.
            assert!((fraction - plain).abs() < 1e-12, "at {done} s: {fraction}");
        } else if done < 50.0 {
            // The estimate grew: from where the fraction was, the rest of the way is spread
            // evenly over what the new estimate leaves.
            let (from, f0) = *at_jump.get_or_insert((done - 0.25, last));
            let expected = f0 + (1.0 - f0) * (done - from) / (100.0 - from);
            assert!(
                (fraction - expected).abs() < 1e-9,
                "at {done} s: {fraction}"
            );
            assert!(
                fraction < 0.75 + 0.25 * done / 100.0,
                "at {done} s: {fraction}"
            );
        }
        last = fraction;
        done += 0.25;
    }
    // It got to the end with the work (the estimate shrank to 80 s), not before.
    assert!(last >= MAX_FRACTION_BEFORE_END, "{last}");
    let mut fresh = SteadyFraction::default();
    assert!((fresh.update(40.0, 80.0) - 0.5).abs() < 1e-12);
}
