//! Checkpoint loading and validation: release `model.pt` (zip pickle) or `.safetensors`.
//!
//! Weights are first read into [`HostWeights`] (CPU tensors), checked against the tensor list the
//! config implies, and only then materialised on a device. The engine keeps the host copy to
//! restore weights on a GPU quickly after offloading them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::checkpoint;
use super::config::SenseVoiceConfig;
use super::model::EMBED_ROWS;

use crate::model::pth::{MODULE_PREFIX, NESTED_KEYS};

/// Errors loading or checking a checkpoint. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be opened or read.
    #[error("cannot read the weights file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a readable checkpoint (truncated, corrupt, or another kind of file).
    #[error(
        "{path} is not a readable model checkpoint (expected a PyTorch zip .pt or .safetensors): {reason}"
    )]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },
    /// The checkpoint has no tensors (or none under any known wrapper key).
    #[error("{path} holds no tensors (looked at the top level and under {NESTED_KEYS:?})")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A tensor the model needs is absent.
    #[error("{path} lacks the tensor {name} (shape {expected:?}){more}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The first missing tensor.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
        /// ", and N more" when several are missing.
        more: String,
    },
    /// A tensor is not part of the model the config describes.
    #[error(
        "{path} has the unexpected tensor {name}{more}: the checkpoint does not match config.yaml"
    )]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// The first unexpected tensor.
        name: String,
        /// ", and N more" when several are unexpected.
        more: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor {name} has shape {found:?} but config.yaml implies {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype the model cannot use.
    #[error("{path}: tensor {name} has dtype {dtype:?}; only f32, f16, bf16 and f64 are supported")]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// One tensor's declaration is impossible or does not fit its storage.
    #[error("{path}: tensor {name} {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An archive entry is damaged (CRC mismatch, wrong size, short read).
    #[error("{path} is damaged: the archive entry {entry} {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The zip entry.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// A device or conversion error while materialising.
    #[error("cannot place the weights from {path} on the device: {source}")]
    Device {
        /// The file.
        path: PathBuf,
        /// The candle error.
        source: candle_core::Error,
    },
}

/// Every tensor the config implies, with its shape, in checkpoint naming.
pub fn expected_tensors(cfg: &SenseVoiceConfig, vocab_size: usize) -> Vec<(String, Vec<usize>)> {
    let e = &cfg.encoder_conf;
    let d = e.output_size;
    let input = cfg.input_size();
    let mut out = vec![("embed.weight".to_owned(), vec![EMBED_ROWS, input])];
    let mut layer = |prefix: String, in_feat: usize| {
        let t = |name: &str, shape: Vec<usize>| (format!("{prefix}.{name}"), shape);
        out.extend([
            t("self_attn.linear_q_k_v.weight", vec![3 * d, in_feat]),
            t("self_attn.linear_q_k_v.bias", vec![3 * d]),
            t("self_attn.linear_out.weight", vec![d, d]),
            t("self_attn.linear_out.bias", vec![d]),
            t("self_attn.fsmn_block.weight", vec![d, 1, e.kernel_size]),
            t("feed_forward.w_1.weight", vec![e.linear_units, d]),
            t("feed_forward.w_1.bias", vec![e.linear_units]),
            t("feed_forward.w_2.weight", vec![d, e.linear_units]),
            t("feed_forward.w_2.bias", vec![d]),
            t("norm1.weight", vec![in_feat]),
            t("norm1.bias", vec![in_feat]),
            t("norm2.weight", vec![d]),
            t("norm2.bias", vec![d]),
        ]);
    };
    layer("encoder.encoders0.0".to_owned(), input);
    for i in 0..e.num_blocks - 1 {
        layer(format!("encoder.encoders.{i}"), d);
    }
    for i in 0..e.tp_blocks {
        layer(format!("encoder.tp_encoders.{i}"), d);
    }
    for norm in ["after_norm", "tp_norm"] {
        out.push((format!("encoder.{norm}.weight"), vec![d]));
        out.push((format!("encoder.{norm}.bias"), vec![d]));
    }
    out.push(("ctc.ctc_lo.weight".to_owned(), vec![vocab_size, d]));
    out.push(("ctc.ctc_lo.bias".to_owned(), vec![vocab_size]));
    out
}

/// A checkpoint held as CPU tensors, ready to be validated and materialised on any device.
#[derive(Debug, Clone)]
pub struct HostWeights {
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
}

impl HostWeights {
    /// Reads `model.pt` (PyTorch zip pickle, plain or nested state dict, optional `module.`
    /// prefix) or a `.safetensors` file into CPU memory, keeping the file's dtypes. Sizes are
    /// checked against the file before anything is allocated; see [`HostWeights::load_checked`]
    /// to also check names and shapes first.
    pub fn load(path: &Path) -> Result<Self, WeightsError> {
        Self::load_inner(path, None)
    }

    /// Like [`HostWeights::load`], but checks the declared names, shapes and dtypes against
    /// `expected` (see [`expected_tensors`]) before reading any tensor data.
    pub fn load_checked(
        path: &Path,
        expected: &[(String, Vec<usize>)],
    ) -> Result<Self, WeightsError> {
        Self::load_inner(path, Some(expected))
    }

    fn load_inner(
        path: &Path,
        expected: Option<&[(String, Vec<usize>)]>,
    ) -> Result<Self, WeightsError> {
        let meta = std::fs::metadata(path).map_err(|source| WeightsError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(WeightsError::NotACheckpoint {
                path: path.to_owned(),
                reason: "not a regular file".to_owned(),
            });
        }
        let is_safetensors =
            path.extension().is_some_and(|e| e == "safetensors") || sniff_safetensors(path);
        // Every size is checked before use, but the zip and safetensors readers index into
        // untrusted bytes; a panic there must not take the application down.
        let read = std::panic::catch_unwind(|| {
            if is_safetensors {
                checkpoint::read_safetensors(path, expected)
            } else {
                checkpoint::read_pt(path, expected)
            }
        });
        let tensors = match read {
            Ok(r) => r?,
            Err(_) => {
                return Err(WeightsError::NotACheckpoint {
                    path: path.to_owned(),
                    reason: "the reader failed on malformed data".to_owned(),
                });
            }
        };
        if tensors.is_empty() {
            return Err(WeightsError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self::from_tensors(tensors, path))
    }

    /// Wraps already-loaded tensors (names as in the checkpoint, a `module.` prefix is
    /// stripped); `path` is used in messages.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, path: &Path) -> Self {
        let strip = !tensors.is_empty() && tensors.keys().all(|k| k.starts_with(MODULE_PREFIX));
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| {
                let k = if strip {
                    k[MODULE_PREFIX.len()..].to_owned()
                } else {
                    k
                };
                (k, v)
            })
            .collect();
        Self {
            tensors,
            path: path.to_owned(),
        }
    }

    /// The file these weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors by checkpoint name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Total bytes held.
    pub fn size_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Checks names, shapes and dtypes against `expected` (see [`expected_tensors`]).
    pub fn validate(&self, expected: &[(String, Vec<usize>)]) -> Result<(), WeightsError> {
        let found: HashMap<&str, (&[usize], DType)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), (t.dims(), t.dtype())))
            .collect();
        check_against(&self.path, &found, expected)
    }

    /// Converts the big tensors to `dtype` on the host, so that later materialisations only
    /// copy. LayerNorm parameters and the prompt embedding stay f32: they are tiny and the model computes
    /// norms and the residual stream in f32.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self, WeightsError> {
        // One tensor per task: converting 234 M parameters on one core takes most of a second.
        let tensors = self
            .tensors
            .par_iter()
            .map(|(k, t)| {
                let keep_f32 = k.contains("norm") || k == "embed.weight";
                let target = if keep_f32 { DType::F32 } else { dtype };
                Ok((k.clone(), t.to_dtype(target)?))
            })
            .collect::<candle_core::Result<HashMap<_, _>>>()
            .map_err(|source| WeightsError::Device {
                path: self.path.clone(),
                source,
            })?;
        Ok(Self {
            tensors,
            path: self.path.clone(),
        })
    }

    /// Copies every tensor to `device` and returns a `VarBuilder` whose compute dtype is `dtype`.
    pub fn materialize(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, WeightsError> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(device)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()
            .map_err(|source| WeightsError::Device {
                path: self.path.clone(),
                source,
            })?;
        Ok(VarBuilder::from_tensors(tensors, dtype, device))
    }
}

/// Safetensors files start with an 8-byte little-endian header length followed by `{`.
fn sniff_safetensors(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 9];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    f.read_exact(&mut head).is_ok() && head[8] == b'{'
}

/// Checks tensor names, shapes and dtypes (`found`: name -> (shape, dtype)) against `expected`.
pub(super) fn check_against(
    path: &Path,
    found: &HashMap<&str, (&[usize], DType)>,
    expected: &[(String, Vec<usize>)],
) -> Result<(), WeightsError> {
    let path = || path.to_owned();
    let more = |n: usize| {
        if n > 1 {
            format!(", and {} more", n - 1)
        } else {
            String::new()
        }
    };
    let missing: Vec<&(String, Vec<usize>)> = expected
        .iter()
        .filter(|(n, _)| !found.contains_key(n.as_str()))
        .collect();
    if let Some((name, shape)) = missing.first() {
        return Err(WeightsError::Missing {
            path: path(),
            name: name.clone(),
            expected: shape.clone(),
            more: more(missing.len()),
        });
    }
    let known: HashMap<&str, &Vec<usize>> = expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut extra: Vec<&str> = found
        .keys()
        .copied()
        .filter(|k| !known.contains_key(k))
        .collect();
    extra.sort_unstable();
    if let Some(name) = extra.first() {
        return Err(WeightsError::Unexpected {
            path: path(),
            name: (*name).to_owned(),
            more: more(extra.len()),
        });
    }
    for (name, shape) in expected {
        let Some((dims, dtype)) = found.get(name.as_str()) else {
            continue;
        };
        if *dims != shape.as_slice() {
            return Err(WeightsError::Shape {
                path: path(),
                name: name.clone(),
                expected: shape.clone(),
                found: dims.to_vec(),
            });
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(WeightsError::DType {
                path: path(),
                name: name.clone(),
                dtype: *dtype,
            });
        }
    }
    Ok(())
}
