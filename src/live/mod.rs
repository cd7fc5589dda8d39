//! Live transcription: captions while someone speaks.
//!
//! ```text
//!  audio-capture ──SampleTap (16 kHz, bounded, drops)──▶ LiveSession ──TranscribeSamples──▶ engine
//!  (WAV on disk,                                      │  segmenter (earshot VAD)                │
//!   always complete)                                  │  finished utterances, partials    ◀──JobDone
//!                                                     └──▶ LiveLine (partial / final)
//! ```
//!
//! - [`segmenter`]: earshot's per-frame speech score → utterance boundaries (onset, hangover,
//!   pre-roll, length limit).
//! - [`session`]: the pure core: which audio to transcribe next, and lines from the answers.
//! - [`cost`]: the decode time learned from the answers, for timing partials.
//! - [`driver`]: the session on an [`EngineHandle`](crate::engine::EngineHandle).
//! - [`run`]: the loop `gpuscribe listen` and the tests use; [`feed`]: a WAV file through the
//!   capture path instead of a microphone.

pub mod cost;
pub mod driver;
pub mod feed;
pub mod run;
pub mod segmenter;
pub mod session;

pub use cost::DecodeCost;
pub use driver::{Handled, JobTiming, LiveDriver, warm_up};
pub use feed::{Pace, WavFeed};
pub use run::run_live;
pub use segmenter::{Boundary, Segmenter, SegmenterConfig};
pub use session::{
    JobKind, LiveConfig, LiveJob, LiveLine, LiveSession, LiveStats, LiveText, LiveUpdate,
};
