//! Helpers shared by the test files: for the window tests (`ui_*`) eframe storage in memory
//! and a fake engine behind channels that records what the window asks of it; the SenseVoice
//! fixture loaders (`sensevoice`); the ALSA test microphone and the tiny model's engine
//! configuration (`alsa`); seeded pseudo-random tensors (`xorshift`).
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

pub mod alsa;
pub mod sensevoice;
pub mod xorshift;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, bounded};
use gpuscribe::app::EngineFactory;
use gpuscribe::engine::{EngineConfig, EngineHandle, Event, Request};

/// eframe storage in memory.
#[derive(Default)]
pub struct MemoryStorage(HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

/// The test's end of a fake engine: the requests the window sent, a sender for events to
/// answer with, and the configuration of every engine the window started.
pub struct FakeEngine {
    /// Requests from the window, in order.
    pub requests: Receiver<Request>,
    /// Events to the window.
    pub events: Sender<Event>,
    /// One entry per engine the factory started.
    pub configs: Arc<Mutex<Vec<EngineConfig>>>,
}

/// An engine factory for `AppDeps` whose engines are channels to the returned [`FakeEngine`].
pub fn fake_engine() -> (EngineFactory, FakeEngine) {
    let (request_tx, requests) = bounded(4096);
    let (events, event_rx) = bounded(4096);
    let configs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&configs);
    let factory: EngineFactory = Box::new(move |config| {
        seen.lock().expect("lock").push(config);
        Ok(EngineHandle::from_channels(
            request_tx.clone(),
            event_rx.clone(),
        ))
    });
    (
        factory,
        FakeEngine {
            requests,
            events,
            configs,
        },
    )
}
