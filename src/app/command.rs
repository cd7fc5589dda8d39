//! The changes the user can ask for. Drawing code returns them; `GpuScribeApp::apply` carries
//! them out after the frame is drawn, so `ui()` never changes state while it reads it.

use std::path::PathBuf;
use std::time::Duration;

use super::settings::PlotWindow;
use crate::engine::{DecodeSettings, ExportFormat, JobId, ResidencyConfig};
use crate::gpu::DeviceChoice;

/// A change the user asked for in this frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run transcription on another device.
    SetDevice(DeviceChoice),
    /// Plot another span.
    SetPlotWindow(PlotWindow),
    /// Sample GPUs at another interval.
    SetSampleInterval(Duration),
    /// Queue these files and folders (folders give their audio files).
    AddPaths(Vec<PathBuf>),
    /// Show the "Open…" dialog.
    OpenFiles,
    /// Cancel a queued or running job.
    Cancel(JobId),
    /// Show this job's transcript.
    Select(JobId),
    /// Remove finished rows.
    ClearFinished,
    /// Save the selected transcript (asks where).
    Export(ExportFormat),
    /// Options for the next jobs.
    SetDecode(DecodeSettings),
    /// Start recording the microphone.
    StartRecording,
    /// Stop recording and transcribe the file.
    StopRecording,
    /// Record from another input (`None`: the default one).
    SetInputDevice(Option<String>),
    /// List the input devices again.
    RefreshInputDevices,
    /// Offload the model now (release it if already offloaded).
    UnloadNow,
    /// Pin the model, or stop pinning it.
    SetKeepLoaded(bool),
    /// Another idle policy.
    SetResidency(ResidencyConfig),
    /// Another model folder (`None`: the release model from Hugging Face).
    SetModelDir(Option<PathBuf>),
    /// Show the folder dialog for the model.
    ChooseModelDir,
    /// Another speech model (SenseVoice-Small or a Whisper size).
    SetEngine(crate::engine::SpeechEngine),
    /// Download (or resume downloading) the release model.
    DownloadModel,
    /// Stop the model download.
    CancelModelDownload,
    /// Empty the message log.
    ClearLog,
    /// Show the transcription tab or the history.
    SetTab(super::LeftTab),
    /// Search the history (empty: list everything).
    HistorySearch(String),
    /// Open a stored transcript.
    HistoryOpen(i64),
    /// Back to the history list.
    HistoryClose,
    /// Delete a stored transcript (Undo brings it back).
    HistoryDelete(i64),
    /// Bring the last deleted transcript back.
    HistoryUndoDelete,
    /// Queue a stored job again with the options it had.
    HistoryResume(i64),
    /// Queue a recording in several files again with the current options, as one job.
    TranscribeParts {
        /// Its files, in order.
        parts: Vec<PathBuf>,
        /// Where each starts, seconds from the recording's start.
        offsets_s: Vec<f64>,
    },
    /// Save the opened stored transcript (asks where).
    HistoryExport(ExportFormat),
    /// Open the folder holding this file.
    ShowFile(PathBuf),
}
