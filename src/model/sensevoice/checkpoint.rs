//! The candle side of checkpoint loading: [`crate::model::pth`] checks the file and hands over
//! tensor bytes, this builds CPU tensors from them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::weights::{WeightsError, check_against};
use crate::model::pickle::StorageDType;
use crate::model::pth::{self, PthError};

fn candle_dtype(d: StorageDType) -> DType {
    match d {
        StorageDType::F32 => DType::F32,
        StorageDType::F16 => DType::F16,
        StorageDType::BF16 => DType::BF16,
        StorageDType::F64 => DType::F64,
        StorageDType::I64 => DType::I64,
        StorageDType::U8 => DType::U8,
    }
}

fn safetensors_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        _ => return None,
    })
}

/// Adds the file name to a reader error.
fn with_path(path: &Path, e: PthError) -> WeightsError {
    let path = path.to_owned();
    match e {
        PthError::Io(source) => WeightsError::Io { path, source },
        PthError::NotACheckpoint(reason) => WeightsError::NotACheckpoint { path, reason },
        PthError::Tensor { name, reason } => WeightsError::Tensor { path, name, reason },
        PthError::Damaged { entry, reason } => WeightsError::Damaged {
            path,
            entry,
            reason,
        },
    }
}

/// An error of the reader (no file name yet) or of the checks against the config.
enum LoadError {
    Reader(PthError),
    Weights(WeightsError),
}

impl From<PthError> for LoadError {
    fn from(e: PthError) -> Self {
        Self::Reader(e)
    }
}

/// Reads a zip-format PyTorch checkpoint; with `expected`, names, shapes and dtypes are checked
/// before any tensor is read.
pub(super) fn read_pt(
    path: &Path,
    expected: Option<&[(String, Vec<usize>)]>,
) -> Result<HashMap<String, Tensor>, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_owned(),
        source,
    };
    let file_len = std::fs::metadata(path).map_err(io)?.len();
    let open = || std::fs::File::open(path).map(std::io::BufReader::new);
    let check = |refs: &[crate::model::pickle::TensorRef]| {
        let Some(expected) = expected else {
            return Ok(());
        };
        let found: HashMap<&str, (&[usize], DType)> = refs
            .iter()
            .map(|t| (t.name.as_str(), (t.shape.as_slice(), candle_dtype(t.dtype))))
            .collect();
        check_against(path, &found, expected).map_err(LoadError::Weights)
    };
    let build = |t: &crate::model::pickle::TensorRef, bytes: &[u8]| {
        Tensor::from_raw_buffer(bytes, candle_dtype(t.dtype), &t.shape, &Device::Cpu).map_err(|e| {
            LoadError::Reader(PthError::Tensor {
                name: t.name.clone(),
                reason: e.to_string(),
            })
        })
    };
    match pth::read_pt(open, file_len, check, build) {
        Ok(v) => Ok(v.into_iter().collect()),
        Err(LoadError::Reader(e)) => Err(with_path(path, e)),
        Err(LoadError::Weights(e)) => Err(e),
    }
}

/// Reads a `.safetensors` file after checking its header (byte ranges inside the file and
/// matching shapes and dtypes; with `expected`, names and shapes too).
pub(super) fn read_safetensors(
    path: &Path,
    expected: Option<&[(String, Vec<usize>)]>,
) -> Result<HashMap<String, Tensor>, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let entries = pth::safetensors_header(&mut file, file_len).map_err(|e| with_path(path, e))?;
    drop(file);
    if let Some(expected) = expected {
        let mut found: HashMap<&str, (&[usize], DType)> = HashMap::new();
        for e in &entries {
            let dtype = safetensors_dtype(&e.dtype).ok_or_else(|| WeightsError::Tensor {
                path: path.to_owned(),
                name: e.name.clone(),
                reason: format!("has the unsupported dtype {}", e.dtype),
            })?;
            found.insert(e.name.as_str(), (e.shape.as_slice(), dtype));
        }
        check_against(path, &found, expected)?;
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| WeightsError::NotACheckpoint {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
