//! Whisper (tiny … large-v3, distil and turbo checkpoints in the Hugging Face layout) in candle:
//! candle-transformers' config and model layout (`network.rs` follows its `whisper::model`, with
//! exact GELU, half-precision support and a decoder cache), the log-mel frontend, greedy decoding with timestamp tokens over
//! one 30 s window, language detection or a chosen language, transcription or translation to
//! English.
//!
//! Proven against transformers' `WhisperForConditionalGeneration` on random weights
//! (`tools/reference/whisper_generate.py`, `tests/whisper_parity.rs`).

pub mod config;
mod cpu_step;
pub mod decode;
pub mod frontend;
pub mod model;
pub mod network;
pub mod sizes;
pub mod tokenizer;

use std::path::PathBuf;

pub use config::{Vocabulary, WhisperFiles, is_whisper_dir};
pub use decode::TimedText;
pub use model::{Whisper, WhisperOptions, WindowResult};

/// What went wrong loading or running Whisper.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    /// The model folder lacks files.
    #[error("{dir} is not a Whisper model folder: {message}")]
    Files {
        /// The folder.
        dir: PathBuf,
        /// What is missing.
        message: String,
    },
    /// `config.json` or `generation_config.json` is unreadable or unsupported.
    #[error("cannot use the Whisper config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.json` is unreadable or lacks a special token.
    #[error("cannot use the Whisper tokenizer {path}: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights do not fit the config.
    #[error("cannot load the Whisper weights {path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The chosen language is not one the model knows.
    #[error("this Whisper model does not know the language {code:?}; it knows: {known}")]
    Language {
        /// The code asked for.
        code: String,
        /// The codes it knows.
        known: String,
    },
    /// Something the model cannot do (translating with an English-only model, a precision).
    #[error("{0}")]
    Unsupported(String),
    /// A tensor operation failed (out of memory shows here).
    #[error("Whisper forward pass failed: {0}")]
    Candle(#[from] candle_core::Error),
}
