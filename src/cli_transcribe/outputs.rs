//! Durable outputs and the per-shard summary.
//!
//! Every output appears only through [`write_durable`]: a temporary file in the same folder
//! (`.<name>.<pid>-<n>.tmp`), written, `fsync`ed, renamed over the final name, then the folder
//! `fsync`ed. A process killed at any point leaves either no output or a complete one (and maybe a
//! hidden `.tmp` file, which nothing reads), so **an output that exists is complete**; that is all
//! `--skip-existing` checks.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::shard::Shard;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `path` so that `path` is either absent, the old file, or complete.
pub fn write_durable(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path, "");
    let dir = folder_of(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        std::fs::remove_file(temp).ok();
    }
    result
}

/// The folder `path` is in (`.` for a bare name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A fresh hidden temporary name beside `path`: `.<name><part>.<pid>-<n>.tmp`.
pub fn temp_path(path: &Path, part: &str) -> PathBuf {
    let mut temp_name = OsString::from(".");
    temp_name.push(path.file_name().unwrap_or_default());
    temp_name.push(format!(
        "{part}.{}-{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    folder_of(path).join(temp_name)
}

/// Makes a rename in `dir` durable (a no-op where folders cannot be opened).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether a complete output is already at `path` (see the module docs).
pub fn output_exists(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// A path for JSON: text (lossy where it is not UTF-8) plus its bytes in hex when it is not.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct JsonPath {
    /// The path as text.
    pub path: String,
    /// The path's bytes in hex, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
}

impl From<&Path> for JsonPath {
    fn from(path: &Path) -> Self {
        let bytes = path.as_os_str().as_encoded_bytes();
        Self {
            path: path.to_string_lossy().into_owned(),
            path_hex: path.to_str().is_none().then(|| {
                bytes.iter().fold(String::new(), |mut s, b| {
                    s.push_str(&format!("{b:02x}"));
                    s
                })
            }),
        }
    }
}

/// A transcribed file.
#[derive(Clone, Debug, Serialize)]
pub struct DoneFile {
    /// The input.
    pub input: JsonPath,
    /// Where its transcript went (`null`: stdout).
    pub output: Option<JsonPath>,
    /// Decoded length, seconds.
    pub audio_s: f64,
    /// "GPU 0", "CPU".
    pub device: String,
    /// Time in the engine, seconds.
    pub engine_s: f64,
}

/// A file skipped because its output exists.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedFile {
    /// The input.
    pub input: JsonPath,
    /// Its existing output.
    pub output: JsonPath,
}

/// Why a file failed.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The file itself: it cannot be opened or decoded. Retrying will not help.
    Input,
    /// This node: the model, the device or the output folder. Another try may work.
    Node,
}

/// A file that failed.
#[derive(Clone, Debug, Serialize)]
pub struct FailedFile {
    /// The input.
    pub input: JsonPath,
    /// What went wrong.
    pub reason: String,
    /// Whose fault.
    pub cause: Cause,
}

/// The per-shard summary (`schema_version` 1).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Bumped when a field changes meaning.
    pub schema_version: u32,
    /// "ok", "some_failed" or "node_failed".
    pub status: &'static str,
    /// The process's exit status.
    pub exit_code: u8,
    /// This shard, 0-based.
    pub shard_index: u64,
    /// How many shards.
    pub shard_count: u64,
    /// The node's host name.
    pub host: String,
    /// Why this node could not work, if it could not.
    pub node_error: Option<String>,
    /// Files in the whole list.
    pub listed: usize,
    /// Files of this shard.
    pub assigned: usize,
    /// Transcribed now.
    pub done: Vec<DoneFile>,
    /// Output already there.
    pub skipped: Vec<SkippedFile>,
    /// Failed, with reasons.
    pub failed: Vec<FailedFile>,
    /// Never started because the node failed first (a re-run does them).
    pub not_run: Vec<JsonPath>,
    /// Seconds of audio transcribed now.
    pub audio_s: f64,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
    /// Start, Unix ms.
    pub started_at_unix_ms: u64,
    /// End, Unix ms.
    pub finished_at_unix_ms: u64,
}

impl Summary {
    /// An empty summary for `shard`.
    pub fn new(shard: Shard, started_at_unix_ms: u64) -> Self {
        Self {
            schema_version: 1,
            status: "ok",
            exit_code: 0,
            shard_index: shard.index,
            shard_count: shard.count,
            host: host_name(),
            node_error: None,
            listed: 0,
            assigned: 0,
            done: Vec::new(),
            skipped: Vec::new(),
            failed: Vec::new(),
            not_run: Vec::new(),
            audio_s: 0.0,
            wall_s: 0.0,
            started_at_unix_ms,
            finished_at_unix_ms: started_at_unix_ms,
        }
    }

    /// The default place: `<output-dir>/summary/shard-K-of-N.json`.
    pub fn default_path(output_dir: &Path, shard: Shard) -> PathBuf {
        output_dir
            .join("summary")
            .join(format!("shard-{}-of-{}.json", shard.index, shard.count))
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_replaces_and_leaves_only_the_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.txt");
        assert!(!output_exists(&path));
        write_durable(&path, b"one").expect("write");
        write_durable(&path, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert!(output_exists(&path));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [OsString::from("out.txt")]);
        assert!(write_durable(&dir.path().join("missing/x.txt"), b"x").is_err());
        assert!(!output_exists(dir.path()), "a folder is not an output");
    }

    #[cfg(unix)]
    #[test]
    fn json_paths_keep_non_utf8_bytes_in_hex() {
        use std::os::unix::ffi::OsStrExt as _;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/a/caf\xe9.wav"));
        let json = JsonPath::from(path);
        assert_eq!(json.path_hex.as_deref(), Some("2f612f636166e92e776176"));
        assert_eq!(JsonPath::from(Path::new("/a/b.wav")).path_hex, None);
    }
}
