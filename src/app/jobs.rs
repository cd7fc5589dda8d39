//! The transcription queue as the UI sees it: one row per file, updated from engine events in
//! `App::logic`, read by the queue and transcript views. UI thread only; no egui here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::engine::{Event, FileTranscript, JobId, Segment};

/// Where a job stands.
#[derive(Clone, Debug, PartialEq)]
pub enum JobStatus {
    /// Waiting for the engine.
    Queued,
    /// Being transcribed; `done_s` of `total_s` seconds are done (0/0 before the first progress).
    Running {
        /// Seconds of audio done.
        done_s: f64,
        /// Seconds in the file (0 until known).
        total_s: f64,
    },
    /// Finished.
    Done,
    /// Failed; the message says why (names the file).
    Failed(String),
    /// Cancelled by the user.
    Cancelled,
}

impl JobStatus {
    /// True once the job will not change any more.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Done | Self::Failed(_) | Self::Cancelled)
    }
}

/// One file in the queue.
#[derive(Clone, Debug)]
pub struct JobRow {
    /// The engine's job id.
    pub job_id: JobId,
    /// The audio file.
    pub path: PathBuf,
    /// Decoded length, once known.
    pub duration_s: Option<f64>,
    /// "GPU 0" or "CPU", once started.
    pub device: Option<String>,
    /// Where it stands.
    pub status: JobStatus,
    /// Segments received so far (the whole transcript's once done).
    pub segments: Vec<Segment>,
    /// The transcript, once done.
    pub transcript: Option<FileTranscript>,
    /// A decode warning (skipped corrupt frames), if any.
    pub warning: Option<String>,
    /// Wall time the engine reported, ms.
    pub wall_ms: Option<f64>,
}

impl JobRow {
    /// The file name for display.
    pub fn name(&self) -> String {
        file_name(&self.path)
    }

    /// This job's share done, `0.0..=1.0`.
    pub fn fraction(&self) -> f64 {
        match &self.status {
            JobStatus::Queued => 0.0,
            JobStatus::Running { done_s, total_s } if *total_s > 0.0 => {
                (done_s / total_s).clamp(0.0, 1.0)
            }
            JobStatus::Running { .. } => 0.0,
            JobStatus::Done | JobStatus::Failed(_) | JobStatus::Cancelled => 1.0,
        }
    }

    /// All text received so far, one segment a line.
    pub fn text(&self) -> String {
        match &self.transcript {
            Some(t) if !t.text.trim().is_empty() => t.text.clone(),
            _ => self
                .segments
                .iter()
                .map(|s| s.text.trim())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The last part of a path, for display.
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Progress of the whole queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overall {
    /// Share done, `0.0..=1.0`, weighted by audio length.
    pub fraction: f64,
    /// Files finished (done, failed or cancelled).
    pub finished: usize,
    /// Files in this batch.
    pub total: usize,
    /// Time left at the speed so far, once there is a speed to go by.
    pub eta: Option<Duration>,
}

/// Every job of this session, oldest first.
#[derive(Debug, Default)]
pub struct JobList {
    rows: Vec<JobRow>,
    /// The row whose transcript is shown.
    pub selected: Option<JobId>,
    /// When the current batch started (the queue went from idle to busy).
    batch_started: Option<Instant>,
    /// Rows before this index belong to earlier batches and do not count in [`Overall`].
    batch_first_row: usize,
}

impl JobList {
    /// The rows, oldest first.
    pub fn rows(&self) -> &[JobRow] {
        &self.rows
    }

    /// The row of `job_id`.
    pub fn row(&self, job_id: JobId) -> Option<&JobRow> {
        self.rows.iter().find(|r| r.job_id == job_id)
    }

    /// The selected row.
    pub fn selected_row(&self) -> Option<&JobRow> {
        self.selected.and_then(|id| self.row(id))
    }

    /// True while any job is queued or running.
    pub fn is_busy(&self) -> bool {
        self.rows.iter().any(|r| !r.status.is_finished())
    }

    /// Adds a queued row. The first job after an idle spell starts a new batch.
    pub fn push(&mut self, job_id: JobId, path: PathBuf, now: Instant) {
        if !self.is_busy() {
            self.batch_started = Some(now);
            self.batch_first_row = self.rows.len();
        }
        self.rows.push(JobRow {
            job_id,
            path,
            duration_s: None,
            device: None,
            status: JobStatus::Queued,
            segments: Vec::new(),
            transcript: None,
            warning: None,
            wall_ms: None,
        });
        if self.selected.is_none() {
            self.selected = Some(job_id);
        }
    }

    /// Marks every unfinished job as failed with `message` (the engine went away).
    pub fn fail_unfinished(&mut self, message: &str) {
        for row in self.rows.iter_mut().filter(|r| !r.status.is_finished()) {
            row.status = JobStatus::Failed(message.to_owned());
        }
    }

    /// Takes in one job event; other events are ignored. Returns false for an unknown job.
    pub fn apply(&mut self, event: Event) -> bool {
        let job_id = match &event {
            Event::JobStarted { job_id, .. }
            | Event::JobDecoded { job_id, .. }
            | Event::JobProgress { job_id, .. }
            | Event::JobDone { job_id, .. }
            | Event::JobFailed { job_id, .. } => *job_id,
            Event::Status(_) | Event::Notice(_) | Event::Marker { .. } => return false,
        };
        let Some(row) = self.rows.iter_mut().find(|r| r.job_id == job_id) else {
            return false;
        };
        match event {
            Event::JobStarted { device, .. } => {
                row.device = Some(device);
                if !row.status.is_finished() {
                    row.status = JobStatus::Running {
                        done_s: 0.0,
                        total_s: row.duration_s.unwrap_or(0.0),
                    };
                }
            }
            Event::JobDecoded {
                duration_s,
                warning,
                ..
            } => {
                row.duration_s = Some(duration_s);
                row.warning = warning;
                if let JobStatus::Running { total_s, .. } = &mut row.status {
                    *total_s = duration_s;
                }
            }
            Event::JobProgress {
                done_s,
                total_s,
                segments,
                ..
            } => {
                row.duration_s = Some(total_s);
                row.segments.extend(segments);
                if !row.status.is_finished() {
                    row.status = JobStatus::Running { done_s, total_s };
                }
            }
            Event::JobDone { transcript, ms, .. } => {
                row.duration_s = Some(transcript.duration_s);
                row.segments.clone_from(&transcript.segments);
                row.transcript = Some(transcript);
                row.wall_ms = Some(ms);
                row.status = JobStatus::Done;
            }
            Event::JobFailed {
                message, cancelled, ..
            } => {
                row.status = if cancelled {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Failed(message)
                };
            }
            Event::Status(_) | Event::Notice(_) | Event::Marker { .. } => {}
        }
        true
    }

    /// The current batch's progress at `now`.
    pub fn overall(&self, now: Instant) -> Overall {
        let batch = &self.rows[self.batch_first_row.min(self.rows.len())..];
        let known: Vec<f64> = batch.iter().filter_map(|r| r.duration_s).collect();
        // Files not decoded yet weigh as much as an average known one.
        let average = if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        let weight = |r: &JobRow| r.duration_s.filter(|d| *d > 0.0).unwrap_or(average);
        let total: f64 = batch.iter().map(weight).sum();
        let done: f64 = batch.iter().map(|r| weight(r) * r.fraction()).sum();
        let fraction = if total > 0.0 { done / total } else { 0.0 };
        let finished = batch.iter().filter(|r| r.status.is_finished()).count();
        let eta = self.batch_started.and_then(|started| {
            let elapsed = now.saturating_duration_since(started).as_secs_f64();
            let busy = finished < batch.len();
            if !busy || fraction <= 0.0 || elapsed <= 0.0 {
                return None;
            }
            Some(Duration::from_secs_f64(
                elapsed * (1.0 - fraction) / fraction,
            ))
        });
        Overall {
            fraction,
            finished,
            total: batch.len(),
            eta,
        }
    }

    /// Removes finished rows (the selection goes if its row does).
    pub fn clear_finished(&mut self) {
        self.rows.retain(|r| !r.status.is_finished());
        self.batch_first_row = 0;
        if self.selected.is_some_and(|id| self.row(id).is_none()) {
            self.selected = self.rows.first().map(|r| r.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(job_id: JobId, done_s: f64, total_s: f64) -> Event {
        Event::JobProgress {
            job_id,
            done_s,
            total_s,
            segments: vec![Segment {
                text: format!("{done_s}"),
                ..Segment::default()
            }],
        }
    }

    #[test]
    fn rows_follow_the_job_life() {
        let start = Instant::now();
        let mut jobs = JobList::default();
        jobs.push(1, "a.wav".into(), start);
        jobs.push(2, "b.wav".into(), start);
        assert_eq!(jobs.selected, Some(1));
        assert!(jobs.apply(Event::JobStarted {
            job_id: 1,
            device: "GPU 0".into()
        }));
        assert!(jobs.apply(progress(1, 5.0, 10.0)));
        assert_eq!(jobs.rows()[0].fraction(), 0.5);
        assert_eq!(jobs.rows()[0].device.as_deref(), Some("GPU 0"));
        assert!(jobs.apply(Event::JobFailed {
            job_id: 2,
            message: "b.wav: not audio".into(),
            cancelled: false
        }));
        assert!(!jobs.apply(progress(99, 1.0, 1.0)));
        assert_eq!(
            jobs.rows()[1].status,
            JobStatus::Failed("b.wav: not audio".into())
        );
        // b.wav weighs as much as a.wav (10 s): 0.5·10 + 1·10 of 20.
        let overall = jobs.overall(start + Duration::from_secs(3));
        assert!((overall.fraction - 0.75).abs() < 1e-9, "{overall:?}");
        assert_eq!((overall.finished, overall.total), (1, 2));
        // 3 s for 75 %: 1 s to go.
        assert_eq!(overall.eta, Some(Duration::from_secs(1)));
        assert_eq!(jobs.rows()[0].text(), "5");
    }

    #[test]
    fn a_new_batch_starts_after_an_idle_queue() {
        let start = Instant::now();
        let mut jobs = JobList::default();
        jobs.push(1, "a.wav".into(), start);
        jobs.apply(Event::JobFailed {
            job_id: 1,
            message: String::new(),
            cancelled: true,
        });
        assert_eq!(jobs.rows()[0].status, JobStatus::Cancelled);
        assert_eq!(jobs.overall(start).eta, None);
        jobs.push(2, "b.wav".into(), start + Duration::from_secs(60));
        let overall = jobs.overall(start + Duration::from_secs(61));
        assert_eq!((overall.finished, overall.total), (0, 1));
        jobs.clear_finished();
        assert_eq!(jobs.rows().len(), 1);
        assert_eq!(jobs.selected, Some(2));
    }
}
