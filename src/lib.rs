//! GPU Scribe: speech transcription with SenseVoice-Small on a shared GPU, and a live NVIDIA GPU
//! monitor.
//!
//! # Architecture
//!
//! ```text
//!   ┌──────────── UI thread (eframe) ────────────┐
//!   │ app::GpuScribeApp: logic() drains channels, │
//!   │ ui() only draws                             │
//!   └──▲──────────────▲───────────────▲──────┬────┘
//!      │ GpuSnapshot  │ engine::Event │ level │ engine::Request
//!  ┌───┴────────┐ ┌───┴──────────┐ ┌──┴──────┴─────┐
//!  │ gpu-monitor│ │ engine       │ │ audio-capture │
//!  │ owns NVML  │ │ owns model + │ │ owns the cpal │
//!  │            │ │ candle Device│ │ stream        │
//!  └────────────┘ └──────────────┘ └───────────────┘
//! ```
//!
//! Modules name roles, and dependencies point one way: `app` → (`engine`, `gpu`, `audio`) through
//! channels and handles only; `engine` → `audio`; `worker` (the model process) → (`engine`'s
//! protocol, `model`, `audio`); `model` depends on candle alone.

pub mod app;
pub mod audio;
pub mod cli;
pub mod cli_history;
pub mod cli_listen;
pub mod cli_model;
pub mod cli_transcribe;
pub mod engine;
pub mod faults;
pub mod gpu;
pub mod library;
pub mod live;
pub mod model;
pub mod model_store;
pub mod worker;

/// The application id shared by the window (`with_app_id`), the `.desktop` file and AppStream.
pub const APP_ID: &str = "io.github.gpuscribe.GpuScribe";

/// The human-readable application name.
pub const APP_NAME: &str = "GPU Scribe";
