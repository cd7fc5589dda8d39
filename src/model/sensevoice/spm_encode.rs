//! SentencePiece text → pieces encoding in pure Rust, equal to `SentencePieceProcessor`'s
//! `EncodeAsPieces` / `EncodeAsIds` for BPE models.
//!
//! FunASR's timestamps re-encode the decoded text (`timestamps::funasr_targets`), so the
//! alignment needs sentencepiece's own encoding. Ported from sentencepiece 0.2 (`normalizer.cc`,
//! `bpe_model.cc`, `model_interface.cc`, `sentencepiece_processor.cc`):
//! - normalisation: user-defined symbols pass unchanged; otherwise the longest rule of the
//!   model's precompiled charsmap (a darts-clone double-array trie, e.g. `nmt_nfkc`) replaces
//!   the prefix, else one UTF-8 character is copied (a malformed byte becomes U+FFFD); spaces
//!   become `▁`, with the dummy prefix and extra-whitespace removal the spec asks for;
//! - BPE: the text is split into characters (a user-defined symbol stays one frozen symbol),
//!   then the adjacent pair whose concatenation is a piece with the highest score is merged,
//!   the leftmost first on equal scores, until none is left; unused pieces are split back;
//! - runs of unknown pieces are merged into one (or become byte pieces with byte fallback).
//!
//! The model file is untrusted: every trie and string offset is bounds-checked.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use sentencepiece_model::{ModelType, SentencePieceModel, Type};

use super::tokenizer::TokenizerError;

const SPACE_SYMBOL: &[u8] = "\u{2581}".as_bytes();
const REPLACEMENT_CHAR: &[u8] = "\u{FFFD}".as_bytes();

/// A BPE SentencePiece model's encoder.
#[derive(Debug, Clone)]
pub struct SpmEncoder {
    /// Normal, user-defined and unused pieces → id (`pieces_` in sentencepiece).
    pieces: HashMap<Vec<u8>, u32>,
    /// Control, unknown and byte pieces → id (`reserved_id_map_`).
    reserved: HashMap<Vec<u8>, u32>,
    scores: Vec<f32>,
    types: Vec<Type>,
    unk_id: u32,
    /// User-defined symbols, longest first.
    user_defined: Vec<Vec<u8>>,
    charsmap: Option<CharsMap>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
    byte_fallback: bool,
}

/// The precompiled normalisation rules: `<trie size u32><double array><NUL-separated strings>`.
#[derive(Debug, Clone)]
struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    fn parse(blob: &[u8]) -> Result<Self, String> {
        let size = blob
            .get(..4)
            .filter(|_| blob.len() > 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("the normaliser's charsmap is too short")?;
        let rest = &blob[4..];
        if size > rest.len() || size % 4 != 0 {
            return Err(format!(
                "the normaliser's trie claims {size} bytes of {} available",
                rest.len()
            ));
        }
        let units = rest[..size]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self {
            units,
            normalized: rest[size..].to_vec(),
        })
    }

    /// darts-clone `commonPrefixSearch`, keeping the longest match: (length, value).
    fn longest_prefix(&self, key: &[u8]) -> Option<(usize, usize)> {
        let unit = |pos: usize| self.units.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let label = |u: u32| u & ((1 << 31) | 0xFF);
        let has_leaf = |u: u32| (u >> 8) & 1 == 1;
        let mut node = offset(unit(0)?);
        let mut best = None;
        for (i, &c) in key.iter().enumerate() {
            node ^= usize::from(c);
            let u = unit(node)?;
            if label(u) != u32::from(c) {
                break;
            }
            node ^= offset(u);
            if has_leaf(u) {
                let value = (unit(node)? & ((1 << 31) - 1)) as usize;
                best = Some((i + 1, value));
            }
        }
        best
    }

    /// The NUL-terminated replacement at `value`.
    fn replacement(&self, value: usize) -> &[u8] {
        let tail = self.normalized.get(value..).unwrap_or(&[]);
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    }
}

/// Length of the UTF-8 character at the start of `s` (sentencepiece's `OneCharLen`).
fn one_char_len(s: &[u8]) -> usize {
    const LEN: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    s.first()
        .map_or(0, |&b| LEN[usize::from(b >> 4)].min(s.len()))
}

/// A pair of adjacent symbols whose concatenation is a piece.
#[derive(Debug, PartialEq)]
struct Pair {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl Eq for Pair {}

impl Ord for Pair {
    /// Higher score first, then the smaller left index (sentencepiece's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    freeze: bool,
    start: usize,
    len: usize,
}

impl SpmEncoder {
    /// Reads a `.bpe.model` (at most [`super::tokenizer::MAX_TOKENIZER_BYTES`] bytes).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_bytes(&super::tokenizer::read_model_file(path)?, path)
    }

    /// Parses a `.bpe.model`; `path` is used in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let parse_err = |reason: String| TokenizerError::Parse {
            path: path.to_owned(),
            reason,
        };
        let model = SentencePieceModel::from_slice(bytes).map_err(|e| parse_err(e.to_string()))?;
        let trainer = model.trainer();
        if let Some(t) = trainer.filter(|t| t.model_type() != ModelType::Bpe) {
            return Err(parse_err(format!(
                "only BPE models can encode text, this one is {}",
                t.model_type().as_str_name()
            )));
        }
        let mut pieces = HashMap::new();
        let mut reserved = HashMap::new();
        let mut scores = Vec::with_capacity(model.pieces().len());
        let mut types = Vec::with_capacity(model.pieces().len());
        let mut user_defined = Vec::new();
        let mut unk_id = None;
        for (i, p) in model.pieces().iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| parse_err("too many pieces".to_owned()))?;
            let text = p.piece().as_bytes().to_vec();
            let ty = p.r#type();
            match ty {
                Type::Normal | Type::UserDefined | Type::Unused => {
                    if ty == Type::UserDefined && !text.is_empty() {
                        user_defined.push(text.clone());
                    }
                    pieces.entry(text).or_insert(id);
                }
                Type::Unknown | Type::Control | Type::Byte => {
                    if ty == Type::Unknown && unk_id.is_none() {
                        unk_id = Some(id);
                    }
                    reserved.entry(text).or_insert(id);
                }
            }
            scores.push(p.score());
            types.push(ty);
        }
        let unk_id =
            unk_id.ok_or_else(|| parse_err("the model has no unknown piece".to_owned()))?;
        user_defined.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let spec = model.normalizer();
        let charsmap = match spec.map(|n| n.precompiled_charsmap()) {
            Some(blob) if !blob.is_empty() => Some(CharsMap::parse(blob).map_err(parse_err)?),
            _ => None,
        };
        Ok(Self {
            pieces,
            reserved,
            scores,
            types,
            unk_id,
            user_defined,
            charsmap,
            // Proto defaults when the spec is absent.
            add_dummy_prefix: spec.is_none_or(|n| n.add_dummy_prefix()),
            remove_extra_whitespaces: spec.is_none_or(|n| n.remove_extra_whitespaces()),
            escape_whitespaces: spec.is_none_or(|n| n.escape_whitespaces()),
            treat_whitespace_as_suffix: trainer.is_some_and(|t| t.treat_whitespace_as_suffix()),
            byte_fallback: trainer.is_some_and(|t| t.byte_fallback()),
        })
    }

    /// The longest user-defined symbol at the start of `s`.
    fn user_defined_prefix(&self, s: &[u8]) -> Option<usize> {
        self.user_defined
            .iter()
            .find(|u| s.starts_with(u))
            .map(Vec::len)
    }

    /// `Normalizer::NormalizePrefix`: (replacement, bytes consumed).
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        if let Some(len) = self.user_defined_prefix(input) {
            return (&input[..len], len);
        }
        if let Some((len, value)) = self.charsmap.as_ref().and_then(|m| m.longest_prefix(input)) {
            let replacement = self
                .charsmap
                .as_ref()
                .map_or(&[][..], |m| m.replacement(value));
            return (replacement, len);
        }
        let len = one_char_len(input);
        match input.get(..len).map(std::str::from_utf8) {
            Some(Ok(_)) => (&input[..len], len),
            _ => (REPLACEMENT_CHAR, 1),
        }
    }

    /// `Normalizer::Normalize`: the normalised bytes (valid UTF-8 unless a rule is not).
    pub fn normalize(&self, text: &str) -> Vec<u8> {
        let mut input = text.as_bytes();
        let mut out = Vec::with_capacity(input.len() * 3);
        if input.is_empty() {
            return out;
        }
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (sp, len) = self.normalize_prefix(input);
                if sp != b" " {
                    break;
                }
                input = &input[len..];
            }
        }
        if input.is_empty() {
            return out;
        }
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            b" "
        };
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut sp, len) = self.normalize_prefix(input);
            while is_prev_space && sp.first() == Some(&b' ') {
                sp = &sp[1..];
            }
            if !sp.is_empty() {
                for &b in sp {
                    if self.escape_whitespaces && b == b' ' {
                        out.extend_from_slice(SPACE_SYMBOL);
                    } else {
                        out.push(b);
                    }
                }
                is_prev_space = sp.ends_with(b" ");
            }
            input = &input[len..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        out
    }

    /// `ModelInterface::PieceToId`.
    fn piece_to_id(&self, piece: &[u8]) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.pieces.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    fn is_type(&self, id: u32, ty: Type) -> bool {
        self.types.get(id as usize) == Some(&ty)
    }

    /// `bpe::Model::SampleEncode` without dropout: (piece bytes, id).
    fn bpe(&self, normalized: &[u8]) -> Vec<(Vec<u8>, u32)> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(normalized.len());
        let mut start = 0;
        while start < normalized.len() {
            let rest = &normalized[start..];
            let (len, freeze) = match self.user_defined_prefix(rest) {
                Some(len) => (len, true),
                None => (one_char_len(rest), false),
            };
            let index = symbols.len();
            symbols.push(Symbol {
                prev: index.checked_sub(1),
                next: (start + len < normalized.len()).then_some(index + 1),
                freeze,
                start,
                len,
            });
            start += len;
        }
        if symbols.is_empty() {
            return Vec::new();
        }
        let text = |s: &Symbol| &normalized[s.start..s.start + s.len];
        let mut agenda = BinaryHeap::new();
        // Merged unused piece → the two pieces it was made of.
        let mut rev_merge: HashMap<Vec<u8>, (Vec<u8>, Vec<u8>)> = HashMap::new();
        let mut add_pair = |symbols: &[Symbol],
                            agenda: &mut BinaryHeap<Pair>,
                            left: Option<usize>,
                            right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            let (a, b) = (&symbols[l], &symbols[r]);
            if a.freeze || b.freeze {
                return;
            }
            let piece = &normalized[a.start..a.start + a.len + b.len];
            let Some(&id) = self.pieces.get(piece) else {
                return;
            };
            agenda.push(Pair {
                left: l,
                right: r,
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                size: piece.len(),
            });
            if self.is_type(id, Type::Unused) {
                rev_merge.insert(piece.to_vec(), (text(a).to_vec(), text(b).to_vec()));
            }
        };
        for i in 1..symbols.len() {
            add_pair(&symbols, &mut agenda, Some(i - 1), Some(i));
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (top.left, top.right);
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != top.size
            {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[l].next = symbols[r].next;
            if let Some(n) = symbols[r].next {
                symbols[n].prev = Some(l);
            }
            symbols[r].len = 0;
            let prev = symbols[l].prev;
            let next = symbols[l].next;
            add_pair(&symbols, &mut agenda, prev, Some(l));
            add_pair(&symbols, &mut agenda, Some(l), next);
        }
        let mut out = Vec::new();
        let mut index = Some(0);
        while let Some(i) = index {
            self.resegment(text(&symbols[i]), &rev_merge, &mut out, 0);
            index = symbols[i].next;
        }
        out
    }

    /// Splits unused pieces back into the pieces they were merged from.
    fn resegment(
        &self,
        w: &[u8],
        rev_merge: &HashMap<Vec<u8>, (Vec<u8>, Vec<u8>)>,
        out: &mut Vec<(Vec<u8>, u32)>,
        depth: usize,
    ) {
        let id = self.piece_to_id(w);
        match rev_merge.get(w) {
            Some((a, b)) if self.is_type(id, Type::Unused) && depth < 64 => {
                self.resegment(a, rev_merge, out, depth + 1);
                self.resegment(b, rev_merge, out, depth + 1);
            }
            _ => out.push((w.to_vec(), id)),
        }
    }

    /// `EncodeAsPieces` with the ids: unknown runs merged, or bytes with byte fallback.
    pub fn encode(&self, text: &str) -> Vec<(String, u32)> {
        let mut out: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut prev_unknown = false;
        for (piece, id) in self.bpe(&self.normalize(text)) {
            let unknown = self.is_type(id, Type::Unknown);
            if unknown && self.byte_fallback {
                for b in &piece {
                    let name = format!("<0x{b:02X}>");
                    out.push((name.as_bytes().to_vec(), self.piece_to_id(name.as_bytes())));
                }
            } else if unknown && prev_unknown {
                if let Some(last) = out.last_mut() {
                    last.0.extend_from_slice(&piece);
                }
            } else {
                out.push((piece, id));
            }
            prev_unknown = unknown;
        }
        out.into_iter()
            .map(|(p, id)| (String::from_utf8_lossy(&p).into_owned(), id))
            .collect()
    }

    /// `EncodeAsPieces(text)`.
    pub fn encode_as_pieces(&self, text: &str) -> Vec<String> {
        self.encode(text).into_iter().map(|(p, _)| p).collect()
    }

    /// `EncodeAsIds(text)`.
    pub fn encode_as_ids(&self, text: &str) -> Vec<u32> {
        self.encode(text).into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_charsmap_is_an_error() {
        assert!(CharsMap::parse(&[1, 0, 0]).is_err());
        assert!(CharsMap::parse(&[8, 0, 0, 0, 1, 2, 3, 4]).is_err());
        let map = CharsMap::parse(&[4, 0, 0, 0, 0, 0, 0, 0, b'x']).expect("parses");
        // A trie that points outside itself matches nothing.
        assert_eq!(map.longest_prefix(b"abc"), None);
        assert_eq!(map.replacement(99), b"");
    }

    #[test]
    fn pairs_pop_by_score_then_leftmost() {
        let mut heap = BinaryHeap::new();
        for (left, score) in [(3, -1.0), (1, -1.0), (0, -5.0), (2, 0.5)] {
            heap.push(Pair {
                left,
                right: left + 1,
                score,
                size: 2,
            });
        }
        let order: Vec<usize> = std::iter::from_fn(|| heap.pop().map(|p| p.left)).collect();
        assert_eq!(order, [2, 1, 3, 0]);
    }
}
