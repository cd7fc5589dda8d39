//! A hostile FLAC stream for the decoder's bounds, shared by the test files that need it
//! (`#[path = "common/flac.rs"] mod flac;`).

use std::path::Path;

/// CRC-8 (polynomial 0x07) of a FLAC frame header.
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// CRC-16 (polynomial 0x8005) of a FLAC frame.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A valid FLAC stream at 1 kHz, 8 bits mono, of `frames` blocks of 65,535 samples each
/// holding one constant value: 65 s of audio in 10 bytes. No real recording is like this; a
/// hostile file is. The decoder refuses more audio than a file's size allows
/// (`gpuscribe::audio::decode::max_audio_s`), so this file fails part way: what comes before the
/// bound decodes, then the decoder says the file is bad.
pub fn write_dense_flac(path: &Path, frames: u8) {
    let mut out = b"fLaC".to_vec();
    out.push(0x80); // last metadata block, STREAMINFO
    out.extend_from_slice(&[0, 0, 34]);
    out.extend_from_slice(&65_535u16.to_be_bytes()); // min block size
    out.extend_from_slice(&65_535u16.to_be_bytes()); // max block size
    out.extend_from_slice(&[0; 6]); // frame sizes unknown
    // 20 bits rate, 3 bits channels - 1, 5 bits bits per sample - 1, 36 bits total (unknown).
    let packed: u64 = (1_000u64 << 44) | (7u64 << 36);
    out.extend_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&[0; 16]); // MD5 unset
    for n in 0..frames.min(127) {
        // Fixed block size; 16-bit block size at the end; rate from STREAMINFO; mono, 8 bits.
        let mut frame = vec![0xFF, 0xF8, 0x70, 0x02, n];
        frame.extend_from_slice(&65_534u16.to_be_bytes());
        frame.push(crc8(&frame));
        frame.push(0x00); // CONSTANT subframe
        frame.push(0x10); // its value
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).expect("writing the FLAC file");
}
