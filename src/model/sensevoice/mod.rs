//! SenseVoice-Small in candle, matching FunASR's `SenseVoiceSmall` inference.
//!
//! Layout follows candle-transformers: `config` (config.yaml), `frontend` (fbank/LFR/CMVN over
//! slices), `encoder` and `model` (one struct per FunASR class, `vb.pp()` = checkpoint keys),
//! `weights` (checkpoint loading and validation), `tokenizer` (decoding), `spm_encode`
//! (encoding), `decode`, `postprocess` and `timestamps`; `transcribe` ties them into
//! [`SenseVoice`]. Everything runs on the calling thread (the engine worker in the application).

mod checkpoint;
pub mod config;
pub mod cpu_f32;
pub mod cpu_matmul;
pub use super::cpu_ops;
#[cfg(feature = "cuda")]
mod cublaslt;
#[cfg(feature = "cuda")]
mod cuda_graph;
#[cfg(feature = "cuda")]
mod cuda_ops;
pub mod decode;
pub mod encoder;
pub mod frontend;
pub mod fused;
pub mod model;
pub mod postprocess;
pub mod spm_encode;
#[cfg(test)]
pub(crate) mod test_util;
pub mod timestamps;
pub mod tokenizer;
pub mod transcribe;
pub mod weights;

pub use model::{Language, Prompt};
pub use postprocess::Tags;
pub use transcribe::{DecodeOptions, ModelError, SenseVoice, TextStyle, Transcript};
pub use weights::HostWeights;
