//! A copy of the captured audio for live transcription, at 16 kHz mono, over a bounded channel.
//!
//! The capture path calls [`SampleTap::feed`] with every mono sample it writes to the WAV file
//! (the `audio-capture` thread, after the real-time callback, never inside it). For a
//! microphone the tap never waits: when the consumer is behind, chunks are dropped and counted,
//! and the recording on disk is unaffected. A file fed as fast as it can go
//! ([`TapPolicy::Wait`]) waits for the consumer instead, so nothing is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::resample::{MonoResampler, ResampleError};

/// Chunks the channel holds (a chunk is one drain of the ring buffer: about 20 ms).
pub const TAP_CAPACITY: usize = 512;

/// What the tap does when its channel is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapPolicy {
    /// Drop the chunk and count it (a live device: capture never waits).
    Drop,
    /// Wait for room (a file read as fast as possible).
    Wait,
}

/// The capture side of the tap.
pub struct SampleTap {
    tx: Sender<Vec<f32>>,
    policy: TapPolicy,
    resampler: Option<MonoResampler>,
    dropped_samples: Arc<AtomicU64>,
}

/// The consumer side: 16 kHz mono chunks, in order; disconnected after the capture's last one.
pub struct TapReceiver {
    /// The chunks.
    pub chunks: Receiver<Vec<f32>>,
    /// 16 kHz samples dropped because the consumer was behind.
    pub dropped_samples: Arc<AtomicU64>,
}

impl TapReceiver {
    /// 16 kHz samples dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped_samples.load(Ordering::Relaxed)
    }
}

impl SampleTap {
    /// A tap and its receiver.
    pub fn new(policy: TapPolicy) -> (Self, TapReceiver) {
        let (tx, chunks) = bounded(TAP_CAPACITY);
        let dropped_samples = Arc::new(AtomicU64::new(0));
        (
            Self {
                tx,
                policy,
                resampler: None,
                dropped_samples: Arc::clone(&dropped_samples),
            },
            TapReceiver {
                chunks,
                dropped_samples,
            },
        )
    }

    /// Sets the capture's sample rate (before the first [`feed`](Self::feed)).
    pub fn set_rate(&mut self, sample_rate_hz: u32) -> Result<(), ResampleError> {
        self.resampler = Some(MonoResampler::new(sample_rate_hz)?);
        Ok(())
    }

    /// Takes mono samples at the capture's rate.
    pub fn feed(&mut self, mono: &[f32]) {
        let Some(resampler) = self.resampler.as_mut() else {
            return;
        };
        let mut out = Vec::with_capacity(mono.len());
        if let Err(err) = resampler.push(mono, &mut out) {
            tracing::warn!("live audio resampling failed: {err}");
            return;
        }
        self.send(out);
    }

    /// The capture ended: flushes the resampler. Dropping the tap then disconnects the receiver.
    pub fn finish(mut self) {
        if let Some(resampler) = self.resampler.take() {
            let mut out = Vec::new();
            match resampler.finish(&mut out) {
                Ok(()) => self.send(out),
                Err(err) => tracing::warn!("live audio resampling failed: {err}"),
            }
        }
    }

    fn send(&self, chunk: Vec<f32>) {
        if chunk.is_empty() {
            return;
        }
        let len = chunk.len() as u64;
        let lost = match self.policy {
            TapPolicy::Wait => self.tx.send(chunk).is_err(),
            TapPolicy::Drop => matches!(self.tx.try_send(chunk), Err(TrySendError::Full(_))),
        };
        if lost {
            self.dropped_samples.fetch_add(len, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_and_counts_without_waiting() {
        let (mut tap, rx) = SampleTap::new(TapPolicy::Drop);
        tap.set_rate(16_000).expect("16 kHz");
        for _ in 0..TAP_CAPACITY + 3 {
            tap.feed(&[0.5; 10]);
        }
        assert_eq!(rx.dropped(), 30);
        tap.finish();
        let got: Vec<Vec<f32>> = rx.chunks.iter().collect();
        assert_eq!(got.len(), TAP_CAPACITY);
        assert!(got.iter().all(|c| c == &[0.5; 10]));
    }

    #[test]
    fn a_48_khz_capture_arrives_at_16_khz() {
        let (mut tap, rx) = SampleTap::new(TapPolicy::Wait);
        tap.set_rate(48_000).expect("48 kHz");
        let consumer = std::thread::Builder::new()
            .name("tap-test".into())
            .spawn(move || rx.chunks.iter().map(|c| c.len()).sum::<usize>())
            .expect("thread");
        for _ in 0..100 {
            tap.feed(&[0.1; 960]);
        }
        tap.finish();
        assert_eq!(consumer.join().expect("join"), 100 * 320);
    }
}
