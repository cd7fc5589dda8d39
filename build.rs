//! Build script for `cuda` builds (nothing at all without `cuda`): the fused encoder kernels as
//! PTX (`build/ptx.rs`), and stand-in CUDA libraries.
//!
//! With `cuda`, candle links the CUDA libraries at link time, so `gpuscribe-worker` has DT_NEEDED
//! entries for libcuda.so.1, libcublas.so.13, libcurand.so.10 and libcudart.so.13 and the dynamic
//! loader refuses to start it where the NVIDIA driver or the CUDA runtime is missing, even for
//! CPU-only work. Here we build one small shared library per CUDA library the build links, with
//! the same SONAME, the same symbol version nodes and every function the real library exports,
//! each returning an error code. The engine puts them on the worker's `LD_LIBRARY_PATH` for
//! CPU-only work (see `src/engine/cuda_stubs.rs`); they are never called on the CPU path.
//!
//! Output: `$OUT_DIR/cuda-stubs/<soname>` and `$OUT_DIR/cuda_stubs.rs` (the list, with the
//! libraries embedded through `include_bytes!`). Tools: `nm` and `objdump` (binutils) to read the
//! real libraries, and the C compiler to build the stand-ins. Anything missing gives a cargo
//! warning and an empty list: a build never fails because of this script.

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/ptx.rs"]
mod ptx;

/// The link names (`-l<name>`) of the libraries a candle `cuda` build may need at load time.
/// libcublasLt comes in through libcublas, and libnvrtc is usually dropped by `--as-needed`,
/// but a stand-in costs a few kilobytes, so we cover them too.
const LINK_NAMES: &[&str] = &["cuda", "cudart", "cublas", "cublasLt", "curand", "nvrtc"];

/// Environment variables this script reads (besides cargo's own).
const ENV_VARS: &[&str] = &[
    "CUDA_ROOT",
    "CUDA_PATH",
    "CUDA_HOME",
    "CUDA_TOOLKIT_ROOT_DIR",
    "LIBRARY_PATH",
    "CC",
    "TARGET_CC",
    "NM",
    "OBJDUMP",
];

/// Functions that return a pointer rather than a status code. Returning a small integer from
/// them would hand the caller a wild pointer, so their stand-ins return a valid one.
const POINTER_RETURNING: &[&str] = &[
    "cudaGetErrorName",
    "cudaGetErrorString",
    "cublasGetStatusName",
    "cublasGetStatusString",
    "cublasLtGetStatusName",
    "cublasLtGetStatusString",
    "nvrtcGetErrorString",
    "__cudaRegisterFatBinary",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo:warning=OUT_DIR is not set; no stand-in CUDA libraries");
        return;
    };
    if let Err(message) = ptx::compile(&out_dir) {
        // candle's own kernels need the same nvcc, so a cuda build cannot go on without it.
        eprintln!("error: cannot build the fused CUDA kernels: {message}");
        std::process::exit(1);
    }
    let built = match build_stubs(&out_dir) {
        Ok(built) => built,
        Err(message) => {
            println!(
                "cargo:warning=stand-in CUDA libraries not built ({message}); the CPU fallback of the worker is unavailable where CUDA is missing"
            );
            Vec::new()
        }
    };
    install_cudart_for_the_app(&out_dir, &built);
    let list = out_dir.join("cuda_stubs.rs");
    if let Err(e) = std::fs::write(&list, generated_source(&built)) {
        // The crate's `include!` then fails with a clear "file not found", which names the file.
        println!("cargo:warning=cannot write {}: {e}", list.display());
    }
}

/// The app's own executable never calls CUDA, but candle-kernels' prebuilt objects (with their
/// fat-binary registration at start-up) come along with candle and give it a DT_NEEDED entry for
/// libcudart. So that the window starts where the CUDA runtime is missing, `gpuscribe` (only it,
/// not the worker) gets a RUNPATH to a folder holding the libcudart stand-in: next to the
/// executable (`<target>/<profile>/gpuscribe-cuda-stubs`, where cargo puts it) and
/// `../lib/gpuscribe/cuda-stubs` (where packages put it). A real libcudart on `LD_LIBRARY_PATH`
/// still wins, and the app never calls it either way.
fn install_cudart_for_the_app(out_dir: &Path, built: &[Built]) {
    let Some(cudart) = built.iter().find(|b| b.soname.starts_with("libcudart.so")) else {
        return;
    };
    // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out.
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        return;
    };
    let dir = profile_dir.join("gpuscribe-cuda-stubs");
    let copied = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::copy(&cudart.path, dir.join(&cudart.soname)));
    if let Err(e) = copied {
        println!(
            "cargo:warning=cannot place the libcudart stand-in in {}: {e}",
            dir.display()
        );
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=gpuscribe=-Wl,-rpath,$ORIGIN/gpuscribe-cuda-stubs:$ORIGIN/../lib/gpuscribe/cuda-stubs"
    );
}

/// One stand-in library: its SONAME and where it was built.
struct Built {
    soname: String,
    path: PathBuf,
}

/// Builds every stand-in it can; errors only if nothing can be done at all.
fn build_stubs(out_dir: &Path) -> Result<Vec<Built>, String> {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err(
            "only Linux targets load libraries through DT_NEEDED and LD_LIBRARY_PATH".into(),
        );
    }
    let cc = compiler()?;
    let dirs = search_dirs();
    let stub_dir = out_dir.join("cuda-stubs");
    std::fs::create_dir_all(&stub_dir)
        .map_err(|e| format!("cannot create {}: {e}", stub_dir.display()))?;
    let mut built = Vec::new();
    for name in LINK_NAMES {
        let Some(real) = find_library(name, &dirs) else {
            if *name != "nvrtc" && *name != "cublasLt" {
                println!(
                    "cargo:warning=lib{name}.so not found in the CUDA search path; no stand-in for it"
                );
            }
            continue;
        };
        println!("cargo:rerun-if-changed={}", real.display());
        match build_one(&cc, &real, name, &stub_dir) {
            Ok(one) => built.push(one),
            Err(message) => println!("cargo:warning=stand-in for {}: {message}", real.display()),
        }
    }
    if built.is_empty() {
        return Err(format!(
            "no CUDA library found in {} (set CUDA_ROOT)",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ));
    }
    Ok(built)
}

/// The C compiler for the target: cargo-style `CC_<target>`, `TARGET_CC`, `CC`, else `cc`
/// (refused when cross-compiling without one, since `cc` would build for the host).
fn compiler() -> Result<String, String> {
    let target = env::var("TARGET").unwrap_or_default();
    let per_target = format!("CC_{}", target.replace('-', "_"));
    println!("cargo:rerun-if-env-changed={per_target}");
    for var in [per_target.as_str(), "TARGET_CC", "CC"] {
        if let Ok(cc) = env::var(var)
            && !cc.trim().is_empty()
        {
            return Ok(cc);
        }
    }
    if env::var("HOST").ok() != Some(target) {
        return Err("cross-compiling without CC_<target>/TARGET_CC".into());
    }
    Ok("cc".into())
}

/// Where the linker finds the CUDA libraries, in the order we trust them.
fn search_dirs() -> Vec<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let targets = match arch.as_str() {
        "aarch64" => "targets/sbsa-linux/lib".to_owned(),
        other => format!("targets/{other}-linux/lib"),
    };
    let roots: Vec<PathBuf> = [
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_TOOLKIT_ROOT_DIR",
    ]
    .iter()
    .filter_map(env::var_os)
    .filter(|v| !v.is_empty())
    .map(PathBuf::from)
    .collect();
    let mut dirs = Vec::new();
    let subdirs = ["lib64", "lib", targets.as_str()];
    let push_root = |dirs: &mut Vec<PathBuf>, root: &Path| {
        for sub in subdirs {
            dirs.push(root.join(sub));
            dirs.push(root.join(sub).join("stubs"));
        }
    };
    for root in &roots {
        push_root(&mut dirs, root);
    }
    if let Some(paths) = env::var_os("LIBRARY_PATH") {
        dirs.extend(env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    push_root(&mut dirs, Path::new("/usr/local/cuda"));
    dirs.push(PathBuf::from(format!("/usr/lib/{arch}-linux-gnu")));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The file `-l<name>` would pick in `dirs` (`lib<name>.so`, following symlinks).
fn find_library(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let file = format!("lib{name}.so");
    dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file())
}

/// Reads the real library's SONAME and exports, and builds its stand-in.
fn build_one(cc: &str, real: &Path, name: &str, stub_dir: &Path) -> Result<Built, String> {
    let soname = read_soname(real)?.unwrap_or_else(|| format!("lib{name}.so"));
    if soname.contains('/') || soname.is_empty() {
        return Err(format!("odd SONAME {soname:?}"));
    }
    let exports = read_exports(real)?;
    if exports.is_empty() {
        return Err("it exports nothing".into());
    }
    let code = status_code(name);
    let work = stub_dir.join(format!("{soname}.build"));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let c_file = work.join("stub.c");
    std::fs::write(&c_file, c_source(&exports, code, &soname))
        .map_err(|e| format!("cannot write {}: {e}", c_file.display()))?;
    let out = stub_dir.join(&soname);
    let mut cmd = Command::new(cc);
    cmd.args(["-shared", "-fPIC", "-O1", "-s"])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(&out)
        .arg(&c_file);
    if let Some(script) = version_script(&exports) {
        let map = work.join("stub.map");
        std::fs::write(&map, script).map_err(|e| format!("cannot write {}: {e}", map.display()))?;
        cmd.arg(format!("-Wl,--version-script={}", map.display()));
    }
    run(&mut cmd)?;
    Ok(Built { soname, path: out })
}

/// What every stand-in function of this library returns: an error the caller understands.
fn status_code(name: &str) -> i32 {
    match name {
        // CUDA_ERROR_STUB_LIBRARY / cudaErrorStubLibrary: exactly what this is.
        "cuda" | "cudart" => 34,
        // CUBLAS_STATUS_NOT_INITIALIZED (cudarc maps cublasStatus_t to a Rust enum, so the
        // value must be one of its variants).
        "cublas" | "cublasLt" => 1,
        // CURAND_STATUS_INITIALIZATION_FAILED.
        "curand" => 203,
        // NVRTC_ERROR_INTERNAL_ERROR.
        "nvrtc" => 11,
        _ => 999,
    }
}

/// One exported symbol of the real library.
struct Export {
    name: String,
    /// The version node it is defined in (`@@node`); `None` if unversioned.
    version: Option<String>,
    /// `Some(size)` for data objects, `None` for functions.
    object_size: Option<u64>,
}

fn read_soname(lib: &Path) -> Result<Option<String>, String> {
    let text = run(Command::new(tool("OBJDUMP", "objdump")).arg("-p").arg(lib))?;
    Ok(text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("SONAME")).then(|| words.next().map(str::to_owned))?
    }))
}

/// `nm -D --defined-only -S --with-symbol-versions`: "value [size] type name[@@version]".
fn read_exports(lib: &Path) -> Result<Vec<Export>, String> {
    let text = run(Command::new(tool("NM", "nm"))
        .args(["-D", "--defined-only", "-S", "--with-symbol-versions"])
        .arg(lib))?;
    let mut by_name = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (size, kind, symbol) = match fields.as_slice() {
            [_, size, kind, symbol] => (u64::from_str_radix(size, 16).ok(), *kind, *symbol),
            [_, kind, symbol] => (None, *kind, *symbol),
            _ => continue,
        };
        // A non-default version (`name@node`) is an old alias: the default one is what new
        // binaries link against, and C cannot define one name twice without assembler tricks.
        let (name, version) = match symbol.split_once("@@") {
            Some((name, node)) => (name, Some(node.to_owned())),
            None if symbol.contains('@') => continue,
            None => (symbol, None),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
        {
            continue;
        }
        let object_size = match kind {
            "T" | "W" | "i" => None,
            // Data: keep the size, so that a copy relocation in a binary still fits.
            "D" | "B" | "R" | "V" | "G" | "S" => Some(size.unwrap_or(8).max(1)),
            // "A" is the version node's own absolute symbol, the linker makes that one.
            _ => continue,
        };
        by_name.insert(
            name.to_owned(),
            Export {
                name: name.to_owned(),
                version,
                object_size,
            },
        );
    }
    Ok(by_name.into_values().collect())
}

/// C source: one function per export (asm labels keep any symbol name legal in C).
fn c_source(exports: &[Export], code: i32, soname: &str) -> String {
    let mut c = format!(
        "/* Stand-in for {soname}, generated by gpuscribe's build.rs. Every function fails. */\n\
         static const char gs_message[4096] = \"{soname} stand-in (GPU Scribe): the real library is not installed\";\n"
    );
    for (i, e) in exports.iter().enumerate() {
        let name = &e.name;
        let line = match e.object_size {
            Some(size) => format!("char gs_obj_{i}[{size}] __asm__(\"{name}\") = {{0}};\n"),
            // The driver's error-text calls succeed with our message, so that the caller's error
            // (e.g. candle's `Device::new_cuda`) says what happened.
            None if name == "cuGetErrorString" || name == "cuGetErrorName" => format!(
                "int gs_fn_{i}(int e, const char **s) __asm__(\"{name}\");\nint gs_fn_{i}(int e, const char **s) {{ (void)e; if (!s) return 1; *s = gs_message; return 0; }}\n"
            ),
            None if POINTER_RETURNING.contains(&name.as_str()) => format!(
                "const void *gs_fn_{i}(void) __asm__(\"{name}\");\nconst void *gs_fn_{i}(void) {{ return gs_message; }}\n"
            ),
            None => format!(
                "int gs_fn_{i}(void) __asm__(\"{name}\");\nint gs_fn_{i}(void) {{ return {code}; }}\n"
            ),
        };
        c.push_str(&line);
    }
    c
}

/// A linker version script that recreates the real library's version nodes, or `None` when it
/// has none (like the driver stub); unversioned exports stay in the base version.
fn version_script(exports: &[Export]) -> Option<String> {
    let mut nodes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in exports {
        if let Some(node) = &e.version {
            nodes.entry(node).or_default().push(&e.name);
        }
    }
    if nodes.is_empty() {
        return None;
    }
    let mut script = String::new();
    for (node, names) in nodes {
        let _ = writeln!(script, "{node} {{\n  global:");
        for name in names {
            let _ = writeln!(script, "    \"{name}\";");
        }
        script.push_str("};\n");
    }
    Some(script)
}

fn tool(var: &str, default: &str) -> String {
    env::var(var)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Runs a command; its stdout, or a message naming the command and its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// FNV-1a over names and contents: names the cache folder, so a new set gets a new folder.
fn content_id(built: &[Built]) -> Result<String, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in built {
        let bytes =
            std::fs::read(&b.path).map_err(|e| format!("cannot read {}: {e}", b.path.display()))?;
        for byte in b.soname.bytes().chain([0]).chain(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

fn generated_source(built: &[Built]) -> String {
    let id = match content_id(built) {
        Ok(id) => id,
        Err(message) => {
            println!("cargo:warning={message}");
            return generated_source(&[]);
        }
    };
    let mut src = String::from(
        "// Generated by build.rs: the stand-in CUDA libraries, by SONAME.\n\
         pub(crate) const CUDA_STUBS: &[(&str, &[u8])] = &[\n",
    );
    for b in built {
        let _ = writeln!(
            src,
            "    ({:?}, include_bytes!({:?})),",
            b.soname,
            b.path.display().to_string()
        );
    }
    src.push_str("];\n");
    let _ = writeln!(
        src,
        "/// Names the set above (a hash of names and contents).\npub(crate) const CUDA_STUBS_ID: &str = {id:?};"
    );
    src
}
