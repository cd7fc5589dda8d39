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
    /// A recording in several files: each part's engine job and its offset from the
    /// recording's start, in order (empty for a single file, whose job is `job_id`).
    pub parts: Vec<(JobId, f64)>,
    /// The finished parts' transcripts, in part order.
    part_results: Vec<Option<FileTranscript>>,
}

impl JobRow {
    /// Every engine job of this row: its parts', or its own.
    pub fn engine_ids(&self) -> Vec<JobId> {
        if self.parts.is_empty() {
            vec![self.job_id]
        } else {
            self.parts.iter().map(|&(id, _)| id).collect()
        }
    }

    /// The part (index, offset) that engine job `job_id` transcribes, for a row of parts.
    fn part_of(&self, job_id: JobId) -> Option<(usize, f64)> {
        self.parts
            .iter()
            .position(|&(id, _)| id == job_id)
            .map(|i| (i, self.parts[i].1))
    }

    /// Takes in a part's transcript; once every part is in, the row's transcript is them joined
    /// (times from the recording's start) and the row is done.
    fn part_done(&mut self, index: usize, offset_s: f64, transcript: FileTranscript, ms: f64) {
        if let Some(slot) = self.part_results.get_mut(index) {
            *slot = Some(shift(transcript, offset_s));
        }
        self.wall_ms = Some(self.wall_ms.unwrap_or(0.0) + ms);
        // The segments that arrived of the parts still running stay; a done part's are its
        // transcript's.
        let starts: Vec<f64> = self.parts.iter().map(|&(_, offset)| offset).collect();
        let results = &self.part_results;
        let in_done_part = |start_s: f64| {
            let part = starts.iter().rposition(|&o| o <= start_s).unwrap_or(0);
            results.get(part).is_some_and(Option::is_some)
        };
        let mut segments: Vec<Segment> = std::mem::take(&mut self.segments)
            .into_iter()
            .filter(|s| !in_done_part(s.start_s))
            .collect();
        let done: Vec<&FileTranscript> = self.part_results.iter().flatten().collect();
        segments.extend(done.iter().flat_map(|t| t.segments.iter().cloned()));
        segments.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        self.segments = segments;
        if done.len() < self.part_results.len() {
            return;
        }
        let join = |pick: fn(&FileTranscript) -> &str| {
            done.iter()
                .map(|t| pick(t).trim())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let tags = done
            .iter()
            .find(|t| !t.text.trim().is_empty())
            .or(done.first());
        let whole = FileTranscript {
            path: self.path.clone(),
            duration_s: done.iter().map(|t| t.duration_s).fold(0.0, f64::max),
            language: tags.map(|t| t.language.clone()).unwrap_or_default(),
            emotion: tags.map(|t| t.emotion.clone()).unwrap_or_default(),
            event: tags.map(|t| t.event.clone()).unwrap_or_default(),
            text: join(|t| &t.text),
            raw_text: join(|t| &t.raw_text),
            segments: self.segments.clone(),
            tokens: done.iter().flat_map(|t| t.tokens.clone()).collect(),
            words: done.iter().flat_map(|t| t.words.clone()).collect(),
        };
        self.duration_s = Some(whole.duration_s);
        self.transcript = Some(whole);
        if !self.status.is_finished() {
            self.status = JobStatus::Done;
        }
    }

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

/// `transcript` with its times moved `offset_s` later; its length becomes its end.
fn shift(mut transcript: FileTranscript, offset_s: f64) -> FileTranscript {
    let offset_ms = (offset_s * 1000.0).round() as i64;
    for s in &mut transcript.segments {
        s.start_s += offset_s;
        s.end_s += offset_s;
    }
    for t in &mut transcript.tokens {
        t.start_s += offset_s;
        t.end_s += offset_s;
    }
    for w in &mut transcript.words {
        w.start_ms += offset_ms;
        w.end_ms += offset_ms;
    }
    transcript.duration_s += offset_s;
    transcript
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
        self.push_parts(&[(job_id, 0.0)], path, None, now);
    }

    /// Adds one row for a recording in several files: each part's engine job and offset, in
    /// order (one part: an ordinary row). `duration_s`: the whole length, when known.
    pub fn push_parts(
        &mut self,
        parts: &[(JobId, f64)],
        path: PathBuf,
        duration_s: Option<f64>,
        now: Instant,
    ) {
        let Some(&(job_id, _)) = parts.first() else {
            return;
        };
        if !self.is_busy() {
            self.batch_started = Some(now);
            self.batch_first_row = self.rows.len();
        }
        let parts = if parts.len() > 1 {
            parts.to_vec()
        } else {
            Vec::new()
        };
        self.rows.push(JobRow {
            job_id,
            path,
            duration_s,
            device: None,
            status: JobStatus::Queued,
            segments: Vec::new(),
            transcript: None,
            warning: None,
            wall_ms: None,
            part_results: vec![None; parts.len()],
            parts,
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
            Event::Status(_)
            | Event::Notice(_)
            | Event::Marker { .. }
            | Event::JobTranscribed { .. } => return false,
        };
        let Some(row) = self
            .rows
            .iter_mut()
            .find(|r| r.job_id == job_id || r.part_of(job_id).is_some())
        else {
            return false;
        };
        if let Some((index, offset_s)) = row.part_of(job_id) {
            apply_part(row, index, offset_s, event);
            return true;
        }
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
            Event::Status(_)
            | Event::Notice(_)
            | Event::Marker { .. }
            | Event::JobTranscribed { .. } => {}
        }
        true
    }

    /// The row holding engine job `job_id` (its own, or one of its parts).
    pub fn row_of(&self, job_id: JobId) -> Option<&JobRow> {
        self.rows
            .iter()
            .find(|r| r.job_id == job_id || r.part_of(job_id).is_some())
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

/// A part's event on its recording's row: times move by the part's offset, progress counts
/// from the recording's start, the row is done when every part is.
fn apply_part(row: &mut JobRow, index: usize, offset_s: f64, event: Event) {
    let total_s = row.duration_s.unwrap_or(0.0);
    match event {
        Event::JobStarted { device, .. } => {
            row.device = Some(device);
            if !row.status.is_finished() {
                row.status = JobStatus::Running {
                    done_s: offset_s,
                    total_s,
                };
            }
        }
        Event::JobDecoded { warning, .. } => {
            if warning.is_some() {
                row.warning = warning;
            }
        }
        Event::JobProgress {
            done_s, segments, ..
        } => {
            row.segments.extend(shift_segments(segments, offset_s));
            if !row.status.is_finished() {
                row.status = JobStatus::Running {
                    done_s: offset_s + done_s,
                    total_s,
                };
            }
        }
        Event::JobDone { transcript, ms, .. } => row.part_done(index, offset_s, transcript, ms),
        Event::JobFailed {
            message, cancelled, ..
        } => {
            row.status = if cancelled {
                JobStatus::Cancelled
            } else {
                JobStatus::Failed(format!("part {} of the recording: {message}", index + 1))
            };
        }
        Event::Status(_)
        | Event::Notice(_)
        | Event::Marker { .. }
        | Event::JobTranscribed { .. } => {}
    }
}

fn shift_segments(segments: Vec<Segment>, offset_s: f64) -> Vec<Segment> {
    segments
        .into_iter()
        .map(|s| Segment {
            start_s: s.start_s + offset_s,
            end_s: s.end_s + offset_s,
            ..s
        })
        .collect()
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
    fn a_recording_in_parts_is_one_row_with_times_from_its_start() {
        let start = Instant::now();
        let mut jobs = JobList::default();
        jobs.push_parts(&[(5, 0.0), (6, 2.0)], "rec.wav".into(), Some(3.0), start);
        assert_eq!(jobs.rows().len(), 1);
        assert_eq!(jobs.rows()[0].engine_ids(), [5, 6]);
        let part = |text: &str, duration_s: f64| FileTranscript {
            duration_s,
            text: text.into(),
            segments: vec![Segment {
                start_s: 0.5,
                end_s: duration_s,
                text: text.into(),
                ..Segment::default()
            }],
            ..FileTranscript::default()
        };
        assert!(jobs.apply(progress(6, 0.5, 1.0)));
        assert_eq!(
            jobs.rows()[0].status,
            JobStatus::Running {
                done_s: 2.5,
                total_s: 3.0
            }
        );
        assert!(jobs.apply(Event::JobDone {
            job_id: 6,
            transcript: part("two", 1.0),
            ms: 1.0
        }));
        assert!(!jobs.rows()[0].status.is_finished(), "one part to go");
        assert!(jobs.apply(Event::JobDone {
            job_id: 5,
            transcript: part("one", 2.0),
            ms: 1.0
        }));
        let row = &jobs.rows()[0];
        assert_eq!(row.status, JobStatus::Done);
        let whole = row.transcript.as_ref().expect("transcript");
        assert_eq!(whole.text, "one two");
        assert_eq!(whole.duration_s, 3.0);
        let starts: Vec<f64> = whole.segments.iter().map(|s| s.start_s).collect();
        assert_eq!(starts, [0.5, 2.5], "the progress segment was replaced");
        assert_eq!(jobs.row_of(6).map(|r| r.job_id), Some(5));
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
