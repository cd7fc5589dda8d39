//! The session on the spoken fixtures (`tests/data/sensevoice/audio`), with the model replaced
//! by an immediate or a never-answering stand-in.

use super::*;

fn fixture(name: &str) -> Vec<f32> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/sensevoice/audio")
        .join(format!("{name}.wav"));
    let audio = crate::audio::decode_file(&path, &mut |_| {}).expect("fixture decodes");
    audio.samples
}

/// The three clips with silence around them: three utterances.
pub(super) fn spoken() -> (Vec<f32>, Vec<std::ops::Range<usize>>) {
    let mut samples = vec![0.0; 8_000];
    let mut clips = Vec::new();
    for name in ["en_short", "zh_mid", "ja_long"] {
        let clip = fixture(name);
        clips.push(samples.len()..samples.len() + clip.len());
        samples.extend(clip);
        samples.extend(vec![0.0; 16_000]);
    }
    (samples, clips)
}

fn answer(job: &LiveJob) -> LiveText {
    LiveText {
        text: format!("{:?}:{}", job.kind, job.samples.len()),
        ..LiveText::default()
    }
}

#[test]
fn each_clip_is_one_utterance_with_partials_before_its_final() {
    let (samples, clips) = spoken();
    let mut session = LiveSession::new(LiveConfig::default());
    let mut lines = Vec::new();
    let mut updates = Vec::new();
    for chunk in samples.chunks(320) {
        session.push(chunk, &mut updates);
        if let Some(job) = session.next_job() {
            let text = answer(&job);
            updates.extend(session.on_result(job.id, Ok(text)));
        }
        lines.append(&mut updates);
    }
    session.finish(&mut updates);
    while let Some(job) = session.next_job() {
        updates.extend(session.on_result(job.id, Ok(answer(&job))));
    }
    lines.append(&mut updates);
    assert!(session.is_idle());
    let lines: Vec<LiveLine> = lines
        .into_iter()
        .map(|u| match u {
            LiveUpdate::Line(line) => line,
            other => panic!("{other:?}"),
        })
        .collect();
    let finals: Vec<&LiveLine> = lines.iter().filter(|l| !l.partial).collect();
    assert_eq!(finals.len(), clips.len(), "{lines:#?}");
    for (i, (line, clip)) in finals.iter().zip(&clips).enumerate() {
        assert_eq!(line.utterance, i as u64);
        // The utterance lies on its clip: it starts near the clip's start (the clips begin with
        // a little silence) and ends in the clip's second half or the silence after it.
        let (clip_start, clip_end) = (clip.start as f64 / 16e3, clip.end as f64 / 16e3);
        assert!(
            (line.start - clip_start).abs() <= 0.3,
            "{line:?} vs {clip:?}"
        );
        let middle = (clip_start + clip_end) / 2.0;
        assert!(
            line.end > middle && line.end < clip_end + 1.0,
            "{line:?} {clip:?}"
        );
        // Partials of this utterance come before its final, every ≤1 s of audio, growing.
        let partials: Vec<&LiveLine> = lines
            .iter()
            .take_while(|l| l.utterance != line.utterance || l.partial)
            .filter(|l| l.utterance == line.utterance)
            .collect();
        assert!(!partials.is_empty(), "no partial for {line:?}");
        let mut last_end = line.start;
        for partial in &partials {
            assert!(
                partial.end - last_end <= 1.0 + 1e-9,
                "{partial:?} after {last_end}"
            );
            last_end = partial.end;
        }
        assert!(line.end - last_end <= 1.0, "{line:?} after {last_end}");
    }
    // Utterances do not overlap.
    for pair in finals.windows(2) {
        assert!(pair[0].end <= pair[1].start, "{pair:?}");
    }
    assert_eq!(session.stats().partials_skipped, 0);
}

#[test]
fn a_busy_model_skips_partials_and_a_stuck_one_drops_the_oldest_finals() {
    let (samples, _) = spoken();
    let config = LiveConfig {
        max_pending_finals: 1,
        ..LiveConfig::default()
    };
    let mut session = LiveSession::new(config);
    let mut updates = Vec::new();
    for chunk in samples.chunks(320) {
        session.push(chunk, &mut updates);
    }
    // Nothing was ever asked: no partial went out, and the queue kept only the newest final.
    assert_eq!(session.stats().partials_sent, 0);
    assert_eq!(session.pending_finals(), 1);
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert!(
        updates
            .iter()
            .all(|u| matches!(u, LiveUpdate::Skipped { .. }))
    );
    let job = session.next_job().expect("the newest final");
    assert_eq!((job.kind, job.utterance), (JobKind::Final, 2));

    // A model that answers only every 2 s of audio: partials due meanwhile are skipped, and
    // the ones that come back late for an ended utterance are dropped.
    let mut session = LiveSession::new(LiveConfig::default());
    let mut out = Vec::new();
    let mut lines = Vec::new();
    let mut model = Model::default();
    for (i, chunk) in samples.chunks(320).enumerate() {
        session.push(chunk, &mut out);
        let at = ((i + 1) * 320) as u64;
        for id in model.answered_by(at) {
            lines.extend(session.on_result(id, Ok(LiveText::default())));
        }
        while let Some(job) = session.next_job() {
            model.take(&job, at, 32_000);
        }
    }
    assert!(
        session.stats().partials_skipped > 0,
        "{:?}",
        session.stats()
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_failed_final_is_reported_and_a_failed_partial_is_not() {
    let (samples, _) = spoken();
    let mut session = LiveSession::new(LiveConfig::default());
    let mut updates = Vec::new();
    let mut seen = Vec::new();
    for chunk in samples.chunks(320) {
        session.push(chunk, &mut updates);
        if let Some(job) = session.next_job() {
            seen.extend(session.on_result(job.id, Err("worker gone".into())));
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|u| matches!(
        u,
        LiveUpdate::Failed { message, .. } if message == "worker gone"
    )));
}

/// A stand-in for the engine and its one worker on the stream's clock: jobs run one at a time
/// in the order sent, each taking the samples it is given.
#[derive(Default)]
struct Model {
    /// (job id, when it is answered), in order.
    queue: VecDeque<(u64, u64)>,
}

impl Model {
    fn take(&mut self, job: &LiveJob, now: u64, takes: u64) {
        let free_at = self.queue.back().map_or(now, |&(_, done)| done.max(now));
        self.queue.push_back((job.id, free_at + takes));
    }

    fn answered_by(&mut self, now: u64) -> Vec<u64> {
        let mut done = Vec::new();
        while let Some(&(id, at)) = self.queue.front() {
            if at > now {
                break;
            }
            self.queue.pop_front();
            done.push(id);
        }
        done
    }
}

/// Plays `samples` in 10 ms chunks through `session` with a model whose decode takes
/// `fixed_s + per_s × clip` of stream time (and tells the session so after each answer);
/// every update with the stream position it came at.
fn play_with_model(
    session: &mut LiveSession,
    samples: &[f32],
    fixed_s: f64,
    per_s: f64,
) -> Vec<(u64, LiveUpdate)> {
    let mut model = Model::default();
    let mut lengths = std::collections::HashMap::new();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut step = |session: &mut LiveSession, at: u64, seen: &mut Vec<(u64, LiveUpdate)>| {
        for id in model.answered_by(at) {
            let len: usize = lengths.remove(&id).unwrap_or(0);
            session.observe_decode(len, fixed_s + per_s * len as f64 / RATE);
            seen.extend(
                session
                    .on_result(id, Ok(LiveText::default()))
                    .map(|u| (at, u)),
            );
        }
        while let Some(job) = session.next_job() {
            lengths.insert(job.id, job.samples.len());
            let takes = (fixed_s + per_s * job.samples.len() as f64 / RATE) * RATE;
            model.take(&job, at, takes as u64);
        }
    };
    for chunk in samples.chunks(160) {
        session.push(chunk, &mut out);
        at += chunk.len() as u64;
        seen.extend(out.drain(..).map(|u| (at, u)));
        step(session, at, &mut seen);
    }
    session.finish(&mut out);
    seen.extend(out.drain(..).map(|u| (at, u)));
    while !session.is_idle() {
        at += 160;
        step(session, at, &mut seen);
        assert!(at < 100 * 16_000, "the session never went idle");
    }
    seen
}

fn lines_of(updates: &[(u64, LiveUpdate)]) -> Vec<(f64, &LiveLine)> {
    updates
        .iter()
        .map(|(at, u)| match u {
            LiveUpdate::Line(line) => (secs(*at), line),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_final_goes_out_while_a_stale_partial_runs_and_its_answer_is_dropped() {
    let (samples, _) = spoken();
    let mut session = LiveSession::new(LiveConfig::default());
    let mut out = Vec::new();
    let mut partial = None;
    let mut final_job = None;
    for chunk in samples.chunks(160) {
        session.push(chunk, &mut out);
        // The model never answers the first partial while the first utterance lasts.
        match session.next_job() {
            Some(job) if job.kind == JobKind::Partial && partial.is_none() => partial = Some(job),
            Some(job) if job.kind == JobKind::Final => {
                final_job = Some(job);
                break;
            }
            Some(job) => panic!("a second job while a partial was out: {job:?}"),
            None => {}
        }
    }
    let partial = partial.expect("a partial went out");
    let final_job = final_job.expect("the final went out while the partial was still out");
    assert_eq!(final_job.utterance, partial.utterance);
    assert!(session.is_busy());
    assert_eq!(session.stats().finals_past_stale_partial, 1);
    // Nothing more goes out while the final is out; the partial's late answer shows nothing.
    assert!(session.next_job().is_none());
    assert_eq!(session.on_result(partial.id, Ok(answer(&partial))), None);
    assert_eq!(session.stats().partials_stale, 1);
    let line = session.on_result(final_job.id, Ok(answer(&final_job)));
    assert!(
        matches!(&line, Some(LiveUpdate::Line(l)) if !l.partial && l.utterance == 0),
        "{line:?}"
    );
    // An answer for a job that is not out is ignored.
    assert_eq!(
        session.on_result(final_job.id, Ok(LiveText::default())),
        None
    );
}

#[test]
fn partials_are_timed_by_the_decode_time_and_keep_within_a_second_of_each_other() {
    let (samples, _) = spoken();
    // A model a little faster than the 2-core CPU: 0.25 s + 0.05 s per second of audio.
    let mut session = LiveSession::new(LiveConfig::default());
    let updates = play_with_model(&mut session, &samples, 0.25, 0.05);
    let lines = lines_of(&updates);
    let finals: Vec<_> = lines.iter().filter(|(_, l)| !l.partial).collect();
    assert_eq!(finals.len(), 3, "{lines:#?}");
    for (done_at, line) in &finals {
        // From the utterance's start to its end: a line at least every second.
        let mut last = line.start;
        let spoken_until = line.end - secs(session.config().segmenter.hangover_samples());
        for (at, _) in lines
            .iter()
            .filter(|(at, l)| l.utterance == line.utterance && l.partial && *at < spoken_until)
        {
            assert!(at - last <= 1.0, "{at} after {last}: {lines:#?}");
            last = *at;
        }
        assert!(spoken_until - last <= 1.0, "{last} before {spoken_until}");
        // The final: its own decode after the utterance's end, at most behind the rest of a
        // partial that was running (started while speech went on, so a hangover before the end).
        let own = 0.25 + 0.05 * (line.end - line.start);
        let config = session.config();
        let wait = config.partial_budget_s - secs(config.segmenter.hangover_samples());
        assert!(
            done_at - line.end <= own + wait + 0.011,
            "{line:?} at {done_at} (its own decode {own})"
        );
        assert!(done_at - line.end <= config.final_target_s);
    }
    let stats = session.stats();
    assert!(stats.partials_sent >= 4, "{stats:?}");
    assert_eq!(stats.partials_held, 0, "{stats:?}");
}

#[test]
fn a_slow_model_gets_partials_of_the_newest_audio_or_none_that_would_delay_a_final() {
    let (samples, _) = spoken();
    // 0.1 s + 0.4 s per second: a 2 s clip is the most that fits the 0.9 s partial budget.
    let mut session = LiveSession::new(LiveConfig::default());
    let updates = play_with_model(&mut session, &samples, 0.1, 0.4);
    let lines = lines_of(&updates);
    assert_eq!(lines.iter().filter(|(_, l)| !l.partial).count(), 3);
    let longest = session.cost().longest_within(0.9);
    assert!((longest - 2.0).abs() < 1e-6, "{longest}");
    for (_, line) in lines.iter().filter(|(_, l)| l.partial) {
        assert!(line.end - line.start <= 2.0 + 1e-6, "{line:?}");
    }

    // Decodes of 1.4 s: with a final of the same cost after it, no partial fits the 1.5 s
    // target, so none is sent and every final comes one decode after its utterance's end.
    let mut session = LiveSession::new(LiveConfig::default());
    // Known from the start (as `listen`'s calibration makes it), not the prior's guess.
    session.observe_decode(16_000, 1.4);
    session.observe_decode(32_000, 1.4);
    let updates = play_with_model(&mut session, &samples, 1.4, 0.0);
    let lines = lines_of(&updates);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for (at, line) in &lines {
        assert!(!line.partial);
        assert!(at - line.end <= 1.4 + 0.011, "{line:?} at {at}");
    }
    let stats = session.stats();
    assert_eq!(stats.partials_sent, 0, "{stats:?}");
    assert!(stats.partials_held >= 3, "{stats:?}");
}

#[test]
fn in_lockstep_partials_come_on_the_audio_clock() {
    let (samples, _) = spoken();
    let config = LiveConfig {
        lockstep: true,
        ..LiveConfig::default()
    };
    let mut session = LiveSession::new(config);
    // The stream waits for every answer: the answer comes at the position the job left.
    let mut updates = Vec::new();
    for chunk in samples.chunks(160) {
        session.push(chunk, &mut updates);
        while let Some(job) = session.next_job() {
            updates.extend(session.on_result(job.id, Ok(answer(&job))));
        }
    }
    session.finish(&mut updates);
    while let Some(job) = session.next_job() {
        updates.extend(session.on_result(job.id, Ok(answer(&job))));
    }
    let all: Vec<&LiveLine> = updates
        .iter()
        .map(|u| match u {
            LiveUpdate::Line(l) => l,
            other => panic!("{other:?}"),
        })
        .collect();
    for line in all.iter().filter(|l| !l.partial) {
        let partials: Vec<f64> = all
            .iter()
            .filter(|l| l.partial && l.utterance == line.utterance)
            .map(|l| l.end)
            .collect();
        assert!(!partials.is_empty(), "{all:#?}");
        let mut last = line.start;
        for end in partials {
            // Every 0.8 s of audio, to the 10 ms chunk (partials cover the whole utterance).
            assert!((end - last - 0.8).abs() <= 0.011, "{end} after {last}");
            last = end;
        }
    }
    assert!(all.iter().all(|l| {
        !l.partial
            || l.start
                == all
                    .iter()
                    .find(|f| !f.partial && f.utterance == l.utterance)
                    .map_or(-1.0, |f| f.start)
    }));
}
