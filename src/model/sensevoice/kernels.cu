// Fused CUDA kernels for the SAN-M encoder (built to PTX by build.rs with the `cuda` feature).
//
// candle runs each step of a layer as its own kernel, and its broadcasting binary kernels work
// out every element's index with 64-bit divisions; on a batch of 16 x 30 s segments that made
// the FSMN memory block, the bias adds, LayerNorm and the masked softmax take more than half of
// each layer's time. Each kernel here does one of those steps in one pass, computing in f32
// whatever the storage type (f32, f16 or bf16), like the candle ops they replace.
//
// Launch shapes (see cuda_ops.rs): one block per row for the row-wise kernels, grid-stride
// loops for the element-wise one. Row counts stay below 2^31.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v, float *shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / 32;
    v = lane < warps ? shared[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ float block_max(float v, float *shared) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / 32;
    v = lane < warps ? shared[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// out[n, :] = x[n, :] + bias (then ReLU if `relu`), x contiguous [N, dim].
template <typename T>
__device__ void bias_act(const T *x, const T *bias, T *out, uint32_t dim, uint32_t relu) {
    const uint64_t base = (uint64_t)blockIdx.x * dim;
    for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) {
        float y = to_f32(x[base + d]) + to_f32(bias[d]);
        if (relu && y < 0.0f) y = 0.0f;
        out[base + d] = from_f32<T>(y);
    }
}

// LayerNorm of f32 rows [N, dim] (mean, then the variance of the centred row: two passes,
// like the candle path, which centres before candle's one-pass kernel), written as T.
template <typename T>
__device__ void layer_norm(const float *x, const float *gamma, const float *beta, T *out,
                           uint32_t dim, float eps) {
    __shared__ float shared[32];
    const float *xr = x + (uint64_t)blockIdx.x * dim;
    T *o = out + (uint64_t)blockIdx.x * dim;
    float s = 0.0f;
    for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) s += xr[d];
    const float mean = block_sum(s, shared) / (float)dim;
    float q = 0.0f;
    for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) {
        const float c = xr[d] - mean;
        q += c * c;
    }
    const float inv = rsqrtf(block_sum(q, shared) / (float)dim + eps);
    for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x)
        o[d] = from_f32<T>((xr[d] - mean) * inv * gamma[d] + beta[d]);
}

// Softmax over the last axis of attention scores [B, rows_per_item, keys] in f32, keys at or
// beyond lens[b] masked out (probability 0), written back as T.
template <typename T>
__device__ void masked_softmax(const T *scores, const uint32_t *lens, T *out, uint32_t keys,
                               uint32_t rows_per_item) {
    __shared__ float shared[32];
    const uint64_t row = blockIdx.x;
    const uint32_t len = min(lens[row / rows_per_item], keys);
    const T *sr = scores + row * keys;
    T *o = out + row * keys;
    float m = -INFINITY;
    for (uint32_t k = threadIdx.x; k < len; k += blockDim.x) m = fmaxf(m, to_f32(sr[k]));
    m = block_max(m, shared);
    float s = 0.0f;
    for (uint32_t k = threadIdx.x; k < len; k += blockDim.x) s += expf(to_f32(sr[k]) - m);
    const float inv = 1.0f / block_sum(s, shared);
    for (uint32_t k = threadIdx.x; k < keys; k += blockDim.x)
        o[k] = from_f32<T>(k < len ? expf(to_f32(sr[k]) - m) * inv : 0.0f);
}

// out = a + f32(b), element-wise over n contiguous elements (the residual stream update).
template <typename T>
__device__ void add_to_f32(const float *a, const T *b, float *out, uint64_t n) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)blockDim.x * gridDim.x)
        out[i] = a[i] + to_f32(b[i]);
}

#define INSTANTIATE(SUFFIX, T)                                                                    \
    extern "C" __global__ void bias_act_##SUFFIX(const T *x, const T *bias, T *out,              \
                                                 uint32_t dim, uint32_t relu) {                  \
        bias_act<T>(x, bias, out, dim, relu);                                                     \
    }                                                                                             \
    extern "C" __global__ void layer_norm_##SUFFIX(const float *x, const float *gamma,           \
                                                   const float *beta, T *out, uint32_t dim,      \
                                                   float eps) {                                  \
        layer_norm<T>(x, gamma, beta, out, dim, eps);                                             \
    }                                                                                             \
    extern "C" __global__ void masked_softmax_##SUFFIX(const T *scores, const uint32_t *lens,    \
                                                       T *out, uint32_t keys,                    \
                                                       uint32_t rows_per_item) {                 \
        masked_softmax<T>(scores, lens, out, keys, rows_per_item);                                \
    }                                                                                             \
    extern "C" __global__ void add_to_f32_##SUFFIX(const float *a, const T *b, float *out,       \
                                                   uint64_t n) {                                 \
        add_to_f32<T>(a, b, out, n);                                                              \
    }

INSTANTIATE(f32, float)
INSTANTIATE(f16, __half)
INSTANTIATE(bf16, __nv_bfloat16)

// FSMN memory block of MultiHeadedAttentionSANM:
//   out[b,t,:] = mask(t) * (v[b,t,:] + sum_j w[j,:] * v[b, t + j - left, :] * mask(t + j - left))
// with mask(s) = 0 <= s < lens[b] (zero padding outside the clip). `v` may be a strided view
// (rows `stride_b`, `stride_t` elements apart, channels contiguous); `out` is [B, T, D].
// One block per (FSMN_CH channels, FSMN_TILE frames, item): the FSMN_TILE + taps - 1 input
// frames of the tile are staged in shared memory once (zero outside [0, len)), so each input is
// read from global memory about once instead of `taps` times. Shared memory: (FSMN_TILE + taps - 1 + taps) * FSMN_CH floats.
#define FSMN_CH 128
#define FSMN_TILE 32
template <typename T>
__device__ void fsmn_tiled(const T *v, const T *w, const uint32_t *lens, T *out, uint32_t frames,
                           uint32_t dim, uint32_t taps, uint32_t left, uint64_t stride_b,
                           uint64_t stride_t) {
    extern __shared__ float stage[];
    const uint32_t c = threadIdx.x, d = blockIdx.x * FSMN_CH + c;
    const uint32_t t0 = blockIdx.y * FSMN_TILE, b = blockIdx.z;
    const int len = (int)min(lens[b], frames);
    const uint32_t span = FSMN_TILE + taps - 1;
    float *tap = stage + span * FSMN_CH;
    const T *vb = v + b * stride_b;
    if (d < dim) {
        for (uint32_t j = 0; j < taps; j++) tap[j * FSMN_CH + c] = to_f32(w[j * dim + d]);
        for (uint32_t i = 0; i < span; i++) {
            const int s = (int)t0 + (int)i - (int)left;
            stage[i * FSMN_CH + c] = (s >= 0 && s < len) ? to_f32(vb[(uint64_t)s * stride_t + d]) : 0.0f;
        }
    }
    __syncthreads();
    if (d >= dim) return;
    for (uint32_t i = 0; i < FSMN_TILE; i++) {
        const uint32_t t = t0 + i;
        if (t >= frames) break;
        float acc = 0.0f;
        if ((int)t < len) {
            acc = stage[(i + left) * FSMN_CH + c];
            for (uint32_t j = 0; j < taps; j++) acc += tap[j * FSMN_CH + c] * stage[(i + j) * FSMN_CH + c];
        }
        out[((uint64_t)b * frames + t) * dim + d] = from_f32<T>(acc);
    }
}

// Masked softmax with one warp per row (rows of at most 32 * SOFTMAX_PER_LANE keys), the row
// held in registers: one read and one write of the scores. Same function as `masked_softmax`
// (which serves longer rows).
#define SOFTMAX_PER_LANE 32
template <typename T>
__device__ void masked_softmax_warp(const T *scores, const uint32_t *lens, T *out, uint32_t keys,
                                    uint32_t rows_per_item, uint64_t rows) {
    const uint64_t row = (uint64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (row >= rows) return;
    const uint32_t len = min(lens[row / rows_per_item], keys);
    const T *sr = scores + row * keys;
    T *o = out + row * keys;
    float x[SOFTMAX_PER_LANE];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < SOFTMAX_PER_LANE; i++) {
        const uint32_t k = lane + 32 * i;
        x[i] = k < len ? to_f32(sr[k]) : -INFINITY;
        m = fmaxf(m, x[i]);
    }
    for (int o2 = 16; o2 > 0; o2 >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o2));
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < SOFTMAX_PER_LANE; i++) {
        const uint32_t k = lane + 32 * i;
        x[i] = k < len ? expf(x[i] - m) : 0.0f;
        s += x[i];
    }
    for (int o2 = 16; o2 > 0; o2 >>= 1) s += __shfl_xor_sync(0xffffffff, s, o2);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
#pragma unroll
    for (int i = 0; i < SOFTMAX_PER_LANE; i++) {
        const uint32_t k = lane + 32 * i;
        if (k < keys) o[k] = from_f32<T>(x[i] * inv);
    }
}

// The attention heads of the fused q/k/v projection: `qkv` [B, T, 3, H, dk] → `out`
// [3, B, H, T, dk], copied in 16-byte vectors (`vpr` per row of dk elements).
extern "C" __global__ void split_heads(const uint4 *qkv, uint4 *out, uint32_t batch, uint32_t frames,
                            uint32_t heads, uint32_t vpr) {
    const uint64_t total = 3ull * batch * heads * frames * vpr;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (uint64_t)blockDim.x * gridDim.x) {
        const uint32_t v = i % vpr;
        uint64_t r = i / vpr;  // ((s * B + b) * H + h) * T + t
        const uint32_t t = r % frames; r /= frames;
        const uint32_t h = r % heads; r /= heads;
        const uint32_t b = r % batch;
        const uint32_t s = r / batch;
        out[i] = qkv[((((uint64_t)b * frames + t) * 3 + s) * heads + h) * vpr + v];
    }
}

// Heads back into frames: `x` [B, H, T, dk] → `out` [B, T, H, dk], in 16-byte vectors.
extern "C" __global__ void merge_heads(const uint4 *x, uint4 *out, uint32_t batch, uint32_t frames,
                            uint32_t heads, uint32_t vpr) {
    const uint64_t total = (uint64_t)batch * heads * frames * vpr;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (uint64_t)blockDim.x * gridDim.x) {
        const uint32_t v = i % vpr;
        uint64_t r = i / vpr;  // (b * T + t) * H + h
        const uint32_t h = r % heads; r /= heads;
        const uint32_t t = r % frames;
        const uint32_t b = r / frames;
        out[i] = x[(((uint64_t)b * heads + h) * frames + t) * vpr + v];
    }
}

#define INSTANTIATE_MORE(SUFFIX, T)                                                               \
    extern "C" __global__ void fsmn_tiled_##SUFFIX(const T *v, const T *w, const uint32_t *lens, \
                                                   T *out, uint32_t frames, uint32_t dim,        \
                                                   uint32_t taps, uint32_t left,                 \
                                                   uint64_t stride_b, uint64_t stride_t) {       \
        fsmn_tiled<T>(v, w, lens, out, frames, dim, taps, left, stride_b, stride_t);             \
    }                                                                                             \
    extern "C" __global__ void masked_softmax_warp_##SUFFIX(const T *scores,                     \
                                                            const uint32_t *lens, T *out,        \
                                                            uint32_t keys,                       \
                                                            uint32_t rows_per_item,              \
                                                            uint64_t rows) {                     \
        masked_softmax_warp<T>(scores, lens, out, keys, rows_per_item, rows);                     \
    }

INSTANTIATE_MORE(f32, float)
INSTANTIATE_MORE(f16, __half)
INSTANTIATE_MORE(bf16, __nv_bfloat16)

// Index of the largest value of each row of `x` [rows, cols] (contiguous), the first one on
// ties (what torch.argmax returns); one block per row.
template <typename T>
__device__ void argmax_last(const T *x, uint32_t *out, uint32_t cols) {
    __shared__ float best_v[32];
    __shared__ uint32_t best_i[32];
    const T *xr = x + (uint64_t)blockIdx.x * cols;
    float v = -INFINITY;
    uint32_t i = 0xffffffffu;
    for (uint32_t k = threadIdx.x; k < cols; k += blockDim.x) {
        const float y = to_f32(xr[k]);
        if (y > v || i == 0xffffffffu) { v = y; i = k; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffff, v, o);
        const uint32_t oi = __shfl_xor_sync(0xffffffff, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = i; }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / 32;
        v = lane < warps ? best_v[lane] : -INFINITY;
        i = lane < warps ? best_i[lane] : 0xffffffffu;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffff, v, o);
            const uint32_t oi = __shfl_xor_sync(0xffffffff, i, o);
            if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
        }
        if (lane == 0) out[blockIdx.x] = i;
    }
}

#define INSTANTIATE_ARGMAX(SUFFIX, T)                                                             \
    extern "C" __global__ void argmax_last_##SUFFIX(const T *x, uint32_t *out, uint32_t cols) {  \
        argmax_last<T>(x, out, cols);                                                             \
    }

INSTANTIATE_ARGMAX(f32, float)
INSTANTIATE_ARGMAX(f16, __half)
INSTANTIATE_ARGMAX(bf16, __nv_bfloat16)

// LayerNorm with one warp per row for rows of 128 · n (n ≤ 8) f32 values, held in registers and
// read as float4: one read of x, one write of out. Same function as `layer_norm` (mean first,
// then the variance of the centred row), which serves other widths.
//
// With `upd` the row normalised is `x + upd` (the residual add before the next LayerNorm, in
// f32 as `add_to_f32` computes it), written to `sum` when that is not null: one pass instead of
// an add kernel writing the sum and a LayerNorm kernel reading it back.
#define LN_MAX_VEC 8
template <typename T>
__device__ void layer_norm_warp(const float *x, const T *upd, const float *gamma,
                                const float *beta, float *sum, T *out, uint32_t dim, float eps,
                                uint64_t rows) {
    const uint64_t row = (uint64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const uint32_t lane = threadIdx.x % 32;
    if (row >= rows) return;
    const uint32_t nvec = dim / 128;
    const float4 *xr = reinterpret_cast<const float4 *>(x + row * dim);
    float4 v[LN_MAX_VEC];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_MAX_VEC; i++) {
        if (i < nvec) {
            v[i] = xr[lane + 32 * i];
            if (upd != nullptr) {
                const T *u = upd + row * dim + 4 * (lane + 32 * i);
                v[i].x += to_f32(u[0]);
                v[i].y += to_f32(u[1]);
                v[i].z += to_f32(u[2]);
                v[i].w += to_f32(u[3]);
                if (sum != nullptr) reinterpret_cast<float4 *>(sum + row * dim)[lane + 32 * i] = v[i];
            }
            s += v[i].x + v[i].y + v[i].z + v[i].w;
        }
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    const float mean = s / (float)dim;
    float q = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_MAX_VEC; i++) {
        if (i < nvec) {
            const float a = v[i].x - mean, b = v[i].y - mean, c = v[i].z - mean, d = v[i].w - mean;
            q += a * a + b * b + c * c + d * d;
        }
    }
    for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffff, q, o);
    const float inv = rsqrtf(q / (float)dim + eps);
    T *o = out + row * dim;
#pragma unroll
    for (int i = 0; i < LN_MAX_VEC; i++) {
        if (i < nvec) {
            const uint32_t base = 4 * (lane + 32 * i);
            const float vals[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
            for (int j = 0; j < 4; j++)
                o[base + j] = from_f32<T>((vals[j] - mean) * inv * gamma[base + j] + beta[base + j]);
        }
    }
}

#define INSTANTIATE_LN(SUFFIX, T)                                                                 \
    extern "C" __global__ void layer_norm_warp_##SUFFIX(const float *x, const float *gamma,      \
                                                        const float *beta, T *out, uint32_t dim, \
                                                        float eps, uint64_t rows) {              \
        layer_norm_warp<T>(x, nullptr, gamma, beta, nullptr, out, dim, eps, rows);                \
    }                                                                                             \
    extern "C" __global__ void add_layer_norm_warp_##SUFFIX(                                      \
        const float *x, const T *upd, const float *gamma_beta, float *sum, T *out, uint32_t dim,  \
        float eps, uint64_t rows) {                                                               \
        layer_norm_warp<T>(x, upd, gamma_beta, gamma_beta + dim, sum, out, dim, eps, rows);       \
    }

INSTANTIATE_LN(f32, float)
INSTANTIATE_LN(f16, __half)
INSTANTIATE_LN(bf16, __nv_bfloat16)

// SAN-M attention in one kernel, read straight from the fused q/k/v projection `qkv`
// [B, T, 3, H, dk] (q already scaled by dk^-0.5 in the weights) and written straight into the
// merged layout `out` [B, T, H·dk]: the head split, q·kᵀ, the masked softmax, attention·v and
// the head merge, which were five launches with the scores' round trip through memory.
//
// One block: 64 query rows of one (item, head), four warps of 16 rows. Per 64-key tile the
// block stages k (then v) in shared memory; each warp computes its 16 × 64 scores on the tensor
// cores (wmma, f32 accumulation), rounded to T into a shared row of all keys — the rounding the
// separate product's output had —, then the softmax of each row in f32 over the item's valid
// keys (as `masked_softmax_warp`), the probabilities rounded to T in place, and attention·v
// with f32 accumulation. Rows of up to ATT_KEYS keys, dk = ATT_DK; tensor cores need sm_80.
#if __CUDA_ARCH__ >= 800
#include <mma.h>
#endif
#define ATT_DK 128
#define ATT_KEYS 512
#define ATT_WARPS 4
#define ATT_ROWS (16 * ATT_WARPS)
#define ATT_KTILE 64
#define ATT_LDH (ATT_DK + 8)    // elements per staged q/k/v row (16-byte rows, fewer bank conflicts)
#define ATT_LDS (ATT_KEYS + 8)  // elements per score row
#define ATT_LDO (ATT_DK + 4)    // floats per row of the output staging
// Shared memory: scores [ATT_ROWS][ATT_LDS] T, q [ATT_ROWS][ATT_LDH] T, one k/v tile
// [ATT_KTILE][ATT_LDH] T, a 16 × 16 f32 tile per warp. Every part starts 32-byte aligned.
#define ATT_SMEM_BYTES \
    ((ATT_ROWS * ATT_LDS + ATT_ROWS * ATT_LDH + ATT_KTILE * ATT_LDH) * 2 + ATT_WARPS * 256 * 4)

template <typename T>
__device__ void sanm_attention(const T *qkv, const uint32_t *lens, T *out, uint32_t heads,
                               uint32_t frames) {
#if __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char att_smem[];
    T *S = reinterpret_cast<T *>(att_smem);
    T *Q = S + ATT_ROWS * ATT_LDS;
    T *KV = Q + ATT_ROWS * ATT_LDH;
    float *stage = reinterpret_cast<float *>(KV + ATT_KTILE * ATT_LDH);
    const uint32_t b = blockIdx.y / heads, h = blockIdx.y % heads;
    const uint32_t row0 = blockIdx.x * ATT_ROWS;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint64_t row_stride = 3ull * heads * ATT_DK;  // elements between frames of qkv
    const T *base = qkv + (uint64_t)b * frames * row_stride + (uint64_t)h * ATT_DK;
    const uint32_t len = min(lens[b], frames);
    const uint32_t tiles = (frames + ATT_KTILE - 1) / ATT_KTILE;
    constexpr uint32_t VECS = ATT_DK / 8;  // 16-byte vectors per row of dk

    // Stages `rows` rows of q, k or v (`part` 0, 1, 2) from frame `first` on, zeros past the end.
    auto stage_rows = [&](T *dst, uint32_t rows, uint32_t first, uint32_t part) {
        for (uint32_t i = threadIdx.x; i < rows * VECS; i += blockDim.x) {
            const uint32_t r = i / VECS, c = i % VECS, frame = first + r;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (frame < frames)
                v = reinterpret_cast<const uint4 *>(base + frame * row_stride +
                                                    (uint64_t)part * heads * ATT_DK)[c];
            *reinterpret_cast<uint4 *>(dst + r * ATT_LDH + c * 8) = v;
        }
    };

    stage_rows(Q, ATT_ROWS, row0, 0);
    float *my_stage = stage + warp * 256;
    T *my_s = S + warp * 16 * ATT_LDS;
    // Scores.
    for (uint32_t t = 0; t < tiles; t++) {
        __syncthreads();  // the previous tile is no longer read (and q is staged)
        stage_rows(KV, ATT_KTILE, t * ATT_KTILE, 1);
        __syncthreads();
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[ATT_KTILE / 16];
#pragma unroll
        for (int n = 0; n < ATT_KTILE / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
        for (int kk = 0; kk < ATT_DK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::load_matrix_sync(a, Q + warp * 16 * ATT_LDH + kk, ATT_LDH);
#pragma unroll
            for (int n = 0; n < ATT_KTILE / 16; n++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kt;
                wmma::load_matrix_sync(kt, KV + n * 16 * ATT_LDH + kk, ATT_LDH);
                wmma::mma_sync(acc[n], a, kt, acc[n]);
            }
        }
#pragma unroll
        for (int n = 0; n < ATT_KTILE / 16; n++) {
            wmma::store_matrix_sync(my_stage, acc[n], 16, wmma::mem_row_major);
            __syncwarp();
            for (uint32_t i = lane; i < 256; i += 32)
                my_s[(i / 16) * ATT_LDS + t * ATT_KTILE + n * 16 + i % 16] = from_f32<T>(my_stage[i]);
            __syncwarp();
        }
    }
    // Softmax of each of the warp's rows over the valid keys, in place; keys past `len` get 0.
    const uint32_t keys = tiles * ATT_KTILE;
    for (uint32_t r = 0; r < 16; r++) {
        T *row = my_s + r * ATT_LDS;
        float m = -INFINITY;
        for (uint32_t k = lane; k < len; k += 32) m = fmaxf(m, to_f32(row[k]));
        for (int o2 = 16; o2 > 0; o2 >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o2));
        float s = 0.0f;
        for (uint32_t k = lane; k < len; k += 32) s += expf(to_f32(row[k]) - m);
        for (int o2 = 16; o2 > 0; o2 >>= 1) s += __shfl_xor_sync(0xffffffff, s, o2);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (uint32_t k = lane; k < keys; k += 32)
            row[k] = from_f32<T>(k < len ? expf(to_f32(row[k]) - m) * inv : 0.0f);
    }
    __syncwarp();
    // Attention · v.
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[ATT_DK / 16];
#pragma unroll
    for (int n = 0; n < ATT_DK / 16; n++) wmma::fill_fragment(o[n], 0.0f);
    for (uint32_t t = 0; t < tiles; t++) {
        __syncthreads();
        stage_rows(KV, ATT_KTILE, t * ATT_KTILE, 2);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < ATT_KTILE; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p;
            wmma::load_matrix_sync(p, my_s + t * ATT_KTILE + kk, ATT_LDS);
#pragma unroll
            for (int n = 0; n < ATT_DK / 16; n++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v;
                wmma::load_matrix_sync(v, KV + kk * ATT_LDH + n * 16, ATT_LDH);
                wmma::mma_sync(o[n], p, v, o[n]);
            }
        }
    }
    // The warp's 16 output rows through its own score rows (no longer read) as f32 staging.
    __syncwarp();
    float *ostage = reinterpret_cast<float *>(my_s);
#pragma unroll
    for (int n = 0; n < ATT_DK / 16; n++)
        wmma::store_matrix_sync(ostage + n * 16, o[n], ATT_LDO, wmma::mem_row_major);
    __syncwarp();
    for (uint32_t i = lane; i < 16 * ATT_DK; i += 32) {
        const uint32_t r = i / ATT_DK, c = i % ATT_DK, frame = row0 + warp * 16 + r;
        if (frame < frames)
            out[((uint64_t)b * frames + frame) * heads * ATT_DK + (uint64_t)h * ATT_DK + c] =
                from_f32<T>(ostage[r * ATT_LDO + c]);
    }
#else
    __trap();
#endif
}

#define INSTANTIATE_ATT(SUFFIX, T)                                                                \
    extern "C" __global__ void sanm_attention_##SUFFIX(                                         \
        const T *qkv, const uint32_t *lens, T *out, uint32_t heads, uint32_t frames) {            \
        sanm_attention<T>(qkv, lens, out, heads, frames);                                         \
    }

INSTANTIATE_ATT(f16, __half)
INSTANTIATE_ATT(bf16, __nv_bfloat16)
