//! Turning dropped or picked paths into the audio files to queue, and where recordings go.
//! Runs on the UI thread (folder listing is bounded, see [`MAX_FOLDER_FILES`]).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File extensions taken from a dropped folder (lower case).
pub const AUDIO_EXTENSIONS: [&str; 11] = [
    "wav", "mp3", "flac", "ogg", "oga", "m4a", "mp4", "aac", "opus", "webm", "mkv",
];

/// Most files taken from one dropped folder, so a drop of `/` cannot stall the window.
pub const MAX_FOLDER_FILES: usize = 2000;

/// How deep a dropped folder is searched.
const MAX_FOLDER_DEPTH: usize = 4;

/// Whether `path` has one of [`AUDIO_EXTENSIONS`].
pub fn is_audio_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The files to queue for `paths`: a file is taken as it is (a bad one becomes an error row), a
/// folder gives its audio files, sorted by path, searched a few levels deep.
pub fn expand_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            collect_audio(path, MAX_FOLDER_DEPTH, &mut found);
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
}

fn collect_audio(dir: &Path, depth_left: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!("cannot list the dropped folder: {}", dir.display());
        return;
    };
    for entry in entries.flatten() {
        if out.len() >= MAX_FOLDER_FILES {
            return;
        }
        let path = entry.path();
        if path.is_dir() {
            if depth_left > 0 {
                collect_audio(&path, depth_left - 1, out);
            }
        } else if is_audio_file(&path) {
            out.push(path);
        }
    }
}

/// The default recordings folder: `<data dir>/recordings` (e.g.
/// `~/.local/share/gpuscribe/recordings`; see [`crate::library::data_dir`]).
pub fn default_recordings_dir() -> PathBuf {
    crate::library::data_dir().join("recordings")
}

/// A new recording's file name from the wall clock, in UTC, to the millisecond:
/// `20261123-142501.123Z.wav`. Two recordings in the same millisecond still get two files: the
/// writer takes the next free `-2`, `-3`, … name and never truncates one.
pub fn recording_file_name(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}.{millis:03}Z.wav",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn folders_give_their_audio_files_and_files_pass_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.WAV", "a.mp3", "notes.txt", "sub/c.flac"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"x").expect("write");
        }
        let loose = dir.path().join("notes.txt");
        let files = expand_paths(&[dir.path().to_path_buf(), loose.clone()]);
        let names: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("inside")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a.mp3", "b.WAV", "sub/c.flac", "notes.txt"]);
    }

    #[test]
    fn recording_names_are_utc_timestamps() {
        // 2024-02-29 23:59:58 UTC, checked with `date -u -d @1709251198`.
        let at = UNIX_EPOCH + Duration::from_millis(1_709_251_198_042);
        assert_eq!(recording_file_name(at), "20240229-235958.042Z.wav");
        assert_eq!(recording_file_name(UNIX_EPOCH), "19700101-000000.000Z.wav");
    }
}
