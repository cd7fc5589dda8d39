//! Speech models. Pure computation: loading weights, features, forward passes and decoding.
//!
//! Runs on whichever thread calls it (the engine worker thread in the application); nothing
//! here spawns threads or touches the UI.

pub mod bounded;
pub mod files;
pub mod pickle;
pub mod pth;
pub mod sensevoice;
pub mod whisper;
