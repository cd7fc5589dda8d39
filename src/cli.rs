//! Command-line interface: `gpuscribe` (window), `gpuscribe gpus`, `gpuscribe transcribe`.

use clap::{Parser, Subcommand};

/// Speech transcription on a shared GPU with SenseVoice-Small, and a live NVIDIA GPU monitor.
#[derive(Debug, Parser)]
#[command(name = "gpuscribe", version, about)]
pub struct Cli {
    /// Where transcription runs: auto, cpu, cuda:N, or a GPU UUID.
    #[arg(long, global = true, env = "SENSEVOICE_DEVICE")]
    pub device: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; none opens the window.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List NVIDIA GPUs with memory, utilisation and processes.
    Gpus {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}
