//! The high-level API: load a model folder, transcribe batches of 16 kHz clips.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use rayon::prelude::*;

use super::config::{ConfigError, SenseVoiceConfig};
use super::decode::{BLANK_ID, ctc_greedy};
use super::encoder::Capture;
use super::frontend::{Cmvn, CmvnError, Frontend};
use super::model::{Language, ModelOutput, PROMPT_FRAMES, Prompt, SenseVoiceSmall};
use super::postprocess::{Tags, parse_leading_tags, rich_transcription_postprocess, strip_tags};
use super::spm_encode::SpmEncoder;
use super::timestamps::{
    AlignError, Segment, Timings, TokenTiming, WordTiming, align_token_columns, align_tokens,
    funasr_targets, segments_from_words,
};
use super::tokenizer::{Tokenizer, TokenizerError};
use super::weights::{HostWeights, WeightsError, expected_tensors};
use crate::model::files::ModelFiles;

/// Everything that can go wrong loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `config.yaml` problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `am.mvn` problem.
    #[error(transparent)]
    Cmvn(#[from] CmvnError),
    /// Tokenizer problem.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Checkpoint problem.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The files do not belong together.
    #[error("{path}: {message}")]
    Mismatch {
        /// The offending file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// A tensor operation failed (out of device memory, device lost, …).
    #[error("SenseVoice {stage} failed: {source}")]
    Compute {
        /// What was running.
        stage: &'static str,
        /// The candle error.
        source: candle_core::Error,
    },
}

fn compute(stage: &'static str) -> impl FnOnce(candle_core::Error) -> ModelError {
    move |source| ModelError::Compute { stage, source }
}

/// How the visible `text` of a [`Transcript`] is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum TextStyle {
    /// Every `<|…|>` tag removed, trimmed.
    #[default]
    Plain,
    /// FunASR `rich_transcription_postprocess` (events and emotions as emoji).
    Rich,
}

/// Decoding options for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DecodeOptions {
    /// Language prompt (`Auto` lets the model detect it).
    pub language: Language,
    /// Ask for inverse text normalisation (punctuation, digits).
    pub use_itn: bool,
    /// Never emit `<|EMO_UNKNOWN|>` (FunASR `ban_emo_unk`).
    pub ban_emo_unk: bool,
    /// Compute token/word/segment timestamps (CTC forced alignment on the CPU).
    pub timestamps: bool,
    /// How `Transcript::text` is made.
    pub text_style: TextStyle,
}

/// The result for one clip.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Transcript {
    /// Language tag, emotion, event and ITN flag emitted by the model.
    #[serde(flatten)]
    pub tags: Tags,
    /// Display text (see [`TextStyle`]).
    pub text: String,
    /// Exactly FunASR's `generate()` text: tags included.
    pub raw_text: String,
    /// The decoded token ids (after CTC collapse).
    pub token_ids: Vec<u32>,
    /// Per-token times (empty unless timestamps were requested).
    pub tokens: Vec<TokenTiming>,
    /// Words with FunASR `post()` times (empty unless timestamps were requested).
    pub words: Vec<WordTiming>,
    /// Sentence-like segments (empty unless timestamps were requested).
    pub segments: Vec<Segment>,
    /// Clip duration in seconds.
    pub duration_s: f64,
}

/// A loaded SenseVoice model: weights on a device, frontend, tokenizer, and a host copy of the
/// weights for moving between devices.
#[derive(Debug, Clone)]
pub struct SenseVoice {
    model: SenseVoiceSmall,
    frontend: Arc<Frontend>,
    tokenizer: Arc<Tokenizer>,
    encoder: Arc<SpmEncoder>,
    config: SenseVoiceConfig,
    host: Arc<HostWeights>,
    emo_unknown_id: Option<u32>,
    device: Device,
    dtype: DType,
}

impl SenseVoice {
    /// Loads and validates every file, then builds the model on `device` in `dtype` (F32, F16
    /// or BF16; norms and softmax stay f32).
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        if device.is_cpu() {
            super::cpu_ops::keep_freed_buffers();
        }
        let config = SenseVoiceConfig::from_file(&files.config)?;
        let cmvn = Cmvn::from_file(&files.cmvn)?;
        if cmvn.dim() != config.input_size() {
            return Err(ModelError::Mismatch {
                path: files.cmvn.clone(),
                message: format!(
                    "has {} dimensions but config.yaml implies {} (n_mels x lfr_m)",
                    cmvn.dim(),
                    config.input_size()
                ),
            });
        }
        let spm = super::tokenizer::read_model_file(&files.tokenizer)?;
        let tokenizer = Tokenizer::from_bytes(&spm, &files.tokenizer)?;
        let encoder = SpmEncoder::from_bytes(&spm, &files.tokenizer)?;
        let expected = expected_tensors(&config, tokenizer.vocab_size());
        let host = HostWeights::load_checked(&files.weights, &expected)?;
        host.validate(&expected)?;
        // Convert once on the host, so that later device moves only copy.
        let host = if dtype == DType::F32 {
            host
        } else {
            host.to_dtype(dtype)?
        };
        let f = &config.frontend_conf;
        let frontend = Frontend::new(f.n_mels, f.lfr_m, f.lfr_n, cmvn);
        Self::build(
            config,
            Arc::new(frontend),
            Arc::new(tokenizer),
            Arc::new(encoder),
            Arc::new(host),
            device,
            dtype,
        )
    }

    fn build(
        config: SenseVoiceConfig,
        frontend: Arc<Frontend>,
        tokenizer: Arc<Tokenizer>,
        encoder: Arc<SpmEncoder>,
        host: Arc<HostWeights>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let vb = host.materialize(dtype, device)?;
        let model =
            SenseVoiceSmall::load(&config, tokenizer.vocab_size(), &vb).map_err(|source| {
                ModelError::Weights(WeightsError::Device {
                    path: host.path().to_owned(),
                    source,
                })
            })?;
        let emo_unknown_id = tokenizer.id_of("<|EMO_UNKNOWN|>");
        Ok(Self {
            model,
            frontend,
            tokenizer,
            encoder,
            config,
            host,
            emo_unknown_id,
            device: device.clone(),
            dtype,
        })
    }

    /// Rebuilds the weights on another device from the host copy (the engine's offload/restore
    /// path). The frontend, tokenizer and host copy are shared, not copied.
    pub fn to_device(&self, device: &Device) -> Result<Self, ModelError> {
        Self::build(
            self.config.clone(),
            self.frontend.clone(),
            self.tokenizer.clone(),
            self.encoder.clone(),
            self.host.clone(),
            device,
            self.dtype,
        )
    }

    /// The host (CPU) copy of the weights, already in the compute dtype.
    pub fn host_weights(&self) -> &Arc<HostWeights> {
        &self.host
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parsed `config.yaml`.
    pub fn config(&self) -> &SenseVoiceConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The network.
    pub fn model(&self) -> &SenseVoiceSmall {
        &self.model
    }

    /// The frontend.
    pub fn frontend(&self) -> &Frontend {
        &self.frontend
    }

    /// Features of one 16 kHz clip: `(row-major [t_lfr][560], t_lfr)`.
    pub fn features(&self, clip: &[f32]) -> (Vec<f32>, usize) {
        self.frontend.features(clip)
    }

    /// Pads per-clip features into one batch and runs the network.
    pub fn forward_features(
        &self,
        feats: &[(Vec<f32>, usize)],
        prompts: &[Prompt],
        capture: Option<Capture<'_>>,
    ) -> Result<ModelOutput, ModelError> {
        let (xs, lengths) = self.upload_features(feats)?;
        self.model
            .forward(&xs, &lengths, prompts, capture)
            .map_err(compute("forward pass"))
    }

    /// Greedy CTC frame ids `[B, 4 + T_max]` (u32, on the device) and the valid lengths of a
    /// batch of per-clip features: the network as transcription runs it (encoder, CTC head and
    /// argmax on the device, without the whole batch's logits).
    pub fn forward_ids_features(
        &self,
        feats: &[(Vec<f32>, usize)],
        prompts: &[Prompt],
    ) -> Result<(Tensor, Vec<usize>), ModelError> {
        let (xs, lengths) = self.upload_features(feats)?;
        self.model
            .forward_ids(&xs, &lengths, prompts)
            .map_err(compute("forward pass"))
    }

    /// Zero-pads per-clip features into one `[B, T_max, 560]` tensor on the model's device;
    /// returns it and the valid frames per clip.
    pub fn upload_features(
        &self,
        feats: &[(Vec<f32>, usize)],
    ) -> Result<(Tensor, Vec<usize>), ModelError> {
        let dim = self.frontend.feature_dim();
        let t_max = feats.iter().map(|(_, t)| *t).max().unwrap_or(0);
        let mut padded = vec![0.0f32; feats.len() * t_max * dim];
        for (i, (f, t)) in feats.iter().enumerate() {
            padded[i * t_max * dim..(i * t_max + t) * dim].copy_from_slice(&f[..t * dim]);
        }
        let lengths: Vec<usize> = feats.iter().map(|(_, t)| *t).collect();
        let xs = Tensor::from_vec(padded, (feats.len(), t_max, dim), &self.device)
            .map_err(compute("upload"))?;
        Ok((xs, lengths))
    }

    /// Features of several clips, on every core.
    pub fn features_batch(&self, clips: &[&[f32]]) -> Vec<(Vec<f32>, usize)> {
        clips.par_iter().map(|c| self.features(c)).collect()
    }

    /// Transcribes 16 kHz mono clips in [-1, 1) as one padded batch.
    pub fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        opts: &DecodeOptions,
    ) -> Result<Vec<Transcript>, ModelError> {
        let feats = self.features_batch(clips);
        self.transcribe_features(clips, &feats, opts, || {})
    }

    /// [`Self::transcribe_batch`] on features already computed (`feats[i]` from `clips[i]`).
    /// `meanwhile` runs on this thread after the device has been given the whole batch and
    /// before its results are read back, so CPU work there (the next batch's features)
    /// overlaps the GPU's.
    pub fn transcribe_features(
        &self,
        clips: &[&[f32]],
        feats: &[(Vec<f32>, usize)],
        opts: &DecodeOptions,
        meanwhile: impl FnOnce(),
    ) -> Result<Vec<Transcript>, ModelError> {
        if clips.is_empty() {
            meanwhile();
            return Ok(Vec::new());
        }
        let prompt = Prompt {
            language: opts.language,
            use_itn: opts.use_itn,
        };
        let prompts = vec![prompt; clips.len()];
        let started = std::time::Instant::now();
        let ban = opts.ban_emo_unk.then_some(self.emo_unknown_id).flatten();
        // Full logits only where a column is banned; timestamps otherwise read a few columns
        // of the encoder output per item (see `add_timestamps_from_encoder`).
        let (ids, lengths, logits, encoded) = if ban.is_some() {
            let out = self.forward_features(feats, &prompts, None)?;
            let decode_logits = match ban {
                Some(id) => ban_column(&out.logits, id).map_err(compute("ban_emo_unk"))?,
                None => out.logits.clone(),
            };
            // Argmax on the device: only B x T ids cross to the host.
            let ids = super::fused::argmax_last(&decode_logits).map_err(compute("argmax"))?;
            (ids, out.lengths, Some(out.logits), None)
        } else if opts.timestamps {
            let (xs, feat_lengths) = self.upload_features(feats)?;
            let (enc, ids, lengths) = self
                .model
                .encode_ids(&xs, &feat_lengths, &prompts)
                .map_err(compute("forward pass"))?;
            (ids, lengths, None, Some(enc))
        } else {
            let (xs, feat_lengths) = self.upload_features(feats)?;
            let (ids, lengths) = self
                .model
                .forward_ids(&xs, &feat_lengths, &prompts)
                .map_err(compute("forward pass"))?;
            (ids, lengths, None, None)
        };
        let enqueued = started.elapsed();
        meanwhile();
        let prepared = started.elapsed();
        let frame_ids = ids.to_vec2::<u32>().map_err(compute("argmax"))?;
        let ids_back = started.elapsed();
        // The items' text, then their timestamps: the CPU work of each item runs in parallel
        // on rayon's pool, and the device's log-probabilities of every item are enqueued before
        // the first is read back (one wait, not one per item).
        let mut results = clips
            .par_iter()
            .enumerate()
            .map(|(b, clip)| self.text_of(&frame_ids[b][..lengths[b]], clip.len(), opts))
            .collect::<Result<Vec<_>, ModelError>>()?;
        if let Some(enc) = encoded.as_ref() {
            self.add_timestamps_from_encoder(enc, &lengths, &frame_ids, &mut results)?;
        } else if let Some(logits) = logits.as_ref().filter(|_| opts.timestamps) {
            for (b, transcript) in results.iter_mut().enumerate() {
                self.add_timestamps(logits, b, lengths[b], transcript)?;
            }
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            "batch of {}: pass enqueued {:.1} ms, next features by {:.1} ms, ids back by {:.1} ms, \
             text and timestamps by {:.1} ms",
            clips.len(),
            ms(enqueued),
            ms(prepared),
            ms(ids_back),
            ms(started.elapsed()),
        );
        Ok(results)
    }

    /// The transcript of one item's greedy frame ids (prompt frames included), without
    /// timestamps; `samples` is the clip's length.
    fn text_of(
        &self,
        frame_ids: &[u32],
        samples: usize,
        opts: &DecodeOptions,
    ) -> Result<Transcript, ModelError> {
        let ids = ctc_greedy(frame_ids, BLANK_ID);
        let raw_text = self.tokenizer.decode(&ids)?;
        let (tags, _) = parse_leading_tags(&raw_text);
        let text = match opts.text_style {
            TextStyle::Plain => strip_tags(&raw_text),
            TextStyle::Rich => rich_transcription_postprocess(&raw_text),
        };
        Ok(Transcript {
            tags,
            text,
            raw_text,
            token_ids: ids,
            tokens: Vec::new(),
            words: Vec::new(),
            segments: Vec::new(),
            duration_s: samples as f64 / 16_000.0,
        })
    }

    /// [`Self::add_timestamps`] from the encoder output for every item of a batch: the CTC head
    /// and log-softmax run on the device per item, and only the columns of its ids and the blank
    /// come back (`frames x (distinct ids + 1)` floats instead of `frames x vocab`).
    /// `frame_ids[b]` are item b's greedy frame ids (prompt frames included), which say where
    /// blank is the argmax.
    fn add_timestamps_from_encoder(
        &self,
        enc: &Tensor,
        lengths: &[usize],
        frame_ids: &[Vec<u32>],
        results: &mut [Transcript],
    ) -> Result<(), ModelError> {
        // What to align, and the columns it reads (CPU, per item).
        let plans: Vec<Option<(Targets, Vec<u32>)>> = results
            .par_iter()
            .enumerate()
            .map(|(b, transcript)| {
                if lengths[b] <= PROMPT_FRAMES || transcript.token_ids.len() <= PROMPT_FRAMES {
                    return None;
                }
                let targets = self.alignment_targets(transcript);
                let mut columns = vec![BLANK_ID];
                for &id in targets.greedy.iter().chain(targets.funasr_ids()) {
                    if !columns.contains(&id) {
                        columns.push(id);
                    }
                }
                Some((targets, columns))
            })
            .collect();
        // The device's part, every item enqueued before any is read back.
        let on_device = plans
            .iter()
            .enumerate()
            .map(|(b, plan)| {
                plan.as_ref()
                    .map(|(_, columns)| {
                        self.model
                            .speech_log_probs(enc, b, lengths[b], columns)
                            .and_then(|t| t.flatten_all())
                    })
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(compute("timestamps"))?;
        let host = on_device
            .iter()
            .map(|t| t.as_ref().map(Tensor::to_vec1::<f32>).transpose())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(compute("timestamps"))?;
        // The forced alignments (CPU, per item).
        results
            .par_iter_mut()
            .zip(plans)
            .zip(host)
            .enumerate()
            .try_for_each(|(b, ((transcript, plan), lp))| {
                let (Some((targets, columns)), Some(lp)) = (plan, lp) else {
                    return Ok(());
                };
                let len = lengths[b];
                let blank_frames: Vec<bool> = frame_ids[b][PROMPT_FRAMES..len]
                    .iter()
                    .map(|&id| id == BLANK_ID)
                    .collect();
                let (tokens, words) = targets.align(|ids, pieces| {
                    align_token_columns(&lp, &columns, &blank_frames, ids, pieces)
                })?;
                transcript.segments = segments_from_words(&words);
                transcript.tokens = tokens;
                transcript.words = words;
                Ok(())
            })
    }

    /// What to align for `transcript`: FunASR's re-encoding of its text, and its greedy ids
    /// after the prompt as the fallback where that gives no alignment.
    fn alignment_targets(&self, transcript: &Transcript) -> Targets {
        let greedy = transcript.token_ids[PROMPT_FRAMES.min(transcript.token_ids.len())..].to_vec();
        let greedy_pieces = greedy
            .iter()
            .map(|&id| self.tokenizer.piece(id).unwrap_or("").to_owned())
            .collect();
        Targets {
            funasr: funasr_targets(&self.encoder, &transcript.raw_text),
            greedy,
            greedy_pieces,
        }
    }

    /// Token timings from a forced alignment over the speech frames of item `b`, of the ids
    /// [`Self::alignment_targets`] gives.
    fn add_timestamps(
        &self,
        logits: &Tensor,
        b: usize,
        len: usize,
        transcript: &mut Transcript,
    ) -> Result<(), ModelError> {
        if len <= PROMPT_FRAMES || transcript.token_ids.len() <= PROMPT_FRAMES {
            return Ok(());
        }
        let vocab = self.tokenizer.vocab_size();
        let lp = logits
            .get(b)
            .and_then(|t| t.narrow(0, PROMPT_FRAMES, len - PROMPT_FRAMES))
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| candle_nn::ops::log_softmax(&t, D::Minus1))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(compute("timestamps"))?;
        let (tokens, words) = self
            .alignment_targets(transcript)
            .align(|ids, pieces| align_tokens(&lp, vocab, ids, pieces, BLANK_ID))?;
        transcript.segments = segments_from_words(&words);
        transcript.tokens = tokens;
        transcript.words = words;
        Ok(())
    }
}

/// The token sequences an alignment can use (see [`SenseVoice::alignment_targets`]).
struct Targets {
    /// FunASR's ids and pieces, where its re-encoding gives one id per piece.
    funasr: Option<(Vec<u32>, Vec<String>)>,
    greedy: Vec<u32>,
    greedy_pieces: Vec<String>,
}

impl Targets {
    fn funasr_ids(&self) -> impl Iterator<Item = &u32> {
        self.funasr.iter().flat_map(|(ids, _)| ids)
    }

    /// Aligns FunASR's ids; where they have no alignment (none, or more tokens than frames)
    /// the greedy ids, which always fit the frames they came from.
    fn align(
        &self,
        align: impl Fn(&[u32], &[String]) -> Result<Timings, AlignError>,
    ) -> Result<Timings, ModelError> {
        self.funasr
            .as_ref()
            .and_then(|(ids, pieces)| align(ids, pieces).ok())
            .map_or_else(|| align(&self.greedy, &self.greedy_pieces), Ok)
            .map_err(|e| ModelError::Compute {
                stage: "timestamps",
                source: candle_core::Error::Msg(e.to_string()),
            })
    }
}

/// Sets one vocabulary column to -inf on every frame.
fn ban_column(logits: &Tensor, id: u32) -> candle_core::Result<Tensor> {
    let vocab = logits.dim(D::Minus1)?;
    let mut bias = vec![0f32; vocab];
    if let Some(b) = bias.get_mut(id as usize) {
        *b = f32::NEG_INFINITY;
    }
    logits.broadcast_add(&Tensor::from_vec(bias, vocab, logits.device())?.to_dtype(logits.dtype())?)
}
