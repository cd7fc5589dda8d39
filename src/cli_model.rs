//! `gpuscribe model status|download|verify [--json] [--engine whisper --whisper-model NAME]`:
//! where the release model's files (SenseVoice-Small, or a Whisper size's repository) are, their
//! revision, verified or not; fetching them with a progress bar on a terminal (plain lines
//! otherwise); hashing them again. Also the download `gpuscribe transcribe` runs before it
//! starts the engine when no `--model-dir` is given. The exit status is 0 when every file is
//! present and verified, 1 otherwise (so `gpuscribe model status` can gate a script).
//!
//! # `--json` (schema version 1), the same object for the three commands
//!
//! ```json
//! { "schema_version": 1, "repo": "FunAudioLLM/SenseVoiceSmall",
//!   "revision": "3847d57b…", "commit": "3847d57b…",      // commit: null until known
//!   "folder": "/home/u/.cache/huggingface/hub/models--FunAudioLLM--SenseVoiceSmall/snapshots/3847d57b…",
//!   "hub_cache": "/home/u/.cache/huggingface/hub", "endpoint": "https://huggingface.co",
//!   "offline": false, "ready": true, "error": null,
//!   "files": [ { "name": "model.pt", "path": "…/model.pt", "state": "verified",   // or "unverified", "missing"
//!                "size_bytes": 936291369, "sha256": "833ca2dc…", "checked_by": "sha256" } ] }
//! ```

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::engine::SpeechEngine;
use crate::model_store::{
    FileState, ModelStore, Progress, StoreConfig, StoreError, StoreEvent, format_bytes, format_eta,
    ready_dir, status,
};

/// Arguments of `gpuscribe model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ModelAction,
}

/// Options every `model` subcommand takes.
#[derive(Debug, Args)]
pub struct ModelOptions {
    /// Print JSON (schema in `gpuscribe model --help`'s source, `src/cli_model.rs`).
    #[arg(long)]
    pub json: bool,
    /// The model's revision on the hub: a commit hash, a branch or a tag (default: for
    /// SenseVoice the commit the project checked, or `GPUSCRIBE_MODEL_REVISION`; for Whisper
    /// `main`, or `GPUSCRIBE_WHISPER_REVISION`).
    #[arg(long)]
    pub revision: Option<String>,
    /// The speech model whose files these are.
    #[arg(long, default_value = "sensevoice", value_parser = ["sensevoice", "whisper"])]
    pub engine: String,
    /// Whisper's size (tiny, base, small, medium, large-v3, large-v3-turbo, …).
    #[arg(long, default_value = "base")]
    pub whisper_model: String,
}

/// `gpuscribe model …`.
#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// Where the files are, their revision, verified or not (reads the cache only).
    Status(ModelOptions),
    /// Download what is missing (resuming partial files) and verify it.
    Download(ModelOptions),
    /// Hash every cached file again and compare it with the hub's hash.
    Verify(ModelOptions),
}

#[derive(Debug, Serialize)]
struct FileReport {
    name: String,
    path: PathBuf,
    state: &'static str,
    size_bytes: Option<u64>,
    sha256: Option<String>,
    checked_by: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusReport {
    schema_version: u32,
    repo: String,
    revision: String,
    commit: Option<String>,
    folder: PathBuf,
    hub_cache: PathBuf,
    endpoint: String,
    offline: bool,
    ready: bool,
    error: Option<String>,
    files: Vec<FileReport>,
}

fn report(config: &StoreConfig, error: Option<&StoreError>) -> StatusReport {
    let found = status(config);
    let files = found
        .files
        .iter()
        .map(|f| {
            let (state, sha256, checked_by) = match &f.state {
                FileState::Verified(r) => (
                    "verified",
                    Some(r.sha256.clone()),
                    Some(r.checked_by.clone()),
                ),
                FileState::Unverified => ("unverified", None, None),
                FileState::Missing => ("missing", None, None),
            };
            FileReport {
                name: f.name.clone(),
                size_bytes: std::fs::metadata(&f.path).ok().map(|m| m.len()),
                path: f.path.clone(),
                state,
                sha256,
                checked_by,
            }
        })
        .collect();
    StatusReport {
        schema_version: 1,
        ready: found.is_ready(),
        repo: found.repo,
        revision: found.revision,
        commit: found.commit,
        folder: found.dir,
        hub_cache: config.hub_dir.clone(),
        endpoint: config.endpoint.clone(),
        offline: config.offline,
        error: error.map(ToString::to_string),
        files,
    }
}

fn write_report(json: bool, report: &StatusReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    writeln!(out, "model:    {} at {}", report.repo, report.revision)?;
    if let Some(commit) = &report.commit {
        writeln!(out, "commit:   {commit}")?;
    }
    writeln!(out, "folder:   {}", report.folder.display())?;
    if report.offline {
        writeln!(out, "offline:  yes (HF_HUB_OFFLINE)")?;
    } else {
        writeln!(out, "endpoint: {}", report.endpoint)?;
    }
    for f in &report.files {
        let size = f.size_bytes.map(format_bytes).unwrap_or_default();
        let how = f
            .checked_by
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        writeln!(out, "  {:<11} {:>9}  {}{how}", f.state, size, f.name)?;
    }
    writeln!(
        out,
        "{}",
        if report.ready {
            "ready: every file is present and verified"
        } else if report.repo == crate::model::files::HF_REPO_ID {
            "not ready: run `gpuscribe model download`"
        } else {
            "not ready: run `gpuscribe model download --engine whisper --whisper-model …`"
        }
    )?;
    Ok(())
}

/// Runs `gpuscribe model …`; `Ok(false)` when the files are not ready (exit status 1).
pub fn run(args: &ModelArgs) -> anyhow::Result<bool> {
    let (options, action) = match &args.action {
        ModelAction::Status(o) => (o, "status"),
        ModelAction::Download(o) => (o, "download"),
        ModelAction::Verify(o) => (o, "verify"),
    };
    let engine = SpeechEngine::from_cli(&options.engine, &options.whisper_model)
        .map_err(anyhow::Error::msg)?;
    let mut config = StoreConfig::from_env().for_engine(&engine);
    if let Some(revision) = &options.revision {
        config.revision.clone_from(revision);
    }
    let error = match action {
        "status" => None,
        "download" => fetch(&config, !options.json).err(),
        _ => verify(&config).err(),
    };
    let report = report(&config, error.as_ref());
    write_report(options.json, &report)?;
    if let Some(err) = &error
        && !options.json
    {
        eprintln!("error: {err}");
    }
    Ok(error.is_none() && report.ready)
}

/// `engine`'s verified folder for `gpuscribe transcribe` (SenseVoice-Small or a Whisper size's
/// repository): at once when the cache has it, else after a download with progress on stderr.
pub fn ensure_model(engine: &SpeechEngine) -> anyhow::Result<PathBuf> {
    let config = StoreConfig::from_env().for_engine(engine);
    if let Ok(dir) = ready_dir(&config) {
        return Ok(dir);
    }
    Ok(fetch(&config, true)?)
}

fn verify(config: &StoreConfig) -> Result<PathBuf, StoreError> {
    let store = spawn(config)?;
    store.verify();
    wait(&store, &mut |_| ())
}

fn spawn(config: &StoreConfig) -> Result<ModelStore, StoreError> {
    ModelStore::spawn(config.clone(), Arc::new(|| ())).map_err(|e| StoreError::Io {
        path: config.hub_dir.clone(),
        message: format!("cannot start the model-store thread: {e}"),
    })
}

fn wait(store: &ModelStore, on_progress: &mut dyn FnMut(&Progress)) -> Result<PathBuf, StoreError> {
    loop {
        match store.recv_timeout(Duration::from_millis(200)) {
            Some(StoreEvent::Progress(p)) => on_progress(&p),
            Some(StoreEvent::Ready(model)) => return Ok(model.dir),
            Some(StoreEvent::Failed(err)) => return Err(err),
            Some(StoreEvent::Cancelled) => return Err(StoreError::Cancelled),
            Some(StoreEvent::Status(_)) | None => {}
        }
    }
}

/// Downloads on the store's thread, drawing progress on stderr (a bar on a terminal).
fn fetch(config: &StoreConfig, show: bool) -> Result<PathBuf, StoreError> {
    let store = spawn(config)?;
    store.download();
    let terminal = show && std::io::stderr().is_terminal();
    if terminal {
        let bar = indicatif::ProgressBar::new(config.known_total_bytes().unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:<40} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let result = wait(&store, &mut |p| {
            bar.set_length(p.bytes.total);
            bar.set_position(p.bytes.done);
            bar.set_message(p.bytes.file.clone());
        });
        bar.finish_and_clear();
        return result;
    }
    let mut last: Option<(Instant, String)> = None;
    wait(&store, &mut |p| {
        if !show {
            return;
        }
        let due = last.as_ref().is_none_or(|(t, f)| {
            *f != p.bytes.file
                || t.elapsed() >= Duration::from_secs(5)
                || p.bytes.done == p.bytes.total
        });
        if due {
            eprintln!("{}", progress_line(p));
            last = Some((Instant::now(), p.bytes.file.clone()));
        }
    })
}

/// "model.pt: 45% (421 MB of 937 MB, 12.0 MB/s, 43 s left)".
pub fn progress_line(p: &Progress) -> String {
    let percent = (p.bytes.done * 100).checked_div(p.bytes.total).unwrap_or(0);
    let mut line = format!(
        "downloading {}: {percent}% ({} of {}",
        p.bytes.file,
        format_bytes(p.bytes.done),
        format_bytes(p.bytes.total)
    );
    if let Some(rate) = p.bytes_per_s {
        line.push_str(&format!(", {}/s", format_bytes(rate as u64)));
    }
    if let Some(eta) = p.eta {
        line.push_str(&format!(", {} left", format_eta(eta)));
    }
    line.push(')');
    line
}
