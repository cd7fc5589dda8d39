//! A Whisper model folder in the Hugging Face layout: `config.json`, `generation_config.json`
//! (optional), `tokenizer.json` and `model.safetensors`; the special token ids and the
//! decoding rules read from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_transformers::models::whisper::Config;
use serde::Deserialize;

use super::WhisperError;
use super::tokenizer::Tokenizer;

/// The files of a Whisper model folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhisperFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `generation_config.json`, if the folder has one.
    pub generation_config: Option<PathBuf>,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
}

impl WhisperFiles {
    /// The files in `dir`, or an error naming the folder and every missing file.
    pub fn from_dir(dir: &Path) -> Result<Self, WhisperError> {
        let required = ["config.json", "tokenizer.json", "model.safetensors"];
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|name| !dir.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(WhisperError::Files {
                dir: dir.to_owned(),
                message: format!("missing {}", missing.join(", ")),
            });
        }
        let generation = dir.join("generation_config.json");
        Ok(Self {
            config: dir.join("config.json"),
            generation_config: generation.is_file().then_some(generation),
            tokenizer: dir.join("tokenizer.json"),
            weights: dir.join("model.safetensors"),
        })
    }
}

/// Whether `dir` holds a Whisper model (its `config.json` says `"model_type": "whisper"`).
pub fn is_whisper_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("model_type")
                .and_then(|t| t.as_str())
                .map(|t| t == "whisper")
        })
        .unwrap_or(false)
}

fn read_json(path: &Path) -> Result<serde_json::Value, WhisperError> {
    let text = std::fs::read_to_string(path).map_err(|err| WhisperError::Config {
        path: path.to_owned(),
        message: err.to_string(),
    })?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| WhisperError::Config {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
    // transformers writes `null` for unset lists; serde's defaults only cover absent keys.
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    Ok(value)
}

/// Reads `config.json` into candle-transformers' [`Config`], checking what its model assumes.
pub fn read_config(path: &Path) -> Result<Config, WhisperError> {
    let value = read_json(path)?;
    let bad = |message: String| WhisperError::Config {
        path: path.to_owned(),
        message,
    };
    if let Some(kind) = value.get("model_type").and_then(|v| v.as_str())
        && kind != "whisper"
    {
        return Err(bad(format!("model_type is {kind}, not whisper")));
    }
    let config: Config =
        serde_json::from_value(value.clone()).map_err(|err| bad(err.to_string()))?;
    // candle-transformers' model uses 4 × d_model for both feed-forward layers.
    for key in ["encoder_ffn_dim", "decoder_ffn_dim"] {
        if let Some(dim) = value.get(key).and_then(serde_json::Value::as_u64)
            && dim as usize != 4 * config.d_model
        {
            return Err(bad(format!(
                "{key} is {dim}; this model needs 4 × d_model = {}",
                4 * config.d_model
            )));
        }
    }
    let heads_ok = config.encoder_attention_heads > 0
        && config.decoder_attention_heads > 0
        && config
            .d_model
            .is_multiple_of(config.encoder_attention_heads)
        && config
            .d_model
            .is_multiple_of(config.decoder_attention_heads);
    if !heads_ok || config.d_model < 4 || config.max_target_positions == 0 {
        return Err(bad(format!(
            "d_model {} does not split into {} / {} heads",
            config.d_model, config.encoder_attention_heads, config.decoder_attention_heads
        )));
    }
    if config.max_source_positions != 1500 {
        return Err(bad(format!(
            "max_source_positions is {}; Whisper's 30 s window needs 1500",
            config.max_source_positions
        )));
    }
    Ok(config)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GenerationJson {
    suppress_tokens: Vec<u32>,
    begin_suppress_tokens: Vec<u32>,
    max_initial_timestamp_index: Option<u32>,
    lang_to_id: BTreeMap<String, u32>,
    no_timestamps_token_id: Option<u32>,
    decoder_start_token_id: Option<u32>,
}

/// Token ids and decoding rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocabulary {
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|transcribe|>`.
    pub transcribe: u32,
    /// `<|translate|>`, when the model can translate.
    pub translate: Option<u32>,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// The first timestamp token, `<|0.00|>` (`no_timestamps + 1`).
    pub timestamp_begin: u32,
    /// `(code, id)` of every language token, in id order; empty for English-only models.
    pub languages: Vec<(String, u32)>,
    /// Tokens never generated.
    pub suppress_tokens: Vec<u32>,
    /// Tokens not generated first.
    pub begin_suppress_tokens: Vec<u32>,
    /// The latest first timestamp, in steps of 0.02 s after `<|0.00|>`.
    pub max_initial_timestamp_index: Option<u32>,
    /// Logits per position.
    pub vocab_size: usize,
}

impl Vocabulary {
    /// The special ids from the tokenizer, the rules from `generation_config.json` if there is
    /// one, else from `config.json` (older exports keep `suppress_tokens` there).
    pub fn read(
        files: &WhisperFiles,
        config: &Config,
        tokenizer: &Tokenizer,
    ) -> Result<Self, WhisperError> {
        let generation: GenerationJson = match &files.generation_config {
            Some(path) => {
                serde_json::from_value(read_json(path)?).map_err(|err| WhisperError::Config {
                    path: path.clone(),
                    message: err.to_string(),
                })?
            }
            None => {
                let value = read_json(&files.config)?;
                GenerationJson {
                    suppress_tokens: config.suppress_tokens.clone(),
                    begin_suppress_tokens: value
                        .get("begin_suppress_tokens")
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_default(),
                    ..GenerationJson::default()
                }
            }
        };
        let need = |name: &str| {
            tokenizer
                .token_id(name)
                .ok_or_else(|| WhisperError::Tokenizer {
                    path: files.tokenizer.clone(),
                    message: format!("no {name} token"),
                })
        };
        let sot = match generation.decoder_start_token_id {
            Some(id) => id,
            None => need("<|startoftranscript|>")?,
        };
        let eot = need("<|endoftext|>")?;
        let transcribe = need("<|transcribe|>")?;
        let translate = tokenizer.token_id("<|translate|>");
        let no_timestamps = match generation.no_timestamps_token_id {
            Some(id) => id,
            None => need("<|notimestamps|>")?,
        };
        let mut languages: Vec<(String, u32)> = if generation.lang_to_id.is_empty() {
            // Language tokens sit between <|startoftranscript|> and <|translate|>.
            let end = translate.unwrap_or(sot + 1);
            (sot + 1..end)
                .filter_map(|id| tokenizer.token(id).map(|t| (t.to_owned(), id)))
                .collect()
        } else {
            generation.lang_to_id.into_iter().collect()
        };
        languages = languages
            .into_iter()
            .filter_map(|(token, id)| {
                token
                    .strip_prefix("<|")
                    .and_then(|t| t.strip_suffix("|>"))
                    .map(|code| (code.to_owned(), id))
            })
            .collect();
        languages.sort_by_key(|(_, id)| *id);
        let vocab_size = config.vocab_size;
        let all = [sot, eot, transcribe, no_timestamps + 1];
        if let Some(&bad) = all.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(WhisperError::Tokenizer {
                path: files.tokenizer.clone(),
                message: format!("token id {bad} is outside the model's {vocab_size} logits"),
            });
        }
        Ok(Self {
            sot,
            eot,
            transcribe,
            translate,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            languages,
            suppress_tokens: generation.suppress_tokens,
            begin_suppress_tokens: generation.begin_suppress_tokens,
            max_initial_timestamp_index: generation.max_initial_timestamp_index,
            vocab_size,
        })
    }

    /// The id of language `code` (`en`, `de`, …).
    pub fn language_id(&self, code: &str) -> Option<u32> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, id)| *id)
    }

    /// The code of language token `id`.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(c, _)| c.as_str())
    }
}
