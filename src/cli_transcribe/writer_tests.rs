//! The streamed outputs are byte for byte the whole transcript's, in every format.

use super::*;
use crate::engine::transcript::{TokenTime, TranscriptAssembler, WordTime, render_with};

const FORMATS: [ExportFormat; 4] = [
    ExportFormat::Txt,
    ExportFormat::Srt,
    ExportFormat::Vtt,
    ExportFormat::Json,
];

/// Results with text to escape, tags that change, segments without text, tokens and words.
fn results(count: usize) -> Vec<SegmentResult> {
    let pieces = [
        "\u{2581}Hello",
        ",",
        "\u{2581}\"quoted\"",
        "\u{2581}back\\slash",
        ".",
        "你",
        "好",
        "。",
        "<|ja|>",
        "\u{2581}tab\there",
        "?",
    ];
    (0..count)
        .map(|i| {
            let start_s = i as f64 * 12.5;
            let tokens: Vec<TokenTime> = (0..40)
                .map(|k| {
                    let at = start_s + k as f64 * 0.3 + if k % 13 == 0 { 0.9 } else { 0.0 };
                    TokenTime {
                        token: pieces[(i * 7 + k) % pieces.len()].into(),
                        start_s: at,
                        end_s: at + 0.2,
                    }
                })
                .collect();
            let text = if i % 4 == 3 {
                String::new()
            } else {
                format!(" line \"{i}\"\n with\u{7} 字 ")
            };
            let language = if i < 2 { "zh" } else { "en" };
            SegmentResult {
                start_s,
                end_s: start_s + 12.5,
                raw_text: format!("<|{language}|><|NEUTRAL|>{text}"),
                text: text.clone(),
                language: language.into(),
                emotion: "NEUTRAL".into(),
                event: "Speech".into(),
                segments: vec![Segment {
                    start_s,
                    end_s: start_s + 12.5,
                    text,
                    language: language.into(),
                    emotion: "NEUTRAL".into(),
                    event: if i % 3 == 0 { "BGM" } else { "Speech" }.into(),
                }],
                words: tokens
                    .iter()
                    .map(|t| WordTime {
                        word: t.token.trim_start_matches('\u{2581}').into(),
                        start_ms: (t.start_s * 1000.0) as i64,
                        end_ms: (t.end_s * 1000.0) as i64,
                    })
                    .collect(),
                tokens,
            }
        })
        .collect()
}

/// What the writer makes of `results` pushed in pieces of `step`.
fn written(
    format: ExportFormat,
    rules: &CueRules,
    results: &[SegmentResult],
    step: usize,
    head: &FileTranscript,
) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join(format!("out.{}", format.extension()));
    let mut writer = TranscriptWriter::create(format, rules, &output).expect("create");
    for piece in results.chunks(step.max(1)) {
        writer.push(piece).expect("push");
    }
    writer
        .finish(head)
        .expect("finish")
        .commit(&output)
        .expect("commit");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "no spool left behind: {names:?}");
    std::fs::read(&output).expect("read")
}

pub(crate) fn assert_streams_like_whole(results: &[SegmentResult], head: &FileTranscript) {
    let mut assembler = TranscriptAssembler::default();
    results.iter().for_each(|r| assembler.push(r.clone()));
    let whole = assembler.finish(head.path.clone(), head.duration_s);
    let rule_sets = [
        CueRules::default(),
        CueRules {
            max_duration_s: 2.0,
            max_lines: 1,
            min_duration_s: 1.5,
            ..CueRules::default()
        },
    ];
    for format in FORMATS {
        for rules in &rule_sets {
            let want = render_with(&whole, format, rules);
            for step in [1, 3, results.len()] {
                let got = written(format, rules, results, step, head);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    want,
                    "{format:?}, {rules:?}, pieces of {step}"
                );
            }
        }
    }
}

#[test]
fn every_format_is_written_as_the_whole_transcript_renders() {
    let results = results(9);
    let head = FileTranscript {
        path: "/audio/a \"talk\".wav".into(),
        duration_s: 112.5,
        ..FileTranscript::default()
    };
    assert_streams_like_whole(&results, &head);
}

#[test]
fn an_empty_transcript_is_written_as_the_whole_one_renders() {
    let head = FileTranscript {
        path: "silence.wav".into(),
        duration_s: 0.0,
        ..FileTranscript::default()
    };
    assert_streams_like_whole(&[], &head);
    // A whole transcript handed over as one result (a worker that does not stream) too.
    let mut assembler = TranscriptAssembler::default();
    results(5).into_iter().for_each(|r| assembler.push(r));
    let whole = assembler.finish("w.wav".into(), 62.5);
    assert_streams_like_whole(&[whole.clone().into_result()], &whole);
}

#[test]
fn a_partial_output_holds_what_came_and_says_how_far() {
    let results = results(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("talk.partial.json");
    let mut writer = TranscriptWriter::create(ExportFormat::Json, &CueRules::default(), &output)
        .expect("create");
    assert!(writer.is_empty());
    writer.push(&results[..3]).expect("push");
    assert!((writer.covered_s() - 37.5).abs() < 1e-9);
    writer
        .finish_partial(Path::new("talk.wav"))
        .expect("finish")
        .commit(&output)
        .expect("commit");
    let back: FileTranscript =
        serde_json::from_str(&std::fs::read_to_string(&output).expect("read")).expect("json");
    assert_eq!(back.segments.len(), 3);
    assert!((back.duration_s - 37.5).abs() < 1e-9);
    assert_eq!(back.language, "zh");
}
