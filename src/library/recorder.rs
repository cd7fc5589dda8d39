//! Engine events → library rows: the map from the engine's job ids to the library's, shared by
//! the CLI (`gpuscribe transcribe`) and the window's library thread.

use std::collections::HashMap;

use super::{Library, LibraryError, NewJob};
use crate::engine::{Event, JobId};

/// Records jobs of one engine as its events arrive. An engine job is a library job, or one
/// part of a recording's job (see [`super::parts`]).
#[derive(Debug, Default)]
pub struct JobRecorder {
    ids: HashMap<JobId, (i64, Option<u32>)>,
    streamed: bool,
}

impl JobRecorder {
    /// A recorder with no jobs yet, for an engine that sends whole transcripts in `JobDone`
    /// (the window's).
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder for an engine that streams transcripts
    /// ([`crate::engine::EngineConfig::stream_transcripts`], the command line's): each
    /// `JobTranscribed` is stored as a piece as it comes (see [`super::pieces`]) and `JobDone`
    /// finishes the job from the stored pieces, so nothing here holds a whole transcript.
    /// Segments of `JobProgress` are not stored: the pieces bring them, final and in order.
    pub fn streamed() -> Self {
        Self {
            streamed: true,
            ..Self::default()
        }
    }

    /// Records a queued job under the engine's id; returns the library's id.
    pub fn queued(
        &mut self,
        library: &mut Library,
        job_id: JobId,
        job: &NewJob,
    ) -> Result<i64, LibraryError> {
        let id = library.add_job(job)?;
        self.ids.insert(job_id, (id, None));
        Ok(id)
    }

    /// Records a recording's parts, queued under the engine's ids (in order), as one job;
    /// `existing`: the job made when the recording started. Returns the library's id.
    pub fn queued_parts(
        &mut self,
        library: &mut Library,
        job_ids: &[JobId],
        job: &NewJob,
        existing: Option<i64>,
    ) -> Result<i64, LibraryError> {
        let id = match existing {
            Some(id) => {
                library.recording_queued(id, job)?;
                id
            }
            None => library.add_job(job)?,
        };
        for (&job_id, part) in job_ids.iter().zip(0u32..) {
            self.ids.insert(job_id, (id, Some(part)));
        }
        Ok(id)
    }

    /// Ties an engine job to a library row that already exists (a resumed job, or `part` of
    /// a resumed recording).
    pub fn resumed(&mut self, job_id: JobId, library_id: i64, part: Option<u32>) {
        self.ids.insert(job_id, (library_id, part));
    }

    /// The library id of an engine job.
    pub fn library_id(&self, job_id: JobId) -> Option<i64> {
        self.ids.get(&job_id).map(|&(id, _)| id)
    }

    /// Marks an engine job interrupted (its engine was stopped) and forgets it.
    pub fn interrupted(
        &mut self,
        library: &mut Library,
        job_id: JobId,
    ) -> Result<(), LibraryError> {
        match self.ids.remove(&job_id) {
            Some((id, _)) => library.job_interrupted(id),
            None => Ok(()),
        }
    }

    /// Writes what `event` says about a recorded job; other events are ignored.
    pub fn on_event(&mut self, library: &mut Library, event: &Event) -> Result<(), LibraryError> {
        match event {
            Event::JobStarted { job_id, device } => {
                if let Some(&(id, _)) = self.ids.get(job_id) {
                    library.job_started(id, device)?;
                }
            }
            Event::JobDecoded {
                job_id, duration_s, ..
            } => match self.ids.get(job_id) {
                Some(&(id, None)) => library.job_decoded(id, *duration_s)?,
                Some(&(id, Some(part))) => library.part_decoded(id, part, *duration_s)?,
                None => {}
            },
            Event::JobProgress {
                job_id, segments, ..
            } => match self.ids.get(job_id) {
                _ if segments.is_empty() || self.streamed => {}
                Some(&(id, None)) => library.job_segments(id, segments)?,
                Some(&(id, Some(part))) => library.part_segments(id, part, segments)?,
                None => {}
            },
            Event::JobTranscribed { job_id, results } => match self.ids.get(job_id) {
                Some(&(id, part)) if self.streamed => {
                    library.job_pieces(id, part.unwrap_or(0), results)?;
                }
                _ => {}
            },
            Event::JobDone {
                job_id,
                transcript,
                ms,
            } => match (self.ids.remove(job_id), self.streamed) {
                (Some((id, None)), false) => library.job_done(id, transcript, *ms)?,
                (Some((id, Some(part))), false) => {
                    library.part_done(id, part, transcript, *ms)?;
                }
                (Some((id, None)), true) => library.job_done_streamed(id, transcript, *ms)?,
                (Some((id, Some(part))), true) => {
                    library.part_done_streamed(id, part, transcript, *ms)?;
                }
                (None, _) => {}
            },
            Event::JobFailed {
                job_id,
                message,
                cancelled,
            } => match self.ids.remove(job_id) {
                Some((id, None)) => library.job_failed(id, message, *cancelled)?,
                Some((id, Some(part))) => library.part_failed(id, part, message, *cancelled)?,
                None => {}
            },
            Event::Status(_) | Event::Notice(_) | Event::Marker { .. } => {}
        }
        Ok(())
    }
}

/// How a device target is stored (`auto`, `cpu`, `all`, a GPU's UUID).
pub fn device_request_text(target: &crate::engine::DeviceTarget) -> String {
    use crate::engine::DeviceTarget;
    match target {
        DeviceTarget::Auto => "auto".to_owned(),
        DeviceTarget::Cpu => "cpu".to_owned(),
        DeviceTarget::All => "all".to_owned(),
        DeviceTarget::Gpu { uuid } => uuid.clone(),
    }
}

/// How the model is stored: its folder, or the release model's name.
pub fn model_text(model_dir: Option<&std::path::Path>) -> String {
    model_dir.map_or_else(
        || "FunAudioLLM/SenseVoiceSmall".to_owned(),
        |dir| dir.display().to_string(),
    )
}

/// `gpuscribe transcribe`'s history: opens the library, records every file as queued under the
/// job ids a fresh engine gives them (1, 2, … in submission order, see
/// [`crate::engine::EngineHandle::transcribe`]), then writes each event as it comes, transcripts
/// in pieces ([`JobRecorder::streamed`]: the engine streams them). A library that cannot be used
/// is said once on stderr and transcription goes on without it.
pub struct CliHistory {
    library: Library,
    recorder: JobRecorder,
    failed: bool,
}

impl CliHistory {
    /// Opens the default library and records `files` as queued; `None` (said on stderr) when
    /// the library cannot be used.
    pub fn start(files: &[std::path::PathBuf], template: &NewJob) -> Option<Self> {
        let path = super::default_library_path();
        let (mut library, report) = match Library::open(&path) {
            Ok(opened) => opened,
            Err(err) => {
                eprintln!("warning: not recorded in the history: {err}");
                return None;
            }
        };
        for line in report.messages(&path) {
            eprintln!("note: {line}");
        }
        let mut recorder = JobRecorder::streamed();
        for (job_id, file) in (1..).zip(files) {
            let job = NewJob {
                path: file.clone(),
                ..template.clone()
            };
            if let Err(err) = recorder.queued(&mut library, job_id, &job) {
                eprintln!("warning: not recorded in the history: {err}");
                return None;
            }
        }
        Some(Self {
            library,
            recorder,
            failed: false,
        })
    }

    /// The library's id of the engine's job.
    pub fn library_id(&self, job_id: JobId) -> Option<i64> {
        self.recorder.library_id(job_id)
    }

    /// Writes one engine event; the first failure is said on stderr, later ones are not.
    pub fn on_event(&mut self, event: &Event) {
        if let Err(err) = self.recorder.on_event(&mut self.library, event)
            && !std::mem::replace(&mut self.failed, true)
        {
            eprintln!("warning: the history may be incomplete: {err}");
        }
    }
}

impl CliHistory {
    /// The history of one `gpuscribe transcribe` run; `None` with `--no-history`.
    pub fn for_transcribe(
        args: &crate::cli_transcribe::TranscribeArgs,
        config: &crate::engine::EngineConfig,
        settings: &crate::engine::DecodeSettings,
        submitted: &[std::path::PathBuf],
    ) -> Option<Self> {
        if args.no_history {
            return None;
        }
        let template = NewJob {
            path: std::path::PathBuf::new(),
            settings: settings.clone(),
            device_request: device_request_text(&config.target),
            model: model_text(config.model_dir.as_deref()),
            model_revision: None,
            recording: None,
            parts: Vec::new(),
        };
        // One revision for the whole run (a folder's fingerprint is read once).
        let template = NewJob {
            model_revision: Some(super::model_revision(&template.model)),
            ..template
        };
        Self::start(submitted, &template)
    }
}
