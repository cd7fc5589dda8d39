//! The live loop for a terminal or a test: audio from a tap, jobs to the engine, lines out.
//! The window runs the same [`LiveDriver`] from its `logic()` instead.

use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use crate::audio::TapReceiver;
use crate::engine::{EngineHandle, Event};

use super::driver::{Handled, LiveDriver};
use super::session::LiveUpdate;

/// How long the loop waits for audio before looking at the engine again.
const POLL: Duration = Duration::from_millis(5);

/// Runs until the tap disconnects and every utterance is answered. `on_update` gets each line
/// as it comes; `on_event` every engine event that is not the live job's.
pub fn run_live(
    tap: &TapReceiver,
    engine: &EngineHandle,
    driver: &mut LiveDriver,
    on_update: &mut dyn FnMut(&LiveUpdate),
    on_event: &mut dyn FnMut(&Event),
) {
    let max_pending = 4;
    let mut ended = false;
    let mut updates = Vec::new();
    loop {
        // Past a few finished utterances waiting, leave the audio in the tap: a file fed fast
        // then waits for the model; a microphone's tap drops (the recording keeps everything).
        // In lockstep (a file fed fast) no audio is taken while a job is out.
        let lockstep = driver.session().config().lockstep;
        let hold = driver.session().pending_finals() >= max_pending || lockstep && driver.is_busy();
        if !ended && !hold {
            match tap.chunks.recv_timeout(POLL) {
                Ok(chunk) => {
                    driver.push(&chunk, &mut updates);
                    // In lockstep, one chunk at a time, so a due partial goes out where it is due.
                    let more = if lockstep { 0 } else { 64 };
                    for chunk in tap.chunks.try_iter().take(more) {
                        driver.push(&chunk, &mut updates);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    driver.finish(&mut updates);
                    ended = true;
                }
            }
        }
        driver.pump(engine);
        let hold = driver.session().pending_finals() >= max_pending || lockstep && driver.is_busy();
        let wait = if ended || hold { POLL } else { Duration::ZERO };
        let first = if wait.is_zero() {
            None
        } else {
            engine.recv_timeout(wait)
        };
        for event in first.into_iter().chain(engine.try_events()) {
            match driver.on_event(&event) {
                Handled::Live(Some(update)) => updates.push(update),
                Handled::Live(None) => {}
                Handled::NotLive => on_event(&event),
            }
        }
        for update in updates.drain(..) {
            on_update(&update);
        }
        driver.pump(engine);
        if ended && driver.is_idle() {
            return;
        }
    }
}
