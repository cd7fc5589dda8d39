//! A damaged settings file must not silently become defaults that overwrite it at the next
//! save. eframe reads its RON file and drops what it cannot parse without a word, so the file
//! is checked before the window opens: unreadable → copied aside as `app.ron.corrupt-<unix ms>`
//! and a line for the log; the window then starts with defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::settings::Settings;

/// eframe's settings file name inside its storage folder.
pub const SETTINGS_FILE: &str = "app.ron";

/// Part of every message about the settings file, so the window does not say it twice.
pub const SAID_BEFORE: &str = "started with default settings";

/// The settings file eframe uses for this app (`~/.local/share/<app id>/app.ron`).
pub fn settings_file_path() -> Option<PathBuf> {
    eframe::storage_dir(crate::APP_ID).map(|dir| dir.join(SETTINGS_FILE))
}

/// Why the settings file's text cannot be used, if it cannot.
fn problem(text: &str) -> Option<String> {
    let map: HashMap<String, String> = match ron::from_str(text) {
        Ok(map) => map,
        Err(err) => return Some(err.to_string()),
    };
    let value = map.get(eframe::APP_KEY)?;
    ron::from_str::<Settings>(value)
        .err()
        .map(|err| format!("the app's settings: {err}"))
}

/// Checks the settings file at `path`; when it is unreadable, copies it aside and returns the
/// message for the window. A missing or empty file is fine (first run).
pub fn check_settings_file(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let reason = match std::str::from_utf8(&bytes) {
        Ok(text) => problem(text)?,
        Err(err) => format!("not UTF-8 text: {err}"),
    };
    let name = path.file_name().map_or_else(
        || SETTINGS_FILE.into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let backup = path.with_file_name(format!("{name}.corrupt-{}", crate::library::now_ms()));
    let kept = match std::fs::copy(path, &backup) {
        Ok(_) => format!("the bad file was kept as {}", backup.display()),
        Err(err) => format!("it could not be kept ({err}: {})", backup.display()),
    };
    Some(format!(
        "the settings file {} could not be read ({reason}); GPU Scribe {SAID_BEFORE}, and {kept}",
        path.display()
    ))
}

/// The saved settings, or defaults and the reason when they cannot be read.
pub fn load_settings(storage: Option<&dyn eframe::Storage>) -> (Settings, Option<String>) {
    let Some(text) = storage.and_then(|s| s.get_string(eframe::APP_KEY)) else {
        return (Settings::default(), None);
    };
    match ron::from_str::<Settings>(&text) {
        Ok(settings) => (settings, None),
        Err(err) => (
            Settings::default(),
            Some(format!(
                "the saved settings could not be read ({err}); GPU Scribe {SAID_BEFORE}"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_kept_aside_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SETTINGS_FILE);
        assert_eq!(check_settings_file(&path), None, "missing is a first run");
        std::fs::write(&path, b"\x00\xffgarbage{{{").expect("write");
        let message = check_settings_file(&path).expect("reported");
        assert!(message.contains(SAID_BEFORE), "{message}");
        let backups: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p != &path)
            .collect();
        assert_eq!(backups.len(), 1, "{backups:?}");
        assert_eq!(
            std::fs::read(&backups[0]).expect("read"),
            b"\x00\xffgarbage{{{"
        );
        assert!(message.contains(&backups[0].display().to_string()));
    }

    #[test]
    fn a_bad_settings_value_inside_good_ron_is_reported_and_good_files_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SETTINGS_FILE);
        let good = ron::to_string(&Settings::default()).expect("ron");
        let mut map = HashMap::new();
        map.insert(eframe::APP_KEY.to_owned(), good);
        std::fs::write(&path, ron::to_string(&map).expect("ron")).expect("write");
        assert_eq!(check_settings_file(&path), None);
        map.insert(
            eframe::APP_KEY.to_owned(),
            "(device: 12, plot_window: [)".into(),
        );
        std::fs::write(&path, ron::to_string(&map).expect("ron")).expect("write");
        let message = check_settings_file(&path).expect("reported");
        assert!(message.contains("the app's settings"), "{message}");
    }
}
