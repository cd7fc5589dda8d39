//! The loaded Whisper: the network, the frontend, the vocabulary and greedy decoding.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::Config;

use super::WhisperError;
use super::config::{Vocabulary, WhisperFiles, read_config};
use super::cpu_step;
use super::decode::{TimedText, apply_rules, argmax, timed_pieces};
use super::frontend::{LogMel, SAMPLE_RATE_HZ, WINDOW_FRAMES, WINDOW_SAMPLES};
use super::network::{Network, encoder_positions};
use super::tokenizer::Tokenizer;

/// How to decode a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhisperOptions {
    /// A language code (`en`, `de`, …); `None` detects it.
    pub language: Option<String>,
    /// Translate to English instead of transcribing.
    pub translate: bool,
    /// Predict timestamp tokens (timed pieces); otherwise `<|notimestamps|>`.
    pub timestamps: bool,
    /// At most this many tokens after the prompt; `None`: half the decoder's context (224 for
    /// every released model, as OpenAI's `sample_len`).
    pub max_new_tokens: Option<usize>,
}

impl Default for WhisperOptions {
    fn default() -> Self {
        Self {
            language: None,
            translate: false,
            timestamps: true,
            max_new_tokens: None,
        }
    }
}

/// One window's result.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    /// The language code used (detected or chosen).
    pub language: String,
    /// The prompt the decoder started from.
    pub prompt: Vec<u32>,
    /// Tokens after the prompt, the end token included if it came.
    pub tokens: Vec<u32>,
    /// Text of the tokens, special tokens left out.
    pub text: String,
    /// Timed pieces (one piece over the clip without timestamps).
    pub pieces: Vec<TimedText>,
}

/// A loaded Whisper model.
pub struct Whisper {
    /// `None` while offloaded.
    network: Option<Network>,
    /// The weights on the host, in the run dtype: the source of a restore.
    host: HashMap<String, Tensor>,
    config: Config,
    vocab: Vocabulary,
    tokenizer: Tokenizer,
    frontend: LogMel,
    device: Device,
    dtype: DType,
    weight_bytes: u64,
    /// Greedy steps through the fused CPU step (f32 on the CPU: the default there, 2.2× faster
    /// than candle's operations on 2 cores and 8× on 16, BENCHMARKS.md) rather than candle's
    /// operations.
    fused_step: bool,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

fn weights_error(files: &WhisperFiles, err: impl std::fmt::Display) -> WhisperError {
    WhisperError::Weights {
        path: files.weights.clone(),
        message: err.to_string(),
    }
}

/// How far a stored encoder position table is from the sinusoids (the network builds them
/// itself, as candle-transformers does, instead of reading them).
fn encoder_positions_error(stored: &Tensor, config: &Config) -> candle_core::Result<f32> {
    let (length, channels) = (config.max_source_positions, config.d_model);
    let expected = Tensor::from_vec(encoder_positions(config), (length, channels), &Device::Cpu)?;
    let diff = (stored.to_dtype(DType::F32)? - expected)?
        .abs()?
        .max_all()?;
    diff.to_scalar::<f32>()
}

impl Whisper {
    /// Loads the model in `dir` onto `device` at `dtype` (f32, f16 or bf16).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, WhisperError> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(WhisperError::Unsupported(format!(
                "Whisper runs in f32, f16 or bf16, not {dtype:?}"
            )));
        }
        if device.is_cpu() {
            crate::model::cpu_ops::keep_freed_buffers();
        }
        let files = WhisperFiles::from_dir(dir)?;
        let config = read_config(&files.config)?;
        let tokenizer =
            Tokenizer::from_file(&files.tokenizer).map_err(|err| WhisperError::Tokenizer {
                path: files.tokenizer.clone(),
                message: err.to_string(),
            })?;
        let vocab = Vocabulary::read(&files, &config, &tokenizer)?;
        let raw = candle_core::safetensors::load(&files.weights, &Device::Cpu)
            .map_err(|err| weights_error(&files, err))?;
        let mut host = HashMap::with_capacity(raw.len());
        let mut weight_bytes = 0u64;
        for (name, tensor) in raw {
            if name == "model.encoder.embed_positions.weight" {
                let diff = encoder_positions_error(&tensor, &config)
                    .map_err(|err| weights_error(&files, err))?;
                if diff > 1e-3 {
                    return Err(weights_error(
                        &files,
                        format!("{name} is not the sinusoid table (off by {diff})"),
                    ));
                }
                continue;
            }
            let tensor = tensor
                .to_dtype(dtype)
                .map_err(|err| weights_error(&files, err))?;
            weight_bytes += (tensor.elem_count() * dtype.size_in_bytes()) as u64;
            host.insert(name, tensor);
        }
        let mut model = Self {
            network: None,
            host,
            config,
            vocab,
            frontend: LogMel::new(0),
            tokenizer,
            device: device.clone(),
            dtype,
            weight_bytes,
            fused_step: cpu_step::supported(device, dtype),
        };
        model.frontend = LogMel::new(model.config.num_mel_bins);
        model.network = Some(model.build(&files)?);
        Ok(model)
    }

    fn build(&self, files: &WhisperFiles) -> Result<Network, WhisperError> {
        let vb = VarBuilder::from_tensors(self.host.clone(), self.dtype, &self.device);
        Network::load(&vb, &self.config).map_err(|err| weights_error(files, err))
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Token ids and rules.
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The run dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of weights at the run dtype.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Whether greedy steps take the fused CPU step (`cpu_step.rs`: the default for f32 on the
    /// CPU) or candle's operations (the only path elsewhere, and what teacher-forced
    /// [`Self::logits`] uses everywhere).
    pub fn fused_step(&self) -> bool {
        self.fused_step
    }

    /// Chooses the fused CPU step (where it is supported) or candle's operations for greedy
    /// steps; returns the choice in force.
    pub fn set_fused_step(&mut self, on: bool) -> bool {
        self.fused_step = on && cpu_step::supported(&self.device, self.dtype);
        self.fused_step
    }

    /// Whether the weights are on the device.
    pub fn is_active(&self) -> bool {
        self.network.is_some()
    }

    /// Drops the device copy; the host copy stays for [`Self::restore`].
    pub fn offload(&mut self) {
        self.network = None;
    }

    /// Rebuilds the device copy from the host copy.
    pub fn restore(&mut self) -> Result<(), WhisperError> {
        if self.network.is_none() {
            let vb = VarBuilder::from_tensors(self.host.clone(), self.dtype, &self.device);
            self.network = Some(Network::load(&vb, &self.config)?);
        }
        Ok(())
    }

    fn network(&mut self) -> Result<&mut Network, WhisperError> {
        self.network
            .as_mut()
            .ok_or_else(|| WhisperError::Unsupported("the Whisper model is offloaded".into()))
    }

    /// Log-mel features of one clip (≤ 30 s; longer is cut), `n_mels × 3000`.
    pub fn features(&self, samples: &[f32]) -> Vec<f32> {
        self.frontend.features(samples)
    }

    /// Encoder output for `features` (from [`Self::features`]): `(1, 1500, d_model)`.
    pub fn encode(&mut self, features: &[f32]) -> Result<Tensor, WhisperError> {
        let n_mels = self.config.num_mel_bins;
        let mel = Tensor::from_slice(features, (1, n_mels, WINDOW_FRAMES), &self.device)?
            .to_dtype(self.dtype)?;
        Ok(self.network()?.encode(&mel)?)
    }

    /// Decoder logits for `tokens` against `audio` (from [`Self::encode`]), teacher-forced:
    /// `(T, vocab)` in f32.
    pub fn logits(&mut self, audio: &Tensor, tokens: &[u32]) -> Result<Tensor, WhisperError> {
        let device = self.device.clone();
        let network = self.network()?;
        network.reset();
        let input = Tensor::new(tokens, &device)?.unsqueeze(0)?;
        let hidden = network.decode(&input, audio, false)?;
        let logits = network.logits(&hidden)?;
        network.reset();
        Ok(logits.i(0)?.to_dtype(DType::F32)?)
    }

    /// One greedy step: feeds `new` after the cached positions, returns the last position's
    /// logits.
    fn step(&mut self, audio: &Tensor, new: &[u32]) -> Result<Vec<f32>, WhisperError> {
        let device = self.device.clone();
        let fused = self.fused_step;
        let network = self.network()?;
        if fused {
            return Ok(network.step_cpu(new, audio)?);
        }
        let input = Tensor::new(new, &device)?.unsqueeze(0)?;
        let hidden = network.decode(&input, audio, true)?;
        let last = hidden.narrow(1, new.len() - 1, 1)?;
        let logits = network.logits(&last)?;
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn reset(&mut self) -> Result<(), WhisperError> {
        self.network()?.reset();
        Ok(())
    }

    /// The most likely language token after `<|startoftranscript|>`.
    pub fn detect_language(&mut self, audio: &Tensor) -> Result<u32, WhisperError> {
        if self.vocab.languages.is_empty() {
            return Err(WhisperError::Unsupported(
                "this Whisper model is English-only: it has no language tokens".into(),
            ));
        }
        let sot = self.vocab.sot;
        self.reset()?;
        let logits = self.step(audio, &[sot])?;
        self.reset()?;
        let mut best: Option<(u32, f32)> = None;
        for &(_, id) in &self.vocab.languages {
            let v = logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            if best.is_none_or(|(b, bv)| v > bv || (v == bv && id < b)) {
                best = Some((id, v));
            }
        }
        best.map(|(id, _)| id)
            .ok_or_else(|| WhisperError::Unsupported("no language token".into()))
    }

    /// The prompt: `<|startoftranscript|>`, the language and the task (multilingual models),
    /// then `<|notimestamps|>` unless timestamps are asked for.
    pub fn prompt(&self, language: Option<u32>, translate: bool, timestamps: bool) -> Vec<u32> {
        let mut prompt = vec![self.vocab.sot];
        if let Some(language) = language {
            prompt.push(language);
            match (translate, self.vocab.translate) {
                (true, Some(id)) => prompt.push(id),
                _ => prompt.push(self.vocab.transcribe),
            }
        }
        if !timestamps {
            prompt.push(self.vocab.no_timestamps);
        }
        prompt
    }

    /// Decodes one window whose encoder output is `audio`, `clip_s` seconds of it speech.
    pub fn decode_window(
        &mut self,
        audio: &Tensor,
        clip_s: f64,
        options: &WhisperOptions,
    ) -> Result<WindowResult, WhisperError> {
        let multilingual = !self.vocab.languages.is_empty();
        if options.translate && (!multilingual || self.vocab.translate.is_none()) {
            return Err(WhisperError::Unsupported(
                "this Whisper model is English-only and cannot translate".into(),
            ));
        }
        let language = match (&options.language, multilingual) {
            (_, false) => None,
            (Some(code), true) => Some(self.vocab.language_id(code).ok_or_else(|| {
                WhisperError::Language {
                    code: code.clone(),
                    known: self
                        .vocab
                        .languages
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                }
            })?),
            (None, true) => Some(self.detect_language(audio)?),
        };
        let prompt = self.prompt(language, options.translate, options.timestamps);
        let context = self.config.max_target_positions;
        let max_new = options
            .max_new_tokens
            .unwrap_or(context / 2)
            .min(context.saturating_sub(prompt.len()));
        let mut generated = Vec::new();
        self.reset()?;
        let mut feed = prompt.clone();
        for _ in 0..max_new {
            let mut logits = self.step(audio, &feed)?;
            apply_rules(&mut logits, &generated, &self.vocab, options.timestamps);
            let next = argmax(&logits);
            generated.push(next);
            if next == self.vocab.eot {
                break;
            }
            feed = vec![next];
        }
        self.reset()?;
        let tokenizer = &self.tokenizer;
        let decode = |ids: &[u32]| tokenizer.decode(ids);
        let pieces = if options.timestamps {
            timed_pieces(&generated, &self.vocab, clip_s, &decode)
        } else {
            let text = decode(&generated).trim().to_owned();
            if text.is_empty() {
                Vec::new()
            } else {
                vec![TimedText {
                    start_s: 0.0,
                    end_s: clip_s,
                    text,
                }]
            }
        };
        let text = pieces
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let language = match language {
            Some(id) => self.vocab.language_code(id).unwrap_or_default().to_owned(),
            None => "en".to_owned(),
        };
        Ok(WindowResult {
            language,
            prompt,
            tokens: generated,
            text,
            pieces,
        })
    }

    /// Transcribes one clip of at most 30 s (longer clips are cut at 30 s: split long audio
    /// first, as the worker does).
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        options: &WhisperOptions,
    ) -> Result<WindowResult, WhisperError> {
        let clip = &samples[..samples.len().min(WINDOW_SAMPLES)];
        let features = self.features(clip);
        let audio = self.encode(&features)?;
        self.decode_window(&audio, clip.len() as f64 / SAMPLE_RATE_HZ as f64, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed random-weight model and the encoder output of a committed clip.
    fn model_and_audio() -> (Whisper, Tensor) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut whisper = Whisper::load(
            &root.join("tests/data/whisper/model"),
            &Device::Cpu,
            DType::F32,
        )
        .expect("load the committed model");
        let clip = root.join("tests/data/sensevoice/audio/en_short.wav");
        let samples = crate::audio::decode_file(&clip, &mut |_| {})
            .expect("decode the clip")
            .samples;
        let audio = whisper.encode(&whisper.features(&samples)).expect("encode");
        (whisper, audio)
    }

    /// Greedy steps' logits, one token at a time after the first `first` fed together.
    fn stepped(
        whisper: &mut Whisper,
        audio: &Tensor,
        tokens: &[u32],
        first: usize,
    ) -> Vec<Vec<f32>> {
        whisper.reset().expect("reset");
        let mut rows = vec![whisper.step(audio, &tokens[..first]).expect("first step")];
        for &t in &tokens[first..] {
            rows.push(whisper.step(audio, &[t]).expect("step"));
        }
        whisper.reset().expect("reset");
        rows
    }

    /// The fused step and candle's cached step give, position by position, the logits of one
    /// teacher-forced pass (candle's operations) to f32 rounding.
    #[test]
    fn both_greedy_steps_give_the_teacher_forced_logits() {
        let (mut whisper, audio) = model_and_audio();
        let mut tokens = whisper.prompt(whisper.vocabulary().language_id("en"), false, true);
        let first = tokens.len();
        tokens.extend([220, 1000, 1500, 1900, 40, 41, 42, 13]);
        let forced: Vec<Vec<f32>> = whisper
            .logits(&audio, &tokens)
            .expect("teacher-forced")
            .to_vec2()
            .expect("rows");
        for fused in [false, true] {
            assert_eq!(whisper.set_fused_step(fused), fused);
            let rows = stepped(&mut whisper, &audio, &tokens, first);
            assert_eq!(rows.len(), tokens.len() - first + 1);
            for (k, row) in rows.iter().enumerate() {
                let want = &forced[first - 1 + k];
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = row
                    .iter()
                    .zip(want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(scale > 0.1, "logits of zeros prove nothing");
                assert!(
                    worst <= 2e-5 * scale.max(1.0),
                    "fused {fused}, position {}: off by {worst} (max {scale})",
                    first - 1 + k
                );
            }
        }
    }
}
