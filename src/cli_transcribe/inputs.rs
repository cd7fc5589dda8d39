//! The input list (`--files-from`, paths as raw bytes) and the output name of every input.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::shard::fnv1a64;

/// Splits a list into paths: one per line (`\n`, a trailing `\r` dropped) or, with `nul`, one per
/// NUL byte (`find -print0`). Empty entries are skipped. On Unix the bytes are the path, so names
/// that are not UTF-8 survive; elsewhere they are read as UTF-8.
pub fn parse_list(bytes: &[u8], nul: bool) -> Vec<PathBuf> {
    let separator = if nul { 0 } else { b'\n' };
    bytes
        .split(|&b| b == separator)
        .map(|entry| {
            if nul {
                entry
            } else {
                entry.strip_suffix(b"\r").unwrap_or(entry)
            }
        })
        .filter(|entry| !entry.is_empty())
        .map(path_from_bytes)
        .collect()
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Reads the list at `source` (`-`: stdin).
pub fn read_list(source: &Path, nul: bool) -> Result<Vec<PathBuf>, String> {
    let bytes = if source == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    } else {
        std::fs::read(source)
    }
    .map_err(|err| format!("cannot read the file list {}: {err}", source.display()))?;
    Ok(parse_list(&bytes, nul))
}

/// The paths with exact repeats removed (first one kept); returns how many were dropped.
pub fn dedupe(paths: Vec<PathBuf>) -> (Vec<PathBuf>, usize) {
    let mut seen = HashSet::new();
    let before = paths.len();
    let unique: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect();
    let dropped = before - unique.len();
    (unique, dropped)
}

/// One input's output file name, and the first input that holds the plain name when this one had
/// to take another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputName {
    /// `<stem>.<ext>`, or `<stem>.<8 hex digits>.<ext>` when an earlier input has the same stem.
    pub name: OsString,
    /// The earlier input with the same stem, if any.
    pub clashes_with: Option<PathBuf>,
}

fn stem_of(path: &Path) -> OsString {
    path.file_stem()
        .map_or_else(|| OsString::from("transcript"), OsStr::to_owned)
}

fn with_ext(stem: &OsStr, tag: Option<&str>, extension: &str) -> OsString {
    let mut name = stem.to_owned();
    if let Some(tag) = tag {
        name.push(".");
        name.push(tag);
    }
    name.push(".");
    name.push(extension);
    name
}

/// Output names for `paths` (the whole list, before sharding, so every shard agrees): the first
/// input with a stem gets `<stem>.<ext>`; a later one with the same stem gets
/// `<stem>.<first 8 hex digits of fnv1a64(path)>.<ext>` (then 16 digits, then a counter, should
/// even that be taken). The result depends only on the list, never on what is on disk.
pub fn output_names(paths: &[PathBuf], extension: &str) -> Vec<OutputName> {
    let mut taken: HashSet<OsString> = HashSet::new();
    let mut first_with_stem: HashMap<OsString, &Path> = HashMap::new();
    // Plain names first, so a suffixed name never takes another input's plain one.
    let mut names: Vec<Option<OutputName>> = paths
        .iter()
        .map(|path| {
            let stem = stem_of(path);
            if first_with_stem.contains_key(&stem) {
                return None;
            }
            first_with_stem.insert(stem.clone(), path);
            let name = with_ext(&stem, None, extension);
            taken.insert(name.clone());
            Some(OutputName {
                name,
                clashes_with: None,
            })
        })
        .collect();
    for (path, slot) in paths.iter().zip(names.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let stem = stem_of(path);
        let hash = format!("{:016x}", fnv1a64(path.as_os_str().as_encoded_bytes()));
        let mut candidates = [&hash[..8], &hash[..]]
            .into_iter()
            .map(|tag| with_ext(&stem, Some(tag), extension))
            .chain((2u64..).map(|n| with_ext(&stem, Some(&format!("{hash}-{n}")), extension)));
        let name = candidates
            .find(|name| !taken.contains(name))
            .unwrap_or_default();
        taken.insert(name.clone());
        *slot = Some(OutputName {
            name,
            clashes_with: first_with_stem.get(&stem).map(|p| p.to_path_buf()),
        });
    }
    names.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_newlines_or_nul_and_keep_odd_names() {
        let list = b"a.wav\r\n\n  spaced name.mp3\n/x/y/z.flac";
        assert_eq!(
            parse_list(list, false),
            [
                PathBuf::from("a.wav"),
                PathBuf::from("  spaced name.mp3"),
                PathBuf::from("/x/y/z.flac")
            ]
        );
        assert_eq!(
            parse_list(b"line\nbreak.wav\0b.wav\0", true),
            [PathBuf::from("line\nbreak.wav"), PathBuf::from("b.wav")]
        );
        assert!(parse_list(b"\n\n", false).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_survive_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt as _;
        let paths = parse_list(b"caf\xe9.wav\n", false);
        assert_eq!(paths[0].as_os_str().as_bytes(), b"caf\xe9.wav");
        let names = output_names(&paths, "txt");
        assert_eq!(names[0].name.as_bytes(), b"caf\xe9.txt");
    }

    #[test]
    fn same_stems_get_distinct_stable_names() {
        let paths: Vec<PathBuf> = ["a/talk.wav", "b/talk.mp3", "c/other.wav", "d/talk.wav"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let names = output_names(&paths, "srt");
        assert_eq!(names[0].name, "talk.srt");
        assert_eq!(names[0].clashes_with, None);
        assert_eq!(names[2].name, "other.srt");
        let hash = format!("{:016x}", fnv1a64(b"b/talk.mp3"));
        assert_eq!(
            names[1].name,
            OsString::from(format!("talk.{}.srt", &hash[..8]))
        );
        assert_eq!(names[1].clashes_with, Some(PathBuf::from("a/talk.wav")));
        let unique: HashSet<&OsString> = names.iter().map(|n| &n.name).collect();
        assert_eq!(unique.len(), 4);
        assert_eq!(
            output_names(&paths, "srt"),
            names,
            "the same list, the same names"
        );
        // A real file whose stem looks like a suffixed name keeps its plain name.
        let tricky = vec![
            PathBuf::from("a/talk.wav"),
            PathBuf::from("b/talk.wav"),
            PathBuf::from(format!(
                "talk.{}.wav",
                &format!("{:016x}", fnv1a64(b"b/talk.wav"))[..8]
            )),
        ];
        let names = output_names(&tricky, "txt");
        let unique: HashSet<&OsString> = names.iter().map(|n| &n.name).collect();
        assert_eq!(unique.len(), 3, "{names:?}");
    }

    #[test]
    fn repeats_are_dropped_once() {
        let (paths, dropped) = dedupe(vec!["a".into(), "b".into(), "a".into()]);
        assert_eq!(paths, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(dropped, 1);
    }
}
