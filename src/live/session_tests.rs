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
            updates.extend(session.on_result(Ok(text)));
        }
        lines.append(&mut updates);
    }
    session.finish(&mut updates);
    while let Some(job) = session.next_job() {
        updates.extend(session.on_result(Ok(answer(&job))));
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
    let mut busy_until = 0usize;
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for (i, chunk) in samples.chunks(320).enumerate() {
        session.push(chunk, &mut out);
        let at = i * 320;
        if session.is_busy() && at >= busy_until {
            lines.extend(session.on_result(Ok(LiveText::default())));
        }
        if session.next_job().is_some() {
            busy_until = at + 32_000;
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
        if session.next_job().is_some() {
            seen.extend(session.on_result(Err("worker gone".into())));
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|u| matches!(
        u,
        LiveUpdate::Failed { message, .. } if message == "worker gone"
    )));
}
