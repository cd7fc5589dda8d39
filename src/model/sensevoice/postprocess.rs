//! FunASR's `rich_transcription_postprocess` (tags → emoji) and tag parsing.
//!
//! Port of `funasr/utils/postprocess_utils.py` (funasr 1.4.16), including its quirks: events are
//! prepended in reverse dictionary order, the first segment's event is never deduplicated,
//! spaces between segments are lost and "The." is replaced by a space.

/// Language tags (`lang_dict`).
pub const LANGUAGE_TAGS: [&str; 6] = [
    "<|zh|>",
    "<|en|>",
    "<|yue|>",
    "<|ja|>",
    "<|ko|>",
    "<|nospeech|>",
];

/// `emo_dict`: emotion tag → emoji.
const EMO_DICT: [(&str, &str); 7] = [
    ("<|HAPPY|>", "😊"),
    ("<|SAD|>", "😔"),
    ("<|ANGRY|>", "😡"),
    ("<|NEUTRAL|>", ""),
    ("<|FEARFUL|>", "😰"),
    ("<|DISGUSTED|>", "🤢"),
    ("<|SURPRISED|>", "😮"),
];

/// `event_dict`: event tag → emoji.
const EVENT_DICT: [(&str, &str); 8] = [
    ("<|BGM|>", "🎼"),
    ("<|Speech|>", ""),
    ("<|Applause|>", "👏"),
    ("<|Laughter|>", "😀"),
    ("<|Cry|>", "😭"),
    ("<|Sneeze|>", "🤧"),
    ("<|Breath|>", ""),
    ("<|Cough|>", "🤧"),
];

/// Keys of `emoji_dict`, in order: every tag `format_str_v2` counts and removes.
const EMOJI_DICT_KEYS: [&str; 29] = [
    "<|nospeech|><|Event_UNK|>",
    "<|zh|>",
    "<|en|>",
    "<|yue|>",
    "<|ja|>",
    "<|ko|>",
    "<|nospeech|>",
    "<|HAPPY|>",
    "<|SAD|>",
    "<|ANGRY|>",
    "<|NEUTRAL|>",
    "<|BGM|>",
    "<|Speech|>",
    "<|Applause|>",
    "<|Laughter|>",
    "<|FEARFUL|>",
    "<|DISGUSTED|>",
    "<|SURPRISED|>",
    "<|Cry|>",
    "<|EMO_UNKNOWN|>",
    "<|Sneeze|>",
    "<|Breath|>",
    "<|Cough|>",
    "<|Sing|>",
    "<|Speech_Noise|>",
    "<|withitn|>",
    "<|woitn|>",
    "<|GBG|>",
    "<|Event_UNK|>",
];

const EMO_SET: [char; 6] = ['😊', '😔', '😡', '😰', '🤢', '😮'];
const EVENT_SET: [char; 6] = ['🎼', '👏', '😀', '😭', '🤧', '😷'];

/// Python's `str.isspace` (Rust's `char::is_whitespace` lacks U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

fn format_str_v2(s: &str) -> String {
    let mut s = s.to_owned();
    let mut counts = std::collections::HashMap::new();
    for key in EMOJI_DICT_KEYS {
        counts.insert(key, s.matches(key).count());
        s = s.replace(key, "");
    }
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let mut emo = "<|NEUTRAL|>";
    for (e, _) in EMO_DICT {
        if count(e) > count(emo) {
            emo = e;
        }
    }
    for (e, emoji) in EVENT_DICT {
        if count(e) > 0 {
            s = format!("{emoji}{s}");
        }
    }
    if let Some((_, emoji)) = EMO_DICT.iter().find(|(e, _)| *e == emo) {
        s.push_str(emoji);
    }
    for emoji in EMO_SET.iter().chain(EVENT_SET.iter()) {
        s = s.replace(&format!(" {emoji}"), &emoji.to_string());
        s = s.replace(&format!("{emoji} "), &emoji.to_string());
    }
    py_strip(&s).to_owned()
}

fn first_event(s: &str) -> Option<char> {
    s.chars().next().filter(|c| EVENT_SET.contains(c))
}

fn last_emo(s: &str) -> Option<char> {
    s.chars().next_back().filter(|c| EMO_SET.contains(c))
}

/// `rich_transcription_postprocess(s)`: the display text FunASR's demos print.
pub fn rich_transcription_postprocess(s: &str) -> String {
    let mut s = s.replace("<|nospeech|><|Event_UNK|>", "❓");
    for lang in LANGUAGE_TAGS {
        s = s.replace(lang, "<|lang|>");
    }
    let mut parts: Vec<String> = s
        .split("<|lang|>")
        .map(|p| format_str_v2(p).trim_matches(' ').to_owned())
        .collect();
    let mut new_s = format!(" {}", parts[0]);
    // Always None: new_s starts with a space (kept as upstream has it).
    let mut cur_event = first_event(&new_s);
    for part in parts.iter_mut().skip(1) {
        if part.is_empty() {
            continue;
        }
        if first_event(part).is_some() && first_event(part) == cur_event {
            let mut chars = part.chars();
            chars.next();
            *part = chars.as_str().to_owned();
        }
        if part.is_empty() {
            continue;
        }
        cur_event = first_event(part);
        if last_emo(part).is_some() && last_emo(part) == last_emo(&new_s) {
            new_s.pop();
        }
        new_s.push_str(py_strip(part));
    }
    py_strip(&new_s.replace("The.", " ")).to_owned()
}

/// Removes every `<|…|>` tag and trims: the transcript without any markup.
pub fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("<|") {
        match rest[start + 2..].find("|>") {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + 2 + end + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    py_strip(&out).to_owned()
}

/// The four leading tags of a raw SenseVoice transcript, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tags {
    /// Language code ("en", "zh", "yue", "ja", "ko", "nospeech").
    pub language: Option<String>,
    /// Emotion ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED",
    /// "EMO_UNKNOWN").
    pub emotion: Option<String>,
    /// Audio event ("Speech", "BGM", "Applause", "Laughter", …).
    pub event: Option<String>,
    /// `Some(true)` for `<|withitn|>`, `Some(false)` for `<|woitn|>`.
    pub itn: Option<bool>,
}

const EMOTIONS: [&str; 8] = [
    "HAPPY",
    "SAD",
    "ANGRY",
    "NEUTRAL",
    "FEARFUL",
    "DISGUSTED",
    "SURPRISED",
    "EMO_UNKNOWN",
];
const EVENTS: [&str; 12] = [
    "Speech",
    "BGM",
    "Applause",
    "Laughter",
    "Cry",
    "Sneeze",
    "Breath",
    "Cough",
    "Sing",
    "Speech_Noise",
    "GBG",
    "Event_UNK",
];

/// Reads the tags at the start of `raw` (the first of each kind wins) and returns them with the
/// rest of the text. Tags later in the text (from joined segments) are left in the remainder.
pub fn parse_leading_tags(raw: &str) -> (Tags, &str) {
    let mut tags = Tags::default();
    let mut rest = raw;
    while let Some(inner) = rest.strip_prefix("<|") {
        let Some(end) = inner.find("|>") else { break };
        let name = &inner[..end];
        let slot_free = if LANGUAGE_TAGS.iter().any(|t| &t[2..t.len() - 2] == name) {
            tags.language
                .is_none()
                .then(|| tags.language = Some(name.to_owned()))
        } else if EMOTIONS.contains(&name) {
            tags.emotion
                .is_none()
                .then(|| tags.emotion = Some(name.to_owned()))
        } else if EVENTS.contains(&name) {
            tags.event
                .is_none()
                .then(|| tags.event = Some(name.to_owned()))
        } else if name == "withitn" || name == "woitn" {
            tags.itn
                .is_none()
                .then(|| tags.itn = Some(name == "withitn"))
        } else {
            None
        };
        if slot_free.is_none() {
            break;
        }
        rest = &inner[end + 2..];
    }
    (tags, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The golden cases verified against FunASR in the spec (§5); the fixture file adds more.
    #[test]
    fn spec_goldens() {
        let cases = [
            (
                "<|en|><|NEUTRAL|><|Speech|><|woitn|>hello world",
                "hello world",
            ),
            (
                "<|en|><|HAPPY|><|Laughter|><|withitn|>Hello there.",
                "😀Hello there.😊",
            ),
            (
                "<|en|><|SAD|><|BGM|><|withitn|>First part. <|en|><|SAD|><|BGM|><|withitn|>Second part.",
                "🎼First part.Second part.😔",
            ),
            ("<|ja|><|EMO_UNKNOWN|><|Cough|><|woitn|>", "🤧"),
            (
                "<|en|><|ANGRY|><|Applause|><|withitn|>Stop. <|zh|><|NEUTRAL|><|Speech|><|withitn|>好的。",
                "👏Stop.😡好的。",
            ),
            ("<|nospeech|><|Event_UNK|><|woitn|>", "❓"),
        ];
        for (raw, want) in cases {
            assert_eq!(rich_transcription_postprocess(raw), want, "{raw}");
        }
    }

    #[test]
    fn tags_are_data() {
        let (tags, rest) =
            parse_leading_tags("<|en|><|HAPPY|><|Laughter|><|withitn|>Hello <|en|>x");
        assert_eq!(tags.language.as_deref(), Some("en"));
        assert_eq!(tags.emotion.as_deref(), Some("HAPPY"));
        assert_eq!(tags.event.as_deref(), Some("Laughter"));
        assert_eq!(tags.itn, Some(true));
        assert_eq!(rest, "Hello <|en|>x");
        assert_eq!(strip_tags("<|en|><|HAPPY|> a <|en|>b "), "a b");
        let (tags, rest) = parse_leading_tags("plain");
        assert_eq!((tags, rest), (Tags::default(), "plain"));
    }
}
