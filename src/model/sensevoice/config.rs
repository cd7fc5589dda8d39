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

/// Largest `config.yaml` accepted (the release's is 1.9 kB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Upper bounds of the dimensions, far above the release model's (in brackets) but low enough
/// that building tensor names and checking shapes stays instant and no size product overflows.
const MAX_WIDTH: usize = 8192; // output_size [512]
const MAX_HEADS: usize = 256; // attention_heads [4]
const MAX_LINEAR_UNITS: usize = 65_536; // [2048]
const MAX_BLOCKS: usize = 1024; // num_blocks [50], tp_blocks [20]
const MAX_KERNEL: usize = 255; // kernel_size [11]
const MAX_MELS: usize = 1024; // n_mels [80]
const MAX_LFR: usize = 64; // lfr_m [7], lfr_n [6]

/// The parts of the SenseVoice `config.yaml` that inference needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SenseVoiceConfig {
    /// Encoder dimensions.
    pub encoder_conf: EncoderConfig,
    /// Frontend parameters.
    pub frontend_conf: FrontendConfig,
}

impl SenseVoiceConfig {
    /// Reads and checks `config.yaml` (at most [`MAX_CONFIG_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = crate::model::bounded::read_bounded(path, MAX_CONFIG_BYTES).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8 text".to_owned(),
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
        for (name, value, max) in [
            ("encoder_conf.output_size", e.output_size, MAX_WIDTH),
            ("encoder_conf.attention_heads", e.attention_heads, MAX_HEADS),
            (
                "encoder_conf.linear_units",
                e.linear_units,
                MAX_LINEAR_UNITS,
            ),
            ("encoder_conf.num_blocks", e.num_blocks, MAX_BLOCKS),
            ("encoder_conf.tp_blocks", e.tp_blocks, MAX_BLOCKS),
            ("encoder_conf.kernel_size", e.kernel_size, MAX_KERNEL),
            ("encoder_conf.sanm_shfit", e.sanm_shfit, MAX_KERNEL),
            ("frontend_conf.n_mels", f.n_mels, MAX_MELS),
            ("frontend_conf.lfr_m", f.lfr_m, MAX_LFR),
            ("frontend_conf.lfr_n", f.lfr_n, MAX_LFR),
        ] {
            if value > max {
                return Err(invalid(format!(
                    "{name} is {value}; the largest supported is {max}"
                )));
            }
        }
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
    fn rejects_absurd_sizes_with_name_and_bound() {
        for (from, to, field) in [
            ("num_blocks: 50", "num_blocks: 1000000000000", "num_blocks"),
            ("tp_blocks: 20", "tp_blocks: 99999", "tp_blocks"),
            (
                "output_size: 512",
                "output_size: 18446744073709551615",
                "output_size",
            ),
            (
                "linear_units: 2048",
                "linear_units: 4294967296",
                "linear_units",
            ),
            ("kernel_size: 11", "kernel_size: 100001", "kernel_size"),
        ] {
            assert!(RELEASE.contains(from), "{from}");
            let bad = RELEASE.replace(from, to);
            let err = SenseVoiceConfig::from_yaml(&bad, Path::new("y/config.yaml")).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{msg}");
            assert!(
                msg.contains(field) && msg.contains("y/config.yaml"),
                "{msg}"
            );
        }
        // Too large for usize, or negative: a parse error naming the file, not a panic.
        for to in ["num_blocks: 99999999999999999999999", "num_blocks: -3"] {
            let bad = RELEASE.replace("num_blocks: 50", to);
            let err = SenseVoiceConfig::from_yaml(&bad, Path::new("z/config.yaml")).unwrap_err();
            assert!(err.to_string().contains("z/config.yaml"), "{err}");
        }
    }

    #[test]
    fn oversized_config_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yaml");
        let mut big = RELEASE.to_owned();
        big.push_str(&format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize)));
        std::fs::write(&p, big).unwrap();
        let err = SenseVoiceConfig::from_file(&p).unwrap_err();
        assert!(err.to_string().contains("config.yaml"), "{err}");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn rejects_non_yaml() {
        let err = SenseVoiceConfig::from_yaml("\u{0}\u{1}: [", Path::new("c.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
