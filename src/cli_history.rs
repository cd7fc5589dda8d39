//! `gpuscribe history`: the transcript library on the command line.
//!
//! * `gpuscribe history [--json] [--search TEXT] [--limit N]` lists transcripts, newest first
//!   (a table, or with `--json` an array of objects: `id`, `created_at_ms`, `path`, `state`,
//!   `language`, `device`, `duration_s`, `preview`, `error`, `recording`).
//! * `gpuscribe history export ID --format txt|srt|vtt|json` prints one transcript: JSON with
//!   its segments and every token's and word's time, SRT and VTT cut into cues by the same rules
//!   (and the same options) as `gpuscribe transcribe`.
//!
//! The library is `$GPUSCRIBE_DATA_DIR/library.sqlite3` (default `~/.local/share/gpuscribe/`).

use std::io::Write;

use clap::{Args, Subcommand};

use crate::engine::subtitles::CueArgs;
use crate::engine::transcript::{ExportFormat, render_with};
use crate::library::{HistoryEntry, Library, default_library_path, format_utc};

/// Arguments of `gpuscribe history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Export one transcript instead of listing.
    #[command(subcommand)]
    pub action: Option<HistoryAction>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only transcripts containing these words (full-text search; all words must match).
    #[arg(long)]
    pub search: Option<String>,
    /// Most transcripts to list.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// `gpuscribe history …` subcommands.
#[derive(Debug, Subcommand)]
pub enum HistoryAction {
    /// Print one transcript.
    Export {
        /// The transcript's id (the first column of `gpuscribe history`).
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value = "txt")]
        format: ExportFormat,
        /// How SRT and VTT cues are cut (as for `gpuscribe transcribe`).
        #[command(flatten)]
        cues: CueArgs,
    },
}

fn duration_text(secs: Option<f64>) -> String {
    secs.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"))
}

/// Writes the history table.
pub fn write_table(out: &mut dyn Write, entries: &[HistoryEntry]) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "no transcripts");
    }
    writeln!(
        out,
        "{:>6}  {:<19} {:>9} {:<5} {:<7} {:<11} FILE",
        "ID", "DATE (UTC)", "LENGTH", "LANG", "DEVICE", "STATE"
    )?;
    for e in entries {
        writeln!(
            out,
            "{:>6}  {:<19} {:>9} {:<5} {:<7} {:<11} {}",
            e.id,
            format_utc(e.created_at_ms),
            duration_text(e.duration_s),
            e.language,
            e.device.as_deref().unwrap_or("-"),
            e.state.as_str(),
            e.path.display()
        )?;
        let preview: String = e.preview.chars().take(100).collect();
        if !preview.trim().is_empty() {
            writeln!(out, "        {}", preview.trim())?;
        } else if let Some(error) = &e.error {
            writeln!(out, "        error: {error}")?;
        }
    }
    Ok(())
}

/// Runs the command.
pub fn run(args: &HistoryArgs) -> anyhow::Result<()> {
    let path = default_library_path();
    let (library, report) = Library::open(&path)?;
    for line in report.messages(&path) {
        eprintln!("note: {line}");
    }
    let mut out = std::io::stdout().lock();
    match &args.action {
        Some(HistoryAction::Export { id, format, cues }) => {
            let job = library
                .get(*id)?
                .ok_or(crate::library::LibraryError::NotFound(*id))?;
            out.write_all(render_with(&job.transcript, *format, &cues.rules()).as_bytes())?;
        }
        None => {
            let entries = library.list(args.search.as_deref(), args.limit)?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                out.write_all(b"\n")?;
            } else {
                write_table(&mut out, &entries)?;
            }
        }
    }
    Ok(())
}
