//! Compiles the fused encoder kernels (`src/model/sensevoice/kernels.cu`) to PTX with nvcc for
//! `cuda` builds, for the same compute capability as candle's own kernels (`CUDA_COMPUTE_CAP`,
//! else the first GPU `nvidia-smi` lists). PTX runs on that capability and newer (the driver
//! compiles it on first load and caches the result).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/model/sensevoice/kernels.cu";

/// Writes `$OUT_DIR/sensevoice_kernels.ptx`, or returns why it could not.
pub fn compile(out_dir: &Path) -> Result<(), String> {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let cap = compute_cap()?;
    let nvcc = nvcc();
    let out = out_dir.join("sensevoice_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--use_fast_math", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg(SOURCE)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !status.success() {
        return Err(format!("{} failed on {SOURCE} ({status})", nvcc.display()));
    }
    // The kernels that need tensor-core instructions exist only from compute capability 8.0.
    println!("cargo:rustc-env=GPUSCRIBE_PTX_CAP={cap}");
    Ok(())
}

fn compute_cap() -> Result<String, String> {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP")
        && !cap.trim().is_empty()
    {
        return Ok(cap.trim().replace('.', ""));
    }
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .map_err(|e| format!("CUDA_COMPUTE_CAP is not set and nvidia-smi cannot run ({e})"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().replace('.', ""))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| "CUDA_COMPUTE_CAP is not set and nvidia-smi lists no GPU".to_owned())
}

fn nvcc() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        return PathBuf::from(nvcc);
    }
    for root in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(root).filter(|v| !v.is_empty()) {
            let candidate = PathBuf::from(root).join("bin/nvcc");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}
