//! Token and word times against FunASR 1.4.16's `generate(output_timestamp=True)` on the committed
//! fixtures (tools/reference/generate.py and long_audio.py), through the model and through the
//! whole engine (the real worker process) on a file longer than one segment; the text encoding
//! those times rest on against sentencepiece (tools/reference/spm_encode.py); and the subtitles
//! made from those times checked against the cue rules.

// Fixture reads in helpers panic on purpose: a failed read is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use gpuscribe::engine::batch::transcribe_files;
use gpuscribe::engine::segment::{MAX_SEGMENT_SECS, MIN_SEGMENT_SECS, split_at_pauses};
use gpuscribe::engine::subtitles::{CueRules, is_wide, transcript_cues};
use gpuscribe::engine::transcript::{ExportFormat, render};
use gpuscribe::engine::{DecodeSettings, DeviceTarget, EngineConfig, FileTranscript};
use gpuscribe::model::files::ModelFiles;
use gpuscribe::model::sensevoice::spm_encode::SpmEncoder;
use gpuscribe::model::sensevoice::timestamps::funasr_targets;
use gpuscribe::model::sensevoice::{DecodeOptions, SenseVoice};
use serde_json::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn wav(path: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(path).unwrap();
    r.samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn spans(v: &Value) -> Vec<[i64; 2]> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn clip_word_times_equal_funasr() {
    let r = json(&data().join("reference.json"));
    let model = SenseVoice::load(
        &ModelFiles::from_dir(&data().join("tiny")).unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let opts = DecodeOptions {
        timestamps: true,
        ..DecodeOptions::default()
    };
    let mut re_encoded = 0;
    for (clip, c) in r["clips"].as_object().unwrap() {
        let ts = &c["timestamp"];
        let samples = wav(&data().join(format!("audio/{clip}.wav")));
        let out = model
            .transcribe_batch(&[&samples], &opts)
            .unwrap()
            .remove(0);
        assert_eq!(out.raw_text, ts["text"].as_str().unwrap(), "{clip}");
        // FunASR aligns the pieces of its re-encoded text, which need not be the greedy ids
        // (zh_mid: random pieces `ing`+`se` re-encode as `ings`+`e`); so do we.
        let pieces: Vec<String> = out.tokens.iter().map(|t| t.piece.clone()).collect();
        assert_eq!(pieces, strings(&ts["text2tokens_after_4"]), "{clip}");
        let ids: Vec<u32> = out.tokens.iter().map(|t| t.id).collect();
        let want_ids: Vec<u32> = serde_json::from_value(ts["aligned_token_ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "{clip}");
        let got: Vec<[i64; 2]> = out.words.iter().map(|w| [w.start_ms, w.end_ms]).collect();
        assert_eq!(got, spans(&ts["timestamp"]), "{clip}");
        let words: Vec<String> = out.words.iter().map(|w| w.word.clone()).collect();
        assert_eq!(words, strings(&ts["words"]), "{clip}");
        if !ts["aligned_equals_greedy_text_ids"].as_bool().unwrap() {
            assert_ne!(&out.token_ids[4..], &ids[..], "{clip}");
            re_encoded += 1;
        }
    }
    assert_eq!(r["clips"].as_object().unwrap().len(), 3);
    assert_eq!(re_encoded, 1, "zh_mid re-encodes differently");
}

/// The Rust SentencePiece encoder against sentencepiece's own `normalize`, `EncodeAsPieces`
/// and `EncodeAsIds` (tools/reference/spm_encode.py).
#[test]
fn text_encoding_equals_sentencepiece() {
    let fixture = json(&data().join("spm_encode.json"));
    let encoder =
        SpmEncoder::from_file(&data().join("tiny").join(fixture["model"].as_str().unwrap()))
            .unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() > 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let normalized = String::from_utf8(encoder.normalize(text)).unwrap();
        assert_eq!(normalized, c["normalized"].as_str().unwrap(), "{text:?}");
        let pieces = encoder.encode_as_pieces(text);
        assert_eq!(pieces, strings(&c["pieces"]), "{text:?}");
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(encoder.encode_as_ids(text), ids, "{text:?}");
        let piece_ids: Vec<Vec<u32>> = serde_json::from_value(c["piece_ids"].clone()).unwrap();
        let ours: Vec<Vec<u32>> = pieces.iter().map(|p| encoder.encode_as_ids(p)).collect();
        assert_eq!(ours, piece_ids, "{text:?}");
    }
    // What FunASR aligns for each clip's decoded text.
    let r = json(&data().join("reference.json"));
    for (clip, c) in r["clips"].as_object().unwrap() {
        let ts = &c["timestamp"];
        let (ids, pieces) = funasr_targets(&encoder, ts["text"].as_str().unwrap()).unwrap();
        let want: Vec<u32> = serde_json::from_value(ts["aligned_token_ids"].clone()).unwrap();
        assert_eq!(ids, want, "{clip}");
        assert_eq!(pieces, strings(&ts["text2tokens_after_4"]), "{clip}");
    }
    // Nothing after the four tags: no times, as in FunASR.
    assert_eq!(
        funasr_targets(&encoder, "<|en|><|NEUTRAL|><|Speech|><|woitn|>"),
        None
    );
}

/// The tiny model with the long-audio CTC head from the fixture, in a temporary folder.
fn long_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tiny = data().join("tiny");
    for f in [
        "am.mvn",
        "config.yaml",
        "chn_jpn_yue_eng_ko_spectok.bpe.model",
    ] {
        std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
    }
    let mut weights =
        candle_core::safetensors::load(tiny.join("model.safetensors"), &Device::Cpu).unwrap();
    let head = candle_core::safetensors::load(data().join("long/ctc_lo.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(head.len(), 2);
    weights.extend(head);
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn transcribe_long(model_dir: &Path) -> FileTranscript {
    let config = EngineConfig {
        model_dir: Some(model_dir.to_owned()),
        target: DeviceTarget::Cpu,
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_gpuscribe-worker"))),
        ..EngineConfig::default()
    };
    let path = data().join("long/long_mix.wav");
    let mut results = transcribe_files(
        &[path],
        config,
        Vec::new(),
        &DecodeSettings::default(),
        &mut |_| {},
    )
    .unwrap();
    results.remove(0).unwrap()
}

#[test]
fn long_file_token_times_equal_funasr_on_the_same_segments() {
    let fixture = json(&data().join("long/long_audio.json"));
    let samples = wav(&data().join("long/long_mix.wav"));
    // The engine cuts where the generator did (it ports `split_at_pauses`).
    let ranges = split_at_pauses(&samples, MAX_SEGMENT_SECS, MIN_SEGMENT_SECS);
    let want: Vec<(usize, usize)> = fixture["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["start_sample"].as_u64().unwrap() as usize,
                s["end_sample"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let got: Vec<(usize, usize)> = ranges.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(got, want);
    assert!(want.len() >= 2, "the file must span several segments");

    let model_dir = long_model_dir();
    let t = transcribe_long(model_dir.path());
    let merged = &fixture["merged"];
    assert_eq!(t.raw_text, merged["raw_text"].as_str().unwrap());
    // Words: FunASR's ms times moved by each segment's start, as inference_with_vad does.
    let words: Vec<String> = t.words.iter().map(|w| w.word.clone()).collect();
    assert_eq!(words, strings(&merged["words"]));
    let times: Vec<[i64; 2]> = t.words.iter().map(|w| [w.start_ms, w.end_ms]).collect();
    assert_eq!(times, spans(&merged["timestamp"]));
    // Tokens: FunASR's own per-token seconds (what reaches its post()), moved the same way.
    let want_tokens = merged["tokens"].as_array().unwrap();
    assert_eq!(t.tokens.len(), want_tokens.len());
    assert!(t.tokens.len() > 200, "{}", t.tokens.len());
    for (i, (got, want)) in t.tokens.iter().zip(want_tokens).enumerate() {
        assert_eq!(got.token, want["token"].as_str().unwrap(), "token {i}");
        let ms = |s: f64| (s * 1000.0).round() as i64;
        assert_eq!(
            ms(got.start_s),
            want["start_ms"].as_i64().unwrap(),
            "token {i} start"
        );
        assert_eq!(
            ms(got.end_s),
            want["end_ms"].as_i64().unwrap(),
            "token {i} end"
        );
    }
    // The second segment's tokens start after the cut.
    let cut_s = want[1].0 as f64 / 16_000.0;
    assert!(t.tokens.iter().filter(|x| x.start_s >= cut_s).count() > 50);

    // JSON carries them; SRT and VTT of the same file follow the cue rules and hold no tags.
    let back: FileTranscript = serde_json::from_str(&render(&t, ExportFormat::Json)).unwrap();
    assert_eq!(back.tokens, t.tokens);
    assert_eq!(back.words, t.words);
    let rules = CueRules::default();
    let cues = transcript_cues(&t, &rules);
    assert!(cues.len() > 5, "{}", cues.len());
    for pair in cues.windows(2) {
        assert!(pair[0].end_s <= pair[1].start_s, "{pair:?}");
    }
    for cue in &cues {
        let words = cue.words.len();
        assert!(words == 1 || cue.end_s - cue.start_s <= rules.max_duration_s + 1e-9);
        assert!(cue.lines.len() <= rules.max_lines);
        for line in &cue.lines {
            let wide = line.chars().filter(|c| is_wide(*c)).count();
            let narrow = line.chars().count() - wide;
            assert!(narrow * 18 + wide * 42 <= 42 * 18, "{line:?}");
        }
        assert!(!cue.text().contains("<|"), "{cue:?}");
    }
    let srt = render(&t, ExportFormat::Srt);
    assert_eq!(srt.matches(" --> ").count(), cues.len());
    assert!(!srt.contains("<|"));
    // VTT names each segment's tags in a comment (when they change).
    let vtt = render(&t, ExportFormat::Vtt);
    let notes: Vec<String> = fixture["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tags: Vec<&str> = s["text"].as_str().unwrap()[2..]
                .split("<|")
                .take(3)
                .map(|t| t.trim_end_matches("|>"))
                .collect();
            format!(
                "NOTE language={} emotion={} event={}\n\n",
                tags[0], tags[1], tags[2]
            )
        })
        .collect();
    assert!(vtt.starts_with(&format!("WEBVTT\n\n{}", notes[0])), "{vtt}");
    if notes[1] != notes[0] {
        assert!(vtt.contains(&notes[1]), "{vtt}");
    }
    // Every visible token is in the subtitles exactly once, in order.
    let visible: String = t
        .tokens
        .iter()
        .filter(|x| !x.token.starts_with("<|"))
        .flat_map(|x| x.token.chars())
        .filter(|c| !c.is_whitespace() && *c != '\u{2581}')
        .collect();
    let shown: String = cues
        .iter()
        .flat_map(|c| c.lines.concat().chars().collect::<Vec<_>>())
        .filter(|c| !c.is_whitespace())
        .collect();
    assert_eq!(shown, visible);
}
