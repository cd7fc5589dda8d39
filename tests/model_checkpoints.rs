//! The checkpoint loader against torch-made and crafted files: shared storages at non-zero
//! offsets, lying sizes, hostile pickles, truncated and damaged archives. Every bad file must give
//! one error naming the file (and the tensor where there is one), never a panic or a huge
//! allocation.

// Test helpers outside #[test] functions panic on purpose: a failed fixture read is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use gpuscribe::model::sensevoice::weights::{HostWeights, WeightsError};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn same_tensors(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    let mut other: Vec<&String> = b.keys().collect();
    other.sort();
    assert_eq!(names, other);
    for n in names {
        let (x, y) = (&a[n], &b[n]);
        assert_eq!(x.dims(), y.dims(), "{n}");
        assert_eq!(x.dtype(), y.dtype(), "{n}");
        let (vx, vy) = (values(x), values(y));
        assert!(
            vx.iter().zip(&vy).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{n}: {vx:?} != {vy:?}"
        );
    }
}

#[test]
fn shared_storage_at_offsets_matches_contiguous_copies() {
    let dir = data().join("checkpoints");
    let pt = HostWeights::load(&dir.join("shared_storage.pt")).unwrap();
    let st = HostWeights::load(&dir.join("shared_storage.safetensors")).unwrap();
    assert_eq!(pt.tensors().len(), 7);
    same_tensors(pt.tensors(), st.tensors());
    // The views really differ: a reader ignoring offsets would give "second" the first elements.
    assert_ne!(
        values(&pt.tensors()["second"])[..6],
        values(&pt.tensors()["first"])[..]
    );
}

/// The good shared-storage file with one byte changed, or cut short, must either load the very
/// same tensors (the byte was in a part of the zip nobody reads) or fail with an error naming
/// the file; never panic, never load different numbers.
#[test]
fn every_truncation_and_byte_flip_of_a_torch_file() {
    let src = data().join("checkpoints/shared_storage.pt");
    let good = HostWeights::load(&src).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mutant.pt");
    let mut damaged = 0;
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        std::fs::write(&p, &b).unwrap();
        match HostWeights::load(&p) {
            Ok(w) => same_tensors(w.tensors(), good.tensors()),
            Err(e) => {
                damaged += 1;
                assert!(e.to_string().contains("mutant.pt"), "byte {i}: {e}");
            }
        }
    }
    // Every tensor byte is covered by a CRC-32: at least the data can never change silently.
    assert!(
        damaged > 300,
        "{damaged} of {} flips were noticed",
        bytes.len()
    );
    for n in (0..bytes.len()).step_by(7) {
        std::fs::write(&p, &bytes[..n]).unwrap();
        let e = HostWeights::load(&p).unwrap_err();
        assert!(e.to_string().contains("mutant.pt"), "cut at {n}: {e}");
    }
}

#[test]
fn bit_flip_in_tensor_data_of_the_model_is_a_crc_error() {
    let src = data().join("sensevoice/tiny/model.pt");
    let mut bytes = std::fs::read(&src).unwrap();
    // Inside the data of the largest storage, far from any header.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flipped.pt");
    std::fs::write(&p, &bytes).unwrap();
    let e = HostWeights::load(&p).unwrap_err();
    assert!(matches!(e, WeightsError::Damaged { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("flipped.pt") && msg.contains("CRC-32") && msg.contains("data/"),
        "{msg}"
    );
}

/// A one-tensor state dict `w` in pickle protocol 2, the way torch writes it.
struct Crafted {
    storage_class: &'static str,
    storage_len: u64,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

fn int(p: &mut Vec<u8>, v: u64) {
    if v < 256 {
        p.extend([b'K', v as u8]);
    } else if v < (1 << 31) {
        p.push(b'J');
        p.extend((v as u32).to_le_bytes());
    } else {
        p.extend([0x8a, 8]);
        p.extend(v.to_le_bytes());
    }
}

fn text(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

fn tuple(p: &mut Vec<u8>, v: &[u64]) {
    p.push(b'(');
    for &x in v {
        int(p, x);
    }
    p.push(b't');
}

impl Crafted {
    fn f32(storage_len: u64, offset: u64, shape: &[u64]) -> Self {
        let mut stride = vec![1u64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1].wrapping_mul(shape[i + 1]);
        }
        Self {
            storage_class: "FloatStorage",
            storage_len,
            offset,
            shape: shape.to_vec(),
            stride,
        }
    }

    fn pickle(&self) -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(".to_vec();
        text(&mut p, "w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        text(&mut p, "storage");
        p.extend(format!("ctorch\n{}\n", self.storage_class).as_bytes());
        text(&mut p, "0");
        text(&mut p, "cpu");
        int(&mut p, self.storage_len);
        p.extend(b"tQ");
        int(&mut p, self.offset);
        tuple(&mut p, &self.shape);
        tuple(&mut p, &self.stride);
        p.extend(b"\x89h\x00)RtRu.");
        p
    }
}

fn write_archive(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn crafted(dir: &Path, name: &str, pickle: &[u8], storage: &[u8]) -> PathBuf {
    let p = dir.join(name);
    write_archive(
        &p,
        &[
            ("archive/data.pkl", pickle),
            ("archive/byteorder", b"little"),
            ("archive/data/0", storage),
        ],
    );
    p
}

fn load_err(p: &Path) -> String {
    let e = HostWeights::load(p).unwrap_err().to_string();
    let name = p.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name), "{e}");
    e
}

#[test]
fn crafted_archive_with_honest_sizes_loads() {
    let dir = tempfile::tempdir().unwrap();
    let floats: Vec<u8> = (0..10u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let p = crafted(
        dir.path(),
        "ok.pt",
        &Crafted::f32(10, 4, &[2, 3]).pickle(),
        &floats,
    );
    let w = HostWeights::load(&p).unwrap();
    assert_eq!(values(&w.tensors()["w"]), [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
}

#[test]
fn lying_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let floats = vec![0u8; 40];
    // A storage of 2^40 floats (4 TiB) behind a 40-byte entry.
    let e = load_err(&crafted(
        d,
        "huge_storage.pt",
        &Crafted::f32(1 << 40, 0, &[1 << 20, 1 << 20]).pickle(),
        &floats,
    ));
    assert!(e.contains("bytes of storage"), "{e}");
    // The storage matches the entry, but the tensor claims more than the storage holds.
    let e = load_err(&crafted(
        d,
        "huge_tensor.pt",
        &Crafted::f32(10, 0, &[1 << 20, 1 << 20]).pickle(),
        &floats,
    ));
    assert!(
        e.contains("tensor w") && e.contains("reaches element"),
        "{e}"
    );
    // Sizes whose product overflows.
    let e = load_err(&crafted(
        d,
        "overflow.pt",
        &Crafted::f32(10, 0, &[1 << 62, 1 << 62, 16]).pickle(),
        &floats,
    ));
    assert!(e.contains("tensor w") && e.contains("overflow"), "{e}");
    // An offset past the end of the storage.
    let e = load_err(&crafted(
        d,
        "offset.pt",
        &Crafted::f32(10, 8, &[4]).pickle(),
        &floats,
    ));
    assert!(
        e.contains("tensor w") && e.contains("reaches element 12"),
        "{e}"
    );
    // The declared storage (8 floats) disagrees with the entry (10 floats).
    let e = load_err(&crafted(
        d,
        "short_storage.pt",
        &Crafted::f32(8, 0, &[8]).pickle(),
        &floats,
    ));
    assert!(e.contains("data/0") && e.contains("holds 40 bytes"), "{e}");
    // Storage entry absent.
    let p = d.join("no_storage.pt");
    write_archive(
        &p,
        &[("archive/data.pkl", &Crafted::f32(10, 0, &[10]).pickle())],
    );
    let e = load_err(&p);
    assert!(e.contains("tensor w") && e.contains("lacks"), "{e}");
    // A dtype the model cannot use is caught by the shape check, before reading data.
    let mut ints = Crafted::f32(10, 0, &[10]);
    ints.storage_class = "IntStorage";
    let e = load_err(&crafted(d, "ints.pt", &ints.pickle(), &floats));
    assert!(e.contains("IntStorage"), "{e}");
}

#[test]
fn declared_shapes_are_checked_against_the_config_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    // Honest about its storage, but not the shape the model needs: refused from the pickle alone,
    // even though the storage data is absent.
    let p = dir.path().join("wrong_shape.pt");
    write_archive(
        &p,
        &[("archive/data.pkl", &Crafted::f32(12, 0, &[3, 4]).pickle())],
    );
    let expected = vec![("w".to_owned(), vec![2, 6])];
    let e = HostWeights::load_checked(&p, &expected).unwrap_err();
    assert!(matches!(e, WeightsError::Shape { .. }), "{e}");
    assert!(e.to_string().contains("wrong_shape.pt"), "{e}");
    let other = vec![("v".to_owned(), vec![3, 4])];
    let e = HostWeights::load_checked(&p, &other).unwrap_err();
    assert!(matches!(e, WeightsError::Missing { .. }), "{e}");
}

#[test]
fn hostile_pickles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let floats = vec![0u8; 40];
    // Deep nesting: a million TUPLE1s.
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    let e = load_err(&crafted(d, "deep.pt", &deep, &floats));
    assert!(e.contains("deeper"), "{e}");
    // Memo amplification: one memoized list of 10,000 items appended to over and over.
    let mut amp = b"\x80\x02](".to_vec();
    amp.extend(std::iter::repeat_n(b'N', 10_000));
    amp.extend(b"eq\x00");
    for _ in 0..50_000 {
        amp.extend(b"h\x00Na");
    }
    amp.push(b'.');
    let e = load_err(&crafted(d, "memo.pt", &amp, &floats));
    assert!(e.contains("values"), "{e}");
    // A list that contains itself through the memo.
    let e = load_err(&crafted(
        d,
        "loop.pt",
        b"\x80\x02]q\x00h\x00ah\x00a.",
        &floats,
    ));
    assert!(e.contains("not a dict"), "{e}");
    // Code execution is not on the menu.
    let mut evil = b"\x80\x02cos\nsystem\n".to_vec();
    text(&mut evil, "true");
    evil.extend(b"\x85R.");
    let e = load_err(&crafted(d, "evil.pt", &evil, &floats));
    assert!(e.contains("os.system"), "{e}");
    // An unknown opcode, and a pickle that never stops.
    let e = load_err(&crafted(d, "opcode.pt", b"\x80\x02\xff.", &floats));
    assert!(e.contains("opcode 0xff"), "{e}");
    let e = load_err(&crafted(d, "nostop.pt", b"\x80\x02}", &floats));
    assert!(e.contains("ends in the middle"), "{e}");
}
