//! Work the UI must not wait for: file dialogs, export writes, starting and stopping a recording,
//! listing input devices. Each runs on its own named thread and sends one [`TaskResult`] over a
//! bounded channel, then wakes the UI; `App::logic` drains them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use eframe::egui;

use super::export::{self, ExportError};
use super::inputs::AUDIO_EXTENSIONS;
use crate::audio::{DeviceList, RecordError, Recorder, RecorderHandle};
use crate::engine::{ExportFormat, FileTranscript};

/// A dialog that closes faster than this most likely never opened (no portal and no zenity).
const DIALOG_MISSING_BELOW: Duration = Duration::from_millis(150);

/// What a dialog gave back.
#[derive(Debug)]
pub enum DialogAnswer<T> {
    /// The user chose.
    Chosen(T),
    /// The user closed the dialog.
    Cancelled,
    /// No dialog could be shown.
    Unavailable,
}

impl<T> DialogAnswer<T> {
    fn from_option(value: Option<T>, started: Instant) -> Self {
        match value {
            Some(v) => Self::Chosen(v),
            None if started.elapsed() < DIALOG_MISSING_BELOW => Self::Unavailable,
            None => Self::Cancelled,
        }
    }
}

/// The outcome of one background task.
pub enum TaskResult {
    /// The "Open…" dialog closed.
    OpenedFiles(DialogAnswer<Vec<PathBuf>>),
    /// The model-folder dialog closed.
    ModelFolder(DialogAnswer<PathBuf>),
    /// An export finished (or its dialog closed).
    Exported(DialogAnswer<Result<PathBuf, ExportError>>),
    /// A recording started, or could not.
    RecordingStarted(Result<RecorderHandle, RecordError>),
    /// A recording stopped (with the frames it dropped); `Err` may still hold the kept files
    /// (see [`RecordError::DeviceLost`]).
    RecordingStopped(Result<crate::audio::Recorded, RecordError>, u64),
    /// The input devices were listed.
    InputDevices(DeviceList),
    /// The task's thread panicked (the panic hook has the details).
    Panicked {
        /// The thread's name ("file-dialog", "record-start", …).
        task: String,
        /// The panic's message.
        message: String,
    },
    /// The file manager was started, or could not be (why).
    ShowFile(Result<(), String>),
}

/// Starts background tasks and collects their results.
pub struct Tasks {
    tx: Sender<TaskResult>,
    rx: Receiver<TaskResult>,
    ctx: egui::Context,
}

impl Tasks {
    /// Results wake `ctx`.
    pub fn new(ctx: egui::Context) -> Self {
        let (tx, rx) = bounded(32);
        Self { tx, rx, ctx }
    }

    /// Runs `work` on a thread called `name`; its result arrives through [`Tasks::drain`].
    pub fn spawn(
        &self,
        name: &str,
        work: impl FnOnce() -> TaskResult + Send + 'static,
    ) -> std::io::Result<()> {
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        let task = name.to_owned();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // A panicking task still answers, so what waits for it (an open dialog, a
                // recording starting) is not stuck.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                    .unwrap_or_else(|panic| TaskResult::Panicked {
                        task,
                        message: crate::engine::panic_message(&*panic),
                    });
                if tx.send(result).is_ok() {
                    ctx.request_repaint();
                }
            })
            .map(|_| ())
    }

    /// Results that arrived, without blocking.
    pub fn drain(&self) -> Vec<TaskResult> {
        self.rx.try_iter().collect()
    }
}

/// The "Open…" dialog: several audio files.
pub fn open_files() -> TaskResult {
    let started = Instant::now();
    let picked = rfd::FileDialog::new()
        .set_title("Open audio files")
        .add_filter("Audio", &AUDIO_EXTENSIONS)
        .add_filter("All files", &["*"])
        .pick_files();
    TaskResult::OpenedFiles(DialogAnswer::from_option(picked, started))
}

/// The model-folder dialog.
pub fn pick_model_folder() -> TaskResult {
    let started = Instant::now();
    let picked = rfd::FileDialog::new()
        .set_title("Choose a SenseVoice model folder")
        .pick_folder();
    TaskResult::ModelFolder(DialogAnswer::from_option(picked, started))
}

/// The save dialog for `transcript` in `format`, then the write.
pub fn save_export(transcript: &FileTranscript, format: ExportFormat) -> TaskResult {
    let started = Instant::now();
    let mut dialog = rfd::FileDialog::new()
        .set_title("Export transcript")
        .set_file_name(export::default_export_name(&transcript.path, format))
        .add_filter(format.extension().to_uppercase(), &[format.extension()]);
    if let Some(dir) = transcript.path.parent().filter(|d| d.is_dir()) {
        dialog = dialog.set_directory(dir);
    }
    let answer = DialogAnswer::from_option(dialog.save_file(), started);
    TaskResult::Exported(match answer {
        DialogAnswer::Chosen(path) => DialogAnswer::Chosen(
            export::export_transcript(transcript, format, &path).map(|()| path),
        ),
        DialogAnswer::Cancelled => DialogAnswer::Cancelled,
        DialogAnswer::Unavailable => DialogAnswer::Unavailable,
    })
}

/// Opens the input (a device, or a file played as one) and starts writing `wav_path`; `tap`
/// gets a live copy.
pub fn start_recording(
    source: crate::audio::CaptureSource,
    wav_path: PathBuf,
    tap: Option<crate::audio::SampleTap>,
) -> TaskResult {
    if let Some(dir) = wav_path.parent()
        && let Err(source) = std::fs::create_dir_all(dir)
    {
        return TaskResult::RecordingStarted(Err(RecordError::CreateWav {
            path: wav_path,
            source: hound::Error::IoError(source),
        }));
    }
    TaskResult::RecordingStarted(Recorder::start_from(source, &wav_path, tap))
}

/// Opens the folder holding `path` in the file manager (`xdg-open`); waits for it to start.
pub fn show_file(path: &std::path::Path) -> TaskResult {
    let folder = path
        .parent()
        .filter(|d| d.is_dir())
        .map(std::path::Path::to_path_buf);
    let Some(folder) = folder else {
        return TaskResult::ShowFile(Err(format!("the folder of {} is gone", path.display())));
    };
    TaskResult::ShowFile(
        match std::process::Command::new("xdg-open").arg(&folder).status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("xdg-open {} failed ({status})", folder.display())),
            Err(err) => Err(format!("cannot open {}: xdg-open: {err}", folder.display())),
        },
    )
}
