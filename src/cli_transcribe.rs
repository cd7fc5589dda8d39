//! `gpuscribe transcribe FILE… [--files-from LIST] [--shard K/N|auto]`: the engine on the
//! command line, and one shard of an array job on a cluster.
//!
//! Transcripts go to stdout (in input order; JSON: an array with one object per transcribed file)
//! or, with `--output-dir`, to `<stem>.<format>` files there, each written as its results come
//! ([`writer`]; the history stores them in pieces: nothing holds a whole transcript) and made
//! durable as soon as its file is done (see [`outputs`]). A file that fails part way keeps what it got in
//! `<stem>.partial.<format>` (on stdout: printed in its place). Two inputs with the same stem never share an output: the later
//! one in the list gets `<stem>.<8 hex digits>.<format>` (see [`inputs::output_names`]), said on
//! stderr. Progress, notices and errors go to stderr. Bad files are reported by name; the others
//! still run. The exit status tells a scheduler what to retry ([`EXIT_STATUS_HELP`]).

mod inputs;
pub mod outputs;
pub mod shard;
pub mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::engine::protocol::Precision;
use crate::engine::subtitles::CueArgs;
use crate::engine::transcript::ExportFormat;
use crate::engine::{
    DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, Event, GpuFree, JobId, Request,
    SpeechEngine,
};
use crate::gpu::{DeviceChoice, GpuStatus, cuda_ordinal};
use outputs::{Cause, DoneFile, FailedFile, JsonPath, SkippedFile, Summary};
use shard::Shard;

/// Languages the model takes as a prompt.
pub const LANGUAGES: [&str; 7] = ["auto", "zh", "en", "yue", "ja", "ko", "nospeech"];

/// Exit status: the command line itself is wrong (also clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: some files failed because of the files themselves; every other file is done.
pub const EXIT_SOME_FAILED: u8 = 3;
/// Exit status: this node could not work (no model, no usable device, outputs not writable).
pub const EXIT_NODE_FAILED: u8 = 4;

/// The exit statuses, for `--help` and the README.
pub const EXIT_STATUS_HELP: &str = "Exit status:
  0  every file of this shard is done (transcribed now, or skipped: its output exists)
  2  the command line is wrong (e.g. a bad --shard, or --shard auto outside an array job)
  3  some files failed because of the files themselves (unreadable, not audio; named in the
     summary's \"failed\" with cause \"input\"); every other file is done; a retry will not help
  4  this node could not work: no model, no usable device (--require-gpu), the output folder or
     the list not writable/readable, or the model failing on audio that decodes; files not done
     are in the summary; retry (elsewhere): with --skip-existing a re-run does only what is missing
A process killed by a signal (preemption, SIGKILL) leaves no partial output: re-run the shard.";

/// Arguments of `gpuscribe transcribe`.
#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// Audio files (WAV, MP3, FLAC, OGG Vorbis, M4A/AAC).
    #[arg(required_unless_present = "files_from")]
    pub files: Vec<PathBuf>,
    /// Also transcribe the files listed here, one path per line (`-`: stdin). Paths are taken
    /// byte for byte (names need not be UTF-8); empty lines are skipped; exact repeats run once.
    #[arg(long, value_name = "LIST")]
    pub files_from: Option<PathBuf>,
    /// In --files-from, paths end with a NUL byte (`find -print0`) instead of a newline.
    #[arg(long, requires = "files_from")]
    pub null: bool,
    /// Transcribe only shard K of N (0-based: 0/4 … 3/4) of the files, or `auto`: from
    /// SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT (Slurm arrays) or JOB_COMPLETION_INDEX (Kubernetes
    /// Indexed Jobs, with --shard-count). A file's shard is FNV-1a-64(path bytes as listed) mod N:
    /// the same list always gives the same split. Needs --output-dir.
    #[arg(long, value_name = "K/N|auto", env = "GPUSCRIBE_SHARD")]
    pub shard: Option<String>,
    /// How many shards `--shard auto` has under a Kubernetes Indexed Job (its `completions`);
    /// also overrides SLURM_ARRAY_TASK_COUNT.
    #[arg(long, value_name = "N", env = "GPUSCRIBE_SHARD_COUNT")]
    pub shard_count: Option<u64>,
    /// Skip files whose output already exists (outputs are written atomically, so one that exists
    /// is complete): a re-run finishes only what is missing.
    #[arg(long, requires = "output_dir")]
    pub skip_existing: bool,
    /// Write the run's summary JSON here (done, skipped, failed with reasons, audio seconds,
    /// wall time). Default with --output-dir: DIR/summary/shard-K-of-N.json.
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,
    /// Fail with exit status 4 when no GPU can be used, instead of running on the CPU (for GPU
    /// nodes of a cluster: a node without a working GPU hands the shard back).
    #[arg(long)]
    pub require_gpu: bool,
    /// Spoken language, or auto-detect (SenseVoice: auto zh en yue ja ko nospeech; Whisper: any
    /// of its language codes, e.g. de, fr, es, ru).
    #[arg(long, default_value = "auto")]
    pub language: String,
    /// The speech model.
    #[arg(long, default_value = "sensevoice", value_parser = ["sensevoice", "whisper"])]
    pub engine: String,
    /// Whisper's size (tiny, base, small, medium, large-v3, large-v3-turbo, …); downloaded
    /// through the model store unless --model-dir names a folder.
    #[arg(long, default_value = "base")]
    pub whisper_model: String,
    /// Whisper: translate to English.
    #[arg(long)]
    pub translate: bool,
    /// Inverse text normalisation: punctuation and digits.
    #[arg(long)]
    pub itn: bool,
    /// Emoji for emotions and audio events in `text` (FunASR's rich post-processing).
    #[arg(long)]
    pub rich: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "txt")]
    pub format: ExportFormat,
    /// A folder with model.pt (or model.safetensors), am.mvn, the .bpe.model and config.yaml;
    /// without it the release model is taken from the Hugging Face cache, downloading and
    /// verifying it once (see `gpuscribe model`).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Write `<stem>.<format>` files into this folder instead of printing, each as soon as it is
    /// done.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Weight precision (auto: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: Precision,
    /// How SRT and VTT cues are cut.
    #[command(flatten)]
    pub cues: CueArgs,
    /// Do not record these jobs in the transcript library (`gpuscribe history`).
    #[arg(long)]
    pub no_history: bool,
}

/// The GPUs as the engine needs them, from the monitor's first sample.
pub fn gpus_for_engine(status: &GpuStatus, cuda_visible_devices: Option<&str>) -> Vec<GpuFree> {
    let GpuStatus::Sample(sample) = status else {
        return Vec::new();
    };
    sample
        .gpus
        .iter()
        .filter_map(|gpu| {
            let memory = gpu.memory.as_ref()?;
            let ordinal = cuda_ordinal(&gpu.uuid, &sample.gpus, cuda_visible_devices)?;
            Some(GpuFree {
                uuid: gpu.uuid.clone(),
                index: gpu.nvml_index,
                cuda_ordinal: ordinal as usize,
                free_bytes: memory.free_bytes,
                total_bytes: memory.total_bytes,
            })
        })
        .collect()
}

/// Where jobs run: the `--device` choice validated at start-up (`all`: one worker per GPU), or
/// Auto without one.
pub fn target(choice: Option<&DeviceChoice>) -> DeviceTarget {
    choice.map_or(DeviceTarget::Auto, crate::app::target_for)
}

/// How long the engine may stay silent (no event at all) before the node counts as stuck.
const ENGINE_SILENCE: Duration = Duration::from_secs(3600);

/// The engine's worker protocol is JSON, which cannot carry a path that is not UTF-8: such
/// inputs go to the engine as a symbolic link with a plain name in a private folder.
#[derive(Default)]
struct Aliases {
    dir: Option<PathBuf>,
    links: HashMap<usize, PathBuf>,
}

impl Aliases {
    fn engine_path(&mut self, index: usize, input: &Path) -> PathBuf {
        if input.to_str().is_some() {
            return input.to_owned();
        }
        match self.link(index, input) {
            Ok(link) => link,
            Err(err) => {
                tracing::warn!("cannot alias {}: {err}", input.display());
                input.to_owned()
            }
        }
    }

    #[cfg(unix)]
    fn link(&mut self, index: usize, input: &Path) -> std::io::Result<PathBuf> {
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "gpuscribe-inputs-{}-{}",
                    std::process::id(),
                    outputs::unix_ms()
                ));
                std::fs::create_dir_all(&dir)?;
                self.dir = Some(dir.clone());
                dir
            }
        };
        let extension = input
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let link = dir.join(format!("input-{index}.{extension}"));
        std::os::unix::fs::symlink(std::path::absolute(input)?, &link)?;
        self.links.insert(index, link.clone());
        Ok(link)
    }

    #[cfg(not(unix))]
    fn link(&mut self, _index: usize, _input: &Path) -> std::io::Result<PathBuf> {
        Err(std::io::Error::other("paths that are not UTF-8 need Unix"))
    }

    fn is_aliased(&self, index: usize) -> bool {
        self.links.contains_key(&index)
    }

    /// `message` with the link's name replaced by the input's.
    fn unalias(&self, index: usize, message: &str, input: &Path) -> String {
        match self.links.get(&index) {
            Some(link) => {
                message.replace(&link.display().to_string(), &input.display().to_string())
            }
            None => message.to_owned(),
        }
    }
}

impl Drop for Aliases {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

/// Why this node cannot work.
struct NodeFailure(String);

/// One file of this shard.
struct Item {
    input: PathBuf,
    /// `None`: stdout.
    output: Option<PathBuf>,
}

/// Transcripts printed to stdout in input order, each as soon as the ones before it are out.
/// Each waits in its own temporary file ([`writer::Rendered`]), not in memory.
struct StdoutSink {
    format: ExportFormat,
    headers: bool,
    next: usize,
    ready: BTreeMap<usize, Option<(PathBuf, writer::Rendered)>>,
    printed: usize,
}

impl StdoutSink {
    fn new(format: ExportFormat, count: usize) -> Self {
        Self {
            format,
            headers: count > 1,
            next: 0,
            ready: BTreeMap::new(),
            printed: 0,
        }
    }

    /// Item `index` is finished (`None`: failed, nothing to print): `(its path, its output)`.
    fn offer(
        &mut self,
        index: usize,
        rendered: Option<(PathBuf, writer::Rendered)>,
    ) -> std::io::Result<()> {
        self.ready.insert(index, rendered);
        while let Some(rendered) = self.ready.remove(&self.next) {
            self.next += 1;
            if let Some((path, rendered)) = rendered {
                self.print(&path, rendered)?;
            }
        }
        Ok(())
    }

    fn print(&mut self, path: &Path, rendered: writer::Rendered) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if self.format == ExportFormat::Json {
            out.write_all(if self.printed == 0 { b"[\n" } else { b",\n" })?;
        } else if self.headers {
            writeln!(out, "==> {} <==", path.display())?;
        }
        rendered.copy_to(&mut out)?;
        self.printed += 1;
        out.flush()
    }

    /// Prints what is left, in order, and closes the JSON array.
    fn finish(&mut self) -> std::io::Result<()> {
        for (path, rendered) in std::mem::take(&mut self.ready).into_values().flatten() {
            self.print(&path, rendered)?;
        }
        if self.format == ExportFormat::Json {
            let mut out = std::io::stdout().lock();
            out.write_all(if self.printed == 0 { b"[]\n" } else { b"\n]\n" })?;
            out.flush()?;
        }
        Ok(())
    }
}

/// `talk.partial.txt` beside `talk.txt`: where what a failed file got is kept.
fn partial_path(output: &Path) -> PathBuf {
    let stem = output.file_stem().unwrap_or_default();
    let mut name = stem.to_owned();
    name.push(".partial");
    if let Some(extension) = output.extension() {
        name.push(".");
        name.push(extension);
    }
    output.with_file_name(name)
}

/// `H:MM:SS` of audio.
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn resolve_shard(args: &TranscribeArgs) -> Result<Shard, String> {
    match &args.shard {
        None => Ok(Shard::ALL),
        Some(value) => shard::parse(value, args.shard_count, &|key| std::env::var(key).ok()),
    }
}

fn error_line(path: &Path, message: &str) -> String {
    let name = path.display().to_string();
    if message.contains(&name) {
        message.to_owned()
    } else {
        format!("{name}: {message}")
    }
}

/// Whether a failed file is to blame: if it decodes here, the failure was not the file's.
fn cause_of_failure(path: &Path) -> Cause {
    match crate::audio::decode::decode_file(path, &mut |_| {}) {
        Ok(_) => Cause::Node,
        Err(_) => Cause::Input,
    }
}

/// Runs the command; prints the summary's path and returns the exit status
/// ([`EXIT_STATUS_HELP`]).
pub fn run(args: &TranscribeArgs, target: DeviceTarget, gpus: Vec<GpuFree>) -> ExitCode {
    let started = Instant::now();
    if let Err(message) = check_engine_options(args) {
        eprintln!("error: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let shard = match resolve_shard(args) {
        Ok(shard) => shard,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.shard.is_some() && args.output_dir.is_none() {
        eprintln!(
            "error: --shard needs --output-dir (the shards of a job write their outputs there)"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let mut summary = Summary::new(shard, outputs::unix_ms());
    let summary_path = args.summary.clone().or_else(|| {
        args.output_dir
            .as_deref()
            .map(|dir| Summary::default_path(dir, shard))
    });
    let mut run = Run {
        args,
        summary: &mut summary,
        node_error: None,
    };
    if let Err(NodeFailure(message)) = run.work(shard, target, gpus) {
        run.node_failed(message);
    }
    let node_error = run.node_error.take();
    finish(summary, node_error, summary_path.as_deref(), started)
}

/// The engine exists and knows the language; translation is Whisper's.
fn check_engine_options(args: &TranscribeArgs) -> Result<(), String> {
    let engine = SpeechEngine::from_cli(&args.engine, &args.whisper_model)?;
    if engine == SpeechEngine::SenseVoice && !LANGUAGES.contains(&args.language.as_str()) {
        return Err(format!(
            "SenseVoice does not know the language {:?}; choose one of {} (or --engine whisper)",
            args.language,
            LANGUAGES.join(", ")
        ));
    }
    if engine == SpeechEngine::SenseVoice && args.translate {
        return Err("--translate needs --engine whisper".to_owned());
    }
    Ok(())
}

/// Settles the exit status, writes the summary and says how it went.
fn finish(
    mut summary: Summary,
    node_error: Option<String>,
    summary_path: Option<&Path>,
    started: Instant,
) -> ExitCode {
    let node_failed = node_error.is_some() || summary.failed.iter().any(|f| f.cause == Cause::Node);
    (summary.status, summary.exit_code) = if node_failed {
        ("node_failed", EXIT_NODE_FAILED)
    } else if !summary.failed.is_empty() {
        ("some_failed", EXIT_SOME_FAILED)
    } else {
        ("ok", 0)
    };
    summary.node_error = node_error;
    summary.audio_s = summary.done.iter().map(|d| d.audio_s).sum();
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.finished_at_unix_ms = outputs::unix_ms();
    let mut code = summary.exit_code;
    eprintln!(
        "shard {}/{}: {} done, {} skipped, {} failed, {} not run; {:.1} s of audio in {:.1} s",
        summary.shard_index,
        summary.shard_count,
        summary.done.len(),
        summary.skipped.len(),
        summary.failed.len(),
        summary.not_run.len(),
        summary.audio_s,
        summary.wall_s
    );
    if let Some(path) = summary_path {
        let written = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let mut json = serde_json::to_vec_pretty(&summary)?;
                json.push(b'\n');
                outputs::write_durable(path, &json)
            });
        match written {
            Ok(()) => eprintln!("summary: {}", path.display()),
            Err(err) => {
                eprintln!("error: cannot write the summary {}: {err}", path.display());
                code = EXIT_NODE_FAILED;
            }
        }
    }
    ExitCode::from(code)
}

struct Run<'a> {
    args: &'a TranscribeArgs,
    summary: &'a mut Summary,
    node_error: Option<String>,
}

impl Run<'_> {
    fn node_failed(&mut self, message: String) {
        if self.node_error.is_none() {
            eprintln!("error: this node cannot work: {message}");
            self.node_error = Some(message);
        }
    }

    /// Keeps what a file that failed on the way got: in `<stem>.partial.<ext>` beside its
    /// output, or printed in its place. Returns what to say about it.
    fn keep_partial(
        &mut self,
        item: &Item,
        index: usize,
        writer: writer::TranscriptWriter,
        stdout: &mut StdoutSink,
    ) -> String {
        let before = format!(
            "what was transcribed before, up to {} of its audio,",
            clock(writer.covered_s())
        );
        let label = PathBuf::from(item.input.to_string_lossy().into_owned());
        let rendered = writer.finish_partial(&label);
        match &item.output {
            Some(output) => {
                let partial = partial_path(output);
                match rendered.and_then(|r| r.commit(&partial)) {
                    Ok(()) => format!("{before} is kept in {}", partial.display()),
                    Err(err) => {
                        format!("{before} could not be kept in {}: {err}", partial.display())
                    }
                }
            }
            None => match rendered.and_then(|r| stdout.offer(index, Some((label, r)))) {
                Ok(()) => format!("{before} is printed in its place"),
                Err(err) => format!("{before} could not be printed: {err}"),
            },
        }
    }

    /// The files of this shard, with their outputs.
    fn plan(&mut self, shard: Shard) -> Result<Vec<Item>, NodeFailure> {
        let mut all = self.args.files.clone();
        if let Some(list) = &self.args.files_from {
            all.extend(inputs::read_list(list, self.args.null).map_err(NodeFailure)?);
        }
        let (all, repeats) = inputs::dedupe(all);
        if repeats > 0 {
            eprintln!("note: {repeats} repeated path(s) in the input run once");
        }
        self.summary.listed = all.len();
        let names = self
            .args
            .output_dir
            .as_ref()
            .map(|_| inputs::output_names(&all, self.args.format.extension()));
        let mut items = Vec::new();
        for (i, input) in all.into_iter().enumerate() {
            if !shard.owns(input.as_os_str()) {
                continue;
            }
            let output = match (&self.args.output_dir, &names) {
                (Some(dir), Some(names)) => {
                    let name = &names[i];
                    let output = dir.join(&name.name);
                    if let Some(first) = &name.clashes_with {
                        eprintln!(
                            "note: {} has the same name as {}: its transcript goes to {}",
                            input.display(),
                            first.display(),
                            output.display()
                        );
                    }
                    Some(output)
                }
                _ => None,
            };
            items.push(Item { input, output });
        }
        self.summary.assigned = items.len();
        Ok(items)
    }

    /// What must hold before any file is tried: a writable output folder, the model's files,
    /// a GPU when one is required.
    fn preflight(&self, gpus: &[GpuFree]) -> Result<(), NodeFailure> {
        if let Some(dir) = &self.args.output_dir {
            std::fs::create_dir_all(dir)
                .map_err(|err| NodeFailure(format!("cannot create {}: {err}", dir.display())))?;
            let probe = dir.join(format!(".gpuscribe-probe-{}", std::process::id()));
            outputs::write_durable(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|err| {
                    NodeFailure(format!("cannot write into {}: {err}", dir.display()))
                })?;
        }
        if let Some(dir) = self
            .args
            .model_dir
            .as_ref()
            .filter(|_| self.args.engine == "sensevoice")
        {
            crate::model::files::ModelFiles::from_dir(dir).map_err(|err| {
                NodeFailure(format!(
                    "the model folder {} is unusable: {err}",
                    dir.display()
                ))
            })?;
        }
        if self.args.require_gpu {
            if !cfg!(feature = "cuda") {
                return Err(NodeFailure(
                    "--require-gpu: this build has no CUDA support (build with --features cuda)"
                        .to_owned(),
                ));
            }
            if gpus.is_empty() {
                return Err(NodeFailure(
                    "--require-gpu: no usable NVIDIA GPU".to_owned(),
                ));
            }
        }
        Ok(())
    }

    fn work(
        &mut self,
        shard: Shard,
        target: DeviceTarget,
        gpus: Vec<GpuFree>,
    ) -> Result<(), NodeFailure> {
        let items = self.plan(shard)?;
        if let Err(failure) = self.preflight(&gpus) {
            self.summary.not_run = items
                .iter()
                .map(|i| JsonPath::from(i.input.as_path()))
                .collect();
            return Err(failure);
        }
        let mut to_run = VecDeque::new();
        for (index, item) in items.iter().enumerate() {
            match &item.output {
                Some(output) if self.args.skip_existing && outputs::output_exists(output) => {
                    self.summary.skipped.push(SkippedFile {
                        input: JsonPath::from(item.input.as_path()),
                        output: JsonPath::from(output.as_path()),
                    });
                }
                _ => to_run.push_back(index),
            }
        }
        if !self.summary.skipped.is_empty() {
            eprintln!(
                "{} file(s) skipped: their outputs exist",
                self.summary.skipped.len()
            );
        }
        let mut stdout = StdoutSink::new(self.args.format, items.len());
        if !to_run.is_empty() {
            self.transcribe(&items, to_run, target, gpus, &mut stdout)?;
        }
        if self.args.output_dir.is_none()
            && let Err(err) = stdout.finish()
        {
            return Err(NodeFailure(format!("cannot write to stdout: {err}")));
        }
        Ok(())
    }

    /// Runs `to_run` through the engine, a window of jobs at a time, writing each output as its
    /// file finishes.
    fn transcribe(
        &mut self,
        items: &[Item],
        mut to_run: VecDeque<usize>,
        target: DeviceTarget,
        gpus: Vec<GpuFree>,
        stdout: &mut StdoutSink,
    ) -> Result<(), NodeFailure> {
        let args = self.args;
        let engine_choice =
            SpeechEngine::from_cli(&args.engine, &args.whisper_model).map_err(NodeFailure)?;
        // The engine does not download: the model store fetches and verifies the engine's
        // release files first (SenseVoice-Small, or the Whisper size's repository).
        let model_dir = match &args.model_dir {
            Some(dir) => Some(dir.clone()),
            None => Some(
                crate::cli_model::ensure_model(&engine_choice)
                    .map_err(|err| NodeFailure(format!("{err:#}")))?,
            ),
        };
        let config = EngineConfig {
            model_dir,
            engine: engine_choice,
            precision: args.precision,
            target,
            // Each output is written as its results come, and the history stores them in
            // pieces: nothing holds a whole transcript.
            stream_transcripts: true,
            ..EngineConfig::default()
        };
        let settings = DecodeSettings {
            language: args.language.clone(),
            use_itn: args.itn,
            rich: args.rich,
            translate: args.translate,
        };
        let rules = args.cues.rules();
        // Every job is in the library from the start, in the order the engine numbers them;
        // each event is written as it arrives.
        let submitted: Vec<PathBuf> = to_run.iter().map(|&i| items[i].input.clone()).collect();
        let mut history =
            crate::library::CliHistory::for_transcribe(args, &config, &settings, &submitted);
        // Enough queued per device to keep it busy, few enough that a big list never floods
        // the engine's bounded channels.
        let window = 8 + 4 * gpus.len();
        let engine = EngineHandle::spawn(config, Arc::new(|| {}))
            .map_err(|err| NodeFailure(format!("cannot start the engine thread: {err}")))?;
        engine.send(Request::Gpus(gpus));
        let mut flight: HashMap<JobId, (usize, String)> = HashMap::new();
        let mut writers: HashMap<JobId, writer::TranscriptWriter> = HashMap::new();
        let stdout_dir =
            std::env::temp_dir().join(format!("gpuscribe-stdout-{}", std::process::id()));
        let mut aliases = Aliases::default();
        let total = to_run.len();
        let mut finished = 0usize;
        // The engine says why a device failed in a notice; a node failure quotes the latest.
        let mut last_notice = String::new();
        let mut clock = EventClock::new();
        loop {
            while self.node_error.is_none() && flight.len() < window {
                let Some(index) = to_run.pop_front() else {
                    break;
                };
                let beside = match &items[index].output {
                    Some(output) => output.clone(),
                    None => stdout_dir.with_file_name(format!(
                        "gpuscribe-stdout-{}-{index}.{}",
                        std::process::id(),
                        args.format.extension()
                    )),
                };
                let writer = match writer::TranscriptWriter::create(args.format, &rules, &beside) {
                    Ok(writer) => writer,
                    Err(err) => {
                        let reason = format!("cannot write beside {}: {err}", beside.display());
                        self.node_failed(reason.clone());
                        self.summary.failed.push(FailedFile {
                            input: JsonPath::from(items[index].input.as_path()),
                            reason,
                            cause: Cause::Node,
                        });
                        break;
                    }
                };
                let path = aliases.engine_path(index, &items[index].input);
                let job = engine.transcribe(path, settings.clone());
                flight.insert(job, (index, String::new()));
                writers.insert(job, writer);
            }
            if flight.is_empty() {
                break;
            }
            let waited = Instant::now();
            let received = engine.recv_timeout(ENGINE_SILENCE);
            clock.waiting += waited.elapsed();
            let Some(event) = received else {
                self.node_failed(format!(
                    "the engine gave no sign of life for {} s",
                    ENGINE_SILENCE.as_secs()
                ));
                for &(index, _) in flight.values() {
                    self.summary.failed.push(FailedFile {
                        input: JsonPath::from(items[index].input.as_path()),
                        reason: "the engine stopped answering".to_owned(),
                        cause: Cause::Node,
                    });
                }
                break;
            };
            // Pieces are stored as they come; nothing holds a whole transcript for it.
            if let Some(history) = &mut history {
                let handled = Instant::now();
                history.on_event(&event);
                clock.history += handled.elapsed();
            }
            match event {
                Event::Notice(message) => {
                    eprintln!("note: {message}");
                    last_notice = message;
                }
                Event::JobStarted { job_id, device } => {
                    tracing::info!("running on {device}");
                    let Some((index, slot)) = flight.get_mut(&job_id) else {
                        continue;
                    };
                    let index = *index;
                    slot.clone_from(&device);
                    if args.require_gpu && device == "CPU" {
                        self.node_failed(format!(
                            "--require-gpu: {} would run on the CPU (no GPU could take it)",
                            items[index].input.display()
                        ));
                        flight
                            .keys()
                            .for_each(|&id| engine.send(Request::Cancel(id)));
                    }
                }
                Event::JobDecoded {
                    warning: Some(warning),
                    ..
                } => eprintln!("warning: {warning}"),
                Event::JobTranscribed { job_id, results } => {
                    let Some(writer) = writers.get_mut(&job_id) else {
                        continue;
                    };
                    if let Err(err) = writer.push(&results) {
                        let index = flight.get(&job_id).map_or(0, |f| f.0);
                        self.node_failed(format!(
                            "cannot write the transcript of {}: {err}",
                            items[index].input.display()
                        ));
                        flight
                            .keys()
                            .for_each(|&id| engine.send(Request::Cancel(id)));
                    }
                }
                Event::JobDone {
                    job_id,
                    mut transcript,
                    ms,
                } => {
                    let Some((index, device)) = flight.remove(&job_id) else {
                        continue;
                    };
                    let Some(writer) = writers.remove(&job_id) else {
                        continue;
                    };
                    if aliases.is_aliased(index) {
                        // JSON holds text: the name as close as UTF-8 gets.
                        transcript.path = items[index].input.to_string_lossy().into_owned().into();
                    }
                    finished += 1;
                    let item = &items[index];
                    let done = DoneFile {
                        input: JsonPath::from(item.input.as_path()),
                        output: item.output.as_deref().map(JsonPath::from),
                        audio_s: transcript.duration_s,
                        device,
                        engine_s: ms / 1000.0,
                    };
                    let rendered = writer.finish(&transcript);
                    let written = match (&item.output, rendered) {
                        (Some(path), Ok(rendered)) => rendered
                            .commit(path)
                            .map(|()| {
                                // A partial output of an earlier run is superseded.
                                std::fs::remove_file(partial_path(path)).ok();
                                eprintln!("[{finished}/{total}] wrote {}", path.display());
                            })
                            .map_err(|err| format!("cannot write {}: {err}", path.display())),
                        (Some(path), Err(err)) => {
                            Err(format!("cannot write {}: {err}", path.display()))
                        }
                        (None, Ok(rendered)) => stdout
                            .offer(index, Some((transcript.path.clone(), rendered)))
                            .map_err(|err| format!("cannot write to stdout: {err}")),
                        (None, Err(err)) => Err(format!("cannot write to stdout: {err}")),
                    };
                    match written {
                        Ok(()) => self.summary.done.push(done),
                        Err(reason) => {
                            self.node_failed(reason.clone());
                            flight
                                .keys()
                                .for_each(|&id| engine.send(Request::Cancel(id)));
                            self.summary.failed.push(FailedFile {
                                input: done.input,
                                reason,
                                cause: Cause::Node,
                            });
                        }
                    }
                }
                Event::JobFailed {
                    job_id,
                    message,
                    cancelled,
                } => {
                    let Some((index, _)) = flight.remove(&job_id) else {
                        continue;
                    };
                    finished += 1;
                    let input = &items[index].input;
                    // What was transcribed before the failure is the user's: kept, and said.
                    let kept = writers
                        .remove(&job_id)
                        .filter(|w| !w.is_empty())
                        .map(|w| self.keep_partial(&items[index], index, w, stdout));
                    let message = aliases.unalias(index, &message, input);
                    if cancelled && self.node_error.is_some() {
                        if let Some(kept) = &kept {
                            eprintln!("note: {}: {kept}", input.display());
                        }
                        self.summary.not_run.push(JsonPath::from(input.as_path()));
                        continue;
                    }
                    let mut reason = error_line(input, &message);
                    if let Some(kept) = &kept {
                        reason = format!("{reason} ({kept})");
                    }
                    eprintln!("error: {reason}");
                    let cause = if self.node_error.is_some() {
                        Cause::Node
                    } else {
                        cause_of_failure(input)
                    };
                    if cause == Cause::Node {
                        let context = if last_notice.is_empty() {
                            String::new()
                        } else {
                            format!(" (the engine said: {last_notice})")
                        };
                        self.node_failed(format!(
                            "{} decodes here, yet transcribing it failed: {message}{context}",
                            input.display()
                        ));
                        flight
                            .keys()
                            .for_each(|&id| engine.send(Request::Cancel(id)));
                    }
                    self.summary.failed.push(FailedFile {
                        input: JsonPath::from(input.as_path()),
                        reason,
                        cause,
                    });
                    if items[index].output.is_none() && kept.is_none() {
                        stdout.offer(index, None).ok();
                    }
                }
                _ => {}
            }
        }
        clock.report();
        // Jobs the engine never answered (it stopped): what they got is kept too.
        for (job_id, writer) in writers {
            if let Some(&(index, _)) = flight.get(&job_id).filter(|_| !writer.is_empty()) {
                let kept = self.keep_partial(&items[index], index, writer, stdout);
                eprintln!("note: {}: {kept}", items[index].input.display());
            }
        }
        self.summary.not_run.extend(
            to_run
                .into_iter()
                .map(|index| JsonPath::from(items[index].input.as_path())),
        );
        Ok(())
    }
}

/// Where the CLI's time went while the engine ran, said at debug level (`RUST_LOG=debug`).
struct EventClock {
    started: Instant,
    /// Waiting for the engine's next event.
    waiting: Duration,
    /// Recording the events in the history.
    history: Duration,
}

impl EventClock {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            waiting: Duration::ZERO,
            history: Duration::ZERO,
        }
    }

    fn report(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let total = self.started.elapsed();
        tracing::debug!(
            "transcribe: {:.1} ms with the engine: waiting for events {:.1} ms, the history \
             {:.1} ms, the outputs {:.1} ms",
            ms(total),
            ms(self.waiting),
            ms(self.history),
            ms(total.saturating_sub(self.waiting + self.history)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_all_runs_one_worker_per_gpu() {
        // `--device all` goes through the same choice as the window's "All GPUs" entry.
        let choice = DeviceChoice::parse("ALL", &[crate::gpu::fake_gpu(0)], None);
        assert_eq!(choice, Ok(DeviceChoice::All));
        assert_eq!(target(choice.as_ref().ok()), DeviceTarget::All);
        assert_eq!(target(None), DeviceTarget::Auto);
        assert_eq!(target(Some(&DeviceChoice::Cpu)), DeviceTarget::Cpu);
    }
}
