//! The History tab's state: the rows last listed by the library thread, the search text, the
//! transcript opened, and the last deletion (for Undo). UI thread; no egui and no SQLite here:
//! requests go to [`LibraryService`], replies come back through [`HistoryView::apply`].

use std::time::{Duration, Instant};

use crate::library::service::{LibraryReply, LibraryRequest, LibraryService};
use crate::library::{HistoryEntry, StoredJob};

/// Most rows listed at once (the newest; a search reaches older ones).
pub const HISTORY_LIMIT: usize = 500;

/// Least time between two refreshes caused by writes (a busy queue writes many times a second).
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(300);

/// Whether the library is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LibraryState {
    /// Being opened.
    #[default]
    Opening,
    /// Open.
    Open,
    /// Cannot be used (the text says why).
    Unavailable(String),
}

/// The History tab.
#[derive(Debug, Default)]
pub struct HistoryView {
    /// The library's state.
    pub state: LibraryState,
    /// The search box.
    pub search: String,
    /// The rows of the newest answered list, newest first.
    pub entries: Vec<HistoryEntry>,
    /// How long the last list took on the library thread.
    pub last_query: Option<Duration>,
    /// The transcript shown (opened from a row).
    pub open: Option<Box<StoredJob>>,
    /// The row being opened.
    pub opening: Option<i64>,
    /// The last deleted row, for Undo.
    pub deleted: Option<HistoryEntry>,
    /// The last error from the library.
    pub error: Option<String>,
    reload_open: bool,
    sent_generation: u64,
    answered_generation: u64,
    /// Written since the last list: refresh when due.
    stale: bool,
    last_list: Option<Instant>,
}

impl HistoryView {
    /// A view whose library is in `state`.
    pub fn new(state: LibraryState) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// True until the newest list request is answered.
    pub fn is_loading(&self) -> bool {
        self.answered_generation < self.sent_generation
    }

    /// Asks for the rows matching the search box.
    pub fn request_list(&mut self, library: &mut LibraryService, now: Instant) {
        self.sent_generation += 1;
        self.stale = false;
        self.last_list = Some(now);
        let search = self.search.trim();
        library.send(LibraryRequest::List {
            search: (!search.is_empty()).then(|| search.to_owned()),
            limit: HISTORY_LIMIT,
            generation: self.sent_generation,
        });
    }

    /// Refreshes if something was written and the last list is old enough; returns the time
    /// until a refresh is due when one is waiting.
    pub fn refresh_if_due(
        &mut self,
        library: &mut LibraryService,
        now: Instant,
    ) -> Option<Duration> {
        if !self.stale || self.state != LibraryState::Open {
            return None;
        }
        let since = self
            .last_list
            .map_or(REFRESH_INTERVAL, |t| now.saturating_duration_since(t));
        if since >= REFRESH_INTERVAL {
            self.request_list(library, now);
            None
        } else {
            Some(REFRESH_INTERVAL - since)
        }
    }

    /// Takes in one reply. Returns lines for the message log (`true`: an error).
    pub fn apply(&mut self, reply: LibraryReply) -> Vec<(String, bool)> {
        match reply {
            LibraryReply::Opened(messages) => {
                self.state = LibraryState::Open;
                self.stale = true;
                // The log shows what went wrong while opening; a damaged file is an error.
                return messages
                    .into_iter()
                    .map(|m| {
                        let is_error = m.contains("damaged");
                        (m, is_error)
                    })
                    .collect();
            }
            LibraryReply::Unavailable(message) => {
                self.state = LibraryState::Unavailable(message.clone());
                return vec![(format!("history is off: {message}"), true)];
            }
            LibraryReply::Listed {
                generation,
                entries,
                took,
            } => {
                if generation >= self.answered_generation {
                    self.answered_generation = generation;
                    self.entries = entries;
                    self.last_query = Some(took);
                }
            }
            LibraryReply::Loaded(id, job) => {
                if self.opening == Some(id) {
                    self.opening = None;
                    self.open = job;
                }
            }
            LibraryReply::Resume(..) => {}
            LibraryReply::Changed => {
                self.stale = true;
                // The open transcript may still be arriving: reload it.
                self.reload_open |= self
                    .open
                    .as_ref()
                    .is_some_and(|open| open.entry.state.is_unfinished());
            }
            LibraryReply::Error(message) => {
                self.error = Some(message.clone());
                return vec![(message, true)];
            }
        }
        Vec::new()
    }

    /// Asks for one transcript (opening it, or reloading the open one).
    pub fn request_open(&mut self, library: &mut LibraryService, id: i64) {
        self.opening = Some(id);
        library.send(LibraryRequest::Get(id));
    }

    /// Reloads the open transcript if it changed while still arriving.
    pub fn reload_if_changed(&mut self, library: &mut LibraryService) {
        if std::mem::take(&mut self.reload_open)
            && let Some(id) = self.open.as_ref().map(|o| o.entry.id)
        {
            self.request_open(library, id);
        }
    }
}
