//! Full-text search for transcripts in every language the model speaks.
//!
//! FTS5's `unicode61` tokenizer splits on spaces and punctuation, so Chinese or Japanese text
//! (no spaces) would be one token per sentence and a search for a word inside it would find
//! nothing. The indexed text is therefore the transcript in *search form*: every CJK character
//! (Han, kana, Hangul) stands alone as a token. A query is turned the same way into phrases, so
//! "会议" finds "明天的会议" (the phrase "会 议"), and words in Latin script match by prefix.

/// Whether `c` is written without spaces between words (Han, kana, Hangul, CJK punctuation).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x31F0..=0x31FF    // Katakana extensions
        | 0xFF66..=0xFF9F    // Half-width Katakana
        | 0x20000..=0x3FFFF) // Extensions B and later
}

/// The text as it is indexed: CJK characters separated by spaces, everything else as it is.
pub fn search_form(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The FTS5 `MATCH` expression for what the user typed: each space-separated term becomes a
/// quoted phrase of its tokens (a term ending in a letter or digit matches as a prefix), and
/// all terms must match. `None` when nothing searchable is left.
pub fn fts_query(input: &str) -> Option<String> {
    let mut phrases = Vec::new();
    for term in input.split_whitespace() {
        let mut tokens: Vec<String> = Vec::new();
        let mut word = String::new();
        for c in term.chars() {
            if is_cjk(c) {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(c.to_string());
            } else if c.is_alphanumeric() {
                word.push(c);
            } else if !word.is_empty() {
                // Punctuation splits tokens, as unicode61 does.
                tokens.push(std::mem::take(&mut word));
            }
        }
        let ends_in_word = !word.is_empty();
        if ends_in_word {
            tokens.push(word);
        }
        if tokens.is_empty() {
            continue;
        }
        // Tokens hold letters and digits only, so no quote needs escaping.
        let phrase = format!("\"{}\"", tokens.join(" "));
        phrases.push(if ends_in_word {
            format!("{phrase}*")
        } else {
            phrase
        });
    }
    (!phrases.is_empty()).then(|| phrases.join(" AND "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_characters_become_tokens() {
        assert_eq!(search_form("会议ok"), " 会  议 ok");
        assert_eq!(fts_query("会议"), Some("\"会 议\"".to_owned()));
        assert_eq!(
            fts_query("  meet 明天\"x "),
            Some("\"meet\"* AND \"明 天 x\"*".to_owned())
        );
        assert_eq!(fts_query("\" * ( )"), None);
        assert_eq!(fts_query(""), None);
        assert_eq!(fts_query("don't"), Some("\"don t\"*".to_owned()));
    }
}
