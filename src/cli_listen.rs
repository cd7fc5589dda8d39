//! `gpuscribe listen`: live captions in the terminal, from a microphone or a WAV file.
//!
//! One line per utterance on stdout. On a terminal the utterance still being spoken is shown
//! as a partial line, rewritten in place until its final text replaces it; elsewhere only final
//! lines are printed. `--json` prints every line, partial and final, as one JSON object:
//! `{"utterance":0,"start":0.42,"end":2.1,"text":"…","partial":false,"language":"en",
//! "emotion":"NEUTRAL","event":"Speech","raw_text":"<|en|>…"}` (tags as in `transcribe
//! --format json`). The microphone is recorded to the recordings folder as the window does;
//! Enter (or the end of stdin) stops it. A summary goes to stderr.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;

use crate::audio::{Recorder, SampleTap, TapPolicy, TapReceiver};
use crate::cli_transcribe::LANGUAGES;
use crate::engine::protocol::Precision;
use crate::engine::{
    DecodeSettings, DeviceTarget, EngineConfig, EngineHandle, Event, GpuFree, Request,
};
use crate::live::{
    JobKind, LiveConfig, LiveDriver, LiveLine, LiveUpdate, Pace, WavFeed, run_live, warm_up,
};

/// Arguments of `gpuscribe listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Spoken language, or auto-detect.
    #[arg(long, default_value = "auto", value_parser = LANGUAGES)]
    pub language: String,
    /// Inverse text normalisation: punctuation and digits.
    #[arg(long)]
    pub itn: bool,
    /// Emoji for emotions and audio events in `text`.
    #[arg(long)]
    pub rich: bool,
    /// A folder with the model's files (as for `transcribe`).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Weight precision (auto: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: Precision,
    /// The input device's id (as the window's microphone picker shows on hover); default input
    /// without it.
    #[arg(long, conflicts_with = "from_wav")]
    pub input: Option<String>,
    /// Print JSON lines, partials included.
    #[arg(long)]
    pub json: bool,
    /// Play this audio file through the capture path at real-time pace instead of a microphone.
    #[arg(long)]
    pub from_wav: Option<PathBuf>,
    /// With --from-wav: as fast as transcription keeps up, not at real-time pace (the file
    /// waits for every answer, so the lines are those of a model that keeps up).
    #[arg(long, requires = "from_wav")]
    pub fast: bool,
    /// Print every transcription job's timing to stderr at the end (kind, clip, wall time, the
    /// worker's own time) and the decode-time estimate.
    #[arg(long)]
    pub timings: bool,
}

/// What a listen run did, for the summary.
#[derive(Debug, Default)]
pub struct ListenSummary {
    /// Final lines printed.
    pub finals: usize,
    /// Partial lines shown.
    pub partials: usize,
    /// Utterances that failed or were dropped.
    pub lost: usize,
    /// Where the microphone recording was saved.
    pub recording: Option<PathBuf>,
}

/// Runs the command.
pub fn run(
    args: &ListenArgs,
    target: DeviceTarget,
    gpus: Vec<GpuFree>,
    recordings_dir: &std::path::Path,
) -> anyhow::Result<ListenSummary> {
    let config = EngineConfig {
        model_dir: args.model_dir.clone(),
        precision: args.precision,
        target,
        ..EngineConfig::default()
    };
    let settings = DecodeSettings {
        language: args.language.clone(),
        use_itn: args.itn,
        rich: args.rich,
        translate: false,
    };
    // Check the input before the model loads.
    if let Some(path) = &args.from_wav
        && !path.is_file()
    {
        anyhow::bail!(
            "the audio file does not exist or is not a file: {}",
            path.display()
        );
    }
    let engine = EngineHandle::spawn(config, std::sync::Arc::new(|| {}))?;
    engine.send(Request::Gpus(gpus));
    let mut on_event = |event: &Event| match event {
        Event::Notice(message) => eprintln!("note: {message}"),
        Event::JobStarted { device, .. } => tracing::info!("running on {device}"),
        _ => {}
    };
    let loaded = warm_up(&engine, &settings, &mut on_event).map_err(|m| anyhow::anyhow!(m))?;
    eprintln!("model ready in {:.1} s", loaded.as_secs_f64());

    let config = LiveConfig {
        lockstep: args.fast,
        ..LiveConfig::default()
    };
    let mut driver = LiveDriver::new(config, settings);
    let calibration = driver
        .calibrate(&engine, &mut on_event)
        .map_err(|m| anyhow::anyhow!(m))?;
    let (fixed, per_s) = driver.session().cost().line();
    eprintln!(
        "decode time: {:.0} ms + {:.0} ms per second of audio ({})",
        fixed * 1000.0,
        per_s * 1000.0,
        calibration
            .iter()
            .map(|(clip, took)| format!("{clip:.0} s in {:.0} ms", took * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (tap, source) = start_source(args, recordings_dir)?;
    let mut printer = Printer::new(args.json);
    let mut summary = ListenSummary::default();
    run_live(
        &tap,
        &engine,
        &mut driver,
        &mut |update| printer.print(update, &mut summary),
        &mut on_event,
    );
    engine.send(Request::Recording(false));
    printer.end();
    match source {
        Source::Wav { feed, copy } => {
            let ended = feed.join();
            let _ = std::fs::remove_file(&copy);
            ended.map_err(|m| anyhow::anyhow!(m))?;
        }
        Source::Microphone { stopper } => {
            let path = stopper
                .join()
                .map_err(|_| anyhow::anyhow!("the stdin thread panicked"))??;
            summary.recording = Some(path);
        }
    }
    if args.timings {
        print_timings(&driver);
    }
    let stats = driver.stats();
    let finals: Vec<f64> = driver
        .timings()
        .iter()
        .filter(|t| t.kind == JobKind::Final)
        .map(|t| t.took.as_secs_f64())
        .collect();
    let worst = finals.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{} utterance(s), {} partial(s) ({} skipped while the model was busy, {} held back for a \
         final, {} of the newest audio only), {} dropped; transcription of a finished utterance \
         took at most {:.0} ms; {} live sample(s) dropped",
        stats.utterances,
        stats.partials_sent,
        stats.partials_skipped,
        stats.partials_held,
        stats.partials_windowed,
        stats.finals_skipped,
        worst * 1000.0,
        tap.dropped()
    );
    if let Some(path) = &summary.recording {
        eprintln!("recording saved: {}", path.display());
    }
    Ok(summary)
}

/// `--timings`: one line per job, in the order answered.
fn print_timings(driver: &LiveDriver) {
    let Some(first) = driver.timings().first().map(|t| t.sent) else {
        return;
    };
    eprintln!("job     clip_s  audio_end_s  sent_s  took_ms  worker_ms");
    for t in driver.timings() {
        let kind = match t.kind {
            JobKind::Partial => "partial",
            JobKind::Final => "final",
        };
        let worker = t
            .worker_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}"));
        eprintln!(
            "{kind:<7} {:>6.2}  {:>11.2}  {:>6.2}  {:>7.0}  {worker:>9}",
            t.clip_s,
            t.audio_end_s,
            t.sent.duration_since(first).as_secs_f64(),
            t.took.as_secs_f64() * 1000.0,
        );
    }
    let (fixed, per_s) = driver.session().cost().line();
    eprintln!(
        "decode time at the end: {:.0} ms + {:.0} ms per second of audio",
        fixed * 1000.0,
        per_s * 1000.0
    );
}

enum Source {
    Wav {
        feed: WavFeed,
        copy: PathBuf,
    },
    Microphone {
        stopper: std::thread::JoinHandle<anyhow::Result<PathBuf>>,
    },
}

fn start_source(
    args: &ListenArgs,
    recordings_dir: &std::path::Path,
) -> anyhow::Result<(TapReceiver, Source)> {
    if let Some(path) = &args.from_wav {
        let pace = if args.fast {
            Pace::Fast
        } else {
            Pace::RealTime
        };
        let copy =
            std::env::temp_dir().join(format!("gpuscribe-listen-{}.wav", std::process::id()));
        let mut feed = WavFeed::start(path, pace, &copy).map_err(|m| anyhow::anyhow!(m))?;
        let tap = std::mem::replace(&mut feed.tap, SampleTap::new(TapPolicy::Drop).1);
        eprintln!("playing {} ({:.1} s)", path.display(), feed.duration_s);
        return Ok((tap, Source::Wav { feed, copy }));
    }
    std::fs::create_dir_all(recordings_dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot create the recordings folder ({err}): {}",
            recordings_dir.display()
        )
    })?;
    let wav = recordings_dir.join(crate::app::recording_file_name(SystemTime::now()));
    let (tap, receiver) = SampleTap::new(TapPolicy::Drop);
    let handle = Recorder::start_with_tap(args.input.as_deref(), &wav, Some(tap))?;
    eprintln!(
        "listening to {} (press Enter to stop); recording to {}",
        handle.device_name(),
        wav.display()
    );
    let stopper = std::thread::Builder::new()
        .name("listen-stdin".into())
        .spawn(move || -> anyhow::Result<PathBuf> {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let recorded = handle.stop()?;
            recorded
                .parts
                .first()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("the recording wrote no file"))
        })?;
    Ok((receiver, Source::Microphone { stopper }))
}

struct Printer {
    json: bool,
    tty: bool,
    partial_shown: bool,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self {
            json,
            tty: std::io::stdout().is_terminal(),
            partial_shown: false,
        }
    }

    fn print(&mut self, update: &LiveUpdate, summary: &mut ListenSummary) {
        let mut out = std::io::stdout().lock();
        let written = match update {
            LiveUpdate::Line(line) => {
                if line.partial {
                    summary.partials += 1;
                } else {
                    summary.finals += 1;
                }
                self.line(&mut out, line)
            }
            LiveUpdate::Failed {
                start,
                end,
                message,
                ..
            } => {
                summary.lost += 1;
                eprintln!("error: transcribing the utterance {start:.2}–{end:.2} s: {message}");
                Ok(())
            }
            LiveUpdate::Skipped { start, end, .. } => {
                summary.lost += 1;
                eprintln!(
                    "warning: transcription fell behind; the utterance {start:.2}–{end:.2} s was \
                     skipped (it is in the recording)"
                );
                Ok(())
            }
        };
        if let Err(err) = written.and_then(|()| out.flush()) {
            tracing::warn!("cannot write to stdout: {err}");
        }
    }

    fn line(&mut self, out: &mut dyn std::io::Write, line: &LiveLine) -> std::io::Result<()> {
        if self.json {
            let text = serde_json::to_string(line).map_err(std::io::Error::other)?;
            return writeln!(out, "{text}");
        }
        let stamp = format!("[{} → {}]", clock(line.start), clock(line.end));
        if line.partial {
            if !self.tty {
                return Ok(());
            }
            self.partial_shown = true;
            // Rewrite the same terminal line: carriage return, clear to the end.
            return write!(out, "\r\x1b[2K{stamp} … {}", line.text);
        }
        if self.partial_shown {
            write!(out, "\r\x1b[2K")?;
            self.partial_shown = false;
        }
        let tags: Vec<&str> = [&line.language, &line.emotion, &line.event]
            .into_iter()
            .map(String::as_str)
            .filter(|t| !t.is_empty())
            .collect();
        writeln!(out, "{stamp} {}  ({})", line.text, tags.join(", "))
    }

    fn end(&mut self) {
        if self.partial_shown {
            println!();
        }
    }
}

/// `mm:ss.s`.
fn clock(secs: f64) -> String {
    let tenths = (secs * 10.0).round() as u64;
    format!(
        "{:02}:{:02}.{}",
        tenths / 600,
        (tenths / 10) % 60,
        tenths % 10
    )
}
