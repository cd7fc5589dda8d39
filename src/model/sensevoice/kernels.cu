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

// FSMN memory block of MultiHeadedAttentionSANM for one frame (b, t) per block:
//   out[b,t,:] = mask(t) * (v[b,t,:] + sum_j w[j,:] * v[b, t + j - left, :] * mask(t + j - left))
// with mask(s) = 0 <= s < lens[b] (zero padding outside the clip). `v` may be a strided view
// (rows `stride_b`, `stride_t` elements apart, channels contiguous); `out` is [B, T, D].
template <typename T>
__device__ void fsmn(const T *v, const T *w, const uint32_t *lens, T *out, uint32_t frames,
                     uint32_t dim, uint32_t taps, uint32_t left, uint64_t stride_b,
                     uint64_t stride_t) {
    const uint32_t row = blockIdx.x;
    const uint32_t b = row / frames, t = row % frames;
    const int len = (int)lens[b];
    const T *vb = v + b * stride_b;
    T *o = out + (uint64_t)row * dim;
    for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) {
        float acc = 0.0f;
        if ((int)t < len) {
            acc = to_f32(vb[t * stride_t + d]);
            for (uint32_t j = 0; j < taps; j++) {
                const int s = (int)t + (int)j - (int)left;
                if (s >= 0 && s < len) acc += to_f32(w[j * dim + d]) * to_f32(vb[s * stride_t + d]);
            }
        }
        o[d] = from_f32<T>(acc);
    }
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
    extern "C" __global__ void fsmn_##SUFFIX(const T *v, const T *w, const uint32_t *lens,       \
                                             T *out, uint32_t frames, uint32_t dim,              \
                                             uint32_t taps, uint32_t left, uint64_t stride_b,    \
                                             uint64_t stride_t) {                                \
        fsmn<T>(v, w, lens, out, frames, dim, taps, left, stride_b, stride_t);                  \
    }                                                                                             \
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
