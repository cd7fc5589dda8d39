//! Writing a transcript to TXT, SRT, VTT or JSON. Runs on the export task's thread.

use std::path::{Path, PathBuf};

use crate::engine::transcript::{render, write_atomic};
use crate::engine::{ExportFormat, FileTranscript};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file could not be written.
    #[error("cannot write the {format} export ({source}): {path}")]
    Write {
        /// "SRT", …
        format: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Renders `transcript` as `format` and writes it to `path` atomically.
pub fn export_transcript(
    transcript: &FileTranscript,
    format: ExportFormat,
    path: &Path,
) -> Result<(), ExportError> {
    write_atomic(path, render(transcript, format).as_bytes()).map_err(|source| ExportError::Write {
        format: format.extension().to_uppercase(),
        path: path.to_owned(),
        source,
    })
}

/// `talk.wav` → `talk.srt`.
pub fn default_export_name(audio: &Path, format: ExportFormat) -> String {
    let stem = audio
        .file_stem()
        .map_or_else(|| "transcript".into(), |s| s.to_string_lossy());
    format!("{stem}.{}", format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_follow_the_audio_file() {
        assert_eq!(
            default_export_name(Path::new("/a/会议.m4a"), ExportFormat::Srt),
            "会议.srt"
        );
        assert_eq!(
            default_export_name(Path::new(""), ExportFormat::Json),
            "transcript.json"
        );
    }
}
