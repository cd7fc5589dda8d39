//! Every kernel `cuda_ops.rs` loads by name is defined with C linkage in `kernels.cu`.
//!
//! A `__global__` function without `extern "C"` gets a C++-mangled name in the PTX, and the
//! launch fails only on a GPU ("named symbol not found"); this checks the sources instead.

// Test code: a failed read is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

fn source(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/model/sensevoice")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

/// The quoted string right after each occurrence of `marker`.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split('"').next()
        })
        .collect()
}

#[test]
fn kernels_loaded_by_name_have_c_linkage() {
    let ops = source("cuda_ops.rs");
    let cu = source("kernels.cu");
    // Typed kernels: `kernel_name::<T>("x")` loads `x_f32`, `x_f16` or `x_bf16`, which the
    // INSTANTIATE macros define as `extern "C" __global__ void x_##SUFFIX(`.
    let typed: BTreeSet<&str> = quoted_after(&ops, "kernel_name::<T>(")
        .into_iter()
        .collect();
    assert!(typed.len() >= 6, "found only {typed:?}");
    for name in &typed {
        let def = format!("extern \"C\" __global__ void {name}_##SUFFIX(");
        assert!(cu.contains(&def), "kernels.cu does not define {def}");
    }
    // Untyped kernels, loaded by their plain name.
    for name in ["split_heads", "merge_heads"] {
        assert!(
            ops.contains(&format!("\"{name}\"")),
            "cuda_ops.rs no longer loads {name}; update this test"
        );
        let def = format!("extern \"C\" __global__ void {name}(");
        assert!(cu.contains(&def), "kernels.cu does not define {def}");
    }
}
