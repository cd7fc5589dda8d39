//! Greedy decoding rules over one step's logits, and timestamp tokens → timed segments.
//!
//! The rules are transformers' Whisper logits processors in the order `generate()` applies
//! them: `SuppressTokensAtBeginLogitsProcessor`, `SuppressTokensLogitsProcessor`, then
//! `WhisperTimeStampLogitsProcessor` (timestamps in pairs and never decreasing, a timestamp
//! first and no later than `max_initial_timestamp_index`, and a timestamp whenever the
//! timestamps' total probability beats every text token's). These are OpenAI's rules.

use super::config::Vocabulary;
use super::frontend::TIME_PRECISION_S;

/// One timed piece of a window's text.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedText {
    /// Start, seconds from the window's start.
    pub start_s: f64,
    /// End, seconds from the window's start.
    pub end_s: f64,
    /// Its text.
    pub text: String,
}

/// Applies the rules to `logits` (one position, all tokens) in place. `generated` are the
/// tokens after the prompt so far.
pub fn apply_rules(logits: &mut [f32], generated: &[u32], vocab: &Vocabulary, timestamps: bool) {
    let neg = f32::NEG_INFINITY;
    let mut suppress = |id: u32| {
        if let Some(v) = logits.get_mut(id as usize) {
            *v = neg;
        }
    };
    if generated.is_empty() {
        vocab
            .begin_suppress_tokens
            .iter()
            .for_each(|&id| suppress(id));
    }
    vocab.suppress_tokens.iter().for_each(|&id| suppress(id));
    if !timestamps {
        return;
    }
    let ts = vocab.timestamp_begin as usize;
    let eot = vocab.eot as usize;
    let n = logits.len();
    if ts >= n {
        return;
    }
    logits[vocab.no_timestamps as usize] = neg;
    let is_ts = |t: u32| t >= vocab.timestamp_begin;
    let last_was_ts = generated.last().is_some_and(|&t| is_ts(t));
    let penultimate_was_ts = generated.len() < 2 || is_ts(generated[generated.len() - 2]);
    if last_was_ts {
        if penultimate_was_ts {
            logits[ts..].fill(neg);
        } else {
            logits[..eot.min(n)].fill(neg);
        }
    }
    let last_ts = generated.iter().rev().find(|&&t| is_ts(t)).copied();
    let floor = match last_ts {
        None => vocab.timestamp_begin,
        Some(t) if last_was_ts && !penultimate_was_ts => t,
        Some(t) => t + 1,
    } as usize;
    logits[ts..floor.clamp(ts, n)].fill(neg);
    if generated.is_empty() {
        logits[..ts].fill(neg);
        if let Some(max) = vocab.max_initial_timestamp_index {
            let last_allowed = ts + max as usize;
            if last_allowed + 1 < n {
                logits[last_allowed + 1..].fill(neg);
            }
        }
    }
    // log_softmax, then compare the timestamps' logsumexp with the best text token.
    let max = logits.iter().copied().fold(neg, f32::max);
    if max == neg {
        return;
    }
    let lse = |xs: &[f32]| -> f64 {
        let m = xs.iter().copied().fold(neg, f32::max);
        if m == neg {
            return f64::NEG_INFINITY;
        }
        let s: f64 = xs.iter().map(|&x| f64::from(x - m).exp()).sum();
        f64::from(m) + s.ln()
    };
    let total = lse(&logits[..]);
    let ts_logprob = lse(&logits[ts..]) - total;
    let text_max = logits[..ts].iter().copied().fold(neg, f32::max);
    let text_logprob = f64::from(text_max) - total;
    if ts_logprob > text_logprob {
        logits[..ts].fill(neg);
    }
}

/// The index of the largest value; the first one on ties (as torch's `argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Splits a window's generated tokens at their timestamps: `<|a|> text <|b|>` is one piece
/// from a to b. Text before the first timestamp starts at 0; text left open at the end (the
/// window ran out of tokens) ends at `window_end_s`. Without any timestamp the whole text is
/// one piece over the window.
pub fn timed_pieces(
    tokens: &[u32],
    vocab: &Vocabulary,
    window_end_s: f64,
    decode: &dyn Fn(&[u32]) -> String,
) -> Vec<TimedText> {
    let time = |t: u32| f64::from(t - vocab.timestamp_begin) * TIME_PRECISION_S;
    let mut pieces = Vec::new();
    let mut start: Option<f64> = None;
    let mut last_end = 0.0;
    let mut text: Vec<u32> = Vec::new();
    let mut push = |start: f64, end: f64, text: &mut Vec<u32>| {
        let words = decode(text).trim().to_owned();
        text.clear();
        if !words.is_empty() {
            pieces.push(TimedText {
                start_s: start,
                end_s: end.max(start),
                text: words,
            });
        }
    };
    for &t in tokens {
        if t == vocab.eot {
            break;
        }
        if t >= vocab.timestamp_begin {
            match start {
                None => start = Some(time(t)),
                Some(s) => {
                    push(s, time(t), &mut text);
                    last_end = time(t);
                    start = None;
                }
            }
        } else {
            if start.is_none() && text.is_empty() {
                start = Some(last_end);
            }
            text.push(t);
        }
    }
    if let Some(s) = start {
        push(s, window_end_s.max(s), &mut text);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocabulary {
        Vocabulary {
            sot: 11,
            eot: 10,
            transcribe: 14,
            translate: Some(13),
            no_timestamps: 15,
            timestamp_begin: 16,
            languages: vec![("en".into(), 12)],
            suppress_tokens: vec![1],
            begin_suppress_tokens: vec![2, 10],
            max_initial_timestamp_index: Some(2),
            vocab_size: 30,
        }
    }

    #[test]
    fn first_step_needs_an_early_timestamp() {
        let v = vocab();
        let mut logits = vec![0.0f32; 30];
        logits[3] = 9.0;
        apply_rules(&mut logits, &[], &v, true);
        assert!(logits[..16].iter().all(|x| x.is_infinite()));
        assert!(logits[16..19].iter().all(|x| *x == 0.0));
        assert!(logits[19..].iter().all(|x| x.is_infinite()));
        assert_eq!(argmax(&logits), 16);
    }

    #[test]
    fn timestamps_come_in_pairs_and_never_go_back() {
        let v = vocab();
        // After <|0.04|> text <|0.10|>: no text, no timestamp before 0.10.
        let mut logits = vec![0.0f32; 30];
        logits[4] = 50.0;
        apply_rules(&mut logits, &[18, 4, 21], &v, true);
        assert!(logits[..10].iter().all(|x| x.is_infinite()));
        assert!(logits[16..21].iter().all(|x| x.is_infinite()));
        assert_eq!(logits[21], 0.0);
        // After a pair: text only (or the end).
        let mut logits = vec![0.0f32; 30];
        apply_rules(&mut logits, &[18, 4, 21, 21], &v, true);
        assert!(logits[16..].iter().all(|x| x.is_infinite()));
        assert_eq!(logits[4], 0.0);
    }

    #[test]
    fn timestamp_mass_beats_a_single_text_token() {
        let v = vocab();
        let mut logits = vec![0.0f32; 30];
        logits[4] = 2.0; // e^2 ≈ 7.4 < 13 timestamps × e^0 after the floor
        apply_rules(&mut logits, &[16, 4], &v, true);
        assert!(logits[4].is_infinite());
        let mut logits = vec![0.0f32; 30];
        logits[4] = 5.0; // e^5 ≈ 148 > 13
        apply_rules(&mut logits, &[16, 4], &v, true);
        assert_eq!(logits[4], 5.0);
        assert_eq!(argmax(&logits), 4);
    }

    #[test]
    fn without_timestamps_only_the_suppression_applies() {
        let v = vocab();
        let mut logits = vec![1.0f32; 30];
        apply_rules(&mut logits, &[], &v, false);
        assert!(logits[1].is_infinite() && logits[2].is_infinite() && logits[10].is_infinite());
        assert_eq!(logits.iter().filter(|x| x.is_infinite()).count(), 3);
        let mut logits = vec![1.0f32; 30];
        apply_rules(&mut logits, &[4], &v, false);
        assert_eq!(logits.iter().filter(|x| x.is_infinite()).count(), 1);
    }

    #[test]
    fn pieces_follow_the_timestamps() {
        let v = vocab();
        let decode = |ids: &[u32]| ids.iter().map(|i| format!("w{i} ")).collect::<String>();
        // <|0.00|> w3 w4 <|0.10|><|0.10|> w5 <|0.20|> w6 (open) <eot>
        let pieces = timed_pieces(&[16, 3, 4, 21, 21, 5, 26, 6, 10, 7], &v, 1.5, &decode);
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        assert_eq!(pieces[0].text, "w3 w4");
        assert!((pieces[0].start_s - 0.0).abs() < 1e-9 && (pieces[0].end_s - 0.1).abs() < 1e-9);
        assert!((pieces[1].start_s - 0.1).abs() < 1e-9 && (pieces[1].end_s - 0.2).abs() < 1e-9);
        assert_eq!(pieces[2].text, "w6");
        assert!((pieces[2].start_s - 0.2).abs() < 1e-9 && (pieces[2].end_s - 1.5).abs() < 1e-9);
    }
}
