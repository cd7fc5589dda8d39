//! Fuzzes every model-file reader with arbitrary bytes: the restricted pickle reader, the zip
//! checkpoint reader (CRC, sizes, storages), the safetensors header check, `config.yaml`,
//! `am.mvn` and the tokenizer. The first byte picks the reader; the rest is the file.
//!
//! Besides "no panic, no sanitizer report", the target checks the loader's allocation bound:
//! the tensor bytes a checkpoint hands over total at most twice the input's size, and a
//! safetensors header's tensors fit in the input. libFuzzer's `-malloc_limit_mb` (see RESULTS.md)
//! turns any single larger allocation into a crash.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

// The readers are compiled from the app's own sources (see Cargo.toml).
#[allow(dead_code)]
#[path = "../../src/model/pickle.rs"]
mod pickle;
#[allow(dead_code)]
#[path = "../../src/model/pth.rs"]
mod pth;
#[path = "../../src/model"]
mod model {
    #[allow(dead_code)]
    pub mod bounded;
}
#[allow(dead_code)]
#[path = "../../src/model/sensevoice/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../src/model/sensevoice/frontend.rs"]
mod frontend;
#[allow(dead_code)]
#[path = "../../src/model/sensevoice/tokenizer.rs"]
mod tokenizer;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let name = Path::new("fuzz-input");
    match selector % 6 {
        0 => {
            if let Ok(refs) =
                pickle::read_state_dict(body, &pth::NESTED_KEYS, pickle::Limits::default())
            {
                for t in &refs {
                    assert_eq!(t.shape.len(), t.stride.len());
                }
            }
        }
        1 => {
            let len = body.len() as u64;
            let built = std::sync::atomic::AtomicU64::new(0);
            let result = pth::read_pt(
                || Ok(Cursor::new(body)),
                len,
                |_| Ok::<(), pth::PthError>(()),
                |t, bytes| {
                    let want = t.elem_count().unwrap_or(0) * t.dtype.size_in_bytes();
                    assert_eq!(bytes.len(), want, "{}", t.name);
                    built.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Ok(bytes.len())
                },
            );
            if result.is_ok() {
                let total = built.load(std::sync::atomic::Ordering::Relaxed);
                assert!(
                    total <= 2 * len,
                    "{total} tensor bytes from a {len}-byte file"
                );
            }
        }
        2 => {
            if let Ok(entries) = pth::safetensors_header(&mut Cursor::new(body), body.len() as u64)
            {
                let total: u64 = entries
                    .iter()
                    .map(|e| {
                        e.shape.iter().map(|&d| d as u64).product::<u64>()
                            * pth::safetensors_elem_bytes(&e.dtype).unwrap_or(0)
                    })
                    .sum();
                assert!(total <= body.len() as u64);
            }
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(body) {
                if let Ok(c) = config::SenseVoiceConfig::from_yaml(text, name) {
                    assert!(c.encoder_conf.num_blocks <= 1024 && c.input_size() <= 1024 * 64);
                }
            }
        }
        4 => {
            if let Ok(text) = std::str::from_utf8(body) {
                if let Ok(c) = frontend::Cmvn::parse(text, name) {
                    assert_eq!(c.shift.len(), c.scale.len());
                }
            }
        }
        _ => {
            let _ = tokenizer::Tokenizer::from_bytes(body, name);
        }
    }
});
