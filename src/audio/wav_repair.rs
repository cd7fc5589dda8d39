//! What a crash leaves of a recording, made whole again.
//!
//! While recording, the WAV header is rewritten at every flush (see
//! [`super::FLUSH_INTERVAL`]), so after a `kill -9` or a power cut the file holds every sample up
//! to the last flush, often some more written out since, and a header that counts only the
//! flushed ones. [`repair_wav`] sets the header's sizes to the samples the file really holds (a
//! torn last frame is cut off), so every reader sees the whole recording. It is idempotent: a
//! finished recording is left as it is.
//!
//! [`recording_parts`] finds the files of a recording on disk (`<stem>.wav`, `<stem>-part2.wav`,
//! … as [`super::wav_sink::WavSink`] names them), for a recording whose process died before it
//! could say which parts it wrote.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Most bytes read looking for the `data` chunk (hound writes it within the first 80).
const HEADER_SEARCH_BYTES: u64 = 64 * 1024;

/// Why a file could not be checked or repaired.
#[derive(Debug, thiserror::Error)]
pub enum WavRepairError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a PCM WAV file a recording writes.
    #[error("{path} is not a WAV recording: {reason}")]
    NotWav {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What [`repair_wav`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WavCheck {
    /// Frames (samples per channel) the file holds, now also what its header says.
    pub frames: u64,
    /// The header's sample rate.
    pub sample_rate_hz: u32,
    /// True when the header (or a torn last frame) had to be fixed.
    pub repaired: bool,
}

impl WavCheck {
    /// The length in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate_hz == 0 {
            return 0.0;
        }
        self.frames as f64 / f64::from(self.sample_rate_hz)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Where the header's fields are.
struct Layout {
    sample_rate_hz: u32,
    block_align: u16,
    /// Offset of the `data` chunk's size field.
    data_size_at: u64,
    data_size: u32,
}

fn layout(head: &[u8]) -> Result<Layout, String> {
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err("no RIFF/WAVE header".to_owned());
    }
    let mut at = 12usize;
    let mut format = None;
    while let (Some(id), Some(size)) = (head.get(at..at + 4), u32_at(head, at + 4)) {
        match id {
            b"fmt " => {
                let tag = u16_at(head, at + 8).ok_or("a torn fmt chunk")?;
                let rate = u32_at(head, at + 12).ok_or("a torn fmt chunk")?;
                let align = u16_at(head, at + 20).ok_or("a torn fmt chunk")?;
                // 1: PCM; 0xFFFE: WAVE_FORMAT_EXTENSIBLE (hound, above 16 bits or 2 channels).
                if tag != 1 && tag != 0xFFFE {
                    return Err(format!("format tag {tag:#x} is not PCM"));
                }
                if align == 0 {
                    return Err("a block alignment of 0".to_owned());
                }
                format = Some((rate, align));
            }
            b"data" => {
                let (sample_rate_hz, block_align) = format.ok_or("a data chunk before fmt")?;
                return Ok(Layout {
                    sample_rate_hz,
                    block_align,
                    data_size_at: (at + 4) as u64,
                    data_size: size,
                });
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        at = at
            .checked_add(8)
            .and_then(|a| a.checked_add(size as usize + (size as usize & 1)))
            .ok_or("a chunk size past the end")?;
    }
    Err("no data chunk".to_owned())
}

/// Makes the header of the WAV file at `path` count every whole frame the file holds (see the
/// module docs); returns what it holds. Sizes past the format's 4 GiB are capped.
pub fn repair_wav(path: &Path) -> Result<WavCheck, WavRepairError> {
    let io = |source| WavRepairError::Io {
        path: path.to_owned(),
        source,
    };
    let not_wav = |reason: String| WavRepairError::NotWav {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(HEADER_SEARCH_BYTES)
        .read_to_end(&mut head)
        .map_err(io)?;
    let layout = layout(&head).map_err(not_wav)?;
    let data_start = layout.data_size_at + 4;
    let align = u64::from(layout.block_align);
    let on_disk = len.saturating_sub(data_start);
    let whole = (on_disk / align * align).min(u64::from(u32::MAX) / align * align);
    let riff_size = u32::try_from(data_start + whole - 8).unwrap_or(u32::MAX);
    let mut repaired = false;
    if data_start + whole < len {
        // A torn last frame (or bytes past the 4 GiB a header can count).
        file.set_len(data_start + whole).map_err(io)?;
        repaired = true;
    }
    let data_size = u32::try_from(whole).unwrap_or(u32::MAX);
    if layout.data_size != data_size || u32_at(&head, 4) != Some(riff_size) {
        file.seek(SeekFrom::Start(4)).map_err(io)?;
        file.write_all(&riff_size.to_le_bytes()).map_err(io)?;
        file.seek(SeekFrom::Start(layout.data_size_at))
            .map_err(io)?;
        file.write_all(&data_size.to_le_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        repaired = true;
    }
    Ok(WavCheck {
        frames: whole / align,
        sample_rate_hz: layout.sample_rate_hz,
        repaired,
    })
}

/// Reads the length of a WAV file from its header, without changing it.
pub fn wav_duration_s(path: &Path) -> Result<f64, WavRepairError> {
    let reader = hound::WavReader::open(path).map_err(|err| WavRepairError::NotWav {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    let rate = reader.spec().sample_rate;
    if rate == 0 {
        return Ok(0.0);
    }
    Ok(f64::from(reader.duration()) / f64::from(rate))
}

/// The files of the recording whose first part is `first`, in order: `first` and each
/// `<stem>-partN.wav` that exists, up to the first missing one.
pub fn recording_parts(first: &Path) -> Vec<PathBuf> {
    let mut parts = Vec::new();
    if !first.is_file() {
        return parts;
    }
    parts.push(first.to_owned());
    for n in 2u32.. {
        let next = super::wav_sink::with_suffix(first, &format!("-part{n}"));
        if !next.is_file() {
            break;
        }
        parts.push(next);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(path: &Path, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec).expect("create");
        for &s in samples {
            writer.write_sample(s).expect("write");
        }
        writer.finalize().expect("finalize");
    }

    fn read(path: &Path) -> Vec<i16> {
        hound::WavReader::open(path)
            .expect("open")
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .expect("samples")
    }

    #[test]
    fn a_header_behind_its_samples_is_brought_up_to_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rec.wav");
        let samples: Vec<i16> = (0..1000).map(|i| (i * 7 % 3000) as i16).collect();
        write_wav(&path, &samples[..400]);
        // What a crash leaves: 600 more samples and half of one more, the header still at 400.
        let mut file = File::options().append(true).open(&path).expect("open");
        for s in &samples[400..] {
            file.write_all(&s.to_le_bytes()).expect("append");
        }
        file.write_all(&[0x12]).expect("torn frame");
        drop(file);
        assert_eq!(
            read(&path).len(),
            400,
            "the header counts only the flushed samples"
        );

        let check = repair_wav(&path).expect("repair");
        assert_eq!(
            check,
            WavCheck {
                frames: 1000,
                sample_rate_hz: 16_000,
                repaired: true
            }
        );
        assert_eq!(read(&path), samples);
        let again = repair_wav(&path).expect("again");
        assert!(!again.repaired, "a whole file is left as it is");
        assert!((wav_duration_s(&path).expect("duration") - 1000.0 / 16_000.0).abs() < 1e-12);
    }

    #[test]
    fn what_is_not_a_wav_recording_is_said_with_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.wav");
        std::fs::write(&path, b"hello, this is text").expect("write");
        let err = repair_wav(&path).expect_err("not a WAV");
        let text = err.to_string();
        assert!(
            text.contains("notes.wav") && text.contains("RIFF"),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), b"hello, this is text");
        let missing = repair_wav(&dir.path().join("gone.wav")).expect_err("missing");
        assert!(missing.to_string().contains("gone.wav"), "{missing}");
    }

    #[test]
    fn the_parts_of_a_recording_are_found_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("r.wav");
        assert!(recording_parts(&first).is_empty());
        for name in ["r.wav", "r-part2.wav", "r-part3.wav", "r-part5.wav"] {
            write_wav(&dir.path().join(name), &[1, 2]);
        }
        assert_eq!(
            recording_parts(&first),
            vec![
                first.clone(),
                dir.path().join("r-part2.wav"),
                dir.path().join("r-part3.wav")
            ]
        );
    }
}
