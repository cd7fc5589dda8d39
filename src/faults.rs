//! Panics of any thread, for the window: a panic hook keeps a short list of "which thread, what,
//! where" that the UI drains into its message log (a dead GPU monitor, recorder or task thread
//! is otherwise silent), and wakes the UI.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// Reports kept until the UI takes them.
const KEEP: usize = 32;

static REPORTS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static WAKER: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Installs the hook (the previous one still runs, so the panic is also printed).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        record(info);
        previous(info);
    }));
}

/// Wakes the UI after a report (set once, when the window exists).
pub fn set_waker(waker: Box<dyn Fn() + Send + Sync>) {
    if WAKER.set(waker).is_err() {
        tracing::debug!("the panic report waker was already set");
    }
}

/// Reports since the last call, oldest first.
pub fn take_reports() -> Vec<String> {
    REPORTS
        .lock()
        .map(|mut reports| reports.drain(..).collect())
        .unwrap_or_default()
}

fn record(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    let place = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let report = format!("the {name} thread panicked: {message}{place}");
    // A panic while the list is locked (in this very function) must not deadlock.
    if let Ok(mut reports) = REPORTS.try_lock() {
        if reports.len() == KEEP {
            reports.pop_front();
        }
        reports.push_back(report);
    }
    if let Some(wake) = WAKER.get() {
        wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_is_reported_by_name() {
        install_panic_hook();
        let joined = std::thread::Builder::new()
            .name("recorder-under-test".to_owned())
            .spawn(|| panic!("the device vanished"))
            .expect("spawn")
            .join();
        assert!(joined.is_err());
        let reports = take_reports();
        assert!(
            reports.iter().any(|r| r.starts_with(
                "the recorder-under-test thread panicked: the device vanished at src/faults.rs:"
            )),
            "{reports:?}"
        );
    }
}
