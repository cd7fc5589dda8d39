//! The worker process's Whisper model behind [`SpeechModel`]: chosen when the model folder is a
//! Whisper one (`config.json` with `"model_type": "whisper"`), which is what the engine's
//! `--engine whisper` setting points the worker at.
//!
//! Each ≤30 s segment the worker cuts is one Whisper window: language detected or chosen,
//! transcribed or translated, with timestamp tokens giving timed pieces inside the segment.

use std::path::Path;

use candle_core::{DType, Device};

use super::{RunError, SegmentText, SpeechModel, TimedPiece, is_out_of_memory};
use crate::engine::protocol::{DecodeSettings, Precision, WorkerDevice};
use crate::model::whisper::{Whisper, WhisperError, WhisperOptions};

struct WhisperModel {
    model: Whisper,
}

fn run_error(err: &WhisperError) -> RunError {
    let message = format!("{err:#}");
    if is_out_of_memory(&message) {
        RunError::OutOfMemory(message)
    } else {
        RunError::Other(message)
    }
}

/// Whisper's options from a job's settings: `auto` detects the language.
pub fn options(settings: &DecodeSettings) -> WhisperOptions {
    let language = settings.language.trim();
    WhisperOptions {
        language: (!language.is_empty() && language != "auto").then(|| language.to_owned()),
        translate: settings.translate,
        timestamps: true,
        max_new_tokens: None,
    }
}

impl SpeechModel for WhisperModel {
    fn transcribe_batch(
        &mut self,
        clips: &[&[f32]],
        _next: &[&[f32]],
        settings: &DecodeSettings,
    ) -> Result<Vec<SegmentText>, RunError> {
        let options = options(settings);
        let mut out = Vec::with_capacity(clips.len());
        for clip in clips {
            let result = self
                .model
                .transcribe(clip, &options)
                .map_err(|err| run_error(&err))?;
            out.push(SegmentText {
                raw_text: result.text.clone(),
                text: result.text,
                language: result.language,
                emotion: String::new(),
                event: String::new(),
                tokens: Vec::new(),
                words: Vec::new(),
                pieces: result
                    .pieces
                    .into_iter()
                    .map(|p| TimedPiece {
                        start_s: p.start_s,
                        end_s: p.end_s,
                        text: p.text,
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    fn offload(&mut self) -> Result<(), String> {
        self.model.offload();
        crate::model::release_device_memory(self.model.device());
        Ok(())
    }

    fn restore(&mut self) -> Result<(), RunError> {
        self.model.restore().map_err(|err| run_error(&err))
    }

    fn weight_bytes(&self) -> u64 {
        if self.model.is_active() {
            self.model.weight_bytes()
        } else {
            0
        }
    }

    fn dtype_label(&self) -> String {
        match self.model.dtype() {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "other",
        }
        .to_owned()
    }
}

/// Loads the Whisper model in `dir`. `Auto` precision is f32 (see [`Whisper::load`]).
pub fn load(
    dir: &Path,
    device: &WorkerDevice,
    precision: Precision,
) -> Result<Box<dyn SpeechModel>, RunError> {
    let dtype = match precision {
        Precision::Auto | Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
        Precision::Bf16 => DType::BF16,
    };
    let device = match device {
        WorkerDevice::Cpu => Device::Cpu,
        WorkerDevice::Cuda { ordinal, .. } => crate::model::cuda_device(*ordinal)
            .map_err(|err| RunError::Other(format!("GPU unavailable: {err}")))?,
    };
    let model = Whisper::load(dir, &device, dtype).map_err(|err| run_error(&err))?;
    Ok(Box::new(WhisperModel { model }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detects_and_a_code_is_kept() {
        let mut settings = DecodeSettings::default();
        assert_eq!(options(&settings).language, None);
        settings.language = "de".into();
        settings.translate = true;
        let o = options(&settings);
        assert_eq!(o.language.as_deref(), Some("de"));
        assert!(o.translate && o.timestamps);
    }
}
