//! Decodes an audio file (WAV, MP3, FLAC, Ogg Vorbis, AAC/M4A) to 16 kHz mono `f32`.
//!
//! Runs on whichever thread calls it (the engine's worker, never the UI thread). Decoding is
//! streamed packet by packet through [`MonoResampler`], so a long file never holds more than its
//! 16 kHz output plus one packet and one resampler chunk.

use std::fs::File;
use std::io::{self, Cursor};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::units::Duration;

use super::MODEL_SAMPLE_RATE_HZ;
use super::resample::{
    MAX_SOURCE_RATE_HZ, MIN_SOURCE_RATE_HZ, MonoResampler, ResampleError, downmix_into,
};

/// Longest stretch of silence inserted for one undecodable packet; caps the damage a lying
/// packet duration in a broken file can do.
const MAX_GAP_FILL_S: f64 = 2.0;

/// Silence inserted for undecodable packets, in total, is at most this much plus
/// [`GAP_FILL_S_PER_BYTE`] per byte of packet data read: a container cannot make a few broken
/// packets claim hours.
const GAP_FILL_BASE_S: f64 = 2.0;
/// See [`GAP_FILL_BASE_S`] (20 bytes per second of silence; real audio costs 1 kB/s and more).
const GAP_FILL_S_PER_BYTE: f64 = 0.05;

/// A file may decode to at most this many seconds plus [`MAX_AUDIO_S_PER_BYTE`] per byte of
/// its size; more is a lying or hostile file and stops decoding with an error.
pub const MAX_AUDIO_BASE_S: f64 = 60.0;
/// See [`MAX_AUDIO_BASE_S`]. The most compact real audio is FLAC of digital silence in its largest
/// blocks, about 20 bytes per 8 s at 8 kHz (0.4 s per byte).
pub const MAX_AUDIO_S_PER_BYTE: f64 = 0.5;

/// The most audio, in seconds, a file of `len_bytes` may decode to (see [`MAX_AUDIO_BASE_S`]).
pub fn max_audio_s(len_bytes: u64) -> f64 {
    MAX_AUDIO_BASE_S + len_bytes as f64 * MAX_AUDIO_S_PER_BYTE
}

/// The output is reserved up front for at most this long a file (the header's length is only a
/// hint); beyond it the buffer grows as audio arrives.
const MAX_RESERVE_S: f64 = 60.0;

/// Decoded 16 kHz samples are handed to a streaming sink in chunks of about this many.
const SINK_CHUNK: usize = 16_000;

/// Where streamed samples go: called with each chunk; `Break` stops decoding.
pub type SampleSink<'a> = dyn FnMut(&[f32]) -> ControlFlow<()> + 'a;

/// How far decoding must advance between two progress reports.
const PROGRESS_STEP_S: f64 = 0.5;

/// Audio past the end a header states is held back up to this long. Encoder padding (less
/// than two MP3 frames, 52 ms at 44.1 kHz) is dropped when the stream ends there; more audio
/// than this past the stated end means the header's length is wrong (an MP3 made of
/// concatenated files that each keep their LAME/Xing header), and all of it is kept.
const MAX_HELD_S: f64 = 1.0;

/// A fraction done stays below this until decoding (or the job) has ended.
pub const MAX_FRACTION_BEFORE_END: f64 = 0.999;

/// Turns a running count of seconds done and a changing estimate of the total into a fraction
/// that never goes back and never exceeds a cap ([`MAX_FRACTION_BEFORE_END`] by default): when
/// the estimate grows (a header that stated too short a length, a rate that changed), the
/// fraction holds where it was and the rest of the way is spread over what the new estimate
/// leaves. While the estimate stands, it is exactly `done / total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SteadyFraction {
    from_done: f64,
    from_fraction: f64,
    last_done: f64,
    last: f64,
    cap: f64,
}

impl Default for SteadyFraction {
    fn default() -> Self {
        Self::up_to(MAX_FRACTION_BEFORE_END)
    }
}

impl SteadyFraction {
    /// A fraction that goes up to `cap` (at most 1).
    pub fn up_to(cap: f64) -> Self {
        Self {
            from_done: 0.0,
            from_fraction: 0.0,
            last_done: 0.0,
            last: 0.0,
            cap: cap.clamp(0.0, 1.0),
        }
    }

    /// The fraction done at `done` seconds of an estimated `total`.
    pub fn update(&mut self, done: f64, total: f64) -> f64 {
        let mut fraction = self.along(done, total);
        if fraction < self.last {
            self.from_done = self.last_done;
            self.from_fraction = self.last;
            fraction = self.along(done, total).max(self.last);
        }
        self.last = fraction;
        self.last_done = self.last_done.max(done);
        fraction
    }

    fn along(&self, done: f64, total: f64) -> f64 {
        let ahead = total - self.from_done;
        let fraction = if ahead > 0.0 && ahead.is_finite() {
            let step = ((done - self.from_done) / ahead).clamp(0.0, 1.0);
            self.from_fraction + (1.0 - self.from_fraction) * step
        } else {
            1.0
        };
        fraction.clamp(0.0, self.cap)
    }
}

/// Why decoding a file failed. Every message names what is wrong, then the file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be opened (missing, no permission, a directory, …).
    #[error("cannot open the audio file ({source}): {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading failed part-way for a reason other than the file ending.
    #[error("reading the audio file failed ({source}): {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file has no bytes at all.
    #[error("the file is empty (0 bytes): {path}")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// No known container was found: random bytes, a text file with an audio name, …
    #[error(
        "not a recognised audio file (expected WAV, MP3, FLAC, Ogg Vorbis or AAC/M4A; {reason}): {path}"
    )]
    UnrecognizedFormat {
        /// The file.
        path: PathBuf,
        /// What the probe said.
        reason: String,
    },
    /// The container holds no audio track.
    #[error("the file has no audio track: {path}")]
    NoAudioTrack {
        /// The file.
        path: PathBuf,
    },
    /// The audio track uses a codec this build cannot decode (Opus, HE-AAC, …).
    #[error(
        "unsupported audio codec {codec} (convert the file to WAV, MP3, FLAC or Ogg Vorbis): {path}"
    )]
    UnsupportedCodec {
        /// The file.
        path: PathBuf,
        /// The codec's name, e.g. `Opus`.
        codec: String,
    },
    /// The header declares a sample rate no real recording has.
    #[error("unsupported sample rate {rate_hz} Hz (supported: 1000 to 768000 Hz): {path}")]
    UnsupportedSampleRate {
        /// The file.
        path: PathBuf,
        /// The declared rate.
        rate_hz: u32,
    },
    /// The file is valid but holds no audio samples.
    #[error("the file contains no audio (zero length): {path}")]
    ZeroLength {
        /// The file.
        path: PathBuf,
    },
    /// The file ends before any audio could be decoded.
    #[error("the file is truncated before any audio ({reason}): {path}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What the reader reported.
        reason: String,
    },
    /// Every audio packet in the file failed to decode.
    #[error(
        "the audio data is corrupt: all {failed_packets} packets failed to decode ({reason}): {path}"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// How many packets failed.
        failed_packets: u64,
        /// The first decoder error.
        reason: String,
    },
    /// The file decodes to far more audio than its size allows (a lying or hostile file).
    #[error(
        "the file decodes to more than {limit_s:.0} s of audio, far more than its {bytes} bytes can hold; it is damaged or not what it claims to be: {path}"
    )]
    TooMuchAudio {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The most audio a file of this size may hold.
        limit_s: f64,
    },
    /// The resampler failed (a bug rather than bad input).
    #[error("resampling to 16 kHz failed ({source}): {path}")]
    Resample {
        /// The file.
        path: PathBuf,
        /// The resampler error.
        source: ResampleError,
    },
}

/// A progress report, sent every half second of decoded audio and once at the end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeProgress {
    /// Seconds of source audio decoded so far.
    pub decoded_s: f64,
    /// The file's length in seconds as its header states it, when it states one.
    pub total_s: Option<f64>,
    /// Bytes of the file read so far (the reader's position).
    pub bytes_read: u64,
    /// The reader's position when the first audio packet was read (after the headers, tags
    /// and cover art, which hold no audio).
    pub audio_from_byte: u64,
    /// The file's size in bytes.
    pub total_bytes: u64,
    /// See [`DecodeProgress::fraction`].
    steady_fraction: Option<f32>,
}

impl DecodeProgress {
    /// Fraction done of [`DecodeProgress::estimated_total_s`], as a [`SteadyFraction`] over
    /// one decode's reports: it never goes back, and it stays below
    /// [`MAX_FRACTION_BEFORE_END`] until the last report, which is 1. `None` before anything
    /// was decoded of a file whose header states no length.
    pub fn fraction(&self) -> Option<f32> {
        self.steady_fraction
    }

    /// The file's length in seconds as far as it can be told now: the header's length when it
    /// states a believable one, else [`DecodeProgress::bytes_estimate_s`]. Never less than what
    /// was decoded.
    ///
    /// A header's length is not believed when the file's size cannot hold it
    /// ([`max_audio_s`]), when more than it was decoded already, when the bytes say the file
    /// is more than [`SHORT_HEADER_FACTOR`] times longer (a header that states one part of
    /// concatenated files), or when, after a tenth of the audio bytes, the bytes read say it
    /// is off by more than three times (a lying header).
    pub fn estimated_total_s(&self) -> Option<f64> {
        let bytes = self.bytes_estimate_s();
        let header = self.total_s.filter(|t| *t > 0.0).filter(|&header| {
            if header > max_audio_s(self.total_bytes) || self.decoded_s > header {
                return false;
            }
            if bytes.is_some_and(|bytes| bytes > SHORT_HEADER_FACTOR * header) {
                return false;
            }
            let audio_bytes = self.total_bytes.saturating_sub(self.audio_from_byte);
            let read = self.bytes_read.saturating_sub(self.audio_from_byte);
            match bytes {
                Some(bytes) if read.saturating_mul(10) >= audio_bytes => {
                    header <= 3.0 * bytes && header >= bytes / 3.0
                }
                _ => true,
            }
        });
        Some(header.or(bytes)?.max(self.decoded_s))
    }

    /// The file's length in seconds from the bytes alone: the audio decoded so far, plus the
    /// bytes still to read at the rate (seconds per byte) seen since the first audio packet.
    pub fn bytes_estimate_s(&self) -> Option<f64> {
        let read = self.bytes_read.min(self.total_bytes);
        let audio_read = read.checked_sub(self.audio_from_byte).filter(|&b| b > 0)?;
        if self.decoded_s <= 0.0 {
            return None;
        }
        let per_byte = self.decoded_s / audio_read as f64;
        Some(self.decoded_s + (self.total_bytes - read) as f64 * per_byte)
    }
}

/// A header's length is not believed, from the first report on, when the bytes say the file
/// is this many times longer. Early on, the bytes can only make a file look shorter (the
/// reader reads ahead of the decoder), and a VBR file's quietest start (32 kbit/s) against
/// its loudest average (320 kbit/s) makes it look at most 10 times longer.
pub const SHORT_HEADER_FACTOR: f64 = 16.0;

/// How far a header's length may be off before it is not believed: headers of VBR files
/// without an index only estimate it.
fn length_tolerance_s(header_s: f64) -> f64 {
    (0.02 * header_s).max(0.5)
}

/// A media source that keeps its read position in a shared counter, so progress can be told
/// from the bytes read when the container states no length.
struct Counted {
    inner: Box<dyn MediaSource>,
    position: Arc<AtomicU64>,
}

impl io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl io::Seek for Counted {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let at = self.inner.seek(pos)?;
        self.position.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

impl MediaSource for Counted {
    fn is_seekable(&self) -> bool {
        self.inner.is_seekable()
    }

    fn byte_len(&self) -> Option<u64> {
        self.inner.byte_len()
    }
}

/// A stretch of the source that could not be decoded; it is replaced by silence in the output
/// so later timestamps stay right.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedRange {
    /// Where the stretch starts, in seconds from the start of the source.
    pub start_s: f64,
    /// Its length in seconds (0 when the container did not say).
    pub duration_s: f64,
    /// Number of packets that failed in this stretch.
    pub packets: u64,
    /// The decoder's message for the first failed packet.
    pub reason: String,
}

/// Why decoding stopped before the end the container announced.
#[derive(Clone, Debug, PartialEq)]
pub struct EndedEarly {
    /// Seconds of source audio decoded when it stopped.
    pub at_s: f64,
    /// What the reader reported (e.g. "unexpected end of file").
    pub reason: String,
}

/// A decoded file: 16 kHz mono samples plus what was found on the way.
#[derive(Clone, Debug)]
pub struct DecodedAudio {
    /// Mono `f32` samples at [`MODEL_SAMPLE_RATE_HZ`], nominally in `-1.0..=1.0`.
    pub samples: Vec<f32>,
    /// The source's sample rate.
    pub source_sample_rate_hz: u32,
    /// The source's channel count (before the mono downmix).
    pub source_channels: u16,
    /// The codec's short name, e.g. `mp3`, `flac`, `pcm_s16le`.
    pub codec: String,
    /// Length of the decoded audio in seconds (`samples.len() / 16000`).
    pub duration_s: f64,
    /// Stretches that failed to decode and were filled with silence.
    pub skipped: Vec<SkippedRange>,
    /// Set when the file stopped early (truncated); what came before is kept.
    pub ended_early: Option<EndedEarly>,
}

impl DecodedAudio {
    /// True when the whole file decoded without skips or truncation.
    pub fn is_clean(&self) -> bool {
        self.skipped.is_empty() && self.ended_early.is_none()
    }
}

/// Decodes the file at `path` to 16 kHz mono. `progress` is called on this thread.
pub fn decode_file(
    path: &Path,
    progress: &mut dyn FnMut(DecodeProgress),
) -> Result<DecodedAudio, DecodeError> {
    decode_file_inner(path, progress, None)
}

/// Decodes the file at `path` to 16 kHz mono, handing the samples to `sink` in chunks of about
/// a second as they are decoded, so memory does not grow with the file's length. The returned
/// [`DecodedAudio`] has no samples; its `duration_s` counts what went to the sink. When `sink`
/// breaks, decoding stops there (`ended_early` says so).
pub fn decode_file_to(
    path: &Path,
    progress: &mut dyn FnMut(DecodeProgress),
    sink: &mut SampleSink<'_>,
) -> Result<DecodedAudio, DecodeError> {
    decode_file_inner(path, progress, Some(sink))
}

fn decode_file_inner<'s>(
    path: &Path,
    progress: &mut dyn FnMut(DecodeProgress),
    sink: Option<&'s mut SampleSink<'s>>,
) -> Result<DecodedAudio, DecodeError> {
    let file = File::open(path).map_err(|source| DecodeError::Open {
        path: path.to_owned(),
        source,
    })?;
    let len_bytes = file
        .metadata()
        .map_err(|source| DecodeError::Open {
            path: path.to_owned(),
            source,
        })?
        .len();
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        let source = io::Error::new(io::ErrorKind::IsADirectory, "is a directory");
        return Err(DecodeError::Open {
            path: path.to_owned(),
            source,
        });
    }
    let extension = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), len_bytes, path, extension, progress, sink)
}

/// Decodes audio held in memory; `name` is only used in messages and `extension` as a hint.
///
/// This is the entry point the fuzz target drives.
pub fn decode_bytes(
    bytes: Vec<u8>,
    name: &Path,
    extension: Option<&str>,
    progress: &mut dyn FnMut(DecodeProgress),
) -> Result<DecodedAudio, DecodeError> {
    let len_bytes = bytes.len() as u64;
    decode_source(
        Box::new(Cursor::new(bytes)),
        len_bytes,
        name,
        extension,
        progress,
        None,
    )
}

/// [`decode_bytes`] with a streaming sink, as [`decode_file_to`].
pub fn decode_bytes_to(
    bytes: Vec<u8>,
    name: &Path,
    extension: Option<&str>,
    progress: &mut dyn FnMut(DecodeProgress),
    sink: &mut SampleSink<'_>,
) -> Result<DecodedAudio, DecodeError> {
    let len_bytes = bytes.len() as u64;
    decode_source(
        Box::new(Cursor::new(bytes)),
        len_bytes,
        name,
        extension,
        progress,
        Some(sink),
    )
}

fn decode_source<'s>(
    source: Box<dyn MediaSource>,
    len_bytes: u64,
    path: &Path,
    extension: Option<&str>,
    progress: &mut dyn FnMut(DecodeProgress),
    sink: Option<&'s mut SampleSink<'s>>,
) -> Result<DecodedAudio, DecodeError> {
    if len_bytes == 0 {
        return Err(DecodeError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let position = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: source,
        position: Arc::clone(&position),
    };
    let mss = MediaSourceStream::new(Box::new(counted), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|err| probe_error(path, err))?;
    let mut decoding = Decoding::new(format, len_bytes, path, sink.is_some())?;
    decoding.sink = sink;
    decoding.position = position;
    decoding.run(progress)
}

fn probe_error(path: &Path, err: SymphoniaError) -> DecodeError {
    match err {
        SymphoniaError::IoError(source) if source.kind() != io::ErrorKind::UnexpectedEof => {
            DecodeError::Read {
                path: path.to_owned(),
                source,
            }
        }
        SymphoniaError::IoError(_) => {
            // Running out of bytes while looking for a header means no known header was found
            // (a short text file) or the header itself was cut off.
            DecodeError::UnrecognizedFormat {
                path: path.to_owned(),
                reason: "no audio header found".into(),
            }
        }
        other => DecodeError::UnrecognizedFormat {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// One decode in progress: the reader, the decoder, the resampler and what was found.
struct Decoding<'p, 's> {
    path: &'p Path,
    /// Where finished samples go as they come; `None` collects them in `out`.
    sink: Option<&'s mut SampleSink<'s>>,
    /// Samples handed to the sink so far.
    sunk: u64,
    /// The file's size in bytes.
    len_bytes: u64,
    /// The reader's position in the file.
    position: Arc<AtomicU64>,
    /// The reader's position when the first packet was read.
    audio_from_byte: Option<u64>,
    /// Bytes of packet data read so far.
    packet_bytes: u64,
    /// Seconds of silence inserted for broken packets so far.
    gap_filled_s: f64,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::audio::AudioDecoder>,
    track_id: u32,
    total_s: Option<f64>,
    codec: String,
    /// Created on the first decoded buffer, when the real rate is known.
    resampler: Option<MonoResampler>,
    source_sample_rate_hz: u32,
    source_channels: u16,
    out: Vec<f32>,
    interleaved: Vec<f32>,
    mono: Vec<f32>,
    decoded_frames: u64,
    /// Source frames emitted (decoded + gap fill), for positions in seconds.
    position_frames: u64,
    failed_packets: u64,
    skipped: Vec<SkippedRange>,
    ended_early: Option<EndedEarly>,
    first_decode_error: Option<String>,
    last_progress_s: f64,
    /// Mono source frames past the end the header states, held back until it is known whether
    /// they are encoder padding (the stream ends) or audio (more than [`MAX_HELD_S`] follows).
    held: Vec<f32>,
    /// Set once more audio than [`MAX_HELD_S`] came past the stated end: nothing is trimmed
    /// from the end any more.
    past_stated_end: bool,
    steady: SteadyFraction,
}

impl<'p, 's> Decoding<'p, 's> {
    fn new(
        format: Box<dyn FormatReader>,
        len_bytes: u64,
        path: &'p Path,
        streaming: bool,
    ) -> Result<Self, DecodeError> {
        let track =
            format
                .default_track(TrackType::Audio)
                .ok_or_else(|| DecodeError::NoAudioTrack {
                    path: path.to_owned(),
                })?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| DecodeError::NoAudioTrack {
                path: path.to_owned(),
            })?;
        let unsupported = |codec: String| DecodeError::UnsupportedCodec {
            path: path.to_owned(),
            codec,
        };
        if params.codec == CODEC_ID_OPUS {
            return Err(unsupported("Opus".into()));
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|err| match err {
                SymphoniaError::Unsupported(what) if what.contains("unsupported audio codec") => {
                    unsupported(format!("(codec id {})", params.codec))
                }
                other => unsupported(other.to_string()),
            })?;
        let declared_rate = params.sample_rate.unwrap_or(0);
        if params.sample_rate.is_some()
            && !(MIN_SOURCE_RATE_HZ..=MAX_SOURCE_RATE_HZ).contains(&declared_rate)
        {
            return Err(DecodeError::UnsupportedSampleRate {
                path: path.to_owned(),
                rate_hz: declared_rate,
            });
        }
        let total_s = track_length_s(track, declared_rate);
        let codec = decoder.codec_info().short_name.to_owned();
        let track_id = track.id;
        let source_channels = params
            .channels
            .as_ref()
            .map_or(0, |c| c.count().min(usize::from(u16::MAX)) as u16);

        // The header's length is only a hint: reserve for at most a minute (less when the file
        // is too small to hold that much even at 8 kbit/s, about 1 kB per second), then grow.
        let mut out = Vec::new();
        if streaming {
            out.reserve(2 * SINK_CHUNK);
        } else if let Some(total) = total_s {
            let plausible_s = (len_bytes as f64 / 1000.0).max(1.0);
            let reserve_s = total.min(plausible_s).clamp(0.0, MAX_RESERVE_S);
            out.reserve((reserve_s * f64::from(MODEL_SAMPLE_RATE_HZ)) as usize + 1024);
        }
        Ok(Self {
            path,
            sink: None,
            sunk: 0,
            len_bytes,
            position: Arc::default(),
            audio_from_byte: None,
            packet_bytes: 0,
            gap_filled_s: 0.0,
            format,
            decoder,
            track_id,
            total_s,
            codec,
            resampler: None,
            source_sample_rate_hz: declared_rate,
            source_channels,
            out,
            interleaved: Vec::new(),
            mono: Vec::new(),
            decoded_frames: 0,
            position_frames: 0,
            failed_packets: 0,
            skipped: Vec::new(),
            ended_early: None,
            first_decode_error: None,
            last_progress_s: 0.0,
            held: Vec::new(),
            past_stated_end: false,
            steady: SteadyFraction::default(),
        })
    }

    /// A report of where decoding is; `ended` for the last one (its fraction is 1).
    fn progress_now(&mut self, ended: bool) -> DecodeProgress {
        let mut report = DecodeProgress {
            decoded_s: self.position_s(),
            total_s: self.total_s,
            bytes_read: self.position.load(Ordering::Relaxed).min(self.len_bytes),
            audio_from_byte: self.audio_from_byte.unwrap_or(0),
            total_bytes: self.len_bytes,
            steady_fraction: None,
        };
        report.steady_fraction = if ended {
            Some(1.0)
        } else {
            report
                .estimated_total_s()
                .filter(|_| report.decoded_s > 0.0)
                .map(|total| self.steady.update(report.decoded_s, total) as f32)
        };
        report
    }

    fn position_s(&self) -> f64 {
        if self.source_sample_rate_hz == 0 {
            return 0.0;
        }
        self.position_frames as f64 / f64::from(self.source_sample_rate_hz)
    }

    fn run(
        mut self,
        progress: &mut dyn FnMut(DecodeProgress),
    ) -> Result<DecodedAudio, DecodeError> {
        loop {
            let mut packet = match self.format.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    // Without a stated length (a WAV written to a pipe: "until the end"), the
                    // end of the file is the end of the audio.
                    if self.total_s.is_some() {
                        self.stop_early(
                            "the file ends in the middle of the audio (truncated)".into(),
                        );
                    }
                    break;
                }
                Err(SymphoniaError::IoError(source)) => {
                    return Err(DecodeError::Read {
                        path: self.path.to_owned(),
                        source,
                    });
                }
                Err(SymphoniaError::ResetRequired) => {
                    self.stop_early(
                        "a second chained stream follows; only the first is decoded".into(),
                    );
                    break;
                }
                Err(err) => {
                    // Demuxer errors leave the reader in an unknown state: keep what we have.
                    self.stop_early(format!("the container is damaged here ({err})"));
                    break;
                }
            };
            if packet.track_id != self.track_id {
                continue;
            }
            if self.audio_from_byte.is_none() {
                // Where the audio starts, less the packet just read.
                let at = self.position.load(Ordering::Relaxed);
                self.audio_from_byte = Some(at.saturating_sub(packet.data.len() as u64));
            }
            self.packet_bytes = self.packet_bytes.saturating_add(packet.data.len() as u64);
            let dur_s = self.packet_duration_s(packet.dur.get());
            let start_s = self.position_s();
            // The reader trims what lies past the end the header states; decode it all and
            // hold that part back until it is known to be padding or audio.
            let trim_end = std::mem::replace(&mut packet.trim_end, Duration::ZERO).get();
            match self.decoder.decode(&packet) {
                Ok(buffer) => {
                    let rate = buffer.spec().rate();
                    let channels = buffer.spec().channels().count();
                    if buffer.frames() == 0 {
                        continue;
                    }
                    if channels == 0 {
                        self.record_skip(start_s, dur_s, "decoded buffer has no channels".into());
                        continue;
                    }
                    let hold = usize::try_from(trim_end)
                        .unwrap_or(usize::MAX)
                        .min(buffer.frames());
                    buffer.copy_to_vec_interleaved::<f32>(&mut self.interleaved);
                    self.accept_buffer(rate, channels, start_s, dur_s, hold)?;
                }
                Err(SymphoniaError::ResetRequired) => {
                    self.stop_early(
                        "the stream's format changes mid-file; the rest is not decoded".into(),
                    );
                    break;
                }
                Err(SymphoniaError::IoError(source))
                    if source.kind() != io::ErrorKind::UnexpectedEof =>
                {
                    return Err(DecodeError::Read {
                        path: self.path.to_owned(),
                        source,
                    });
                }
                Err(err) => {
                    if let (SymphoniaError::Unsupported(what), 0) = (&err, self.decoded_frames) {
                        return Err(DecodeError::UnsupportedCodec {
                            path: self.path.to_owned(),
                            codec: format!("{} ({what})", self.codec),
                        });
                    }
                    self.record_skip(start_s, dur_s, err.to_string());
                    self.fill_gap(dur_s)?;
                }
            }
            self.check_plausible()?;
            if !self.flush_to_sink(false) {
                self.stop_early("stopped by the caller".into());
                break;
            }
            if self.position_s() - self.last_progress_s >= PROGRESS_STEP_S {
                self.last_progress_s = self.position_s();
                progress(self.progress_now(false));
            }
        }
        self.finish(progress)
    }

    /// Downmixes and resamples the buffer just copied into `self.interleaved`, holding back its
    /// last `hold` frames (those past the header's stated end).
    fn accept_buffer(
        &mut self,
        rate: u32,
        channels: usize,
        start_s: f64,
        dur_s: f64,
        hold: usize,
    ) -> Result<(), DecodeError> {
        if self.resampler.is_none() {
            if !(MIN_SOURCE_RATE_HZ..=MAX_SOURCE_RATE_HZ).contains(&rate) {
                return Err(DecodeError::UnsupportedSampleRate {
                    path: self.path.to_owned(),
                    rate_hz: rate,
                });
            }
            let resampler =
                MonoResampler::new(rate).map_err(|source| self.resample_error(source))?;
            self.resampler = Some(resampler);
            self.source_sample_rate_hz = rate;
            self.source_channels = channels.min(usize::from(u16::MAX)) as u16;
        } else if rate != self.source_sample_rate_hz {
            // A rate change mid-stream only happens in damaged files (e.g. a bogus MP3 header).
            self.record_skip(
                start_s,
                dur_s,
                format!("sample rate changes to {rate} Hz mid-stream"),
            );
            return self.fill_gap(dur_s);
        }
        downmix_into(&self.interleaved, channels, &mut self.mono);
        self.push_mono(hold)
    }

    /// Resamples the frames in `self.mono` but the last `hold`, which are held back with any
    /// held before. Frames held before go out first when frames that are not held follow, and
    /// all of them once more than [`MAX_HELD_S`] is held: then the header's stated end was not
    /// the end, and nothing is held any more.
    fn push_mono(&mut self, hold: usize) -> Result<(), DecodeError> {
        let hold = if self.past_stated_end {
            0
        } else {
            hold.min(self.mono.len())
        };
        let keep = self.mono.len() - hold;
        if keep > 0 {
            self.release_held()?;
            if let Some(resampler) = self.resampler.as_mut()
                && let Err(source) = resampler.push(&self.mono[..keep], &mut self.out)
            {
                return Err(self.resample_error(source));
            }
            self.decoded_frames += keep as u64;
            self.position_frames += keep as u64;
        }
        if hold > 0 {
            self.held.extend_from_slice(&self.mono[keep..]);
            let most = MAX_HELD_S * f64::from(self.source_sample_rate_hz);
            if self.held.len() as f64 > most {
                self.past_stated_end = true;
                self.release_held()?;
            }
        }
        Ok(())
    }

    /// Resamples the frames held back past the stated end: they turned out to be audio.
    fn release_held(&mut self) -> Result<(), DecodeError> {
        if self.held.is_empty() {
            return Ok(());
        }
        if let Some(resampler) = self.resampler.as_mut()
            && let Err(source) = resampler.push(&self.held, &mut self.out)
        {
            return Err(self.resample_error(source));
        }
        let frames = self.held.len() as u64;
        self.held.clear();
        self.decoded_frames += frames;
        self.position_frames += frames;
        Ok(())
    }

    /// Stops a file that has produced more audio than its size allows.
    fn check_plausible(&self) -> Result<(), DecodeError> {
        let limit_s = max_audio_s(self.len_bytes);
        if self.position_s() > limit_s {
            return Err(DecodeError::TooMuchAudio {
                path: self.path.to_owned(),
                bytes: self.len_bytes,
                limit_s,
            });
        }
        Ok(())
    }

    /// Hands finished samples to the sink (all of them when `all`, else once a chunk is full).
    /// False when the sink asked to stop.
    fn flush_to_sink(&mut self, all: bool) -> bool {
        let Some(sink) = self.sink.as_mut() else {
            return true;
        };
        if self.out.is_empty() || (!all && self.out.len() < SINK_CHUNK) {
            return true;
        }
        let flow = sink(&self.out);
        self.sunk += self.out.len() as u64;
        self.out.clear();
        flow.is_continue()
    }

    /// Inserts silence for an undecodable packet so later audio keeps its place in time. The
    /// silence per packet is capped, and so is the total, relative to the bytes read.
    /// Past the header's stated end, while audio is held back, the silence is held with it.
    fn fill_gap(&mut self, dur_s: f64) -> Result<(), DecodeError> {
        if self.resampler.is_none() {
            return Ok(());
        }
        let budget_s = GAP_FILL_BASE_S + self.packet_bytes as f64 * GAP_FILL_S_PER_BYTE;
        let gap_s = dur_s
            .min(MAX_GAP_FILL_S)
            .min(budget_s - self.gap_filled_s)
            .max(0.0);
        self.gap_filled_s += gap_s;
        let frames = (gap_s * f64::from(self.source_sample_rate_hz)) as usize;
        self.mono.clear();
        self.mono.resize(frames, 0.0);
        if self.held.is_empty() {
            if let Some(resampler) = self.resampler.as_mut()
                && let Err(source) = resampler.push(&self.mono, &mut self.out)
            {
                return Err(self.resample_error(source));
            }
            self.position_frames += frames as u64;
            Ok(())
        } else {
            self.push_mono(frames)
        }
    }

    fn resample_error(&self, source: ResampleError) -> DecodeError {
        DecodeError::Resample {
            path: self.path.to_owned(),
            source,
        }
    }

    fn packet_duration_s(&self, dur: u64) -> f64 {
        if self.source_sample_rate_hz == 0 {
            return 0.0;
        }
        // Audio packet durations are in frames for every format symphonia reads.
        dur as f64 / f64::from(self.source_sample_rate_hz)
    }

    fn record_skip(&mut self, start_s: f64, duration_s: f64, reason: String) {
        self.failed_packets += 1;
        if self.first_decode_error.is_none() {
            self.first_decode_error = Some(reason.clone());
        }
        // Merge with the previous range when it ends where this one starts (runs of bad frames).
        if let Some(last) = self.skipped.last_mut()
            && (last.start_s + last.duration_s - start_s).abs() < 1e-3
        {
            last.duration_s += duration_s;
            last.packets += 1;
            return;
        }
        self.skipped.push(SkippedRange {
            start_s,
            duration_s,
            packets: 1,
            reason,
        });
    }

    fn stop_early(&mut self, reason: String) {
        self.ended_early = Some(EndedEarly {
            at_s: self.position_s(),
            reason,
        });
    }

    /// Some readers (MP3) end quietly at a cut-off file. Compare with the length the header
    /// announced: a clear shortfall means the file is truncated or lost frames to damage.
    fn check_announced_length(&mut self) {
        let (None, Some(total_s)) = (&self.ended_early, self.total_s) else {
            return;
        };
        let decoded_s = self.position_s();
        if total_s - decoded_s > length_tolerance_s(total_s) {
            self.stop_early(format!(
                "decoded {decoded_s:.1} s of the {total_s:.1} s the header announces; the file is truncated or damaged"
            ));
        }
    }

    fn finish(
        mut self,
        progress: &mut dyn FnMut(DecodeProgress),
    ) -> Result<DecodedAudio, DecodeError> {
        if self.decoded_frames == 0 {
            // A header that states no audio at all is wrong: what came past it is the audio.
            self.release_held()?;
        }
        if self.decoded_frames == 0 {
            let path = self.path.to_owned();
            return Err(if self.failed_packets > 0 {
                let reason = self.first_decode_error.take().unwrap_or_default();
                DecodeError::Corrupt {
                    path,
                    failed_packets: self.failed_packets,
                    reason,
                }
            } else if let Some(early) = self.ended_early.take() {
                DecodeError::Truncated {
                    path,
                    reason: early.reason,
                }
            } else {
                DecodeError::ZeroLength { path }
            });
        }
        self.check_announced_length();
        if let Some(resampler) = self.resampler.take()
            && let Err(source) = resampler.finish(&mut self.out)
        {
            return Err(self.resample_error(source));
        }
        let _ = self.flush_to_sink(true);
        self.out.shrink_to_fit();
        progress(self.progress_now(true));
        let samples = self.sunk + self.out.len() as u64;
        let duration_s = samples as f64 / f64::from(MODEL_SAMPLE_RATE_HZ);
        Ok(DecodedAudio {
            samples: self.out,
            source_sample_rate_hz: self.source_sample_rate_hz,
            source_channels: self.source_channels,
            codec: self.codec,
            duration_s,
            skipped: self.skipped,
            ended_early: self.ended_early,
        })
    }
}

/// The track's length in seconds from its header, if it states one.
fn track_length_s(track: &Track, rate_hz: u32) -> Option<f64> {
    if let (Some(frames), true) = (track.num_frames, rate_hz > 0) {
        return Some(frames as f64 / f64::from(rate_hz));
    }
    let time = track.time_base?.calc_duration(track.duration?)?;
    Some(time.as_secs_f64())
}
