//! `gpuscribe transcribe FILE…`: the engine on the command line.
//!
//! Transcripts go to stdout (JSON: an array with one object per transcribed file) or, with
//! `--output-dir`, to `<stem>.<format>` files there. Progress, notices and errors go to stderr.
//! Bad files are reported by name; the others still run; the exit status is non-zero if any failed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::engine::batch::transcribe_files;
use crate::engine::protocol::Precision;
use crate::engine::subtitles::CueArgs;
use crate::engine::transcript::{ExportFormat, FileTranscript, render_with, write_atomic};
use crate::engine::{DecodeSettings, DeviceTarget, EngineConfig, Event, GpuFree, SpeechEngine};
use crate::gpu::{DeviceChoice, GpuStatus, cuda_ordinal};

/// Languages the model takes as a prompt.
pub const LANGUAGES: [&str; 7] = ["auto", "zh", "en", "yue", "ja", "ko", "nospeech"];

/// Arguments of `gpuscribe transcribe`.
#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// Audio files (WAV, MP3, FLAC, OGG Vorbis, M4A/AAC).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Spoken language, or auto-detect (SenseVoice: auto zh en yue ja ko nospeech; Whisper: any
    /// of its language codes, e.g. de, fr, es, ru).
    #[arg(long, default_value = "auto")]
    pub language: String,
    /// The speech model.
    #[arg(long, default_value = "sensevoice", value_parser = ["sensevoice", "whisper"])]
    pub engine: String,
    /// Whisper's size (tiny, base, small, medium, large-v3, large-v3-turbo, …); its folder is
    /// given with --model-dir.
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
    /// Write `<stem>.<format>` files into this folder instead of printing.
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
    choice.map_or(DeviceTarget::Auto, DeviceTarget::from_choice)
}

fn output_path(dir: &Path, input: &Path, format: ExportFormat) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or_else(|| "transcript".into(), |s| s.to_string_lossy().into_owned());
    dir.join(format!("{stem}.{}", format.extension()))
}

/// Runs the command; returns the number of files that failed.
pub fn run(
    args: &TranscribeArgs,
    target: DeviceTarget,
    gpus: Vec<GpuFree>,
) -> anyhow::Result<usize> {
    let engine = SpeechEngine::from_cli(&args.engine, &args.whisper_model)
        .map_err(|message| anyhow::anyhow!(message))?;
    if engine == SpeechEngine::SenseVoice && !LANGUAGES.contains(&args.language.as_str()) {
        anyhow::bail!(
            "SenseVoice does not know the language {:?}; choose one of {} (or --engine whisper)",
            args.language,
            LANGUAGES.join(", ")
        );
    }
    if engine == SpeechEngine::SenseVoice && args.translate {
        anyhow::bail!("--translate needs --engine whisper");
    }
    // The engine does not download: the model store fetches and verifies SenseVoice's release
    // first (a Whisper folder is named with --model-dir).
    let model_dir = match (&args.model_dir, &engine) {
        (Some(dir), _) => Some(dir.clone()),
        (None, SpeechEngine::SenseVoice) => Some(crate::cli_model::ensure_release_model()?),
        (None, SpeechEngine::Whisper { .. }) => None,
    };
    let config = EngineConfig {
        model_dir,
        engine,
        precision: args.precision,
        target,
        ..EngineConfig::default()
    };
    let settings = DecodeSettings {
        language: args.language.clone(),
        use_itn: args.itn,
        rich: args.rich,
        translate: args.translate,
    };
    let on_event = |event: &Event| match event {
        Event::Notice(message) => eprintln!("note: {message}"),
        Event::JobStarted { device, .. } => tracing::info!("running on {device}"),
        Event::JobDecoded {
            warning: Some(warning),
            ..
        } => eprintln!("warning: {warning}"),
        _ => {}
    };
    // Every job is in the library from the start; each event is written as it arrives.
    let mut history = crate::library::CliHistory::for_transcribe(args, &config, &settings);
    let mut on_event = |event: &Event| {
        if let Some(history) = &mut history {
            history.on_event(event);
        }
        on_event(event);
    };
    let results = transcribe_files(&args.files, config, gpus, &settings, &mut on_event)?;
    let mut failed = 0;
    let mut done: Vec<FileTranscript> = Vec::new();
    for (path, result) in args.files.iter().zip(results) {
        match result {
            Ok(transcript) => done.push(transcript),
            Err(message) => {
                failed += 1;
                let name = path.display().to_string();
                if message.contains(&name) {
                    eprintln!("error: {message}");
                } else {
                    eprintln!("error: {name}: {message}");
                }
            }
        }
    }
    let rules = args.cues.rules();
    let mut out = std::io::stdout().lock();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)?;
        for transcript in &done {
            let path = output_path(dir, &transcript.path, args.format);
            write_atomic(
                &path,
                render_with(transcript, args.format, &rules).as_bytes(),
            )
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    } else if args.format == ExportFormat::Json {
        serde_json::to_writer_pretty(&mut out, &done)?;
        out.write_all(b"\n")?;
    } else {
        let many = done.len() > 1;
        for transcript in &done {
            if many {
                writeln!(out, "==> {} <==", transcript.path.display())?;
            }
            out.write_all(render_with(transcript, args.format, &rules).as_bytes())?;
        }
    }
    Ok(failed)
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
