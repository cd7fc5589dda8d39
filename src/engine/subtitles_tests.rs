//! Cue building on synthetic token streams. Expectations are the rules themselves, checked on
//! every cue: durations, line lengths, no overlap, every token in exactly one cue, splits at
//! sentence ends and pauses, never inside a word.

use super::*;

fn token(piece: &str, start_s: f64, end_s: f64) -> TokenTime {
    TokenTime {
        token: piece.to_owned(),
        start_s,
        end_s,
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const LATIN: [&str; 12] = [
    "\u{2581}the",
    "\u{2581}qu",
    "ick",
    "\u{2581}bro",
    "wn",
    "\u{2581}fox",
    "\u{2581}jump",
    "s",
    "\u{2581}over",
    "\u{2581}a",
    "\u{2581}lazy",
    "\u{2581}dog",
];
const CJK: [&str; 10] = [
    "你",
    "好",
    "世界",
    "今日",
    "は",
    "テスト",
    "です",
    "我们",
    "走",
    "吧",
];
const HANGUL: [&str; 4] = ["\u{2581}안녕", "하세요", "\u{2581}감사", "합니다"];
const PUNCT: [&str; 8] = [",", ".", "?", "!", "，", "。", "、", "？"];
const TAGS: [&str; 3] = ["<|en|>", "<|HAPPY|>", "<|Speech|>"];

/// A token stream in the model's style: mostly one 60 ms frame per token, short gaps,
/// sometimes a long pause, punctuation, tags, or a run of one script.
fn stream(rng: &mut Rng, len: usize) -> Vec<TokenTime> {
    let mut out = Vec::with_capacity(len);
    let mut t = rng.unit() * 2.0;
    let script = rng.below(4);
    for _ in 0..len {
        let gap = match rng.below(20) {
            0 => 0.8 + rng.unit() * 3.0,
            1..=3 => 0.2 + rng.unit() * 0.5,
            _ => 0.06 * rng.below(3) as f64,
        };
        t += gap;
        let piece = match (rng.below(12), script) {
            (0, _) => PUNCT[rng.below(PUNCT.len())],
            (1, _) if rng.below(4) == 0 => TAGS[rng.below(TAGS.len())],
            (2, _) => "\u{2581}",
            (_, 0) => LATIN[rng.below(LATIN.len())],
            (_, 1) => CJK[rng.below(CJK.len())],
            (_, 2) => HANGUL[rng.below(HANGUL.len())],
            _ => match rng.below(3) {
                0 => LATIN[rng.below(LATIN.len())],
                1 => CJK[rng.below(CJK.len())],
                _ => HANGUL[rng.below(HANGUL.len())],
            },
        };
        let dur = 0.06 * (1 + rng.below(4)) as f64;
        out.push(token(piece, t, t + dur));
        t += dur;
    }
    out
}

/// Text of a token stream without tags and spaces: what the cues must hold, in order.
fn visible(tokens: &[TokenTime]) -> String {
    tokens
        .iter()
        .filter(|t| !t.token.starts_with("<|"))
        .flat_map(|t| t.token.chars())
        .filter(|c| !c.is_whitespace() && *c != '\u{2581}')
        .collect()
}

/// Checks every cue rule; `what` names the case in messages.
fn check_rules(
    what: &str,
    words: &[CueWord],
    cues: &[Cue],
    rules: &CueRules,
    limit_s: Option<f64>,
) {
    // Every word in exactly one cue, in order.
    let mut next = 0;
    for cue in cues {
        assert_eq!(
            cue.words.start, next,
            "{what}: cues must partition the words"
        );
        assert!(cue.words.end > cue.words.start, "{what}: empty cue");
        next = cue.words.end;
    }
    assert_eq!(next, words.len(), "{what}: words left out");
    for (i, cue) in cues.iter().enumerate() {
        let ws = &words[cue.words.clone()];
        let single = ws.len() == 1;
        let speech = ws[ws.len() - 1].end_s - ws[0].start_s;
        let duration = cue.end_s - cue.start_s;
        let text = cue.text();
        // Times hold the words' speech and never run backwards or overlap.
        assert!(
            cue.start_s <= ws[0].start_s + 1e-9,
            "{what}: cue {i} starts after its speech"
        );
        assert!(
            cue.end_s >= ws[ws.len() - 1].end_s - 1e-9,
            "{what}: cue {i} ends before its speech"
        );
        assert!(duration >= 0.0, "{what}: cue {i} runs backwards");
        if let Some(next) = cues.get(i + 1) {
            assert!(
                cue.end_s <= next.start_s + 1e-9,
                "{what}: cues {i} and {} overlap",
                i + 1
            );
        }
        // Longest cue and line limits, unless a single word alone is longer.
        if !single {
            assert!(
                speech <= rules.max_duration_s + 1e-9 && duration <= rules.max_duration_s + 1e-9,
                "{what}: cue {i} lasts {duration:.3} s: {text:?}"
            );
            assert!(
                cue.lines.len() <= rules.max_lines,
                "{what}: cue {i} has {} lines",
                cue.lines.len()
            );
            for line in &cue.lines {
                let narrow = line.chars().filter(|c| !is_wide(*c)).count();
                let wide = line.chars().filter(|c| is_wide(*c)).count();
                // narrow / max + wide / max_cjk <= 1
                assert!(
                    narrow * rules.max_line_chars_cjk + wide * rules.max_line_chars
                        <= rules.max_line_chars * rules.max_line_chars_cjk,
                    "{what}: cue {i} line too long: {line:?}"
                );
            }
        }
        // Never inside a word: lines are the cue's words joined, each word whole on one line.
        let joined: String = cue
            .lines
            .concat()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let expected: String = ws.iter().flat_map(|w| w.text.chars()).collect();
        assert_eq!(joined, expected, "{what}: cue {i} text is not its words");
        for w in ws {
            assert!(
                cue.lines.iter().any(|l| l.contains(&w.text)),
                "{what}: word {:?} split across lines",
                w.text
            );
        }
        assert!(!text.contains("<|"), "{what}: tag in cue text {text:?}");
        // Inside a cue no pause is longer than the threshold.
        for pair in ws.windows(2) {
            assert!(
                pair[1].start_s - pair[0].end_s <= rules.pause_s + 1e-9,
                "{what}: cue {i} spans a pause: {text:?}"
            );
        }
        // A sentence end inside a cue only where the sentence part on one side of it (within
        // the cue) is shorter than the minimum: a short cue joined to its neighbour.
        let mut parts: Vec<&[CueWord]> = Vec::new();
        let mut from = 0;
        for k in 0..ws.len() {
            if k + 1 == ws.len() || ends_sentence(&ws[k].text) {
                parts.push(&ws[from..=k]);
                from = k + 1;
            }
        }
        let span = |p: &[CueWord]| p[p.len() - 1].end_s - p[0].start_s;
        for pair in parts.windows(2) {
            assert!(
                span(pair[0]) < rules.min_duration_s || span(pair[1]) < rules.min_duration_s,
                "{what}: cue {i} runs over a sentence end: {text:?}"
            );
        }
        // No cue shorter than the minimum unless its neighbours (or the file's ends) leave no
        // room to hold it longer.
        if duration < rules.min_duration_s - 1e-9 {
            let room_before = if i == 0 {
                cue.start_s
            } else {
                cue.start_s - cues[i - 1].end_s
            };
            let room_after = match cues.get(i + 1) {
                Some(next) => next.start_s - cue.end_s,
                None => limit_s.map_or(f64::INFINITY, |l| l - cue.end_s),
            };
            assert!(
                room_before <= 1e-9 && room_after <= 1e-9,
                "{what}: cue {i} lasts {duration:.3} s with room around it"
            );
        }
    }
}

#[test]
fn generated_streams_follow_every_rule() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rule_sets = [
        CueRules::default(),
        CueRules {
            max_duration_s: 3.0,
            max_lines: 1,
            max_line_chars: 20,
            max_line_chars_cjk: 8,
            pause_s: 0.4,
            min_duration_s: 1.2,
        },
        CueRules {
            max_duration_s: 12.0,
            max_lines: 3,
            max_line_chars: 32,
            max_line_chars_cjk: 16,
            pause_s: 1.5,
            min_duration_s: 0.5,
        },
    ];
    let mut cues_seen = 0;
    for case in 0..400 {
        let len = 1 + rng.below(300);
        let tokens = stream(&mut rng, len);
        let rules = rule_sets[case % rule_sets.len()];
        let limit = tokens.last().map(|t| t.end_s + rng.unit() * 2.0);
        let words = words_from_tokens(&tokens);
        let covered: String = words.iter().flat_map(|w| w.text.chars()).collect();
        assert_eq!(
            covered,
            visible(&tokens),
            "case {case}: every token in exactly one word"
        );
        let cues = build_cues(&words, &rules, limit);
        check_rules(&format!("case {case}"), &words, &cues, &rules, limit);
        cues_seen += cues.len();
    }
    assert!(cues_seen > 1000, "{cues_seen}");
}

#[test]
fn sentences_and_pauses_end_cues() {
    // "Hello there. How are you" (pause) "fine"
    let tokens = [
        token("\u{2581}Hello", 0.0, 0.4),
        token("\u{2581}there", 0.5, 0.8),
        token(".", 0.8, 0.86),
        token("\u{2581}How", 1.0, 1.2),
        token("\u{2581}are", 1.3, 1.5),
        token("\u{2581}you", 1.6, 1.9),
        token("\u{2581}fine", 4.0, 4.9),
    ];
    let cues = build_cues(&words_from_tokens(&tokens), &CueRules::default(), Some(6.0));
    let texts: Vec<String> = cues.iter().map(Cue::text).collect();
    assert_eq!(texts, ["Hello there.", "How are you", "fine"]);
    assert_eq!(cues[0].start_s, 0.0);
    assert!(cues[0].end_s <= cues[1].start_s);
}

#[test]
fn a_long_sentence_becomes_several_cues_cut_at_commas() {
    // 30 words over 15 s, commas after words 9 and 19: three cues, cut at the commas.
    let mut tokens = Vec::new();
    for i in 0..30 {
        let t = i as f64 * 0.5;
        tokens.push(token(&format!("\u{2581}w{i}"), t, t + 0.3));
        if i == 9 || i == 19 {
            tokens.push(token(",", t + 0.3, t + 0.36));
        }
    }
    let rules = CueRules::default();
    let words = words_from_tokens(&tokens);
    let cues = build_cues(&words, &rules, None);
    check_rules("long sentence", &words, &cues, &rules, None);
    let ends: Vec<String> = cues
        .iter()
        .map(|c| c.text().rsplit([' ', '\n']).next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ends, ["w9,", "w19,", "w29"], "{cues:?}");
}

#[test]
fn cjk_lines_hold_fewer_characters_and_tags_are_dropped() {
    let mut tokens = vec![token("<|zh|>", 0.0, 0.0), token("<|NEUTRAL|>", 0.0, 0.0)];
    for i in 0..60 {
        let t = i as f64 * 0.1;
        tokens.push(token(CJK[i % 4], t, t + 0.06));
    }
    let rules = CueRules::default();
    let words = words_from_tokens(&tokens);
    let cues = build_cues(&words, &rules, None);
    check_rules("cjk", &words, &cues, &rules, None);
    for cue in &cues {
        for line in &cue.lines {
            assert!(line.chars().count() <= rules.max_line_chars_cjk, "{line:?}");
        }
    }
    assert!(cues.len() >= 2);
}

#[test]
fn words_join_pieces_and_keep_punctuation() {
    let tokens = [
        token("<|en|>", 0.0, 0.0),
        token("\u{2581}won", 0.0, 0.1),
        token("der", 0.1, 0.2),
        token("ful", 0.2, 0.3),
        token(",", 0.3, 0.36),
        token("\u{2581}", 0.4, 0.46),
        token("你", 0.5, 0.56),
        token("好", 0.6, 0.66),
        token("。", 0.7, 0.76),
        token("\u{2581}안녕", 0.8, 0.9),
        token("하세요", 0.9, 1.0),
    ];
    let words: Vec<(String, bool)> = words_from_tokens(&tokens)
        .into_iter()
        .map(|w| (w.text, w.space_before))
        .collect();
    let expect = [
        ("wonderful,", true),
        ("你", true),
        ("好。", false),
        ("안녕하세요", true),
    ];
    let expect: Vec<(String, bool)> = expect.iter().map(|(t, s)| ((*t).to_owned(), *s)).collect();
    assert_eq!(words, expect);
}

#[test]
fn short_cues_are_held_or_joined() {
    // "Yes." then a long pause, then "OK." right before the end of the file.
    let tokens = [
        token("\u{2581}Yes", 1.0, 1.2),
        token(".", 1.2, 1.26),
        token("\u{2581}OK", 5.0, 5.1),
        token(".", 5.1, 5.16),
    ];
    let rules = CueRules::default();
    let words = words_from_tokens(&tokens);
    let cues = build_cues(&words, &rules, Some(5.3));
    check_rules("short", &words, &cues, &rules, Some(5.3));
    assert_eq!(cues.len(), 2);
    assert!((cues[0].end_s - cues[0].start_s - rules.min_duration_s).abs() < 1e-9);
    // The last one is held to the end of the file, then earlier into the pause before it.
    assert!((cues[1].end_s - 5.3).abs() < 1e-9, "{cues:?}");
    assert!((cues[1].end_s - cues[1].start_s - rules.min_duration_s).abs() < 1e-9);
    // Two short sentences close together share a cue.
    let tokens = [
        token("\u{2581}No", 1.0, 1.1),
        token(".", 1.1, 1.16),
        token("\u{2581}Go", 1.3, 1.4),
        token(".", 1.4, 1.46),
    ];
    let cues = build_cues(&words_from_tokens(&tokens), &rules, None);
    assert_eq!(cues.len(), 1, "{cues:?}");
    assert_eq!(cues[0].text(), "No. Go.");
}

#[test]
fn text_without_token_times_is_spread_over_its_segment() {
    let words = words_from_text("你好世界。 hello world", 10.0, 20.0);
    let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(texts, ["你", "好", "世", "界。", "hello", "world"]);
    assert_eq!(words[0].start_s, 10.0);
    assert!((words[5].end_s - 20.0).abs() < 1e-9);
    assert!(words.windows(2).all(|p| p[0].end_s <= p[1].start_s + 1e-9));
}

#[test]
fn odd_rules_are_made_usable() {
    let rules = CueRules {
        max_duration_s: f64::NAN,
        max_lines: 0,
        max_line_chars: 0,
        max_line_chars_cjk: 0,
        pause_s: -1.0,
        min_duration_s: f64::INFINITY,
    };
    let tokens: Vec<TokenTime> = (0..50)
        .map(|i| token("\u{2581}ab", i as f64 * 0.2, i as f64 * 0.2 + 0.1))
        .collect();
    let words = words_from_tokens(&tokens);
    let cues = build_cues(&words, &rules, None);
    check_rules("odd rules", &words, &cues, &rules.sanitized(), None);
}

#[test]
fn flag_defaults_are_the_default_rules_and_bad_values_are_refused() {
    use clap::Parser as _;
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        cues: CueArgs,
    }
    let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
    assert_eq!(cli.cues.rules(), CueRules::default());
    let cli = Cli::try_parse_from(["x", "--max-cue-secs", "4.5", "--line-chars-cjk", "16"])
        .expect("parse");
    assert_eq!(cli.cues.rules().max_duration_s, 4.5);
    assert_eq!(cli.cues.rules().max_line_chars_cjk, 16);
    for (bad, flag) in [
        ("--max-cue-secs=0", "--max-cue-secs"),
        ("--max-cue-secs=nan", "--max-cue-secs"),
        ("--max-lines=0", "--max-lines"),
        ("--min-cue-secs=-1", "--min-cue-secs"),
    ] {
        let err = Cli::try_parse_from(["x", bad]).expect_err("refused");
        assert!(err.to_string().contains(flag), "{err}");
    }
}

#[test]
fn segments_without_token_times_give_cues_inside_each_segment() {
    use super::super::transcript::Segment;
    let segment = |start_s: f64, end_s: f64, text: &str| Segment {
        start_s,
        end_s,
        text: text.to_owned(),
        ..Segment::default()
    };
    let segments = [
        segment(
            0.0,
            28.0,
            "<|en|>This is the first part of a long talk, and it goes on. For a while.",
        ),
        segment(28.0, 30.0, "短い"),
        segment(
            30.0,
            58.0,
            "今日はいい天気ですね。散歩に行きましょう、公園まで歩いて、それから帰りましょう。",
        ),
    ];
    let rules = CueRules::default();
    let cues = segment_cues(&segments, &rules, Some(58.0));
    assert!(cues.len() >= 5, "{cues:?}");
    for cue in &cues {
        let inside = segments
            .iter()
            .any(|s| cue.start_s >= s.start_s - 1e-9 && cue.end_s <= s.end_s + 1e-9);
        assert!(inside, "{cue:?} crosses a segment boundary");
        assert!(!cue.text().contains("<|"));
    }
    for pair in cues.windows(2) {
        assert!(pair[0].end_s <= pair[1].start_s + 1e-9);
        assert_eq!(pair[0].words.end, pair[1].words.start);
    }
}
