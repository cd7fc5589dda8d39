//! The worker process's real model and decoder: SenseVoice in candle, audio through symphonia.
//!
//! This is the only engine code that touches candle. The app's binary never calls it (it starts
//! `gpuscribe-worker` instead), so a `cuda` build of the app does not need the CUDA libraries.

use std::io::BufReader;
use std::path::Path;

use candle_core::{DType, Device};

use super::{RunError, SegmentText, SpeechModel, is_out_of_memory, run_worker};
use crate::engine::protocol::{DecodeSettings, Precision, WorkerDevice};
use crate::engine::transcript::{TokenTime, WordTime};
use crate::model::files::ModelFiles;
use crate::model::sensevoice::{DecodeOptions, Language, ModelError, SenseVoice, TextStyle};

/// The loaded model and where it is.
struct SenseVoiceModel {
    /// The model on its device; `None` while offloaded.
    active: Option<SenseVoice>,
    /// A host-RAM copy in the run dtype, kept while offloaded, so restore is one copy per tensor.
    offloaded: Option<SenseVoice>,
    device: Device,
    dtype: DType,
    /// Features of the batch announced as `next`, computed while the device ran the previous
    /// one, keyed by the clips' addresses and lengths.
    prefetched: Option<Prefetched>,
}

/// Features computed ahead: the clips' `(address, length)` keys and their features.
type Prefetched = (Vec<(usize, usize)>, Vec<(Vec<f32>, usize)>);

fn clip_keys(clips: &[&[f32]]) -> Vec<(usize, usize)> {
    clips
        .iter()
        .map(|c| (c.as_ptr() as usize, c.len()))
        .collect()
}

/// The kind of a model error: candle reports device allocation failures only as text, so this
/// is the one place a message is read; from here on the kind is typed.
fn run_error(err: &ModelError) -> RunError {
    let message = format!("{err:#}");
    if is_out_of_memory(&message) {
        RunError::OutOfMemory(message)
    } else if matches!(err, ModelError::Compute { .. }) {
        RunError::Other(message)
    } else {
        RunError::BadModel(message)
    }
}

fn dtype_label(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

/// Frees what the device's memory pool holds after tensors were dropped.
fn synchronize(device: &Device) {
    crate::model::release_device_memory(device);
}

impl SpeechModel for SenseVoiceModel {
    fn transcribe_batch(
        &mut self,
        clips: &[&[f32]],
        next: &[&[f32]],
        settings: &DecodeSettings,
    ) -> Result<Vec<SegmentText>, RunError> {
        let Some(model) = self.active.as_ref() else {
            return Err(RunError::Other("the model is offloaded".to_owned()));
        };
        let options = DecodeOptions {
            language: Language::from_code(&settings.language),
            use_itn: settings.use_itn,
            ban_emo_unk: false,
            timestamps: true,
            text_style: if settings.rich {
                TextStyle::Rich
            } else {
                TextStyle::Plain
            },
        };
        let feats = match self.prefetched.take() {
            Some((keys, feats)) if keys == clip_keys(clips) => feats,
            _ => model.features_batch(clips),
        };
        let mut next_feats = None;
        let result = model.transcribe_features(clips, &feats, &options, || {
            if !next.is_empty() {
                next_feats = Some((clip_keys(next), model.features_batch(next)));
            }
        });
        self.prefetched = next_feats;
        if result.is_err() {
            // Give back whatever the failed pass allocated before a retry with a smaller batch.
            synchronize(&self.device);
        }
        Ok(result
            .map_err(|err| run_error(&err))?
            .into_iter()
            .map(|t| SegmentText {
                raw_text: t.raw_text,
                text: t.text,
                language: t.tags.language.clone().unwrap_or_default(),
                emotion: t.tags.emotion.clone().unwrap_or_default(),
                event: t.tags.event.clone().unwrap_or_default(),
                tokens: t
                    .tokens
                    .iter()
                    .map(|token| TokenTime {
                        token: token.piece.clone(),
                        start_s: token.start_s,
                        end_s: token.end_s,
                    })
                    .collect(),
                words: t
                    .words
                    .iter()
                    .map(|word| WordTime {
                        word: word.word.clone(),
                        start_ms: word.start_ms,
                        end_ms: word.end_ms,
                    })
                    .collect(),
                pieces: Vec::new(),
            })
            .collect())
    }

    fn end_job(&mut self) {
        self.prefetched = None;
    }

    fn offload(&mut self) -> Result<(), String> {
        let Some(model) = self.active.take() else {
            return Ok(());
        };
        if self.device.is_cpu() {
            // Nothing to free on the CPU: keep it as it is.
            self.offloaded = Some(model);
            return Ok(());
        }
        let host = model
            .to_device(&Device::Cpu)
            .map_err(|err| format!("{err:#}"))?;
        drop(model);
        synchronize(&self.device);
        self.offloaded = Some(host);
        Ok(())
    }

    fn restore(&mut self) -> Result<(), RunError> {
        let Some(host) = self.offloaded.take() else {
            return Ok(());
        };
        let restored = host.to_device(&self.device).map_err(|err| run_error(&err));
        match restored {
            Ok(model) => {
                self.active = Some(model);
                Ok(())
            }
            Err(err) => {
                self.offloaded = Some(host);
                Err(err)
            }
        }
    }

    fn weight_bytes(&self) -> u64 {
        self.active
            .as_ref()
            .map_or(0, |m| m.host_weights().size_bytes() as u64)
    }

    fn dtype_label(&self) -> String {
        dtype_label(self.dtype).to_owned()
    }
}

fn load(
    dir: &Path,
    device: &WorkerDevice,
    precision: Precision,
) -> Result<Box<dyn SpeechModel>, RunError> {
    // A Whisper folder (the engine's `--engine whisper`) gets the Whisper model.
    if crate::model::whisper::is_whisper_dir(dir) {
        return super::whisper::load(dir, device, precision);
    }
    let is_cpu = matches!(device, WorkerDevice::Cpu);
    let dtype = match (precision, is_cpu) {
        (Precision::Auto, true) | (Precision::F32, _) => DType::F32,
        (Precision::Auto, false) | (Precision::Bf16, _) => DType::BF16,
        (Precision::F16, _) => DType::F16,
    };
    // Creating the CUDA context and cuBLAS handle takes a few hundred milliseconds: do it on
    // its own thread while this one reads and converts the weights.
    let cuda_init = match device {
        WorkerDevice::Cpu => None,
        WorkerDevice::Cuda { ordinal, .. } => {
            let ordinal = *ordinal;
            let spawned = std::thread::Builder::new()
                .name("cuda-init".to_owned())
                .spawn(move || crate::model::cuda_device(ordinal));
            Some(spawned.map_err(|err| RunError::Other(format!("cannot start a thread: {err}")))?)
        }
    };
    let files = ModelFiles::from_dir(dir).map_err(|err| RunError::BadModel(format!("{err:#}")));
    let host = files.and_then(|files| {
        SenseVoice::load(&files, &Device::Cpu, dtype).map_err(|err| run_error(&err))
    });
    let device = match cuda_init {
        None => Device::Cpu,
        Some(handle) => handle
            .join()
            .map_err(|_| {
                RunError::DeviceUnavailable("GPU unavailable: CUDA initialisation panicked".into())
            })?
            .map_err(|err| RunError::DeviceUnavailable(format!("GPU unavailable: {err}")))?,
    };
    let host = host?;
    let model = if device.is_cpu() {
        host
    } else {
        host.to_device(&device).map_err(|err| run_error(&err))?
    };
    Ok(Box::new(SenseVoiceModel {
        active: Some(model),
        offloaded: None,
        device,
        dtype,
        prefetched: None,
    }))
}

/// The worker process's `main`: serves requests on stdin until told to stop; returns its exit
/// status.
pub fn worker_main() -> std::process::ExitCode {
    let stdin = BufReader::new(std::io::stdin());
    let stdout = std::io::stdout().lock();
    let status = run_worker(
        stdin,
        stdout,
        &load,
        &super::source::StreamSource::open,
        cfg!(feature = "cuda"),
    );
    std::process::ExitCode::from(u8::try_from(status).unwrap_or(1))
}

#[cfg(test)]
#[path = "sensevoice_tests.rs"]
mod tests;
