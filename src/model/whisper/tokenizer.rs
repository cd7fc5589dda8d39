//! Whisper's `tokenizer.json`, read for what decoding needs: token ids → text, and the ids of
//! the special tokens by name.
//!
//! Whisper's tokenizer is GPT-2's byte-level BPE plus added special tokens. Decoding a byte-level
//! BPE needs no merges: each token's characters map back to bytes through GPT-2's byte ↔
//! character table. Encoding is never needed (prompts are special tokens only), so this reads
//! the JSON with serde instead of pulling in the `tokenizers` crate (onig or fancy-regex,
//! esaxx, rayon, …) for a lookup table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading `tokenizer.json`.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("cannot read the tokenizer {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a byte-level BPE tokenizer.json, or lacks a token Whisper needs.
    #[error("the tokenizer {path} is not a Whisper tokenizer.json: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct Model {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    model: Model,
}

/// GPT-2's table from the printable characters of byte-level tokens back to bytes.
fn char_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1u8..=0xAC);
    printable.extend(0xAEu8..=0xFF);
    let mut map = HashMap::with_capacity(256);
    for &b in &printable {
        map.insert(char::from(b), b);
    }
    let mut n = 0u32;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            if let Some(c) = char::from_u32(256 + n) {
                map.insert(c, b);
            }
            n += 1;
        }
    }
    map
}

/// Id → token text, the special ids, and the byte table.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Token strings by id (byte-level characters for ordinary tokens).
    tokens: Vec<Option<String>>,
    /// Ids of added special tokens.
    special: Vec<bool>,
    by_name: HashMap<String, u32>,
    bytes: HashMap<char, u8>,
}

impl Tokenizer {
    /// Reads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the JSON text of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenizerError> {
        let invalid = |message: String| TokenizerError::Invalid {
            path: path.to_owned(),
            message,
        };
        let json: TokenizerJson =
            serde_json::from_str(text).map_err(|err| invalid(err.to_string()))?;
        if let Some(kind) = &json.model.kind
            && kind != "BPE"
        {
            return Err(invalid(format!("model type {kind}, expected BPE")));
        }
        let max_id = json
            .model
            .vocab
            .values()
            .chain(json.added_tokens.iter().map(|t| &t.id))
            .copied()
            .max()
            .ok_or_else(|| invalid("the vocabulary is empty".to_owned()))?;
        if max_id > 10_000_000 {
            return Err(invalid(format!("token id {max_id} is out of range")));
        }
        let len = max_id as usize + 1;
        let mut tokens = vec![None; len];
        let mut special = vec![false; len];
        let mut by_name = HashMap::new();
        for (token, &id) in &json.model.vocab {
            tokens[id as usize] = Some(token.clone());
        }
        for added in &json.added_tokens {
            tokens[added.id as usize] = Some(added.content.clone());
            special[added.id as usize] = added.special;
            by_name.insert(added.content.clone(), added.id);
        }
        Ok(Self {
            tokens,
            special,
            by_name,
            bytes: char_to_byte(),
        })
    }

    /// The id of an added token such as `<|en|>`.
    pub fn token_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The text of a token, as stored (`<|en|>` for specials; byte-level characters otherwise).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).and_then(|t| t.as_deref())
    }

    /// Ids one past the last known token.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The text of `ids`, special tokens left out, invalid UTF-8 replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut out = String::new();
        for &id in ids {
            let idx = id as usize;
            if self.special.get(idx).copied().unwrap_or(false) {
                continue;
            }
            let Some(token) = self.tokens.get(idx).and_then(|t| t.as_deref()) else {
                continue;
            };
            if self.by_name.contains_key(token) {
                // An added token that is not special: its text as it is.
                out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut bytes)));
                out.push_str(token);
                continue;
            }
            for c in token.chars() {
                match self.bytes.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_covers_every_byte_once() {
        let table = char_to_byte();
        assert_eq!(table.len(), 256);
        let mut seen: Vec<u8> = table.values().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table.get(&'Ġ'), Some(&b' '));
        assert_eq!(table.get(&'Ċ'), Some(&b'\n'));
    }

    #[test]
    fn decodes_byte_level_tokens_and_skips_specials() {
        let json = r#"{"added_tokens":[{"id":3,"content":"<|endoftext|>","special":true}],
            "model":{"type":"BPE","vocab":{"Hi":0,"Ġthere":1,"Ã©":2}}}"#;
        let tok = Tokenizer::parse(json, Path::new("t.json")).expect("parse");
        assert_eq!(tok.decode(&[0, 1, 3, 2]), "Hi thereé");
        assert_eq!(tok.token_id("<|endoftext|>"), Some(3));
    }

    #[test]
    fn a_broken_file_names_itself() {
        let err = Tokenizer::parse("{\"model\": 3}", Path::new("/m/tokenizer.json"))
            .expect_err("invalid");
        assert!(err.to_string().contains("/m/tokenizer.json"), "{err}");
    }
}
