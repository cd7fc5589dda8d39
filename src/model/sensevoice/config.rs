//! The model's `config.yaml`: encoder and frontend dimensions.
//!
//! Every size used to build the network comes from this file (plus the tensor shapes and the
//! tokenizer's vocabulary size), so the same code runs the 234 M-parameter release model and the
//! small test model. Fields that only matter for training are ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading `config.yaml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the model config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML did not parse or lacks a required field.
    #[error("the model config {path} is not a valid SenseVoice config.yaml: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of the range the model supports.
    #[error("the model config {path} has an unsupported value: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `encoder_conf` of `SenseVoiceEncoderSmall`.
///
/// Reference: FunASR `funasr/models/sense_voice/model.py` (`SenseVoiceEncoderSmall.__init__`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EncoderConfig {
    /// Model width d (512 in the release).
    pub output_size: usize,
    /// Attention heads (4).
    pub attention_heads: usize,
    /// Feed-forward hidden width (2048).
    pub linear_units: usize,
    /// Blocks in the main stack: `encoders0` (1) + `encoders` (num_blocks - 1).
    pub num_blocks: usize,
    /// Blocks in the `tp_encoders` stack (20).
    pub tp_blocks: usize,
    /// FSMN kernel size (11).
    #[serde(default = "default_kernel_size")]
    pub kernel_size: usize,
    /// FSMN left-shift (0); the upstream spelling is kept.
    #[serde(default)]
    pub sanm_shfit: usize,
    /// Must be true: the port only implements pre-norm layers, as released.
    #[serde(default = "default_true")]
    pub normalize_before: bool,
}

fn default_kernel_size() -> usize {
    11
}

fn default_true() -> bool {
    true
}

/// `frontend_conf` of `WavFrontend`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FrontendConfig {
    /// Sample rate in Hz (16000).
    #[serde(default = "default_fs")]
    pub fs: u32,
    /// Window type; only "hamming" is supported.
    #[serde(default = "default_window")]
    pub window: String,
    /// Mel bins (80).
    #[serde(default = "default_n_mels")]
    pub n_mels: usize,
    /// Frame length in ms (25).
    #[serde(default = "default_frame_length")]
    pub frame_length: u32,
    /// Frame shift in ms (10).
    #[serde(default = "default_frame_shift")]
    pub frame_shift: u32,
    /// LFR stacking width (7).
    #[serde(default = "default_lfr_m")]
    pub lfr_m: usize,
    /// LFR hop (6).
    #[serde(default = "default_lfr_n")]
    pub lfr_n: usize,
}

fn default_fs() -> u32 {
    16000
}
fn default_window() -> String {
    "hamming".to_owned()
}
fn default_n_mels() -> usize {
    80
}
fn default_frame_length() -> u32 {
    25
}
fn default_frame_shift() -> u32 {
    10
}
fn default_lfr_m() -> usize {
    7
}
fn default_lfr_n() -> usize {
    6
}

/// The parts of the SenseVoice `config.yaml` that inference needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SenseVoiceConfig {
    /// Encoder dimensions.
    pub encoder_conf: EncoderConfig,
    /// Frontend parameters.
    pub frontend_conf: FrontendConfig,
}

impl SenseVoiceConfig {
    /// Reads and checks `config.yaml`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and checks YAML text; `path` is only used in error messages.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let e = &self.encoder_conf;
        let f = &self.frontend_conf;
        if e.output_size == 0
            || e.attention_heads == 0
            || !e.output_size.is_multiple_of(e.attention_heads)
        {
            return Err(invalid(format!(
                "encoder_conf.output_size {} must be a positive multiple of attention_heads {}",
                e.output_size, e.attention_heads
            )));
        }
        if e.num_blocks == 0 || e.linear_units == 0 || e.kernel_size == 0 {
            return Err(invalid(
                "encoder_conf.num_blocks, linear_units and kernel_size must be positive".to_owned(),
            ));
        }
        if (e.kernel_size - 1) / 2 + e.sanm_shfit > e.kernel_size - 1 {
            return Err(invalid(format!(
                "encoder_conf.sanm_shfit {} is too large for kernel_size {}",
                e.sanm_shfit, e.kernel_size
            )));
        }
        if !e.normalize_before {
            return Err(invalid(
                "encoder_conf.normalize_before must be true".to_owned(),
            ));
        }
        if f.window != "hamming" {
            return Err(invalid(format!(
                "frontend_conf.window {:?} is not supported (only hamming)",
                f.window
            )));
        }
        if f.fs != 16000 || f.frame_length != 25 || f.frame_shift != 10 {
            return Err(invalid(format!(
                "frontend_conf must be fs 16000, frame_length 25, frame_shift 10 (got {}, {}, {})",
                f.fs, f.frame_length, f.frame_shift
            )));
        }
        if f.n_mels == 0 || f.lfr_m == 0 || f.lfr_n == 0 {
            return Err(invalid(
                "frontend_conf.n_mels, lfr_m and lfr_n must be positive".to_owned(),
            ));
        }
        Ok(())
    }

    /// Encoder input width: n_mels × lfr_m (560).
    pub fn input_size(&self) -> usize {
        self.frontend_conf.n_mels * self.frontend_conf.lfr_m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = include_str!("testdata/release_config.yaml");

    #[test]
    fn parses_release_config() {
        let c = SenseVoiceConfig::from_yaml(RELEASE, Path::new("config.yaml")).unwrap();
        assert_eq!(c.encoder_conf.output_size, 512);
        assert_eq!(c.encoder_conf.attention_heads, 4);
        assert_eq!(c.encoder_conf.linear_units, 2048);
        assert_eq!(c.encoder_conf.num_blocks, 50);
        assert_eq!(c.encoder_conf.tp_blocks, 20);
        assert_eq!(c.encoder_conf.kernel_size, 11);
        assert_eq!(c.input_size(), 560);
        assert_eq!(c.frontend_conf.lfr_n, 6);
    }

    #[test]
    fn rejects_bad_heads_with_file_name() {
        let bad = RELEASE.replace("attention_heads: 4", "attention_heads: 3");
        let err = SenseVoiceConfig::from_yaml(&bad, Path::new("x/config.yaml")).unwrap_err();
        assert!(err.to_string().contains("x/config.yaml"), "{err}");
        assert!(err.to_string().contains("attention_heads"), "{err}");
    }

    #[test]
    fn rejects_non_yaml() {
        let err = SenseVoiceConfig::from_yaml("\u{0}\u{1}: [", Path::new("c.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
