//! The microphone's state as the UI sees it. UI thread; the recording itself runs on the
//! `audio-capture` thread behind [`RecorderHandle`].

use std::time::Duration;

use crate::audio::{DeviceList, Level, RecorderHandle};

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
