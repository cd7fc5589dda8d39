//! SentencePiece id → text decoding in pure Rust, equal to `SentencePieceProcessor.DecodeIds`.
//!
//! The model file is parsed with `sentencepiece-model`; decoding follows
//! `SentencePieceProcessor::Decode` in sentencepiece's `sentencepiece_processor.cc`: control
//! pieces vanish, unknown pieces become the trainer's `unk_surface`, runs of byte pieces are
//! decoded as UTF-8 (one U+FFFD per invalid byte), `▁` becomes a space, and the leading `▁` of
//! the first visible piece is dropped when the normaliser adds a dummy prefix or removes extra
//! whitespace. Denormalisation rules (absent from the SenseVoice models) are not applied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sentencepiece_model::{SentencePieceModel, Type};

/// The SentencePiece whitespace marker.
pub const SPACE_SYMBOL: char = '\u{2581}';
/// sentencepiece's default `unk_surface` (" ⁇ ").
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// Errors loading or using the tokenizer.
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
    /// The file is not a SentencePiece model.
    #[error("{path} is not a SentencePiece model: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// An id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} pieces of {path}")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// The id.
        id: u32,
        /// Pieces in the model.
        vocab_size: usize,
    },
}

/// What a piece is, as far as decoding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// Ordinary text (also user-defined symbols such as `<|en|>` and unused pieces).
    Text,
    /// The unknown piece.
    Unknown,
    /// Invisible control symbol (`<s>`, `</s>`).
    Control,
    /// A byte-fallback piece `<0xXX>`.
    Byte(u8),
}

/// A SentencePiece vocabulary with `DecodeIds` semantics.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<String>,
    kinds: Vec<PieceKind>,
    ids: HashMap<String, u32>,
    unk_surface: String,
    strip_leading_space: bool,
    remove_extra_whitespaces: bool,
    path: PathBuf,
}

/// Largest tokenizer model accepted (the release's is 377 kB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// The bytes of a SentencePiece model file, at most [`MAX_TOKENIZER_BYTES`] (read once, for
/// both the decoding [`Tokenizer`] and the [`super::spm_encode::SpmEncoder`]).
pub fn read_model_file(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    crate::model::bounded::read_bounded(path, MAX_TOKENIZER_BYTES).map_err(|source| {
        TokenizerError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

impl Tokenizer {
    /// Reads a `.bpe.model` / `.model` file (at most [`MAX_TOKENIZER_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_bytes(&read_model_file(path)?, path)
    }

    /// Parses model bytes; `path` is used in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let parse_err = |reason: String| TokenizerError::Parse {
            path: path.to_owned(),
            reason,
        };
        let model = SentencePieceModel::from_slice(bytes).map_err(|e| parse_err(e.to_string()))?;
        if model.pieces().is_empty() {
            return Err(parse_err("the model has no pieces".to_owned()));
        }
        let mut pieces = Vec::with_capacity(model.pieces().len());
        let mut kinds = Vec::with_capacity(model.pieces().len());
        let mut ids = HashMap::with_capacity(model.pieces().len());
        for (i, p) in model.pieces().iter().enumerate() {
            let text = p.piece().to_owned();
            let kind = match p.r#type() {
                Type::Unknown => PieceKind::Unknown,
                Type::Control => PieceKind::Control,
                Type::Byte => PieceKind::Byte(
                    parse_byte_piece(&text)
                        .ok_or_else(|| parse_err(format!("byte piece {i} is {text:?}")))?,
                ),
                Type::Normal | Type::UserDefined | Type::Unused => PieceKind::Text,
            };
            let id = u32::try_from(i).map_err(|_| parse_err("too many pieces".to_owned()))?;
            ids.entry(text.clone()).or_insert(id);
            pieces.push(text);
            kinds.push(kind);
        }
        let unk_surface = model
            .trainer()
            .map_or(DEFAULT_UNK_SURFACE, |t| t.unk_surface())
            .to_owned();
        // Proto defaults are true for both when the spec is absent.
        let (add_dummy_prefix, remove_extra_whitespaces) =
            model.normalizer().map_or((true, true), |n| {
                (n.add_dummy_prefix(), n.remove_extra_whitespaces())
            });
        Ok(Self {
            pieces,
            kinds,
            ids,
            unk_surface,
            strip_leading_space: add_dummy_prefix || remove_extra_whitespaces,
            remove_extra_whitespaces,
            path: path.to_owned(),
        })
    }

    /// Number of pieces (the CTC vocabulary size).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The piece text of `id`.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// The id of a piece, e.g. `id_of("<|en|>")`.
    pub fn id_of(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// The kind of `id`.
    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        self.kinds.get(id as usize).copied()
    }

    fn check(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.pieces.len() {
            Ok(())
        } else {
            Err(TokenizerError::OutOfRange {
                path: self.path.clone(),
                id,
                vocab_size: self.pieces.len(),
            })
        }
    }

    /// Surface of one non-byte piece; the bool says whether a leading `▁` was consumed.
    fn decode_piece(&self, id: u32, is_bos_ws: bool) -> (String, bool) {
        let idx = id as usize;
        match self.kinds[idx] {
            PieceKind::Control | PieceKind::Byte(_) => (String::new(), false),
            PieceKind::Unknown => (self.unk_surface.clone(), false),
            PieceKind::Text => {
                let mut piece = self.pieces[idx].as_str();
                let mut has_bos_ws = false;
                if is_bos_ws && self.strip_leading_space {
                    if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                        piece = rest;
                        has_bos_ws = true;
                    }
                    if self.remove_extra_whitespaces {
                        has_bos_ws = false;
                    }
                }
                (piece.replace(SPACE_SYMBOL, " "), has_bos_ws)
            }
        }
    }

    /// `DecodeIds(ids)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        for &id in ids {
            self.check(id)?;
        }
        let mut text = String::new();
        let mut bytes = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for &id in ids {
            if let PieceKind::Byte(b) = self.kinds[id as usize] {
                bytes.push(b);
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            let (surface, seen) = self.decode_piece(id, is_bos_ws);
            bos_ws_seen = seen;
            text.push_str(&surface);
        }
        flush_bytes(&mut bytes, &mut text);
        Ok(text)
    }
}

/// `<0x41>` → 0x41.
fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Appends a run of byte pieces as UTF-8, one U+FFFD per byte that does not start a valid
/// character (sentencepiece's `ProcessBytePieces`).
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut rest: &[u8] = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                if valid > 0 {
                    // The prefix was checked by from_utf8; re-checking cannot fail.
                    text.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    rest = &rest[valid..];
                } else {
                    text.push(char::REPLACEMENT_CHARACTER);
                    rest = &rest[1..];
                }
            }
        }
    }
    bytes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_runs_decode_like_sentencepiece() {
        let mut t = String::new();
        flush_bytes(&mut vec![0xE4, 0xBD, 0xA0, 0x41], &mut t);
        assert_eq!(t, "你A");
        let mut t = String::new();
        // A truncated 3-byte sequence: one replacement per byte, then the valid byte.
        flush_bytes(&mut vec![0xE4, 0xBD, 0x41], &mut t);
        assert_eq!(t, "\u{FFFD}\u{FFFD}A");
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0x0>"), None);
    }

    #[test]
    fn rejects_non_model_bytes() {
        let e = Tokenizer::from_bytes(
            b"definitely not a protobuf \xff\xff",
            Path::new("x.bpe.model"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.bpe.model"), "{e}");
    }
}
