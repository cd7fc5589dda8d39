//! Subtitle cues from token times: what SRT, VTT and the window's transcript show.
//!
//! Tokens join into words (pieces without `▁` continue a word of a spaced script; every piece
//! of Chinese or Japanese text is a word of its own; punctuation sticks to the word before it).
//! Words split into phrases at sentence-ending punctuation and at pauses longer than
//! [`CueRules::pause_s`]; a phrase too long for one cue ([`CueRules::max_duration_s`], lines of
//! [`CueRules::max_line_chars`] / [`CueRules::max_line_chars_cjk`]) is cut into the fewest
//! cues that fit, preferring clause punctuation and gaps. Cues never split a word, never
//! overlap, and a cue shorter than [`CueRules::min_duration_s`] joins a neighbour across a
//! short gap or is held longer where the silence around it allows. Pure functions.

use std::ops::Range;

use super::transcript::{FileTranscript, TokenTime};

/// Times closer than this are equal (float noise of sums of frame times).
const EPS_S: f64 = 1e-9;

/// How cues are cut. The defaults follow common subtitle practice.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CueRules {
    /// Longest cue, seconds (a single word may last longer).
    pub max_duration_s: f64,
    /// Lines per cue.
    pub max_lines: usize,
    /// Characters per line of Latin-script (or other narrow) text.
    pub max_line_chars: usize,
    /// Characters per line of Chinese, Japanese or Korean text. Mixed lines count each wide
    /// character as `max_line_chars / max_line_chars_cjk` narrow ones.
    pub max_line_chars_cjk: usize,
    /// A silence longer than this between two words always ends a cue, seconds.
    pub pause_s: f64,
    /// Shortest cue on screen, seconds, where the speech around it leaves room.
    pub min_duration_s: f64,
}

impl Default for CueRules {
    fn default() -> Self {
        Self {
            max_duration_s: 7.0,
            max_lines: 2,
            max_line_chars: 42,
            max_line_chars_cjk: 18,
            pause_s: 0.7,
            min_duration_s: 0.8,
        }
    }
}

impl CueRules {
    /// The rules with every limit made usable (at least one line of one character, a positive
    /// longest cue), so that odd settings cannot stall cue building.
    pub fn sanitized(self) -> Self {
        let positive = |v: f64, fallback: f64| {
            if v.is_finite() && v > 0.0 {
                v
            } else {
                fallback
            }
        };
        let d = Self::default();
        let max_duration_s = positive(self.max_duration_s, d.max_duration_s);
        Self {
            max_duration_s,
            max_lines: self.max_lines.max(1),
            max_line_chars: self.max_line_chars.max(1),
            max_line_chars_cjk: self.max_line_chars_cjk.max(1),
            pause_s: positive(self.pause_s, d.pause_s),
            min_duration_s: if self.min_duration_s.is_finite() {
                self.min_duration_s.clamp(0.0, max_duration_s)
            } else {
                d.min_duration_s
            },
        }
    }

    /// Width of a line in units where a full line is [`Self::line_capacity`].
    fn width(&self, text: &str) -> usize {
        text.chars()
            .map(|c| {
                if is_wide(c) {
                    self.max_line_chars
                } else {
                    self.max_line_chars_cjk
                }
            })
            .sum()
    }

    fn line_capacity(&self) -> usize {
        self.max_line_chars * self.max_line_chars_cjk
    }

    /// Whether `text` fits on one line.
    pub fn line_fits(&self, text: &str) -> bool {
        self.width(text) <= self.line_capacity()
    }
}

/// The cue rules as command-line flags (`gpuscribe transcribe --format srt|vtt`).
#[derive(Clone, Copy, Debug, PartialEq, clap::Args)]
pub struct CueArgs {
    /// Longest subtitle cue, seconds.
    #[arg(long, default_value_t = 7.0, value_name = "SECONDS", value_parser = positive_secs)]
    pub max_cue_secs: f64,
    /// Lines per subtitle cue.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_lines: u16,
    /// Characters per subtitle line (Latin and other narrow scripts).
    #[arg(long, default_value_t = 42, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub line_chars: u16,
    /// Characters per subtitle line of Chinese, Japanese or Korean text.
    #[arg(long, default_value_t = 18, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub line_chars_cjk: u16,
    /// A silence longer than this always ends a cue, seconds.
    #[arg(long, default_value_t = 0.7, value_name = "SECONDS", value_parser = positive_secs)]
    pub pause_secs: f64,
    /// Shortest cue on screen where the silence around it allows, seconds.
    #[arg(long, default_value_t = 0.8, value_name = "SECONDS", value_parser = non_negative_secs)]
    pub min_cue_secs: f64,
}

impl CueArgs {
    /// The rules these flags ask for.
    pub fn rules(&self) -> CueRules {
        CueRules {
            max_duration_s: self.max_cue_secs,
            max_lines: usize::from(self.max_lines),
            max_line_chars: usize::from(self.line_chars),
            max_line_chars_cjk: usize::from(self.line_chars_cjk),
            pause_s: self.pause_secs,
            min_duration_s: self.min_cue_secs,
        }
        .sanitized()
    }
}

fn positive_secs(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a positive number of seconds")),
    }
}

fn non_negative_secs(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a number of seconds (0 or more)")),
    }
}

/// A word with its time: the unit cues are made of.
#[derive(Clone, Debug, PartialEq)]
pub struct CueWord {
    /// The word (punctuation attached), no spaces around it.
    pub text: String,
    /// Start, seconds from the file's start.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
    /// Whether a space separates it from the word before.
    pub space_before: bool,
}

/// One subtitle.
#[derive(Clone, Debug, PartialEq)]
pub struct Cue {
    /// Start, seconds.
    pub start_s: f64,
    /// End, seconds.
    pub end_s: f64,
    /// The text, one entry per line.
    pub lines: Vec<String>,
    /// The words it holds (indices into the word list it was built from).
    pub words: Range<usize>,
}

impl Cue {
    /// The lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Han, kana, Hangul, CJK punctuation and full-width forms: characters a line holds fewer of.
pub fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0x303F | 0x3040..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xA960..=0xA97F | 0xAC00..=0xD7FF | 0xF900..=0xFAFF | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFF)
}

/// Scripts written without spaces between words (Chinese, Japanese): every token is a word.
fn is_unspaced(c: char) -> bool {
    is_wide(c) && !matches!(c as u32, 0x1100..=0x115F | 0xA960..=0xA97F | 0xAC00..=0xD7FF)
}

/// Punctuation that belongs to the word before it.
fn is_closing_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | '!'
            | '?'
            | ';'
            | ':'
            | '%'
            | ')'
            | ']'
            | '}'
            | '…'
            | '、'
            | '，'
            | '。'
            | '！'
            | '？'
            | '；'
            | '：'
            | '）'
            | '」'
            | '』'
            | '》'
            | '〉'
            | '】'
    )
}

/// Whether a word ends a sentence (`.`, `!`, `?`, `。`, `！`, `？`, `…`, quotes after them).
pub fn ends_sentence(word: &str) -> bool {
    word.trim_end_matches(['"', '\'', '”', '’', '」', '』', ')', '）'])
        .ends_with(['.', '!', '?', '。', '！', '？', '…'])
}

/// Whether a word ends a clause (`,`, `;`, `:` and their CJK forms): a good place to cut.
fn ends_clause(word: &str) -> bool {
    word.ends_with([',', ';', ':', '，', '、', '；', '：'])
}

/// A `<|…|>` tag (language, emotion, event, ITN): never shown in subtitles.
fn is_tag(piece: &str) -> bool {
    piece.starts_with("<|") && piece.ends_with("|>")
}

fn joins_previous(previous: &str, body: &str) -> bool {
    let (Some(last), Some(first)) = (previous.chars().next_back(), body.chars().next()) else {
        return false;
    };
    if is_closing_punct(first) {
        return true;
    }
    let wordish = |c: char| (c.is_alphanumeric() || c == '\'') && !is_unspaced(c);
    wordish(last) && wordish(first)
}

/// Words from token times (tags dropped, every other token in exactly one word).
pub fn words_from_tokens(tokens: &[TokenTime]) -> Vec<CueWord> {
    let mut builder = WordBuilder::default();
    tokens.iter().for_each(|t| builder.push(t));
    builder.words
}

/// [`words_from_tokens`] a token at a time: the words so far (the last may still grow).
#[derive(Clone, Debug, Default)]
pub struct WordBuilder {
    /// The words so far.
    pub words: Vec<CueWord>,
    pending_space: bool,
}

impl WordBuilder {
    /// Adds the next token.
    pub fn push(&mut self, token: &TokenTime) {
        if is_tag(&token.token) {
            return;
        }
        let spaced = token.token.starts_with(['\u{2581}', ' ']);
        let body = token.token.replace('\u{2581}', " ");
        let body = body.trim();
        if body.is_empty() {
            self.pending_space |= spaced;
            return;
        }
        let space_before = spaced || self.pending_space;
        self.pending_space = false;
        match self.words.last_mut() {
            Some(last) if !space_before && joins_previous(&last.text, body) => {
                last.text.push_str(body);
                last.end_s = last.end_s.max(token.end_s);
            }
            _ => self.words.push(CueWord {
                text: body.to_owned(),
                start_s: token.start_s,
                end_s: token.end_s.max(token.start_s),
                space_before,
            }),
        }
    }
}

/// Words of plain text spread evenly (by characters) over `start_s..end_s`: cues for
/// transcripts without token times.
pub fn words_from_text(text: &str, start_s: f64, end_s: f64) -> Vec<CueWord> {
    let mut pieces: Vec<(String, bool)> = Vec::new();
    for (i, chunk) in text.split_whitespace().enumerate() {
        let mut first = i > 0;
        let mut current = String::new();
        for c in chunk.chars() {
            let breaks = is_unspaced(c) && !is_closing_punct(c);
            let after_unspaced = current.chars().next_back().is_some_and(is_unspaced);
            if !current.is_empty() && (breaks || (after_unspaced && !is_closing_punct(c))) {
                pieces.push((std::mem::take(&mut current), first));
                first = false;
            }
            current.push(c);
        }
        if !current.is_empty() {
            pieces.push((current, first));
        }
    }
    let total: usize = pieces.iter().map(|(p, _)| p.chars().count()).sum();
    let span = (end_s - start_s).max(0.0);
    let mut done = 0usize;
    pieces
        .into_iter()
        .map(|(text, space_before)| {
            let n = text.chars().count();
            let at = |k: usize| start_s + span * k as f64 / total.max(1) as f64;
            let word = CueWord {
                start_s: at(done),
                end_s: at(done + n),
                text,
                space_before,
            };
            done += n;
            word
        })
        .collect()
}

/// The cues of a transcript: from its token times, or from its segments' text when it has
/// none. Tags never appear in the text.
pub fn transcript_cues(transcript: &FileTranscript, rules: &CueRules) -> Vec<Cue> {
    let limit = (transcript.duration_s > 0.0).then_some(transcript.duration_s);
    if !transcript.tokens.is_empty() {
        return build_cues(&words_from_tokens(&transcript.tokens), rules, limit);
    }
    segment_cues(&transcript.segments, rules, limit)
}

/// Cues from segments' text alone: each segment's words spread over its time, cut into cues
/// within the segment.
pub fn segment_cues(
    segments: &[super::transcript::Segment],
    rules: &CueRules,
    limit_s: Option<f64>,
) -> Vec<Cue> {
    let mut cues = Vec::new();
    let mut offset = 0;
    for (i, segment) in segments.iter().enumerate() {
        let text = crate::model::sensevoice::postprocess::strip_tags(&segment.text);
        let words = words_from_text(&text, segment.start_s, segment.end_s);
        let floor = cues
            .last()
            .map_or(0.0, |c: &Cue| c.end_s)
            .max(segment.start_s.min(segment.end_s));
        let limit = segments
            .get(i + 1)
            .map_or(limit_s, |next| Some(next.start_s));
        for mut cue in build_cues_within(&words, rules, floor, limit) {
            cue.words = cue.words.start + offset..cue.words.end + offset;
            cues.push(cue);
        }
        offset += words.len();
    }
    cues
}

/// The fewest lines `words` fill (greedy filling); `usize::MAX` when a word is wider than a
/// line, so that only a cue of that word alone holds it.
fn greedy_line_count(words: &[CueWord], rules: &CueRules) -> usize {
    let cap = rules.line_capacity();
    let space = rules.width(" ");
    let mut lines = 0;
    let mut used = 0;
    for w in words {
        let width = rules.width(&w.text);
        if width > cap {
            return usize::MAX;
        }
        let extra = if w.space_before { space } else { 0 };
        if lines > 0 && used + extra + width <= cap {
            used += extra + width;
        } else {
            lines += 1;
            used = width;
        }
    }
    lines
}

fn join_words(words: &[CueWord]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 && w.space_before {
            out.push(' ');
        }
        out.push_str(&w.text);
    }
    out
}

/// Balanced lines: the break (or breaks) that keep the longest line shortest; the last line
/// takes any remainder when more than two lines are allowed.
fn layout(words: &[CueWord], rules: &CueRules) -> Vec<String> {
    let whole = join_words(words);
    if words.len() <= 1 || rules.line_fits(&whole) || rules.max_lines == 1 {
        return vec![whole];
    }
    let lines_needed = greedy_line_count(words, rules).clamp(2, rules.max_lines.max(2));
    // Split into `lines_needed` lines minimising the widest one (small n: plain DP).
    let n = words.len();
    let width_of = |a: usize, b: usize| rules.width(&join_words(&words[a..b]));
    // best[l][i]: minimal widest line laying out words[..i] in l lines, with its cut.
    let mut best = vec![vec![(usize::MAX, 0usize); n + 1]; lines_needed + 1];
    best[0][0] = (0, 0);
    for l in 1..=lines_needed {
        for i in 1..=n {
            for j in (l - 1)..i {
                let (prev, _) = best[l - 1][j];
                if prev == usize::MAX {
                    continue;
                }
                let width = width_of(j, i);
                if width > rules.line_capacity() {
                    continue;
                }
                let mut cost = prev.max(width);
                // A break after clause punctuation reads better: a small bonus.
                if j > 0 && !ends_clause(&words[j - 1].text) {
                    cost += 1;
                }
                if cost < best[l][i].0 {
                    best[l][i] = (cost, j);
                }
            }
        }
    }
    let mut cuts = vec![n];
    let mut i = n;
    for l in (1..=lines_needed).rev() {
        i = best[l][i].1;
        cuts.push(i);
    }
    cuts.reverse();
    cuts.windows(2)
        .filter(|w| w[0] < w[1])
        .map(|w| join_words(&words[w[0]..w[1]]))
        .collect()
}

fn fits(words: &[CueWord], rules: &CueRules) -> bool {
    match (words.first(), words.last()) {
        (Some(first), Some(last)) => {
            words.len() == 1
                || (last.end_s - first.start_s <= rules.max_duration_s + 1e-9
                    && greedy_line_count(words, rules) <= rules.max_lines)
        }
        _ => true,
    }
}

/// Splits one phrase (`words[range]`) into the fewest cues that fit, cutting preferably
/// after clause punctuation and at the longer gaps.
fn split_phrase(
    words: &[CueWord],
    range: Range<usize>,
    rules: &CueRules,
    out: &mut Vec<Range<usize>>,
) {
    let (a, b) = (range.start, range.end);
    if a >= b {
        return;
    }
    // best[i]: (cost, start of the last cue) for words[a..i].
    let mut best: Vec<(f64, usize)> = vec![(f64::INFINITY, a); b - a + 1];
    best[0] = (0.0, a);
    for i in a + 1..=b {
        for j in (a..i).rev() {
            if !fits(&words[j..i], rules) {
                break;
            }
            let (prev, _) = best[j - a];
            if !prev.is_finite() {
                continue;
            }
            let mut cost = prev + 1.0;
            if i < b {
                let last = &words[i - 1].text;
                let gap = (words[i].start_s - words[i - 1].end_s).max(0.0);
                cost += if ends_clause(last) { 0.1 } else { 0.5 };
                cost -= 0.3 * (gap / rules.pause_s).min(1.0);
            }
            let duration = words[i - 1].end_s - words[j].start_s;
            if duration < rules.min_duration_s {
                cost += 0.5;
            }
            if cost < best[i - a].0 {
                best[i - a] = (cost, j);
            }
        }
    }
    let mut cuts = Vec::new();
    let mut i = b;
    while i > a {
        let j = best[i - a].1;
        cuts.push(j..i);
        i = j;
    }
    out.extend(cuts.into_iter().rev());
}

/// Builds cues from `words` (in time order). `limit_s` is where the audio ends, if known:
/// no cue is held past it.
pub fn build_cues(words: &[CueWord], rules: &CueRules, limit_s: Option<f64>) -> Vec<Cue> {
    build_cues_within(words, rules, 0.0, limit_s)
}

/// [`build_cues`] with no cue starting before `floor_s` either.
pub fn build_cues_within(
    words: &[CueWord],
    rules: &CueRules,
    floor_s: f64,
    limit_s: Option<f64>,
) -> Vec<Cue> {
    let rules = rules.sanitized();
    let ranges = merge_short(words, phrase_ranges(words, &rules), &rules);
    let mut cues: Vec<Cue> = ranges
        .into_iter()
        .map(|r| Cue {
            start_s: words[r.start].start_s,
            end_s: words[r.end - 1].end_s,
            lines: layout(&words[r.clone()], &rules),
            words: r,
        })
        .collect();
    // Never overlapping, never backwards.
    let mut prev_end = floor_s;
    for cue in &mut cues {
        cue.start_s = cue.start_s.max(prev_end);
        cue.end_s = cue.end_s.max(cue.start_s);
        prev_end = cue.end_s;
    }
    hold_short(&mut cues, rules.min_duration_s, floor_s, limit_s);
    cues
}

/// Phrases (hard breaks at sentence ends and pauses), each split into the fewest cues that fit:
/// the word ranges of the cues before short ones are joined.
fn phrase_ranges(words: &[CueWord], rules: &CueRules) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for i in 0..words.len() {
        let last = i + 1 == words.len();
        let pause = !last && words[i + 1].start_s - words[i].end_s > rules.pause_s;
        if last || pause || ends_sentence(&words[i].text) {
            split_phrase(words, start..i + 1, rules, &mut ranges);
            start = i + 1;
        }
    }
    ranges
}

/// The cue ranges of `words` before and after short cues are joined ([`build_cues_within`]'s
/// ranges), with `rules` sanitized.
pub(crate) fn cue_ranges(
    words: &[CueWord],
    rules: &CueRules,
) -> (Vec<Range<usize>>, Vec<Range<usize>>) {
    let rules = rules.sanitized();
    let phrases = phrase_ranges(words, &rules);
    let merged = merge_short(words, phrases.clone(), &rules);
    (phrases, merged)
}

/// Whether a cue of `words` lasts at least the minimum (it is never joined to a neighbour).
pub(crate) fn is_long(words: &[CueWord], rules: &CueRules) -> bool {
    match (words.first(), words.last()) {
        (Some(first), Some(last)) => {
            last.end_s - first.start_s >= rules.sanitized().min_duration_s - EPS_S
        }
        _ => false,
    }
}

/// Joins a cue shorter than the minimum to the neighbour across the smaller gap, when that gap
/// is no pause and the joined cue still fits.
fn merge_short(
    words: &[CueWord],
    mut ranges: Vec<Range<usize>>,
    rules: &CueRules,
) -> Vec<Range<usize>> {
    let duration = |r: &Range<usize>| words[r.end - 1].end_s - words[r.start].start_s;
    let mut i = 0;
    while i < ranges.len() {
        if duration(&ranges[i]) >= rules.min_duration_s - EPS_S {
            i += 1;
            continue;
        }
        let gap_before =
            (i > 0).then(|| words[ranges[i].start].start_s - words[ranges[i - 1].end - 1].end_s);
        let gap_after = ranges
            .get(i + 1)
            .map(|next| words[next.start].start_s - words[ranges[i].end - 1].end_s);
        let mut order = [(gap_before, true), (gap_after, false)];
        if order[1].0.unwrap_or(f64::INFINITY) < order[0].0.unwrap_or(f64::INFINITY) {
            order.swap(0, 1);
        }
        let mut merged = false;
        for (gap, before) in order {
            if gap.is_none_or(|g| g > rules.pause_s) {
                continue;
            }
            let joined = if before {
                ranges[i - 1].start..ranges[i].end
            } else {
                ranges[i].start..ranges[i + 1].end
            };
            if fits(&words[joined.clone()], rules) {
                if before {
                    ranges[i - 1] = joined;
                    ranges.remove(i);
                    i -= 1;
                } else {
                    ranges[i] = joined;
                    ranges.remove(i + 1);
                }
                merged = true;
                break;
            }
        }
        if !merged {
            i += 1;
        }
    }
    ranges
}

/// Holds a short cue on screen longer: later into the silence after it, then earlier into
/// the silence before it, never over a neighbour or past `limit_s`.
fn hold_short(cues: &mut [Cue], min_s: f64, floor_s: f64, limit_s: Option<f64>) {
    for i in 0..cues.len() {
        if cues[i].end_s - cues[i].start_s >= min_s - EPS_S {
            continue;
        }
        let next_start = cues
            .get(i + 1)
            .map_or(limit_s.unwrap_or(f64::INFINITY), |c| c.start_s);
        let limit = next_start.max(cues[i].end_s);
        cues[i].end_s = (cues[i].start_s + min_s).min(limit);
        if cues[i].end_s - cues[i].start_s < min_s - EPS_S {
            let prev_end = if i == 0 { floor_s } else { cues[i - 1].end_s };
            cues[i].start_s = (cues[i].end_s - min_s).max(prev_end).min(cues[i].start_s);
        }
    }
}

#[cfg(test)]
#[path = "subtitles_tests.rs"]
mod tests;
