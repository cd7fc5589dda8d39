//! Reading PyTorch zip checkpoints and safetensors headers without trusting them. No candle here:
//! this module turns untrusted bytes into checked tensor declarations and their bytes, and is
//! compiled on its own by the fuzz target.
//!
//! Every size a file declares is checked, with checked arithmetic, against the archive entry that
//! holds the data, against the file's size and (through the caller's `check`, e.g. the shapes
//! the config implies) before any tensor memory is allocated. Zip entries are verified against
//! their CRC-32. The pickle is read by the restricted reader of [`crate::model::pickle`].
//!
//! Allocation bound: the pickle reader's own bound ([`pickle::Limits`]: 16 MiB of pickle plus at
//! most 2 M values of [`pickle::BYTES_PER_VALUE`] bytes), plus storage buffers whose declared
//! sizes sum to at most the file's size, plus the tensors the caller builds, which total at most
//! twice the file's size (tensors may be views of one storage).

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use rayon::prelude::*;

use super::pickle::{self, StorageDType, TensorRef};

/// Wrapper keys FunASR's loader accepts around a state dict, probed in this order.
pub const NESTED_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];
/// Prefix left by `DataParallel`/DDP training.
pub const MODULE_PREFIX: &str = "module.";
/// Largest safetensors header accepted (the format's own limit is 100 MB).
pub const MAX_SAFETENSORS_HEADER: u64 = 16 << 20;

/// What is wrong with a checkpoint (the caller adds the file name).
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a checkpoint this reader accepts.
    #[error("{0}")]
    NotACheckpoint(String),
    /// One tensor's declaration is impossible.
    #[error("tensor {name} {reason}")]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An archive entry is damaged.
    #[error("the archive entry {entry} {reason}")]
    Damaged {
        /// The zip entry.
        entry: String,
        /// What is wrong.
        reason: String,
    },
}

fn not_a_checkpoint(reason: impl Into<String>) -> PthError {
    PthError::NotACheckpoint(reason.into())
}

fn tensor_err(name: &str, reason: impl Into<String>) -> PthError {
    PthError::Tensor {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Strips the `module.` prefix when every name has it.
pub fn strip_module_prefix<T>(names: &mut [T], get: impl Fn(&mut T) -> &mut String) {
    if names.is_empty() {
        return;
    }
    let all = names.iter_mut().all(|t| get(t).starts_with(MODULE_PREFIX));
    if all {
        for t in names {
            get(t).drain(..MODULE_PREFIX.len());
        }
    }
}

/// Reads the whole entry `name` (stored, not compressed), checking its size against `expect`
/// (when given) and `max`, and its CRC-32.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    expect: Option<u64>,
    max: u64,
) -> Result<Vec<u8>, PthError> {
    let mut entry = archive
        .by_name(name)
        .map_err(|e| not_a_checkpoint(format!("the archive entry {name}: {e}")))?;
    let damaged = |reason: String| PthError::Damaged {
        entry: name.to_owned(),
        reason,
    };
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(damaged(format!(
            "is compressed ({:?}); PyTorch stores checkpoint entries uncompressed",
            entry.compression()
        )));
    }
    let size = entry.size();
    if entry.compressed_size() != size {
        return Err(damaged(format!(
            "declares {size} bytes but occupies {} in the archive",
            entry.compressed_size()
        )));
    }
    if let Some(want) = expect
        && size != want
    {
        return Err(damaged(format!(
            "holds {size} bytes but the pickle declares {want}"
        )));
    }
    if size > max {
        return Err(damaged(format!("declares {size} bytes, more than {max}")));
    }
    let len = usize::try_from(size).map_err(|_| damaged(format!("declares {size} bytes")))?;
    let crc = entry.crc32();
    let mut bytes = vec![0u8; len];
    entry.read_exact(&mut bytes).map_err(|e| {
        damaged(format!(
            "cannot be read in full ({e}); the file is truncated or corrupt"
        ))
    })?;
    let got = crc32fast::hash(&bytes);
    if got != crc {
        return Err(damaged(format!(
            "fails its CRC-32 check (stored {crc:08x}, computed {got:08x}); the file is corrupt: download it again"
        )));
    }
    Ok(bytes)
}

struct StorageGroup {
    bytes: usize,
    tensors: Vec<usize>,
}

/// Reads a zip-format PyTorch checkpoint (`torch.save` of a state dict, plain or under one of
/// [`NESTED_KEYS`], `module.` prefix stripped) of `file_len` bytes; `open` gives a fresh reader
/// of it (one per worker thread). `check` sees every declaration before any storage is read;
/// `build` gets each tensor with its bytes in row-major order.
pub fn read_pt<R, T, E>(
    open: impl Fn() -> std::io::Result<R> + Sync,
    file_len: u64,
    check: impl FnOnce(&[TensorRef]) -> Result<(), E>,
    build: impl Fn(&TensorRef, &[u8]) -> Result<T, E> + Sync,
) -> Result<Vec<(String, T)>, E>
where
    R: Read + Seek,
    T: Send,
    E: From<PthError> + Send,
{
    let mut archive = zip::ZipArchive::new(open().map_err(PthError::from)?)
        .map_err(|e| not_a_checkpoint(format!("not a readable zip archive: {e}")))?;
    let pkl: Vec<String> = archive
        .file_names()
        .filter_map(Result::ok)
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(|n| n.into_owned())
        .collect();
    let [pkl] = pkl.as_slice() else {
        return Err(not_a_checkpoint(format!(
            "a PyTorch archive has exactly one <name>/data.pkl; this one has {}",
            pkl.len()
        ))
        .into());
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let byteorder = format!("{prefix}byteorder");
    if archive.index_for_name(&byteorder).is_some() {
        let order = read_entry(&mut archive, &byteorder, None, 16)?;
        if order != b"little" {
            return Err(not_a_checkpoint(format!(
                "its byte order is {:?}; only little-endian checkpoints are supported",
                String::from_utf8_lossy(&order)
            ))
            .into());
        }
    }
    let limits = pickle::Limits::default();
    let data = read_entry(
        &mut archive,
        pkl,
        None,
        (limits.max_bytes as u64).min(file_len),
    )?;
    let mut refs = pickle::read_state_dict(&data, &NESTED_KEYS, limits)
        .map_err(|e| not_a_checkpoint(format!("{pkl}: {e}")))?;
    drop(data);
    strip_module_prefix(&mut refs, |t| &mut t.name);
    let groups = plan(&refs, file_len)?;
    check(&refs)?;
    drop(archive);

    let groups: Vec<(&str, StorageGroup)> = groups.into_iter().collect();
    let read = groups
        .par_iter()
        .map_init(
            || {
                open()
                    .map_err(|e| e.to_string())
                    .and_then(|r| zip::ZipArchive::new(r).map_err(|e| e.to_string()))
            },
            |archive, (key, g)| -> Result<Vec<(String, T)>, E> {
                let archive = archive.as_mut().map_err(|e| not_a_checkpoint(e.clone()))?;
                let entry = format!("{prefix}data/{key}");
                if archive.index_for_name(&entry).is_none() {
                    let first = &refs[g.tensors[0]].name;
                    return Err(tensor_err(
                        first,
                        format!("has its storage in {entry}, which the archive lacks"),
                    )
                    .into());
                }
                let bytes = read_entry(archive, &entry, Some(g.bytes as u64), file_len)?;
                g.tensors
                    .iter()
                    .map(|&i| {
                        let t = &refs[i];
                        Ok((t.name.clone(), with_tensor_bytes(t, &bytes, &build)?))
                    })
                    .collect()
            },
        )
        .collect::<Result<Vec<_>, E>>()?;
    Ok(read.into_iter().flatten().collect())
}

/// Groups the tensors by storage and checks every extent and size, before anything is read.
fn plan(refs: &[TensorRef], file_len: u64) -> Result<BTreeMap<&str, StorageGroup>, PthError> {
    let mut groups: BTreeMap<&str, (StorageDType, usize, StorageGroup)> = BTreeMap::new();
    let mut tensor_bytes = 0u64;
    for (i, t) in refs.iter().enumerate() {
        let elem = t.dtype.size_in_bytes();
        let count = t.elem_count().ok_or_else(|| {
            tensor_err(&t.name, format!("has a size {:?} that overflows", t.shape))
        })?;
        let end = t
            .storage_end()
            .ok_or_else(|| tensor_err(&t.name, "has an offset and strides that overflow"))?;
        if end > t.storage_len {
            return Err(tensor_err(
                &t.name,
                format!(
                    "reaches element {end} of its storage data/{}, which has {} (offset {}, size {:?}, stride {:?})",
                    t.storage, t.storage_len, t.offset, t.shape, t.stride
                ),
            ));
        }
        let bytes = count
            .checked_mul(elem)
            .ok_or_else(|| tensor_err(&t.name, "has a byte size that overflows"))?;
        tensor_bytes = tensor_bytes.saturating_add(bytes as u64);
        let storage_bytes = t.storage_len.checked_mul(elem).ok_or_else(|| {
            tensor_err(
                &t.name,
                format!("has a storage of {} elements that overflows", t.storage_len),
            )
        })?;
        let (dtype, len, g) = groups.entry(t.storage.as_str()).or_insert((
            t.dtype,
            t.storage_len,
            StorageGroup {
                bytes: storage_bytes,
                tensors: Vec::new(),
            },
        ));
        if *dtype != t.dtype || *len != t.storage_len {
            return Err(tensor_err(
                &t.name,
                format!(
                    "declares its storage data/{} as {} {:?} elements, another tensor as {len} {dtype:?}",
                    t.storage, t.storage_len, t.dtype
                ),
            ));
        }
        g.tensors.push(i);
    }
    let storage_total = groups
        .values()
        .try_fold(0u64, |a, (_, _, g)| a.checked_add(g.bytes as u64))
        .unwrap_or(u64::MAX);
    if storage_total > file_len {
        return Err(not_a_checkpoint(format!(
            "its tensors declare {storage_total} bytes of storage, more than the file's {file_len}"
        )));
    }
    if tensor_bytes > file_len.saturating_mul(2) {
        return Err(not_a_checkpoint(format!(
            "its tensors declare {tensor_bytes} bytes, more than twice the file's {file_len}"
        )));
    }
    Ok(groups.into_iter().map(|(k, (_, _, g))| (k, g)).collect())
}

/// Calls `build` with the tensor's bytes in row-major order: a slice of the storage when the
/// tensor is contiguous, a gathered copy otherwise. The extent was checked by [`plan`].
fn with_tensor_bytes<T, E>(
    t: &TensorRef,
    storage: &[u8],
    build: &impl Fn(&TensorRef, &[u8]) -> Result<T, E>,
) -> Result<T, E> {
    let elem = t.dtype.size_in_bytes();
    let count = t.elem_count().unwrap_or(0);
    if t.is_contiguous() {
        let start = t.offset * elem;
        return build(t, &storage[start..start + count * elem]);
    }
    let mut out = Vec::with_capacity(count * elem);
    let rank = t.shape.len();
    let mut index = vec![0usize; rank];
    for _ in 0..count {
        let at: usize = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    build(t, &out)
}

/// One tensor declared in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsEntry {
    /// Name (with a `module.` prefix stripped when every name has one).
    pub name: String,
    /// Dtype as spelled in the file ("F32", "BF16", ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Where its bytes lie in the file (checked to be inside it and to match shape and dtype).
    pub file_range: std::ops::Range<u64>,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Bytes per element of a safetensors dtype, for the dtypes this reader accepts.
pub fn safetensors_elem_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" => 8,
        "F32" | "U32" => 4,
        "F16" | "BF16" => 2,
        "U8" => 1,
        _ => return None,
    })
}

/// Reads and checks a safetensors header from `r` (a file of `file_len` bytes): every tensor's
/// byte range lies inside the data section and matches its shape and dtype.
pub fn safetensors_header(
    r: &mut impl Read,
    file_len: u64,
) -> Result<Vec<SafetensorsEntry>, PthError> {
    let mut len8 = [0u8; 8];
    r.read_exact(&mut len8)
        .map_err(|_| not_a_checkpoint("shorter than a safetensors header"))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > MAX_SAFETENSORS_HEADER || header_len > file_len.saturating_sub(8) {
        return Err(not_a_checkpoint(format!(
            "declares a {header_len}-byte safetensors header in a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)?;
    let data_len = file_len - 8 - header_len;
    let parsed: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| not_a_checkpoint(format!("the safetensors header is not valid: {e}")))?;
    let mut out = Vec::with_capacity(parsed.len());
    for (name, v) in parsed {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry = serde_json::from_value(v)
            .map_err(|err| tensor_err(&name, format!("has a bad header entry: {err}")))?;
        let elem = safetensors_elem_bytes(&e.dtype)
            .ok_or_else(|| tensor_err(&name, format!("has the unsupported dtype {}", e.dtype)))?;
        let [start, end] = e.data_offsets;
        let bytes = e
            .shape
            .iter()
            .try_fold(elem, |a, &d| a.checked_mul(d as u64));
        if start > end || end > data_len || bytes != Some(end - start) {
            return Err(tensor_err(
                &name,
                format!(
                    "declares bytes {start}..{end} for shape {:?} {}, but the data section has {data_len} bytes",
                    e.shape, e.dtype
                ),
            ));
        }
        let data_start = 8 + header_len;
        out.push(SafetensorsEntry {
            name,
            dtype: e.dtype,
            shape: e.shape,
            file_range: data_start + start..data_start + end,
        });
    }
    strip_module_prefix(&mut out, |t| &mut t.name);
    Ok(out)
}
