//! A file's transcript as the app and the CLI see it, and its export to TXT, SRT, VTT and JSON.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Renders one transcript in `format`.
pub fn render(transcript: &FileTranscript, format: ExportFormat) -> String {
    let spoken = transcript
        .segments
        .iter()
        .filter(|segment| !segment.text.trim().is_empty());
    match format {
        ExportFormat::Txt => {
            let mut out = String::new();
            for segment in spoken {
                out.push_str(segment.text.trim());
                out.push('\n');
            }
            out
        }
        ExportFormat::Srt => {
            let mut out = String::new();
            for (i, segment) in spoken.enumerate() {
                out.push_str(&format!(
                    "{}\n{} --> {}\n{}\n\n",
                    i + 1,
                    timestamp(segment.start_s, ','),
                    timestamp(segment.end_s, ','),
                    segment.text.trim()
                ));
            }
            out
        }
        ExportFormat::Vtt => {
            let mut out = String::from("WEBVTT\n\n");
            for segment in spoken {
                out.push_str(&format!(
                    "{} --> {}\n{}\n\n",
                    timestamp(segment.start_s, '.'),
                    timestamp(segment.end_s, '.'),
                    segment.text.trim()
                ));
            }
            out
        }
        ExportFormat::Json => {
            serde_json::to_string_pretty(transcript).unwrap_or_else(|err| format!("{err}"))
        }
    }
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
