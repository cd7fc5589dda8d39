//! A transcript written out as its results come in ([`crate::engine::Event::JobTranscribed`]),
//! byte for byte what [`render_with`](crate::engine::transcript::render_with) makes of the
//! whole transcript, without holding it:
//!
//! * TXT: each segment's line as it comes;
//! * SRT, VTT: each cue once it is final ([`CueStream`]); VTT's `NOTE` lines from the segments
//!   held until the cues pass them;
//! * JSON: the file's length and tags come first but are known last, so text, raw text,
//!   segments, tokens and words go to hidden spool files beside the output, encoded as they
//!   will be printed, and are copied after the head at the end.
//!
//! The output goes to a hidden temporary file in the output's folder ([`Rendered`]), which is
//! renamed over the output once complete, or copied to stdout in its turn.

use std::fs::File;
use std::io::{BufWriter, Read as _, Seek as _, Write};
use std::path::{Path, PathBuf};

use super::outputs;
use crate::engine::subtitles::{Cue, CueRules};
use crate::engine::subtitles_stream::CueStream;
use crate::engine::transcript::{
    ExportFormat, FileTranscript, FirstTags, Segment, SegmentResult, vtt_time,
};

/// Bytes each spool and output file is written through.
const BUFFER: usize = 64 * 1024;

/// A hidden file that is removed when dropped unless kept.
struct TempFile {
    path: PathBuf,
    file: BufWriter<File>,
    keep: bool,
}

impl TempFile {
    fn create(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            path,
            file: BufWriter::with_capacity(BUFFER, file),
            keep: false,
        })
    }

    /// Copies everything written so far to `out`.
    fn copy_to(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.file.flush()?;
        let file = self.file.get_mut();
        file.rewind()?;
        let mut buf = vec![0u8; BUFFER];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])?;
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            std::fs::remove_file(&self.path).ok();
        }
    }
}

/// A JSON array written an element at a time, as `to_string_pretty` lays it out at depth 1.
struct JsonArray {
    spool: TempFile,
    count: usize,
}

impl JsonArray {
    fn push<T: serde::Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        let pretty = serde_json::to_string_pretty(value)?;
        let out = &mut self.spool.file;
        out.write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
        for (i, line) in pretty.split('\n').enumerate() {
            if i > 0 {
                out.write_all(b"\n")?;
            }
            out.write_all(b"    ")?;
            out.write_all(line.as_bytes())?;
        }
        self.count += 1;
        Ok(())
    }

    fn copy_to(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.count == 0 {
            return out.write_all(b"[]");
        }
        out.write_all(b"[")?;
        self.spool.copy_to(out)?;
        out.write_all(b"\n  ]")
    }
}

/// A JSON string's contents written a piece at a time, joined as FunASR joins segments.
struct JsonText {
    spool: TempFile,
    empty: bool,
}

impl JsonText {
    fn join(&mut self, piece: &str) -> std::io::Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        if !self.empty {
            self.spool.file.write_all(b" ")?;
        }
        self.empty = false;
        let quoted = serde_json::to_string(piece)?;
        let inner = &quoted[1..quoted.len() - 1];
        self.spool.file.write_all(inner.as_bytes())
    }
}

struct JsonSpools {
    text: JsonText,
    raw_text: JsonText,
    segments: JsonArray,
    tokens: JsonArray,
    words: JsonArray,
}

/// The end of a pretty-printed [`FileTranscript`] whose text and lists are empty.
const EMPTY_TAIL: &str = "\n  \"text\": \"\",\n  \"raw_text\": \"\",\n  \"segments\": [],\n  \"tokens\": [],\n  \"words\": []\n}";

/// VTT's `NOTE` lines: the tags of the segment holding each cue's start.
#[derive(Default)]
struct VttTags {
    /// Segments from the one holding the last cue's start on: `(start, tags)`.
    segments: std::collections::VecDeque<(f64, String)>,
    shown: String,
}

impl VttTags {
    fn add(&mut self, segment: &Segment) {
        let tags = [
            ("language", &segment.language),
            ("emotion", &segment.emotion),
            ("event", &segment.event),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
        self.segments.push_back((segment.start_s, tags));
    }

    /// The tags at `at_s` (segments come in time order, so those before it can go).
    fn at(&mut self, at_s: f64) -> String {
        while self.segments.len() >= 2 && self.segments[1].0 <= at_s + 1e-9 {
            self.segments.pop_front();
        }
        self.segments
            .front()
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    }
}

enum Body {
    Txt,
    Srt { cues: CueStream, number: usize },
    Vtt { cues: CueStream, tags: VttTags },
    Json(Box<JsonSpools>),
}

/// One file's transcript being written in `format` as its results come.
pub struct TranscriptWriter {
    out: TempFile,
    body: Body,
    tags: FirstTags,
    covered_s: f64,
    results: usize,
}

/// A complete output in a hidden temporary file.
pub struct Rendered(TempFile);

impl Rendered {
    /// Makes it `path`: `fsync`, rename, `fsync` of the folder (see [`outputs`]).
    pub fn commit(mut self, path: &Path) -> std::io::Result<()> {
        self.0.file.flush()?;
        self.0.file.get_ref().sync_all()?;
        std::fs::rename(&self.0.path, path)?;
        self.0.keep = true;
        outputs::sync_dir(outputs::folder_of(path))
    }

    /// Copies it to `out`; the temporary file goes.
    pub fn copy_to(mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.0.copy_to(out)
    }
}

impl TranscriptWriter {
    /// A writer whose temporary files lie beside `output` (hidden names derived from it).
    pub fn create(format: ExportFormat, rules: &CueRules, output: &Path) -> std::io::Result<Self> {
        let mut out = TempFile::create(outputs::temp_path(output, ""))?;
        let array = |part: &str| -> std::io::Result<JsonArray> {
            Ok(JsonArray {
                spool: TempFile::create(outputs::temp_path(output, part))?,
                count: 0,
            })
        };
        let text = |part: &str| -> std::io::Result<JsonText> {
            Ok(JsonText {
                spool: TempFile::create(outputs::temp_path(output, part))?,
                empty: true,
            })
        };
        let body = match format {
            ExportFormat::Txt => Body::Txt,
            ExportFormat::Srt => Body::Srt {
                cues: CueStream::new(*rules),
                number: 0,
            },
            ExportFormat::Vtt => {
                out.file.write_all(b"WEBVTT\n\n")?;
                Body::Vtt {
                    cues: CueStream::new(*rules),
                    tags: VttTags::default(),
                }
            }
            ExportFormat::Json => Body::Json(Box::new(JsonSpools {
                text: text(".text")?,
                raw_text: text(".raw_text")?,
                segments: array(".segments")?,
                tokens: array(".tokens")?,
                words: array(".words")?,
            })),
        };
        Ok(Self {
            out,
            body,
            tags: FirstTags::default(),
            covered_s: 0.0,
            results: 0,
        })
    }

    /// Seconds of audio whose results came.
    pub fn covered_s(&self) -> f64 {
        self.covered_s
    }

    /// Whether no result came yet.
    pub fn is_empty(&self) -> bool {
        self.results == 0
    }

    /// Writes the next results (in time order).
    pub fn push(&mut self, results: &[SegmentResult]) -> std::io::Result<()> {
        for result in results {
            self.tags.see(result);
            self.covered_s = self.covered_s.max(result.end_s);
            self.results += 1;
            let out = &mut self.out.file;
            match &mut self.body {
                Body::Txt => {
                    for segment in &result.segments {
                        let text = segment.text.trim();
                        if !text.is_empty() {
                            out.write_all(text.as_bytes())?;
                            out.write_all(b"\n")?;
                        }
                    }
                }
                Body::Srt { cues, number } => {
                    write_srt(out, number, &cues.push(result))?;
                }
                Body::Vtt { cues, tags } => {
                    result.segments.iter().for_each(|s| tags.add(s));
                    write_vtt(out, tags, &cues.push(result))?;
                }
                Body::Json(spools) => {
                    spools.text.join(&result.text)?;
                    spools.raw_text.join(&result.raw_text)?;
                    for segment in &result.segments {
                        spools.segments.push(segment)?;
                    }
                    for token in &result.tokens {
                        spools.tokens.push(token)?;
                    }
                    for word in &result.words {
                        spools.words.push(word)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The complete output, given what is global: `head`'s path and length (its tags are those
    /// of the results that came).
    pub fn finish(mut self, head: &FileTranscript) -> std::io::Result<Rendered> {
        let (language, emotion, event) = self.tags.get();
        let head = FileTranscript {
            path: head.path.clone(),
            duration_s: head.duration_s,
            language,
            emotion,
            event,
            ..FileTranscript::default()
        };
        let out = &mut self.out.file;
        match self.body {
            Body::Txt => {}
            Body::Srt { cues, mut number } => {
                write_srt(out, &mut number, &cues.finish(head.duration_s))?;
            }
            Body::Vtt { cues, mut tags } => {
                write_vtt(out, &mut tags, &cues.finish(head.duration_s))?;
            }
            Body::Json(mut spools) => {
                let empty = serde_json::to_string_pretty(&head)?;
                let Some(start) = empty.strip_suffix(EMPTY_TAIL) else {
                    return Err(std::io::Error::other(
                        "the transcript's JSON has an unexpected layout",
                    ));
                };
                out.write_all(start.as_bytes())?;
                out.write_all(b"\n  \"text\": \"")?;
                spools.text.spool.copy_to(out)?;
                out.write_all(b"\",\n  \"raw_text\": \"")?;
                spools.raw_text.spool.copy_to(out)?;
                out.write_all(b"\",\n  \"segments\": ")?;
                spools.segments.copy_to(out)?;
                out.write_all(b",\n  \"tokens\": ")?;
                spools.tokens.copy_to(out)?;
                out.write_all(b",\n  \"words\": ")?;
                spools.words.copy_to(out)?;
                out.write_all(b"\n}")?;
            }
        }
        out.flush()?;
        Ok(Rendered(self.out))
    }

    /// What came so far as a complete output of its own: the transcript up to
    /// [`Self::covered_s`] (for a file that failed on the way).
    pub fn finish_partial(self, path: &Path) -> std::io::Result<Rendered> {
        let head = FileTranscript {
            path: path.to_owned(),
            duration_s: self.covered_s,
            ..FileTranscript::default()
        };
        self.finish(&head)
    }
}

fn srt_time(secs: f64) -> String {
    vtt_time(secs).replace('.', ",")
}

fn write_srt(out: &mut dyn Write, number: &mut usize, cues: &[Cue]) -> std::io::Result<()> {
    for cue in cues {
        *number += 1;
        write!(
            out,
            "{}\n{} --> {}\n{}\n\n",
            number,
            srt_time(cue.start_s),
            srt_time(cue.end_s),
            cue.text()
        )?;
    }
    Ok(())
}

fn write_vtt(out: &mut dyn Write, tags: &mut VttTags, cues: &[Cue]) -> std::io::Result<()> {
    for cue in cues {
        let now = tags.at(cue.start_s);
        if !now.is_empty() && now != tags.shown {
            write!(out, "NOTE {now}\n\n")?;
            tags.shown = now;
        }
        write!(
            out,
            "{} --> {}\n{}\n\n",
            vtt_time(cue.start_s),
            vtt_time(cue.end_s),
            cue.text()
        )?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "writer_tests.rs"]
pub(crate) mod tests;
