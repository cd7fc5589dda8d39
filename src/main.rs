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
        gpuscribe::engine::sensevoice_worker::worker_main();
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
    let first = cli::first_status(&mut feed)?;
    let cuda_visible_devices = gpu::cuda_visible_devices_from_env();
    let device = cli::validate_device(
        cli.device.as_deref(),
        &first,
        cuda_visible_devices.as_deref(),
    )?;

    match cli.command {
        Some(Command::Gpus { json }) => {
            let report = cli::gpus_report(
                &first,
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
            let gpus =
                gpuscribe::cli_transcribe::gpus_for_engine(&first, cuda_visible_devices.as_deref());
            drop(feed);
            let target = gpuscribe::cli_transcribe::target(device.as_ref());
            let failed = gpuscribe::cli_transcribe::run(&args, target, gpus)?;
            if failed > 0 {
                eprintln!("{failed} of {} file(s) failed", args.files.len());
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(not(feature = "cuda"))]
        Some(Command::Worker) => Ok(ExitCode::SUCCESS),
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
    eframe::run_native(
        gpuscribe::APP_NAME,
        options,
        Box::new(move |cc| {
            // The first repaint after this picks up whatever the monitor queued meanwhile.
            let _ = repaint_target.set(cc.egui_ctx.clone());
            let ctx = cc.egui_ctx.clone();
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
            };
            Ok(Box::new(GpuScribeApp::new(cc, deps)))
        }),
    )
    .map_err(|err| anyhow::anyhow!("the window failed: {err}"))
}
