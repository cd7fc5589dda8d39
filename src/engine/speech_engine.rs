//! Which speech model the engine runs: SenseVoice-Small (the default) or a Whisper size, the
//! folder check for each, and Whisper's memory estimate for the fit check.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::whisper::is_whisper_dir;
use crate::model::whisper::sizes::{self, WhisperSize};

/// The speech model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpeechEngine {
    /// SenseVoice-Small.
    #[default]
    SenseVoice,
    /// Whisper, by size name (`tiny`, `base`, …, `large-v3-turbo`; see [`sizes::SIZES`]).
    Whisper {
        /// The size.
        model: String,
    },
}

impl SpeechEngine {
    /// "SenseVoice-Small" or "Whisper base".
    pub fn label(&self) -> String {
        match self {
            Self::SenseVoice => "SenseVoice-Small".to_owned(),
            Self::Whisper { model } => format!("Whisper {model}"),
        }
    }

    /// `sensevoice`/`whisper` and a size name, as the command line gives them.
    pub fn from_cli(engine: &str, whisper_model: &str) -> Result<Self, String> {
        match engine {
            "sensevoice" => Ok(Self::SenseVoice),
            "whisper" => {
                if sizes::by_name(whisper_model).is_none() {
                    return Err(format!(
                        "unknown Whisper model {whisper_model:?}; choose one of: {}",
                        sizes::names().join(", ")
                    ));
                }
                Ok(Self::Whisper {
                    model: whisper_model.to_owned(),
                })
            }
            other => Err(format!(
                "unknown engine {other:?}; choose sensevoice or whisper"
            )),
        }
    }

    /// The Whisper size, if this is Whisper.
    pub fn whisper_size(&self) -> Option<&'static WhisperSize> {
        match self {
            Self::SenseVoice => None,
            Self::Whisper { model } => sizes::by_name(model),
        }
    }

    /// Checks the model folder against the engine: a Whisper engine needs a Whisper folder, a
    /// SenseVoice engine must not get one. `Ok(None)`: no folder, the model store's verified
    /// snapshot of the engine's repository is used.
    pub fn model_dir(&self, dir: Option<&Path>) -> Result<Option<PathBuf>, String> {
        match (self, dir) {
            (_, None) => Ok(None),
            (Self::SenseVoice, Some(dir)) if is_whisper_dir(dir) => Err(format!(
                "{} holds a Whisper model; choose the Whisper engine for it",
                dir.display()
            )),
            (Self::SenseVoice, Some(dir)) => Ok(Some(dir.to_owned())),
            (Self::Whisper { .. }, Some(dir)) if !is_whisper_dir(dir) => Err(format!(
                "{} is not a Whisper model folder (its config.json must say \
                 \"model_type\": \"whisper\")",
                dir.display()
            )),
            (Self::Whisper { .. }, Some(dir)) => Ok(Some(dir.to_owned())),
        }
    }

    /// Device bytes Whisper needs for one window at `dtype_bytes` per weight (`resident`: the
    /// weights are already there), or `None` for SenseVoice (its own estimate applies).
    pub fn whisper_need_bytes(&self, resident: bool, dtype_bytes: u64) -> Option<u64> {
        let size = self.whisper_size()?;
        Some(if resident {
            size.activation_bytes(dtype_bytes)
        } else {
            size.job_bytes(dtype_bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_choices_are_checked() {
        assert_eq!(
            SpeechEngine::from_cli("sensevoice", "base"),
            Ok(SpeechEngine::SenseVoice)
        );
        assert_eq!(
            SpeechEngine::from_cli("whisper", "base"),
            Ok(SpeechEngine::Whisper {
                model: "base".into()
            })
        );
        let err = SpeechEngine::from_cli("whisper", "huge").expect_err("huge");
        assert!(err.contains("large-v3-turbo"), "{err}");
        assert!(SpeechEngine::from_cli("kaldi", "base").is_err());
    }

    #[test]
    fn folders_must_match_the_engine() {
        let whisper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/whisper/model");
        let sensevoice = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/tiny");
        let w = SpeechEngine::Whisper {
            model: "tiny".into(),
        };
        assert_eq!(w.model_dir(Some(&whisper)), Ok(Some(whisper.clone())));
        assert!(w.model_dir(Some(&sensevoice)).is_err());
        // No folder: the model store's snapshot of openai/whisper-tiny is used.
        assert_eq!(w.model_dir(None), Ok(None));
        let s = SpeechEngine::SenseVoice;
        assert!(s.model_dir(Some(&whisper)).is_err());
        assert_eq!(s.model_dir(Some(&sensevoice)), Ok(Some(sensevoice)));
        assert_eq!(s.model_dir(None), Ok(None));
    }

    #[test]
    fn whisper_needs_more_when_not_resident() {
        let w = SpeechEngine::Whisper {
            model: "small".into(),
        };
        let (cold, warm) = (
            w.whisper_need_bytes(false, 4),
            w.whisper_need_bytes(true, 4),
        );
        assert!(cold.zip(warm).is_some_and(|(c, r)| c > r));
        // Half precision halves the weights.
        assert!(w.whisper_need_bytes(false, 2) < cold);
        assert_eq!(SpeechEngine::SenseVoice.whisper_need_bytes(false, 4), None);
    }
}
