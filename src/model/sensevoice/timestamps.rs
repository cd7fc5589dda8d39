//! Token, word and segment timestamps from CTC forced alignment, as FunASR's
//! `SenseVoiceSmall.inference(output_timestamp=True)` computes them.
//!
//! Port of `funasr/models/sense_voice/utils/ctc_alignment.py` (Viterbi over the blank-interleaved
//! targets, f32 scores, first index on ties), the 60 ms frame formulas of `inference`, and the
//! word rules of `SenseVoiceSmall.post`. FunASR aligns the tokenizer's re-encoding of the decoded
//! text, not the greedy ids ([`funasr_targets`]); the two differ where the greedy pieces are not
//! the tokenizer's own encoding of their text (`ing`+`se` re-encodes as `ings`+`e`).

use super::spm_encode::SpmEncoder;

/// The id FunASR aligns for a piece that re-encodes to nothing (hard-coded in its `inference`).
pub const EMPTY_PIECE_ID: u32 = 124;

/// Why a forced alignment cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlignError {
    /// More frames are needed than there are: one per token plus a blank between equal
    /// neighbours.
    #[error("cannot align {tokens} tokens (needing {needed} frames) to {frames} frames")]
    TooFewFrames {
        /// Target tokens.
        tokens: usize,
        /// Frames the tokens need.
        needed: usize,
        /// Frames available.
        frames: usize,
    },
    /// A target or the blank is not a column of the log-probabilities.
    #[error("token id {id} is outside the {vocab} columns of the log-probabilities")]
    OutOfRange {
        /// The id.
        id: u32,
        /// Columns.
        vocab: usize,
    },
    /// A target id is not among the columns handed over.
    #[error("token id {id} is not among the columns of the log-probabilities")]
    MissingColumn {
        /// The id.
        id: u32,
    },
}

/// What FunASR aligns for a decoded text: `tokens = EncodeAsPieces(text)[4:]`, and every piece
/// encoded again on its own with `EncodeAsIds` (an empty result counts as [`EMPTY_PIECE_ID`]).
/// Returns (ids, pieces), one id per piece, or `None` where FunASR gives no times: no piece after
/// the first four, or a piece that re-encodes to several ids (FunASR then pairs the alignment's
/// runs with the wrong pieces and fails with an `IndexError`).
pub fn funasr_targets(encoder: &SpmEncoder, text: &str) -> Option<(Vec<u32>, Vec<String>)> {
    let pieces: Vec<String> = encoder.encode_as_pieces(text).into_iter().skip(4).collect();
    if pieces.is_empty() {
        return None;
    }
    let mut ids = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        match encoder.encode_as_ids(piece)[..] {
            [] => ids.push(EMPTY_PIECE_ID),
            [id] => ids.push(id),
            _ => return None,
        }
    }
    Some((ids, pieces))
}

/// Frame hop of the LFR features, in ms.
pub const FRAME_MS: i64 = 60;

/// Aligned tokens and the words made of them.
pub type Timings = (Vec<TokenTiming>, Vec<WordTiming>);

/// One aligned token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenTiming {
    /// The SentencePiece piece (with its `▁`).
    pub piece: String,
    /// Token id.
    pub id: u32,
    /// Start in seconds.
    pub start_s: f64,
    /// End in seconds.
    pub end_s: f64,
}

/// One word in FunASR's `post()` sense: integer milliseconds, as FunASR reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WordTiming {
    /// The word text (no `▁`, except where FunASR keeps it on the first token).
    pub word: String,
    /// Start in ms.
    pub start_ms: i64,
    /// End in ms.
    pub end_ms: i64,
}

/// A run of words ending at sentence punctuation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// The words joined (ASCII words separated by spaces, CJK characters joined directly).
    pub text: String,
    /// Start in ms.
    pub start_ms: i64,
    /// End in ms.
    pub end_ms: i64,
}

/// Viterbi CTC alignment of `targets` (no blanks) to `log_probs` (`frames` rows of `vocab`).
/// Returns one label per frame (`blank` or a target id). Returns all blanks when the targets are
/// empty and an empty vector when there are no frames. Targets that need more frames than there
/// are (one per token plus a blank between equal neighbours), or an id outside the columns, are
/// an error (FunASR's Viterbi would return a path through -inf scores).
pub fn ctc_forced_align(
    log_probs: &[f32],
    vocab: usize,
    targets: &[u32],
    blank: u32,
) -> Result<Vec<u32>, AlignError> {
    let frames = log_probs.len().checked_div(vocab).unwrap_or(0);
    if let Some(&id) = std::iter::once(&blank)
        .chain(targets)
        .find(|&&id| id as usize >= vocab)
    {
        return Err(AlignError::OutOfRange { id, vocab });
    }
    if frames == 0 && targets.is_empty() {
        return Ok(Vec::new());
    }
    let needed = targets.len() + targets.windows(2).filter(|w| w[0] == w[1]).count();
    if needed > frames {
        return Err(AlignError::TooFewFrames {
            tokens: targets.len(),
            needed,
            frames,
        });
    }
    if targets.is_empty() {
        return Ok(vec![blank; frames]);
    }
    // Blank-interleaved targets: blank, y0, blank, y1, …, blank.
    let mut ext = Vec::with_capacity(2 * targets.len() + 1);
    for &t in targets {
        ext.push(blank);
        ext.push(t);
    }
    ext.push(blank);
    let s = ext.len();
    // Skipping from s-2 to s is allowed where the labels differ (never for blanks).
    let diff: Vec<bool> = (0..s).map(|i| i >= 2 && ext[i] != ext[i - 2]).collect();
    let lp = |t: usize, label: u32| log_probs[t * vocab + label as usize];
    let mut best = vec![f32::NEG_INFINITY; s];
    best[0] = lp(0, blank);
    if s > 1 {
        best[1] = lp(0, ext[1]);
    }
    // Back-pointers: 0 = stay, 1 = from s-1, 2 = from s-2.
    let mut back = vec![0u8; frames * s];
    let mut next = vec![0f32; s];
    for t in 1..frames {
        for i in 0..s {
            let stay = best[i];
            let one = if i >= 1 {
                best[i - 1]
            } else {
                f32::NEG_INFINITY
            };
            let two = if diff[i] {
                best[i - 2]
            } else {
                f32::NEG_INFINITY
            };
            // torch.max over the stacked candidates: first index wins ties.
            let (mut value, mut idx) = (stay, 0u8);
            if one > value {
                (value, idx) = (one, 1);
            }
            if two > value {
                (value, idx) = (two, 2);
            }
            next[i] = lp(t, ext[i]) + value;
            back[t * s + i] = idx;
        }
        std::mem::swap(&mut best, &mut next);
    }
    // End in the last label or the final blank; argmax picks the label on ties.
    let mut state = if best[s - 1] > best[s - 2] {
        s - 1
    } else {
        s - 2
    };
    let mut path = vec![0usize; frames];
    path[frames - 1] = state;
    for t in (1..frames).rev() {
        state -= usize::from(back[t * s + state]);
        path[t - 1] = state;
    }
    Ok(path.into_iter().map(|i| ext[i]).collect())
}

/// One non-blank run of the alignment, timed as FunASR's `inference` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    /// `max((start*60 - 30)/1000, 0)` seconds (a Python float).
    pub start_s: f64,
    /// `min((end*60 - 30)/1000, (ts_max*60 - 30)/1000)` seconds.
    pub end_s: f64,
    /// True when `min` returned its second operand, which FunASR holds as a float32 tensor; its
    /// conversion to ms then happens in f32.
    pub end_is_f32: bool,
}

impl Span {
    /// `(int(start*1000), int(end*1000))` as `post()` computes them.
    pub fn ms(&self) -> (i64, i64) {
        let start = (self.start_s * 1000.0) as i64;
        let end = if self.end_is_f32 {
            (self.end_s as f32 * 1000.0f32) as i64
        } else {
            (self.end_s * 1000.0) as i64
        };
        (start, end)
    }
}

/// The non-blank runs of `alignment`, in order. `speech_frames` is `encoder_out_lens - 4`.
pub fn token_spans(alignment: &[u32], blank: u32, speech_frames: usize) -> Vec<Span> {
    let ts_max = speech_frames as i64;
    let clamp = (ts_max * FRAME_MS - 30) as f32 / 1000.0f32;
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < alignment.len() {
        let label = alignment[start];
        let mut end = start;
        while end < alignment.len() && alignment[end] == label {
            end += 1;
        }
        if label != blank {
            let start_s = ((start as i64 * FRAME_MS - 30) as f64 / 1000.0).max(0.0);
            let a = (end as i64 * FRAME_MS - 30) as f64 / 1000.0;
            // Python's min returns the first operand unless the second is strictly smaller.
            let (end_s, end_is_f32) = if f64::from(clamp) < a {
                (f64::from(clamp), true)
            } else {
                (a, false)
            };
            out.push(Span {
                start_s,
                end_s,
                end_is_f32,
            });
        }
        start = end;
    }
    out
}

/// Python `str.isalpha() and str.isascii()`.
fn ascii_alpha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Aligned tokens of one utterance, then FunASR `post()` words.
///
/// `pieces` are the token pieces matched to the alignment runs in order; `log_probs` holds
/// the speech frames only (prompt frames removed), already log-softmaxed.
pub fn align_tokens(
    log_probs: &[f32],
    vocab: usize,
    ids: &[u32],
    pieces: &[String],
    blank: u32,
) -> Result<Timings, AlignError> {
    let frames = log_probs.len().checked_div(vocab).unwrap_or(0);
    if ids.is_empty() || frames == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    if blank as usize >= vocab {
        return Err(AlignError::OutOfRange { id: blank, vocab });
    }
    // FunASR forces blank wherever blank is the frame's argmax (log p(blank) = 0).
    let mut lp = log_probs.to_vec();
    for row in lp.chunks_exact_mut(vocab) {
        let arg = argmax(row);
        if arg == blank as usize {
            row[blank as usize] = 0.0;
        }
    }
    let alignment = ctc_forced_align(&lp, vocab, ids, blank)?;
    Ok(timed(&token_spans(&alignment, blank, frames), ids, pieces))
}

/// [`align_tokens`] on log-probabilities reduced to a few vocabulary columns, which is all the
/// alignment reads: `log_probs` is `[frames, columns.len()]`, `columns[0]` must be the blank
/// and every id must be among `columns`. `blank_frames[t]` says whether blank is frame t's
/// argmax over the whole vocabulary (where FunASR forces blank). Gives the same result as
/// [`align_tokens`] on the full matrix.
pub fn align_token_columns(
    log_probs: &[f32],
    columns: &[u32],
    blank_frames: &[bool],
    ids: &[u32],
    pieces: &[String],
) -> Result<Timings, AlignError> {
    let k = columns.len();
    let frames = log_probs.len().checked_div(k).unwrap_or(0);
    if ids.is_empty() || frames == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let targets = ids
        .iter()
        .map(|&id| {
            columns
                .iter()
                .position(|&c| c == id)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or(AlignError::MissingColumn { id })
        })
        .collect::<Result<Vec<u32>, AlignError>>()?;
    let mut lp = log_probs.to_vec();
    for (row, &is_blank) in lp.chunks_exact_mut(k).zip(blank_frames) {
        if is_blank {
            row[0] = 0.0;
        }
    }
    let alignment = ctc_forced_align(&lp, k, &targets, 0)?;
    Ok(timed(&token_spans(&alignment, 0, frames), ids, pieces))
}

/// Pairs the alignment runs with the tokens, in order, then makes FunASR `post()` words.
fn timed(spans: &[Span], ids: &[u32], pieces: &[String]) -> Timings {
    let mut tokens = Vec::new();
    let mut raw = Vec::new();
    for (span, (piece, &id)) in spans.iter().zip(pieces.iter().zip(ids)) {
        tokens.push(TokenTiming {
            piece: piece.clone(),
            id,
            start_s: span.start_s,
            end_s: span.end_s,
        });
        let (start_ms, end_ms) = span.ms();
        raw.push((piece.as_str(), start_ms, end_ms));
    }
    (tokens, post_words(&raw))
}

/// FunASR `SenseVoiceSmall.post`: `(piece, start_ms, end_ms)` → words.
pub fn post_words(tokens: &[(&str, i64, i64)]) -> Vec<WordTiming> {
    let mut words: Vec<WordTiming> = Vec::new();
    let mut prev: Option<String> = None;
    for (i, &(piece, start_ms, end_ms)) in tokens.iter().enumerate() {
        if piece == "\u{2581}" {
            continue;
        }
        let word = if i == 0 {
            words.push(WordTiming {
                word: piece.to_owned(),
                start_ms,
                end_ms,
            });
            piece.to_owned()
        } else if let Some(stripped) = piece.strip_prefix('\u{2581}') {
            words.push(WordTiming {
                word: stripped.to_owned(),
                start_ms,
                end_ms,
            });
            stripped.to_owned()
        } else if let (Some(p), Some(last)) = (
            prev.as_deref()
                .filter(|p| ascii_alpha(p) && ascii_alpha(piece)),
            words.last_mut(),
        ) {
            let merged = format!("{p}{piece}");
            last.word = merged.clone();
            last.end_ms = end_ms;
            merged
        } else {
            words.push(WordTiming {
                word: piece.to_owned(),
                start_ms,
                end_ms,
            });
            piece.to_owned()
        };
        prev = Some(word);
    }
    words
}

/// Groups words into segments ending at sentence punctuation (`。！？.!?`).
pub fn segments_from_words(words: &[WordTiming]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut open = false;
    for w in words {
        if !open {
            out.push(Segment {
                text: String::new(),
                start_ms: w.start_ms,
                end_ms: w.end_ms,
            });
            open = true;
        }
        if let Some(seg) = out.last_mut() {
            let needs_space = seg
                .text
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && w.word
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric());
            if needs_space {
                seg.text.push(' ');
            }
            seg.text.push_str(w.word.trim_start_matches('\u{2581}'));
            seg.end_ms = w.end_ms;
            if w.word.ends_with(['。', '！', '？', '.', '!', '?']) {
                open = false;
            }
        }
    }
    out
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emissions(frames: &[u32], vocab: usize) -> Vec<f32> {
        let mut out = vec![(0.1f32 / (vocab - 1) as f32).ln(); frames.len() * vocab];
        for (t, &f) in frames.iter().enumerate() {
            out[t * vocab + f as usize] = 0.9f32.ln();
        }
        out
    }

    #[test]
    fn aligns_clean_sequence() {
        let frames = [1, 1, 1, 0, 0, 2, 2, 2, 3, 3, 0, 0];
        let a = ctc_forced_align(&emissions(&frames, 6), 6, &[1, 2, 3], 0).unwrap();
        assert_eq!(a, frames);
    }

    #[test]
    fn column_alignment_equals_full_vocabulary_alignment() {
        // Noisy emissions over 9 labels; the ids use 3 of them, one twice in a row.
        let vocab = 9;
        let frames = 40;
        let mut lp = vec![0f32; frames * vocab];
        let mut state = 0x2545_f491_u32;
        for v in &mut lp {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *v = -((state % 1000) as f32) / 100.0;
        }
        let ids = [4u32, 7, 7, 2, 4];
        let pieces: Vec<String> = ids.iter().map(|i| format!("p{i}")).collect();
        let full = align_tokens(&lp, vocab, &ids, &pieces, 0).unwrap();
        let columns = [0u32, 4, 7, 2];
        let mut reduced = Vec::new();
        let mut blank_frames = Vec::new();
        for row in lp.chunks_exact(vocab) {
            reduced.extend(columns.iter().map(|&c| row[c as usize]));
            blank_frames.push(argmax(row) == 0);
        }
        let compact =
            align_token_columns(&reduced, &columns, &blank_frames, &ids, &pieces).unwrap();
        assert_eq!(full.0.len(), ids.len());
        assert_eq!(compact, full);
    }

    #[test]
    fn repeated_token_needs_a_blank() {
        let a = ctc_forced_align(&emissions(&[1, 1, 0, 1, 1], 4), 4, &[1, 1], 0).unwrap();
        assert_eq!(a, [1, 1, 0, 1, 1]);
        // Three frames are the least two equal tokens fit in: token, blank, token.
        let a = ctc_forced_align(&emissions(&[1, 1, 1], 4), 4, &[1, 1], 0).unwrap();
        assert_eq!(a, [1, 0, 1]);
        // Two different tokens need no blank between them.
        let a = ctc_forced_align(&emissions(&[0, 0], 4), 4, &[2, 3], 0).unwrap();
        assert_eq!(a, [2, 3]);
    }

    #[test]
    fn ties_take_the_first_candidate_as_torch_max_does() {
        // Expected paths as FunASR's `ctc_forced_align` returns them on the same inputs.
        // Every score equal: the last token wins its tie with the final blank, and tracing
        // back, "stay" wins every tie, so the path sits in the last token from the first frame
        // that reaches it (frame 1, skipping the blank).
        let lp = vec![-1.0f32; 6 * 3];
        let a = ctc_forced_align(&lp, 3, &[1, 2], 0).unwrap();
        assert_eq!(a, [1, 2, 2, 2, 2, 2]);
        // A tie between moving one state and skipping the blank takes the single step.
        let mut lp = vec![f32::NEG_INFINITY; 3 * 3];
        for (t, row) in lp.chunks_exact_mut(3).enumerate() {
            row[0] = -1.0;
            row[1] = if t == 0 { -1.0 } else { f32::NEG_INFINITY };
            row[2] = -1.0;
        }
        // From token 1 at frame 0: blank-then-2 and 2-then-2 score the same (-3 both); at frame
        // 2 in token 2, "stay" (from 2 at frame 1) is the first candidate and wins.
        let a = ctc_forced_align(&lp, 3, &[1, 2], 0).unwrap();
        assert_eq!(a, [1, 2, 2]);
    }

    #[test]
    fn too_many_tokens_for_the_frames_is_an_error() {
        let lp = emissions(&[1, 2], 4);
        assert_eq!(
            ctc_forced_align(&lp, 4, &[1, 2, 3], 0),
            Err(AlignError::TooFewFrames {
                tokens: 3,
                needed: 3,
                frames: 2
            })
        );
        // Equal neighbours need a blank frame between them.
        let lp = emissions(&[1, 0], 4);
        assert!(matches!(
            ctc_forced_align(&lp, 4, &[1, 1], 0),
            Err(AlignError::TooFewFrames { needed: 3, .. })
        ));
        assert_eq!(
            ctc_forced_align(&lp, 4, &[1, 9], 0),
            Err(AlignError::OutOfRange { id: 9, vocab: 4 })
        );
        assert!(matches!(
            ctc_forced_align(&[], 4, &[1], 0),
            Err(AlignError::TooFewFrames { frames: 0, .. })
        ));
        assert_eq!(ctc_forced_align(&[], 4, &[], 0), Ok(Vec::new()));
        let pieces = ["a".to_owned()];
        assert_eq!(
            align_token_columns(&[0.0, 0.0], &[0, 5], &[false], &[7], &pieces),
            Err(AlignError::MissingColumn { id: 7 })
        );
        assert!(align_tokens(&lp, 4, &[1, 2, 3], &pieces, 0).is_err());
    }

    #[test]
    fn spec_golden_words() {
        // Spec §6.1: hello at speech frames 6-8, ▁w at 9, orld at 17-19, 你好 at 20; 62 frames.
        let spans = token_spans(
            &[
                0, 0, 0, 0, 0, 0, 5, 5, 5, 6, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 8, 0,
            ],
            0,
            62,
        );
        let pieces = ["hello", "\u{2581}w", "orld", "你好"];
        let raw: Vec<(&str, i64, i64)> = pieces
            .iter()
            .zip(&spans)
            .map(|(p, span)| (*p, span.ms().0, span.ms().1))
            .collect();
        let words = post_words(&raw);
        let got: Vec<(&str, i64, i64)> = words
            .iter()
            .map(|w| (w.word.as_str(), w.start_ms, w.end_ms))
            .collect();
        assert_eq!(
            got,
            [
                ("hello", 330, 510),
                ("world", 510, 1170),
                ("你好", 1170, 1230)
            ]
        );
    }
}
