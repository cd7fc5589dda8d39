//! Stand-in CUDA libraries, so that a `cuda` build still transcribes on the CPU where CUDA is
//! missing.
//!
//! Why: with `cuda`, candle links the CUDA libraries at link time, so `gpuscribe-worker` has
//! DT_NEEDED entries for libcuda.so.1 (driver), libcublas.so.13, libcurand.so.10 and
//! libcudart.so.13. Where the NVIDIA driver or the CUDA 13 runtime is not installed, the dynamic
//! loader refuses to start the worker at all ("error while loading shared libraries:
//! libcublas.so.13: cannot open shared object file"), even for CPU-only work. The app's own
//! binary never calls candle, so it starts fine and can react.
//!
//! How: `build.rs` builds, for each CUDA library the build links, a small library with the same
//! SONAME, the same symbol version node (e.g. `libcublas.so.13`) and every function the real one
//! exports, each returning an error code (`CUDA_ERROR_STUB_LIBRARY`, `cudaErrorStubLibrary`,
//! `CUBLAS_STATUS_NOT_INITIALIZED`, ...). They are embedded in the binary. When the worker fails to
//! start with [`is_missing_library_error`], the engine restarts it for CPU-only work with
//! [`stub_library_dir`] appended to `LD_LIBRARY_PATH` ([`ld_library_path_with`]). Candle touches
//! CUDA only when a CUDA device is created, and that worker gets a CPU device, so the stand-ins are
//! never called; if something did call one, it gets an error, not a crash
//! (`Device::new_cuda(0)` fails with `CUDA_ERROR_STUB_LIBRARY`).
//!
//! Note: `LD_LIBRARY_PATH` is searched before the system's library cache, so in that worker the
//! stand-ins also hide real CUDA libraries installed in system folders (those in earlier
//! `LD_LIBRARY_PATH` entries still win). That is harmless for a CPU-only worker; never give this
//! environment to a worker meant for a GPU.
//!
//! Runs on the engine thread (when it starts a worker); the files are written once per set.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

#[cfg(feature = "cuda")]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/cuda_stubs.rs"));
}

/// The stand-in libraries embedded in this build, as (SONAME, contents); empty without `cuda`
/// (or when the build found no CUDA toolkit, which it reports as a cargo warning).
pub fn embedded_stubs() -> &'static [(&'static str, &'static [u8])] {
    #[cfg(feature = "cuda")]
    {
        generated::CUDA_STUBS
    }
    #[cfg(not(feature = "cuda"))]
    {
        &[]
    }
}

/// Whether this build carries a stand-in for `soname` (a name from [`is_missing_library_error`]).
/// If it does not, restarting the worker with the stand-ins cannot help.
pub fn has_stub_for(soname: &str) -> bool {
    embedded_stubs().iter().any(|(name, _)| *name == soname)
}

/// The folder of stand-in CUDA libraries for a CPU-only worker, written into the app's cache
/// folder on first use (`<cache>/cuda-stubs-<id>`); `Ok(None)` in builds without `cuda` or without
/// embedded stand-ins. Errors: no home folder to put the cache in, or the files cannot be written.
pub fn stub_library_dir() -> io::Result<Option<PathBuf>> {
    let stubs = embedded_stubs();
    if stubs.is_empty() {
        return Ok(None);
    }
    let dirs =
        directories::ProjectDirs::from("io.github", "gpuscribe", "GpuScribe").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no home folder: cannot place the stand-in CUDA libraries in a cache folder",
            )
        })?;
    install_stubs(dirs.cache_dir(), stubs_id(), stubs).map(Some)
}

#[cfg(feature = "cuda")]
fn stubs_id() -> &'static str {
    generated::CUDA_STUBS_ID
}

#[cfg(not(feature = "cuda"))]
fn stubs_id() -> &'static str {
    "none"
}

/// Writes `stubs` (file name, contents) into `<base>/cuda-stubs-<id>` unless that folder already
/// holds them, and returns the folder. Atomic: the files go into a temporary folder next to it,
/// which is then renamed, so a concurrent or interrupted run never leaves a half-written folder
/// behind the final name. A final folder whose files do not match (damaged by hand) is replaced.
pub fn install_stubs(base: &Path, id: &str, stubs: &[(&str, &[u8])]) -> io::Result<PathBuf> {
    for name in std::iter::once(&id).chain(stubs.iter().map(|(name, _)| name)) {
        if name.is_empty() || name.contains(['/', '\0']) || *name == "." || *name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("stand-in library name {name:?} is not a plain file name"),
            ));
        }
    }
    let target = base.join(format!("cuda-stubs-{id}"));
    if holds(&target, stubs) {
        return Ok(target);
    }
    std::fs::create_dir_all(base).map_err(|e| with_path(&e, "cannot create", base))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let temp = base.join(format!(
        ".cuda-stubs-{id}.tmp-{}-{nanos}",
        std::process::id()
    ));
    let result = write_and_rename(&temp, &target, stubs);
    if temp.exists() {
        // Best effort: a leftover temp folder only costs disk space.
        std::fs::remove_dir_all(&temp).ok();
    }
    result.map(|()| target)
}

fn write_and_rename(temp: &Path, target: &Path, stubs: &[(&str, &[u8])]) -> io::Result<()> {
    std::fs::create_dir(temp).map_err(|e| with_path(&e, "cannot create", temp))?;
    for (name, bytes) in stubs {
        let file = temp.join(name);
        std::fs::write(&file, bytes).map_err(|e| with_path(&e, "cannot write", &file))?;
    }
    if target.exists() && !holds(target, stubs) {
        std::fs::remove_dir_all(target).map_err(|e| with_path(&e, "cannot replace", target))?;
    }
    match std::fs::rename(temp, target) {
        Ok(()) => Ok(()),
        // Another process won the race (rename onto a non-empty folder fails): use theirs.
        Err(_) if holds(target, stubs) => Ok(()),
        Err(e) => Err(with_path(&e, "cannot rename into", target)),
    }
}

/// Whether `dir` holds exactly these files with these contents.
fn holds(dir: &Path, stubs: &[(&str, &[u8])]) -> bool {
    stubs
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|found| found == *bytes))
}

fn with_path(e: &io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The dynamic loader's message for a library it cannot find, as the worker's stderr shows it:
/// `gpuscribe-worker: error while loading shared libraries: libcublas.so.13: cannot open shared
/// object file: No such file or directory`. Returns the library's name (`libcublas.so.13`), or
/// `None` for any other output. The loader reports only the first library it misses.
pub fn is_missing_library_error(stderr: &str) -> Option<String> {
    const LOADING: &str = "error while loading shared libraries: ";
    const CANNOT_OPEN: &str = ": cannot open shared object file";
    stderr.lines().find_map(|line| {
        let (_, rest) = line.split_once(LOADING)?;
        let (name, _) = rest.split_once(CANNOT_OPEN)?;
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_owned())
    })
}

/// `LD_LIBRARY_PATH` for the CPU-only worker: `current` (the app's own value) with `dir` appended,
/// so that libraries found earlier on the path still win over the stand-ins.
pub fn ld_library_path_with(current: Option<&OsStr>, dir: &Path) -> OsString {
    let mut paths: Vec<PathBuf> = current
        .map(|c| {
            std::env::split_paths(c)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !paths.iter().any(|p| p == dir) {
        paths.push(dir.to_path_buf());
    }
    // Only fails on a path containing ':', which the cache folder never does; fall back to the
    // folder alone rather than dropping it.
    std::env::join_paths(&paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_loaders_message() {
        let stderr = "target/release/gpuscribe-worker: error while loading shared libraries: \
                      libcublas.so.13: cannot open shared object file: No such file or directory\n";
        assert_eq!(
            is_missing_library_error(stderr).as_deref(),
            Some("libcublas.so.13")
        );
    }

    #[test]
    fn finds_the_message_among_other_lines() {
        let stderr = "some log line\n./w: error while loading shared libraries: libcuda.so.1: \
                      cannot open shared object file: No such file or directory";
        assert_eq!(
            is_missing_library_error(stderr).as_deref(),
            Some("libcuda.so.1")
        );
    }

    #[test]
    fn ignores_other_failures() {
        for stderr in [
            "",
            "thread 'main' panicked at src/main.rs:1:1",
            // A library found but too old is another problem: stand-ins appended cannot fix it.
            "./w: symbol lookup error: ./w: undefined symbol: cublasFoo, version libcublas.so.13",
            "./w: error while loading shared libraries: libx.so: wrong ELF class: ELFCLASS32",
            "error while loading shared libraries: : cannot open shared object file",
        ] {
            assert_eq!(is_missing_library_error(stderr), None, "{stderr:?}");
        }
    }

    #[test]
    fn appends_to_the_library_path() {
        let dir = Path::new("/cache/cuda-stubs-1");
        assert_eq!(
            ld_library_path_with(None, dir),
            OsString::from("/cache/cuda-stubs-1")
        );
        assert_eq!(
            ld_library_path_with(Some(OsStr::new("/opt/cuda/lib:")), dir),
            OsString::from("/opt/cuda/lib:/cache/cuda-stubs-1")
        );
        assert_eq!(
            ld_library_path_with(Some(OsStr::new("/cache/cuda-stubs-1")), dir),
            OsString::from("/cache/cuda-stubs-1")
        );
    }

    #[test]
    fn installs_once_and_repairs() -> io::Result<()> {
        let base = tempfile::tempdir()?;
        let stubs: &[(&str, &[u8])] = &[("liba.so.1", b"one"), ("libb.so.2", b"two")];
        let dir = install_stubs(base.path(), "abc", stubs)?;
        assert_eq!(dir, base.path().join("cuda-stubs-abc"));
        assert_eq!(std::fs::read(dir.join("libb.so.2"))?, b"two");
        // Only the final folder is left, no temporary one.
        assert_eq!(std::fs::read_dir(base.path())?.count(), 1);

        // Present: nothing is rewritten (a marker file survives).
        std::fs::write(dir.join("marker"), b"")?;
        install_stubs(base.path(), "abc", stubs)?;
        assert!(dir.join("marker").exists());

        // Damaged: replaced.
        std::fs::write(dir.join("liba.so.1"), b"broken")?;
        install_stubs(base.path(), "abc", stubs)?;
        assert_eq!(std::fs::read(dir.join("liba.so.1"))?, b"one");
        assert!(!dir.join("marker").exists());
        Ok(())
    }

    #[test]
    fn refuses_names_that_are_paths() {
        let base = std::env::temp_dir();
        for (id, name) in [("abc", "../liba.so"), ("a/b", "liba.so"), ("abc", "")] {
            let stubs: &[(&str, &[u8])] = &[(name, b"x")];
            let err = install_stubs(&base, id, stubs).err();
            assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        }
    }

    /// Runs where the CUDA libraries (or these stand-ins) can be loaded: a `cuda` test binary
    /// links them too.
    #[cfg(feature = "cuda")]
    #[test]
    fn embedded_stubs_are_shared_libraries_named_by_their_soname() {
        const ET_DYN: u16 = 3;
        assert!(
            !embedded_stubs().is_empty(),
            "the build found no CUDA toolkit"
        );
        for (soname, bytes) in embedded_stubs() {
            assert_eq!(bytes.get(..4), Some(&b"\x7fELF"[..]), "{soname}");
            assert_eq!(
                bytes.get(16..18),
                Some(&ET_DYN.to_le_bytes()[..]),
                "{soname}"
            );
            let needle = format!("{soname}\0");
            assert!(
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{soname} does not name itself"
            );
            assert!(has_stub_for(soname));
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn no_stubs_without_cuda() -> io::Result<()> {
        assert!(embedded_stubs().is_empty());
        assert_eq!(stub_library_dir()?, None);
        assert!(!has_stub_for("libcublas.so.13"));
        Ok(())
    }
}
