//! CUDA graphs of SenseVoice's encoder passes.
//!
//! A pass of 16 × 30 s through the encoder and the CTC head is about 850 kernel launches of
//! 10–30 µs each; issued one by one through candle, the GPU waits on the host for a good part
//! of the pass. A pass shape (items, frames) seen a second time is captured once as a CUDA
//! graph over device buffers of its own, and from then on runs as one graph launch: the inputs
//! are copied into those buffers, the graph replays the very kernels the direct path issues
//! (the same results, bit for bit), and the outputs are copied out.
//!
//! What makes a pass capturable: nothing in it copies between host and device
//! ([`SenseVoiceSmall::encode_prepared`]: prompt rows, valid lengths and the position encoding
//! are uploaded before it), and candle's own small uploads (the layouts of strided ops) come
//! from its capture cache, filled by one direct run just before the capture. Allocations inside
//! the capture become the graph's own memory nodes and are all freed inside it, so the graph
//! holds no buffer beyond its replay.
//!
//! At most [`MAX_GRAPHS`] graphs are kept (least recently used go first); a shape whose capture
//! fails runs directly from then on. `GPUSCRIBE_CUDA_GRAPHS=0` turns graphs off.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::cuda_backend::cudarc::driver::{CudaGraph, DriverError, sys};
use candle_core::{CudaDevice, DType, Device, Result, Tensor};

use super::encoder::FrameContext;
use super::fused;
use super::model::{ENCODER_CHUNK, PROMPT_FRAMES, Prompt, SenseVoiceSmall, encoder_chunks};

/// Captured graphs kept at once: each holds the working memory of its pass (about 150 MiB for
/// 16 × 30 s in bf16) while it is kept, which counts against the 2 GiB the app promises.
pub const MAX_GRAPHS: usize = 2;
/// Pass shapes remembered as seen once (forgotten all together past this).
const MAX_SEEN: usize = 256;

/// A pass shape: items, frames per item (prompt frames included), compute dtype.
type Key = (usize, usize, DType);

/// One model's captured graphs.
pub struct Graphs {
    cuda: CudaDevice,
    state: Mutex<State>,
}

impl std::fmt::Debug for Graphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.state.lock().map(|s| s.ready()).unwrap_or(0);
        f.debug_struct("Graphs").field("kept", &kept).finish()
    }
}

#[derive(Default)]
struct State {
    shapes: HashMap<Key, Shape>,
    tick: u64,
}

impl State {
    fn ready(&self) -> usize {
        self.shapes
            .values()
            .filter(|s| matches!(s, Shape::Ready(_)))
            .count()
    }

    /// Drops the least recently used graphs until at most `keep` remain.
    fn evict_to(&mut self, keep: usize) {
        while self.ready() > keep {
            let oldest = self
                .shapes
                .iter()
                .filter_map(|(k, s)| match s {
                    Shape::Ready(c) => Some((c.last_used, *k)),
                    _ => None,
                })
                .min_by_key(|(used, _)| *used);
            match oldest {
                Some((_, key)) => {
                    self.shapes.remove(&key);
                }
                None => break,
            }
        }
    }
}

enum Shape {
    /// Run directly once: the next pass of this shape is captured.
    Seen,
    /// Captured.
    Ready(Box<Captured>),
    /// Its capture failed: it runs directly.
    Failed,
}

/// A captured pass and the device buffers its graph reads and writes.
struct Captured {
    graph: CudaGraph,
    feats: Tensor,
    rows: Tensor,
    lengths: Tensor,
    enc: Tensor,
    ids: Tensor,
    /// Read by the graph: kept alive with it.
    _pe: Tensor,
    last_used: u64,
}

// SAFETY: `CudaGraph` holds the driver's graph handles, which must not be used from two threads
// at once; a `Captured` lives inside the `Graphs` mutex and is only touched with it held.
#[allow(unsafe_code)]
unsafe impl Send for Captured {}

impl Graphs {
    /// Graphs for a model on `device`: `Some` on a CUDA device running the fused kernels,
    /// unless `GPUSCRIBE_CUDA_GRAPHS=0`.
    pub fn for_device(device: &Device) -> Option<Self> {
        let off = std::env::var_os("GPUSCRIBE_CUDA_GRAPHS").is_some_and(|v| v == "0");
        match device {
            Device::Cuda(cuda) if fused::enabled_on(device) && !off => Some(Self {
                cuda: cuda.clone(),
                state: Mutex::new(State::default()),
            }),
            _ => None,
        }
    }

    /// Graphs kept now.
    pub fn kept(&self) -> usize {
        self.state.lock().map(|s| s.ready()).unwrap_or(0)
    }

    /// [`SenseVoiceSmall::encode_ids`] on the CUDA device: the batch in passes of at most
    /// [`ENCODER_CHUNK`] items, each replayed from its graph where its shape has one.
    pub fn encode_ids(
        &self,
        model: &SenseVoiceSmall,
        feats: &Tensor,
        feat_lengths: &[usize],
        prompts: &[Prompt],
    ) -> Result<Option<(Tensor, Tensor, Vec<usize>)>> {
        let (b, t, _) = feats.dims3()?;
        if feat_lengths.len() != b || prompts.len() != b || feats.dtype() != DType::F32 {
            return Ok(None);
        }
        let lengths: Vec<usize> = feat_lengths.iter().map(|l| l + PROMPT_FRAMES).collect();
        let mut encs = Vec::with_capacity(b.div_ceil(ENCODER_CHUNK));
        let mut ids = Vec::with_capacity(encs.capacity());
        for (start, n) in encoder_chunks(b) {
            let pass = Pass {
                feats: &feats.narrow(0, start, n)?,
                lengths: &lengths[start..start + n],
                rows: SenseVoiceSmall::prompt_rows(&prompts[start..start + n]),
                frames: t + PROMPT_FRAMES,
            };
            let (e, i) = self.pass(model, &pass)?;
            encs.push(e);
            ids.push(i);
        }
        let (enc, ids) = if encs.len() == 1 {
            (encs.remove(0), ids.remove(0))
        } else {
            (Tensor::cat(&encs, 0)?, Tensor::cat(&ids, 0)?)
        };
        Ok(Some((enc, ids, lengths)))
    }

    fn pass(&self, model: &SenseVoiceSmall, pass: &Pass<'_>) -> Result<(Tensor, Tensor)> {
        let key: Key = (pass.lengths.len(), pass.frames, model.dtype());
        let mut state = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("CUDA graph cache poisoned".into()))?;
        state.tick += 1;
        let tick = state.tick;
        match state.shapes.get_mut(&key) {
            Some(Shape::Ready(c)) => {
                c.last_used = tick;
                match c.replay(pass) {
                    Ok(out) => return Ok(out),
                    Err(err) => {
                        // The graph goes (and its memory with it); out of memory is the caller's
                        // to handle (smaller batches), anything else runs directly from now on.
                        state.shapes.insert(key, Shape::Failed);
                        if err.to_string().contains("OUT_OF_MEMORY") {
                            return Err(err);
                        }
                        tracing::warn!("CUDA graph replay failed, running directly: {err}");
                        return pass.direct(model);
                    }
                }
            }
            Some(Shape::Failed) => return pass.direct(model),
            Some(Shape::Seen) => {}
            None => {
                if state.shapes.len() >= MAX_SEEN {
                    state.shapes.retain(|_, s| !matches!(s, Shape::Seen));
                }
                state.shapes.insert(key, Shape::Seen);
                return pass.direct(model);
            }
        }
        // The second pass of this shape: capture it.
        state.evict_to(MAX_GRAPHS - 1);
        match Captured::capture(&self.cuda, model, pass, tick) {
            Ok((captured, out)) => {
                tracing::debug!("CUDA graph captured for {} items × {} frames", key.0, key.1);
                state.shapes.insert(key, Shape::Ready(Box::new(captured)));
                Ok(out)
            }
            Err(err) => {
                tracing::warn!(
                    "CUDA graph capture of {} items × {} frames failed, running it directly: {err}",
                    key.0,
                    key.1
                );
                state.shapes.insert(key, Shape::Failed);
                pass.direct(model)
            }
        }
    }
}

/// One encoder pass: its features (f32 `[n, T, input_size]` on the device), valid lengths and
/// prompt rows.
struct Pass<'a> {
    feats: &'a Tensor,
    lengths: &'a [usize],
    rows: Vec<u32>,
    frames: usize,
}

impl Pass<'_> {
    fn lengths_u32(&self) -> Vec<u32> {
        self.lengths.iter().map(|&l| l as u32).collect()
    }

    /// The pass without a graph: uploads, then the same kernels one by one.
    fn direct(&self, model: &SenseVoiceSmall) -> Result<(Tensor, Tensor)> {
        let dev = self.feats.device();
        let rows = Tensor::from_vec(self.rows.clone(), self.rows.len(), dev)?;
        let lengths = Tensor::from_vec(self.lengths_u32(), self.lengths.len(), dev)?;
        let ctx = FrameContext::for_fused_cuda(lengths, self.lengths.to_vec());
        let pe = model.position_encoding(self.frames)?;
        model.encode_prepared(self.feats, &rows, &ctx, &pe)
    }
}

impl Captured {
    /// Runs `pass` directly on buffers of its own with candle's capture cache on (its result is
    /// returned), then captures the same pass on those buffers as a graph.
    fn capture(
        cuda: &CudaDevice,
        model: &SenseVoiceSmall,
        pass: &Pass<'_>,
        tick: u64,
    ) -> Result<(Self, (Tensor, Tensor))> {
        let dev = pass.feats.device();
        let n = pass.lengths.len();
        let feats = Tensor::zeros(pass.feats.shape(), DType::F32, dev)?;
        let rows = Tensor::zeros(pass.rows.len(), DType::U32, dev)?;
        let lengths = Tensor::zeros(n, DType::U32, dev)?;
        let pe = model.position_encoding(pass.frames)?;
        let ctx = FrameContext::for_fused_cuda(lengths.clone(), pass.lengths.to_vec());
        write_inputs(&feats, &rows, &lengths, pass)?;
        let _cache = cuda.enable_cuda_graph_htod_cache();
        let out = model.encode_prepared(&feats, &rows, &ctx, &pe)?;
        let enc = out.0.zeros_like()?;
        let ids = out.1.zeros_like()?;
        let stream = cuda.cuda_stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver("beginning the capture"))?;
        let body = (|| -> Result<()> {
            let (e, i) = model.encode_prepared(&feats, &rows, &ctx, &pe)?;
            enc.slice_set(&e, 0, 0)?;
            ids.slice_set(&i, 0, 0)
        })();
        // The capture always ends, so the stream leaves capture mode whatever happened.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        body?;
        let graph = graph
            .map_err(driver("ending the capture"))?
            .ok_or_else(|| candle_core::Error::Msg("the capture recorded nothing".into()))?;
        graph.upload().map_err(driver("uploading the graph"))?;
        let captured = Self {
            graph,
            feats,
            rows,
            lengths,
            enc,
            ids,
            _pe: pe,
            last_used: tick,
        };
        Ok((captured, out))
    }

    /// Writes `pass`'s inputs into the graph's buffers, replays it and copies its outputs out.
    fn replay(&self, pass: &Pass<'_>) -> Result<(Tensor, Tensor)> {
        write_inputs(&self.feats, &self.rows, &self.lengths, pass)?;
        self.graph.launch().map_err(driver("launching the graph"))?;
        Ok((self.enc.copy()?, self.ids.copy()?))
    }
}

/// Copies `pass`'s features, prompt rows and lengths into the given device buffers.
fn write_inputs(feats: &Tensor, rows: &Tensor, lengths: &Tensor, pass: &Pass<'_>) -> Result<()> {
    let dev = pass.feats.device();
    feats.slice_set(&pass.feats.contiguous()?, 0, 0)?;
    rows.slice_set(
        &Tensor::from_vec(pass.rows.clone(), pass.rows.len(), dev)?,
        0,
        0,
    )?;
    lengths.slice_set(
        &Tensor::from_vec(pass.lengths_u32(), pass.lengths.len(), dev)?,
        0,
        0,
    )
}

fn driver(what: &'static str) -> impl Fn(DriverError) -> candle_core::Error {
    move |e| candle_core::Error::Msg(format!("CUDA graph: {what}: {e}"))
}
