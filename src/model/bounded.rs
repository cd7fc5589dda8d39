//! Reading small files with a size bound, so a huge or endless file costs nothing.

use std::io::Read;
use std::path::Path;

/// Reads a whole file of at most `max` bytes; a larger file is an `InvalidData` error (read
/// no further than `max + 1` bytes, so a huge or endless file costs nothing).
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let hint = file.metadata().map_or(0, |m| m.len()).min(max);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is larger than {max} bytes, far more than this file should be"),
        ));
    }
    Ok(bytes)
}
