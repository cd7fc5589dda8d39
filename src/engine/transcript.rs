//! A file's transcript as the app and the CLI see it, and its export to TXT, SRT, VTT and JSON.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::subtitles::{CueRules, transcript_cues};

/// One timed piece of a transcript (a ≤30 s model segment, or a shorter span from timestamps).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, seconds from the file's start.
    pub start_s: f64,
    /// End, seconds from the file's start.
    pub end_s: f64,
    /// Text without tags.
    pub text: String,
    /// Language tag, e.g. `en`, `zh`.
    pub language: String,
    /// Emotion tag, e.g. `NEUTRAL`, `HAPPY`.
    pub emotion: String,
    /// Audio-event tag, e.g. `Speech`, `BGM`.
    pub event: String,
}

/// One token of the model's output with its time from the CTC forced alignment (FunASR
/// `output_timestamp=True`), in seconds from the file's start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTime {
    /// The SentencePiece piece; a leading `▁` marks a space before it.
    pub token: String,
    /// Start, seconds from the file's start.
    pub start_s: f64,
    /// End, seconds from the file's start.
    pub end_s: f64,
}

/// One word as FunASR's `SenseVoiceSmall.post` makes it (ASCII pieces joined, every other
/// piece a word of its own), with FunASR's integer-millisecond times from the file's start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordTime {
    /// The word, without the `▁` marker.
    pub word: String,
    /// Start, ms from the file's start.
    pub start_ms: i64,
    /// End, ms from the file's start.
    pub end_ms: i64,
}

/// The transcript of one file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileTranscript {
    /// The audio file.
    pub path: PathBuf,
    /// Decoded length in seconds.
    pub duration_s: f64,
    /// Language of the first segment with speech.
    pub language: String,
    /// Emotion of the first segment with speech.
    pub emotion: String,
    /// Event of the first segment.
    pub event: String,
    /// The whole text without tags (rich emoji form if asked for).
    pub text: String,
    /// What FunASR's `AutoModel.generate` returns as text: tags included, segments joined with " ".
    pub raw_text: String,
    /// Timed segments.
    pub segments: Vec<Segment>,
    /// Every token of every segment with its time, in order (tags excluded). Empty for
    /// transcripts made before token times existed.
    #[serde(default)]
    pub tokens: Vec<TokenTime>,
    /// FunASR's words with their times, in order.
    #[serde(default)]
    pub words: Vec<WordTime>,
}

/// One model segment's finished result with times from the file's start: what a worker sends
/// out as soon as it is done (in time order), and what a [`TranscriptAssembler`] joins into the
/// file's [`FileTranscript`] (or what the command line writes out as it goes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentResult {
    /// Start of the model segment, seconds from the file's start.
    pub start_s: f64,
    /// End of the model segment, seconds from the file's start.
    pub end_s: f64,
    /// Text without tags (rich form if asked for).
    pub text: String,
    /// Exactly what FunASR's `generate` returns as text for this segment (tags included).
    pub raw_text: String,
    /// Language tag.
    pub language: String,
    /// Emotion tag.
    pub emotion: String,
    /// Event tag.
    pub event: String,
    /// Its timed pieces: the segment itself, or the model's shorter spans inside it.
    pub segments: Vec<Segment>,
    /// Its tokens with their times.
    #[serde(default)]
    pub tokens: Vec<TokenTime>,
    /// Its words with their times.
    #[serde(default)]
    pub words: Vec<WordTime>,
}

/// The file's tags: those of the first result with text, else of the first result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FirstTags {
    tags: Option<(String, String, String)>,
    with_text: bool,
}

impl FirstTags {
    /// Takes the next result's tags into account.
    pub fn see(&mut self, result: &SegmentResult) {
        if self.with_text {
            return;
        }
        let has_text = !result.text.trim().is_empty();
        if has_text || self.tags.is_none() {
            self.tags = Some((
                result.language.clone(),
                result.emotion.clone(),
                result.event.clone(),
            ));
            self.with_text = has_text;
        }
    }

    /// `(language, emotion, event)`; empty before any result.
    pub fn get(&self) -> (String, String, String) {
        self.tags.clone().unwrap_or_default()
    }
}

/// Appends `piece` to a text joined as FunASR joins segments: non-empty pieces with " ".
pub fn join_text(out: &mut String, piece: &str) {
    if piece.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(piece);
}

/// Joins [`SegmentResult`]s, in time order, into the file's [`FileTranscript`]: for the callers
/// that keep the whole transcript (the window, the library).
#[derive(Clone, Debug, Default)]
pub struct TranscriptAssembler {
    tags: FirstTags,
    transcript: FileTranscript,
}

impl TranscriptAssembler {
    /// Adds the next result.
    pub fn push(&mut self, result: SegmentResult) {
        self.tags.see(&result);
        let t = &mut self.transcript;
        join_text(&mut t.text, &result.text);
        join_text(&mut t.raw_text, &result.raw_text);
        t.segments.extend(result.segments);
        t.tokens.extend(result.tokens);
        t.words.extend(result.words);
    }

    /// Whether any result came.
    pub fn is_empty(&self) -> bool {
        self.tags.tags.is_none()
    }

    /// The transcript of what came, with the file's path and length.
    pub fn finish(self, path: PathBuf, duration_s: f64) -> FileTranscript {
        let (language, emotion, event) = self.tags.get();
        FileTranscript {
            path,
            duration_s,
            language,
            emotion,
            event,
            ..self.transcript
        }
    }
}

impl FileTranscript {
    /// The whole transcript as one result (what a worker that does not stream its results sends
    /// at the end), so that it can be written out like streamed results.
    pub fn into_result(self) -> SegmentResult {
        SegmentResult {
            start_s: 0.0,
            end_s: self.duration_s,
            text: self.text,
            raw_text: self.raw_text,
            language: self.language,
            emotion: self.emotion,
            event: self.event,
            segments: self.segments,
            tokens: self.tokens,
            words: self.words,
        }
    }
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ExportFormat {
    /// Plain text, one segment a line.
    Txt,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    Vtt,
    /// JSON (one object per file).
    Json,
}

impl ExportFormat {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Txt => "txt",
            Self::Srt => "srt",
            Self::Vtt => "vtt",
            Self::Json => "json",
        }
    }
}

fn timestamp(secs: f64, decimal: char) -> String {
    let ms_total = (secs.max(0.0) * 1000.0).round() as u64;
    let (h, rem) = (ms_total / 3_600_000, ms_total % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    format!("{h:02}:{m:02}:{s:02}{decimal}{ms:03}")
}

/// `HH:MM:SS.mmm`, as WebVTT writes times.
pub fn vtt_time(secs: f64) -> String {
    timestamp(secs, '.')
}

/// Renders one transcript in `format`, with the default cue rules.
pub fn render(transcript: &FileTranscript, format: ExportFormat) -> String {
    render_with(transcript, format, &CueRules::default())
}

/// Renders one transcript in `format`; SRT and VTT cues follow `rules`.
pub fn render_with(transcript: &FileTranscript, format: ExportFormat, rules: &CueRules) -> String {
    match format {
        ExportFormat::Txt => {
            let mut out = String::new();
            for segment in transcript
                .segments
                .iter()
                .filter(|s| !s.text.trim().is_empty())
            {
                out.push_str(segment.text.trim());
                out.push('\n');
            }
            out
        }
        ExportFormat::Srt => {
            let mut out = String::new();
            for (i, cue) in transcript_cues(transcript, rules).iter().enumerate() {
                out.push_str(&format!(
                    "{}\n{} --> {}\n{}\n\n",
                    i + 1,
                    timestamp(cue.start_s, ','),
                    timestamp(cue.end_s, ','),
                    cue.text()
                ));
            }
            out
        }
        ExportFormat::Vtt => {
            let mut out = String::from("WEBVTT\n\n");
            let mut tags_shown = String::new();
            for cue in transcript_cues(transcript, rules) {
                // The model's tags as a comment wherever they change.
                let tags = segment_tags(transcript, cue.start_s);
                if !tags.is_empty() && tags != tags_shown {
                    out.push_str(&format!("NOTE {tags}\n\n"));
                    tags_shown = tags;
                }
                out.push_str(&format!(
                    "{} --> {}\n{}\n\n",
                    timestamp(cue.start_s, '.'),
                    timestamp(cue.end_s, '.'),
                    cue.text()
                ));
            }
            out
        }
        ExportFormat::Json => {
            serde_json::to_string_pretty(transcript).unwrap_or_else(|err| format!("{err}"))
        }
    }
}

/// `language=en emotion=NEUTRAL event=Speech` of the segment holding `at_s` (empty parts left
/// out).
fn segment_tags(transcript: &FileTranscript, at_s: f64) -> String {
    let Some(segment) = transcript
        .segments
        .iter()
        .rev()
        .find(|s| s.start_s <= at_s + 1e-9)
        .or(transcript.segments.first())
    else {
        return String::new();
    };
    [
        ("language", &segment.language),
        ("emotion", &segment.emotion),
        ("event", &segment.event),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={v}"))
    .collect::<Vec<_>>()
    .join(" ")
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, then a rename, so
/// a crash never leaves half a file where a good one was.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileTranscript {
        FileTranscript {
            path: "a.wav".into(),
            duration_s: 3661.5,
            language: "zh".into(),
            emotion: "NEUTRAL".into(),
            event: "Speech".into(),
            text: "你好 world".into(),
            raw_text: "<|zh|><|NEUTRAL|><|Speech|><|woitn|>你好 world".into(),
            segments: vec![
                Segment {
                    start_s: 0.0,
                    end_s: 1.25,
                    text: "你好".into(),
                    ..Default::default()
                },
                Segment {
                    start_s: 1.25,
                    end_s: 3661.5,
                    text: " world ".into(),
                    ..Default::default()
                },
                Segment {
                    start_s: 3661.5,
                    end_s: 3661.5,
                    text: " ".into(),
                    ..Default::default()
                },
            ],
            tokens: Vec::new(),
            words: Vec::new(),
        }
    }

    #[test]
    fn srt_and_vtt_have_numbered_timed_cues() {
        let t = sample();
        assert_eq!(
            render(&t, ExportFormat::Srt),
            "1\n00:00:00,000 --> 00:00:01,250\n你好\n\n2\n00:00:01,250 --> 01:01:01,500\nworld\n\n"
        );
        assert_eq!(
            render(&t, ExportFormat::Vtt),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.250\n你好\n\n00:00:01.250 --> 01:01:01.500\nworld\n\n"
        );
        assert_eq!(render(&t, ExportFormat::Txt), "你好\nworld\n");
    }

    #[test]
    fn subtitles_come_from_token_times_without_tags() {
        let token = |token: &str, start_s: f64, end_s: f64| TokenTime {
            token: token.into(),
            start_s,
            end_s,
        };
        let mut t = sample();
        t.segments[0].language = "zh".into();
        t.segments[1].language = "en".into();
        t.tokens = vec![
            token("你", 0.1, 0.2),
            token("好", 0.3, 0.4),
            token("。", 0.4, 0.46),
            token("<|en|>", 1.3, 1.33),
            token("\u{2581}hello", 2.0, 2.3),
            token("\u{2581}world", 2.4, 2.8),
        ];
        assert_eq!(
            render(&t, ExportFormat::Srt),
            "1\n00:00:00,100 --> 00:00:00,900\n你好。\n\n2\n00:00:02,000 --> 00:00:02,800\nhello world\n\n"
        );
        assert_eq!(
            render(&t, ExportFormat::Vtt),
            "WEBVTT\n\nNOTE language=zh\n\n00:00:00.100 --> 00:00:00.900\n你好。\n\n\
             NOTE language=en\n\n00:00:02.000 --> 00:00:02.800\nhello world\n\n"
        );
        // The tag stays in the JSON.
        assert!(render(&t, ExportFormat::Json).contains("<|en|>"));
    }

    #[test]
    fn json_round_trips() {
        let t = sample();
        let back: FileTranscript =
            serde_json::from_str(&render(&t, ExportFormat::Json)).expect("valid JSON");
        assert_eq!(back, t);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.srt");
        std::fs::write(&path, "old").expect("write");
        write_atomic(&path, "new".as_bytes()).expect("atomic write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_atomic(&dir.path().join("missing/x.txt"), b"x").is_err());
    }
}
