//! The microphone's state as the UI sees it. UI thread; the recording itself runs on the
//! `audio-capture` thread behind [`RecorderHandle`].

use std::time::Duration;

use crate::audio::{DeviceList, Level, RecorderHandle, TapReceiver};
use crate::engine::{DecodeSettings, EngineHandle};
use crate::live::{LiveConfig, LiveDriver, LiveLine, LiveUpdate};

/// Where the recorder stands.
#[derive(Default)]
pub enum RecordState {
    /// Not recording.
    #[default]
    Idle,
    /// The device is being opened.
    Starting,
    /// Audio flows into the WAV file.
    Recording(RecorderHandle),
    /// The file is being finalised.
    Stopping,
}

/// The recorder and its device list.
#[derive(Default)]
pub struct RecordingView {
    /// Where the recorder stands.
    pub state: RecordState,
    /// The input devices; `None` while they are being listed.
    pub devices: Option<DeviceList>,
    /// The last recording error, shown until the next attempt.
    pub error: Option<String>,
    /// Frames the last recording lost (shown until the next one starts).
    pub last_dropped_frames: u64,
    /// Live captions of the recording in progress.
    pub live: Option<LiveView>,
    /// The live lines of the last recording, until its transcript is done.
    pub kept_live: Option<KeptLive>,
}

/// A stopped recording's live lines, shown while the saved file is transcribed. They go once
/// every part's transcript is done; if one fails (or the file could not be queued) they stay
/// until the next recording, so nothing transcribed is lost.
#[derive(Clone, Debug, PartialEq)]
pub struct KeptLive {
    /// The final lines, and the last partial (still partial) if the recording stopped mid-word.
    pub lines: Vec<LiveLine>,
    /// The recording's jobs.
    pub jobs: Vec<crate::engine::JobId>,
}

/// Live captions while recording: the tap from the capture thread, the live session on the
/// engine, and the lines so far. Lives from Record until the recording is handed over.
pub struct LiveView {
    /// The live session.
    pub driver: LiveDriver,
    /// Audio from the capture thread.
    pub tap: TapReceiver,
    /// Finished utterances, in order.
    pub finals: Vec<LiveLine>,
    /// The utterance being spoken, as last decoded.
    pub partial: Option<LiveLine>,
    /// Utterances that failed or were dropped, for the log.
    pub problems: Vec<String>,
    /// What the engine said about live clips so far, without the clips' names.
    seen_notices: std::collections::HashSet<String>,
}

impl LiveView {
    /// A view over `tap`, transcribing with `settings`.
    pub fn new(tap: TapReceiver, settings: DecodeSettings) -> Self {
        Self {
            driver: LiveDriver::new(LiveConfig::default(), settings),
            tap,
            finals: Vec::new(),
            partial: None,
            problems: Vec::new(),
            seen_notices: std::collections::HashSet::new(),
        }
    }

    /// Whether an engine notice is worth logging: a notice about a live clip (`live audio
    /// 2.62–4.85 s: running on CPU …`, which a fallback sends for every clip) is logged the first
    /// time only; other notices always.
    pub fn first_notice(&mut self, text: &str) -> bool {
        match text
            .strip_prefix("live audio ")
            .and_then(|rest| rest.split_once(": "))
        {
            Some((_, what)) => self.seen_notices.insert(what.to_owned()),
            None => true,
        }
    }

    /// Takes the audio captured since the last frame and sends the next clip if the model is
    /// free. UI thread; cheap (the VAD runs at thousands of times real time).
    pub fn feed(&mut self, engine: &EngineHandle) {
        let mut updates = Vec::new();
        for chunk in self.tap.chunks.try_iter() {
            self.driver.push(&chunk, &mut updates);
        }
        for update in updates {
            self.apply(update);
        }
        self.driver.pump(engine);
    }

    /// The lines shown, in order: the finals, then the partial if there is one.
    pub fn into_lines(self) -> Vec<LiveLine> {
        let mut lines = self.finals;
        lines.extend(self.partial);
        lines
    }

    /// Shows an update: a final replaces the partial of its utterance.
    pub fn apply(&mut self, update: LiveUpdate) {
        match update {
            LiveUpdate::Line(line) if line.partial => self.partial = Some(line),
            LiveUpdate::Line(line) => {
                if self
                    .partial
                    .as_ref()
                    .is_some_and(|p| p.utterance <= line.utterance)
                {
                    self.partial = None;
                }
                self.finals.push(line);
            }
            LiveUpdate::Failed {
                start, end, message, ..
            } => self
                .problems
                .push(format!("live: {start:.1}–{end:.1} s failed: {message}")),
            LiveUpdate::Skipped { start, end, .. } => self.problems.push(format!(
                "live: {start:.1}–{end:.1} s skipped (transcription fell behind; the recording keeps it)"
            )),
        }
    }
}

impl RecordingView {
    /// True from the click on Record until the file is handed over.
    pub fn is_active(&self) -> bool {
        !matches!(self.state, RecordState::Idle)
    }

    /// True while audio is being captured (the only time the UI repaints on its own).
    pub fn is_recording(&self) -> bool {
        matches!(self.state, RecordState::Recording(_))
    }

    /// Length recorded so far and the current level, while recording.
    pub fn live(&self) -> Option<(Duration, Level)> {
        match &self.state {
            RecordState::Recording(handle) => Some((handle.elapsed(), handle.level())),
            RecordState::Idle | RecordState::Starting | RecordState::Stopping => None,
        }
    }

    /// Frames lost so far: while recording, the live count; after, the last recording's.
    pub fn dropped_frames(&self) -> u64 {
        match &self.state {
            RecordState::Recording(handle) => handle.dropped_frames(),
            RecordState::Idle | RecordState::Starting | RecordState::Stopping => {
                self.last_dropped_frames
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{SampleTap, TapPolicy};

    fn line(utterance: u64, partial: bool, text: &str) -> LiveUpdate {
        LiveUpdate::Line(LiveLine {
            utterance,
            start: utterance as f64,
            end: utterance as f64 + 0.5,
            text: text.into(),
            partial,
            language: "en".into(),
            emotion: String::new(),
            event: String::new(),
            raw_text: text.into(),
        })
    }

    #[test]
    fn a_final_replaces_its_partial_and_a_later_partial_stays() {
        let (_tap, rx) = SampleTap::new(TapPolicy::Drop);
        let mut view = LiveView::new(rx, DecodeSettings::default());
        view.apply(line(0, true, "hel"));
        assert_eq!(view.partial.as_ref().map(|l| l.text.as_str()), Some("hel"));
        view.apply(line(0, false, "hello"));
        assert!(view.partial.is_none());
        view.apply(line(1, true, "wor"));
        view.apply(line(0, false, "late duplicate"));
        assert_eq!(view.partial.as_ref().map(|l| l.text.as_str()), Some("wor"));
        assert_eq!(view.finals.len(), 2);
        view.apply(LiveUpdate::Skipped {
            utterance: 2,
            start: 3.0,
            end: 4.0,
        });
        assert!(
            view.problems[0].contains("3.0–4.0 s skipped"),
            "{:?}",
            view.problems
        );
    }

    #[test]
    fn a_notice_about_live_clips_is_logged_once_per_recording() {
        let (_tap, rx) = SampleTap::new(TapPolicy::Drop);
        let mut view = LiveView::new(rx, DecodeSettings::default());
        assert!(view.first_notice("live audio 0.35–1.20 s: running on CPU (no CUDA)"));
        assert!(!view.first_notice("live audio 0.35–1.63 s: running on CPU (no CUDA)"));
        assert!(view.first_notice("live audio 2.62–4.85 s: GPU 0 is out of memory"));
        assert!(view.first_notice("talk.wav: running on CPU (no CUDA)"));
        assert!(view.first_notice("talk.wav: running on CPU (no CUDA)"));
    }
}
