//! The candle side of checkpoint loading: [`crate::model::pth`] checks the file and hands over
//! tensor bytes, this builds CPU tensors from them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

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
    let dtypes = entries
        .iter()
        .map(|e| {
            safetensors_dtype(&e.dtype).ok_or_else(|| WeightsError::Tensor {
                path: path.to_owned(),
                name: e.name.clone(),
                reason: format!("has the unsupported dtype {}", e.dtype),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(expected) = expected {
        let found: HashMap<&str, (&[usize], DType)> = entries
            .iter()
            .zip(&dtypes)
            .map(|(e, &dtype)| (e.name.as_str(), (e.shape.as_slice(), dtype)))
            .collect();
        check_against(path, &found, expected)?;
    }
    // One tensor per task, each read from the file straight into its own buffer: no copy of the
    // whole file in memory first, and the reads and page faults spread over the cores.
    entries
        .par_iter()
        .zip(dtypes.par_iter())
        .map_init(
            || std::fs::File::open(path),
            |file, (entry, &dtype)| {
                let file = file.as_mut().map_err(|e| WeightsError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                })?;
                let tensor = read_tensor(file, entry, dtype).map_err(|e| match e {
                    TensorReadError::Io(source) => WeightsError::Io {
                        path: path.to_owned(),
                        source,
                    },
                    TensorReadError::Candle(e) => WeightsError::Tensor {
                        path: path.to_owned(),
                        name: entry.name.clone(),
                        reason: e.to_string(),
                    },
                })?;
                Ok((entry.name.clone(), tensor))
            },
        )
        .collect()
}

enum TensorReadError {
    Io(std::io::Error),
    Candle(candle_core::Error),
}

/// Reads one tensor's bytes (their range checked against the file by the header reader).
fn read_tensor(
    file: &mut std::fs::File,
    entry: &pth::SafetensorsEntry,
    dtype: DType,
) -> Result<Tensor, TensorReadError> {
    use std::io::{Read, Seek, SeekFrom};
    let range = &entry.file_range;
    let len = usize::try_from(range.end - range.start).map_err(|_| {
        TensorReadError::Io(std::io::Error::other(
            "a tensor larger than the address space",
        ))
    })?;
    file.seek(SeekFrom::Start(range.start))
        .map_err(TensorReadError::Io)?;
    if dtype == DType::F32 && cfg!(target_endian = "little") {
        // Read into the f32 buffer itself: the file's little-endian bytes are the values.
        let mut values = vec![0f32; len / 4];
        file.read_exact(bytemuck::cast_slice_mut(&mut values))
            .map_err(TensorReadError::Io)?;
        return Tensor::from_vec(values, entry.shape.as_slice(), &Device::Cpu)
            .map_err(TensorReadError::Candle);
    }
    let mut bytes = vec![0u8; len];
    file.read_exact(&mut bytes).map_err(TensorReadError::Io)?;
    Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, &Device::Cpu)
        .map_err(TensorReadError::Candle)
}
