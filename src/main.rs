//! `gpuscribe`: parses the command line, starts the GPU monitor, validates `--device`, then
//! either prints the GPU list or opens the window. Everything else lives in the library.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use eframe::egui;

use anyhow::Context as _;
use clap::Parser as _;
use gpuscribe::app::{AppDeps, EngineFactory, GpuScribeApp, default_recordings_dir};
use gpuscribe::cli::{self, Cli, Command};
use gpuscribe::engine::{EngineHandle, Waker};
use gpuscribe::gpu::{self, DeviceChoice};

/// The window icon, shared with packaging.
const ICON_PNG: &[u8] = include_bytes!("../icons/256x256.png");

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The model worker (CPU builds carry it in this binary; see engine::process::worker_command).
    #[cfg(not(feature = "cuda"))]
    if matches!(cli.command, Some(Command::Worker)) {
        return Ok(gpuscribe::worker::sensevoice::worker_main());
    }

    gpuscribe::faults::install_panic_hook();
    let cuda_visible_devices = gpu::cuda_visible_devices_from_env();
    // `transcribe --device cpu` needs no GPU monitor at all: it starts at once.
    if let Some(Command::Transcribe(args)) = &cli.command
        && cli::is_cpu_device(cli.device.as_deref())
    {
        return Ok(gpuscribe::cli_transcribe::run(
            args,
            gpuscribe::engine::DeviceTarget::Cpu,
            Vec::new(),
        ));
    }

    // The model store needs no GPU monitor.
    if let Some(Command::Model(args)) = &cli.command {
        let ready = gpuscribe::cli_model::run(args)?;
        return Ok(if ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    // The library needs no GPU monitor.
    if let Some(Command::History(args)) = &cli.command {
        gpuscribe::cli_history::run(args)?;
        return Ok(ExitCode::SUCCESS);
    }

    // The egui context exists only once the window does; until then repaints are no-ops and
    // samples wait in the channel.
    let repaint_target: Arc<OnceLock<egui::Context>> = Arc::new(OnceLock::new());
    let repaint = {
        let target = Arc::clone(&repaint_target);
        Box::new(move || {
            if let Some(ctx) = target.get() {
                ctx.request_repaint();
            }
        })
    };
    let mut feed = gpu::spawn_default_monitor(gpu::DEFAULT_SAMPLE_INTERVAL, repaint)
        .context("starting the gpu-monitor thread")?;
    // For `transcribe`, a node that cannot tell its devices cannot work: say so in its exit status.
    let transcribing = matches!(cli.command, Some(Command::Transcribe(_)));
    let node_failed = |err: &dyn std::fmt::Display| {
        eprintln!("error: this node cannot work: {err}");
        ExitCode::from(gpuscribe::cli_transcribe::EXIT_NODE_FAILED)
    };
    // Only what needs the GPU list waits for the monitor: `gpus`, and a `--device` naming GPUs.
    // The window and Auto start without it (NVML may take long, or never answer).
    let needs_gpus = matches!(cli.command, Some(Command::Gpus { .. }))
        || cli::device_names_gpus(cli.device.as_deref());
    let first = if needs_gpus {
        match cli::first_status(&mut feed) {
            Err(err) if transcribing => return Ok(node_failed(&err)),
            first => Some(first?),
        }
    } else {
        None
    };
    let no_gpus = gpu::GpuStatus::Sample(gpu::GpuSample::now(
        Vec::new(),
        0,
        gpu::DriverInfo::default(),
    ));
    let device = match cli::validate_device(
        cli.device.as_deref(),
        first.as_ref().unwrap_or(&no_gpus),
        cuda_visible_devices.as_deref(),
    ) {
        Err(err) if transcribing => return Ok(node_failed(&err)),
        device => device?,
    };

    match cli.command {
        Some(Command::Gpus { json }) => {
            let first = first.as_ref().unwrap_or(&no_gpus);
            let report = cli::gpus_report(
                first,
                device.as_ref().unwrap_or(&DeviceChoice::Auto),
                cuda_visible_devices.as_deref(),
            );
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                std::io::Write::write_all(&mut out, b"\n")?;
            } else {
                cli::write_gpus_table(&mut out, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Transcribe(args)) => {
            let gpus = gpus_for_engine(first, &mut feed, cuda_visible_devices.as_deref());
            drop(feed);
            let target = gpuscribe::cli_transcribe::target(device.as_ref());
            Ok(gpuscribe::cli_transcribe::run(&args, target, gpus))
        }
        Some(Command::Listen(args)) => {
            let gpus = gpus_for_engine(first, &mut feed, cuda_visible_devices.as_deref());
            drop(feed);
            let target = gpuscribe::cli_transcribe::target(device.as_ref());
            let summary =
                gpuscribe::cli_listen::run(&args, target, gpus, &default_recordings_dir())?;
            if summary.lost > 0 {
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(not(feature = "cuda"))]
        Some(Command::Worker) => Ok(ExitCode::SUCCESS),
        Some(Command::Model(_) | Command::History(_)) => Ok(ExitCode::SUCCESS),
        None => run_window(
            feed,
            device,
            cuda_visible_devices,
            cli.open,
            &repaint_target,
        )
        .map(|()| ExitCode::SUCCESS),
    }
}

/// The GPUs for the engine: Auto waits a little for the monitor's list, then runs on what it has.
fn gpus_for_engine(
    first: Option<gpu::GpuStatus>,
    feed: &mut gpu::GpuFeed,
    cuda_visible_devices: Option<&str>,
) -> Vec<gpuscribe::engine::GpuFree> {
    let status = match first {
        Some(status) => Some(status),
        None => feed.wait_first(cli::AUTO_GPU_WAIT).cloned(),
    };
    match &status {
        Some(status) => gpuscribe::cli_transcribe::gpus_for_engine(status, cuda_visible_devices),
        None => {
            eprintln!(
                "note: GPU monitor not answering after {} s; running without GPUs",
                cli::AUTO_GPU_WAIT.as_secs()
            );
            Vec::new()
        }
    }
}

fn run_window(
    gpu_feed: gpu::GpuFeed,
    device_from_cli: Option<DeviceChoice>,
    cuda_visible_devices: Option<String>,
    open_paths: Vec<std::path::PathBuf>,
    repaint_target: &Arc<OnceLock<egui::Context>>,
) -> anyhow::Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_app_id(gpuscribe::APP_ID)
        .with_title(gpuscribe::APP_NAME)
        .with_inner_size([1280.0, 820.0])
        .with_min_inner_size([640.0, 400.0]);
    match eframe::icon_data::from_png_bytes(ICON_PNG) {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(err) => tracing::warn!("window icon icons/256x256.png is unreadable: {err}"),
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    let repaint_target = Arc::clone(repaint_target);
    // Before eframe reads (and later overwrites) it.
    let notices: Vec<String> = gpuscribe::app::settings_file_path()
        .and_then(|path| gpuscribe::app::check_settings_file(&path))
        .into_iter()
        .collect();
    eframe::run_native(
        gpuscribe::APP_NAME,
        options,
        Box::new(move |cc| {
            // The first repaint after this picks up whatever the monitor queued meanwhile.
            let _ = repaint_target.set(cc.egui_ctx.clone());
            let ctx = cc.egui_ctx.clone();
            let faults_ctx = cc.egui_ctx.clone();
            gpuscribe::faults::set_waker(Box::new(move || faults_ctx.request_repaint()));
            let waker: Waker = Arc::new(move || ctx.request_repaint());
            let engine: EngineFactory =
                Box::new(move |config| EngineHandle::spawn(config, Arc::clone(&waker)));
            let deps = AppDeps {
                gpu_feed,
                engine,
                device_from_cli,
                cuda_visible_devices,
                recordings_dir: default_recordings_dir(),
                open_paths,
                model_store: Some(gpuscribe::model_store::StoreConfig::from_env()),
                library_path: Some(gpuscribe::library::default_library_path()),
                notices,
                capture_file: std::env::var_os(gpuscribe::app::CAPTURE_FILE_ENV)
                    .map(std::path::PathBuf::from),
            };
            Ok(Box::new(GpuScribeApp::new(cc, deps)))
        }),
    )
    .map_err(|err| anyhow::anyhow!("the window failed: {err}"))
}
