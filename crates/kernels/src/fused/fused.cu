// Fused elementwise kernels of a transformer block, compiled at run time by NVRTC (no headers:
// BF16/F16 are converted by hand, as in paged_attention.cu). All math in F32; results rounded
// once to the storage type.
//
// add_rms_norm: one block per row. sum = x + residual (rounded to T, stored), out = sum / rms(sum)
//   * weight. The norm is computed from the rounded sum, as the unfused add-then-norm does.
//   add_rms_norm8 is the same for BF16/F16 rows of 8-element chunks (16-byte loads, the sums
//   kept in registers).
//   add_rms_norm_f32_residual: the same on an F32 residual stream (the sum is stored in F32, not
//   rounded); rms_norm_f32_stream: the norm of the F32 stream alone (before the first block).
// rope_write_kv: one block per (token, head of q, k or v's kv head). Rotates q and k (half-split / NeoX rotary, F32 cos/sin
//   tables indexed by position, rope.cuh), writes the rotated q to q_out and k, v to the paged pool at the
//   token's slot.
// gated_act: out = act(gate) * up, act = SiLU (0) or tanh-GELU (1); gate/up rows may be strided
//   (views of one fused gate_up matrix).

#define MAX_WARPS 32

__device__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, num_warps = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T>
__device__ void add_rms_norm(T* __restrict__ out, T* __restrict__ sum_out, const T* __restrict__ x,
                             const T* __restrict__ residual, const T* __restrict__ weight,
                             unsigned int hidden, float eps) {
    __shared__ float scratch[MAX_WARPS];
    const unsigned long long base = (unsigned long long)blockIdx.x * hidden;
    float sq = 0.0f;
    for (unsigned int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const T s = round_to<T>(to_f32(x[base + i]) + to_f32(residual[base + i]));
        sum_out[base + i] = s;
        const float f = to_f32(s);
        sq += f * f;
    }
    const float inv_rms = rsqrtf(block_sum(sq, scratch) / (float)hidden + eps);
    for (unsigned int i = threadIdx.x; i < hidden; i += blockDim.x) {
        out[base + i] = round_to<T>(to_f32(sum_out[base + i]) * inv_rms * to_f32(weight[i]));
    }
}

// add_rms_norm for BF16/F16 rows of a multiple of 8 elements (16-byte aligned): each thread takes
// 8 consecutive elements per 16-byte load, up to NORM_CHUNKS of them, and keeps the rounded sums
// in registers for the second pass instead of reading them back. Same results as add_rms_norm.
#define NORM_CHUNKS 4

// The thread's weight chunks (threadIdx.x + c * blockDim.x), loaded before the first pass so
// their latency overlaps it rather than following the block's reduction.
template <typename T>
__device__ __forceinline__ void load_weight_chunks8(const T* __restrict__ weight, unsigned int chunks, uint4 w[NORM_CHUNKS]) {
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; ++c) {
        const unsigned int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) w[c] = *(const uint4*)(weight + 8 * chunk);
    }
}

// The second pass of the chunked norms: the thread's sums (chunks threadIdx.x + c * blockDim.x of
// the row) times inv_rms and the weight chunks, rounded to T into out_row. With xq_row, also the
// rounded values as int8 (quantize_group8: the 4 lanes of a 32-value group are adjacent) into
// xq_row / ds_row; chunks must then be a multiple of 32, so a warp's chunks are all in the row
// or all past it (the shuffles need whole warps).
template <typename T>
__device__ __forceinline__ void normalize_chunks8(const float v[NORM_CHUNKS][8], float inv_rms, const uint4 w[NORM_CHUNKS],
                                                  T* __restrict__ out_row, unsigned int chunks,
                                                  unsigned char* __restrict__ xq_row = nullptr,
                                                  float2* __restrict__ ds_row = nullptr) {
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; ++c) {
        const unsigned int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float wv[8], o[8];
            unpack8<T>(w[c], wv);
            for (int i = 0; i < 8; ++i) o[i] = v[c][i] * inv_rms * wv[i];
            *(uint4*)(out_row + 8 * chunk) = pack8<T>(o);
            if (xq_row != nullptr) {
                float rounded[8];
                for (int i = 0; i < 8; ++i) rounded[i] = to_f32(round_to<T>(o[i]));
                float2 group;
                *(uint2*)(xq_row + 8 * chunk) = quantize_group8(rounded, &group);
                if (chunk % 4 == 0) ds_row[chunk / 4] = group;
            }
        }
    }
}

template <typename T>
__device__ void add_rms_norm8(T* __restrict__ out, T* __restrict__ sum_out, const T* __restrict__ x,
                              const T* __restrict__ residual, const T* __restrict__ weight,
                              unsigned int hidden, float eps) {
    __shared__ float scratch[MAX_WARPS];
    const unsigned long long base = (unsigned long long)blockIdx.x * hidden;
    const unsigned int chunks = hidden / 8;
    uint4 w[NORM_CHUNKS];
    load_weight_chunks8<T>(weight, chunks, w);
    float v[NORM_CHUNKS][8];
    float sq = 0.0f;
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; ++c) {
        const unsigned int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float a[8], b[8];
            unpack8<T>(*(const uint4*)(x + base + 8 * chunk), a);
            unpack8<T>(*(const uint4*)(residual + base + 8 * chunk), b);
            for (int i = 0; i < 8; ++i) {
                v[c][i] = to_f32(round_to<T>(a[i] + b[i]));
                sq += v[c][i] * v[c][i];
            }
            *(uint4*)(sum_out + base + 8 * chunk) = pack8<T>(v[c]);
        }
    }
    const float inv_rms = rsqrtf(block_sum(sq, scratch) / (float)hidden + eps);
    normalize_chunks8<T>(v, inv_rms, w, out + base, chunks);
}

// add_rms_norm8 on an F32 residual stream: sum = x + residual in F32 (not rounded), stored F32;
// out = sum / rms(sum) * weight rounded to T. The stream between blocks keeps F32 precision on
// the GPU as on the CPU (x is a block's BF16/F16 output).
// ADD = false: the norm of the F32 stream alone (x and sum_out unused), the first block's norm.
// xq_out / ds_out (or null): out as the int8 matvec kernels quantize it (quantize_group8), for
// the generation step's products that read it; hidden a multiple of 256, so a warp's chunks are
// all in the row or all past it.
template <typename T, bool ADD>
__device__ void add_rms_norm_f32_residual(T* __restrict__ out, float* __restrict__ sum_out, const T* __restrict__ x,
                                          const float* __restrict__ residual, const T* __restrict__ weight,
                                          unsigned int hidden, float eps, unsigned char* __restrict__ xq_out,
                                          float2* __restrict__ ds_out) {
    __shared__ float scratch[MAX_WARPS];
    const unsigned long long base = (unsigned long long)blockIdx.x * hidden;
    const unsigned int chunks = hidden / 8;
    uint4 w[NORM_CHUNKS];
    load_weight_chunks8<T>(weight, chunks, w);
    float v[NORM_CHUNKS][8];
    float sq = 0.0f;
#pragma unroll
    for (int c = 0; c < NORM_CHUNKS; ++c) {
        const unsigned int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (ADD) unpack8<T>(*(const uint4*)(x + base + 8 * chunk), a);
            const float4* r = (const float4*)(residual + base + 8 * chunk);
            const float4 r0 = r[0], r1 = r[1];
            const float b[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
            for (int i = 0; i < 8; ++i) {
                v[c][i] = ADD ? a[i] + b[i] : b[i];
                sq += v[c][i] * v[c][i];
            }
            if (ADD) {
                float4* s = (float4*)(sum_out + base + 8 * chunk);
                s[0] = make_float4(v[c][0], v[c][1], v[c][2], v[c][3]);
                s[1] = make_float4(v[c][4], v[c][5], v[c][6], v[c][7]);
            }
        }
    }
    const float inv_rms = rsqrtf(block_sum(sq, scratch) / (float)hidden + eps);
    normalize_chunks8<T>(v, inv_rms, w, out + base, chunks, xq_out ? xq_out + base : nullptr, xq_out ? ds_out + base / 32 : nullptr);
}

template <typename T>
__device__ void rope_write_kv(T* __restrict__ q_out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                              const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const float* __restrict__ cos_table, const float* __restrict__ sin_table,
                              const unsigned int* __restrict__ positions, const unsigned int* __restrict__ slots,
                              unsigned int num_heads, unsigned int num_kv_heads, unsigned int head_dim) {
    const unsigned int token = blockIdx.x, head_index = blockIdx.y;  // q heads, then kv heads
    const unsigned int half = head_dim / 2;
    const unsigned long long pos = positions[token];
    const unsigned long long slot = slots[token];
    const float* cos_row = cos_table + pos * half;
    const float* sin_row = sin_table + pos * half;
    const bool is_q = head_index < num_heads;
    const unsigned int head = is_q ? head_index : head_index - num_heads;
    for (unsigned int i = threadIdx.x; i < half; i += blockDim.x) {
        const float c = cos_row[i], s = sin_row[i];
        if (is_q) {
            const unsigned long long at = ((unsigned long long)token * num_heads + head) * head_dim;
            const float2 r = rope_rotate(to_f32(q[at + i]), to_f32(q[at + i + half]), c, s);
            q_out[at + i] = round_to<T>(r.x);
            q_out[at + i + half] = round_to<T>(r.y);
        } else {
            const unsigned long long src = ((unsigned long long)token * num_kv_heads + head) * head_dim;
            const unsigned long long dst = (slot * num_kv_heads + head) * head_dim;
            const float2 r = rope_rotate(to_f32(k[src + i]), to_f32(k[src + i + half]), c, s);
            k_cache[dst + i] = round_to<T>(r.x);
            k_cache[dst + i + half] = round_to<T>(r.y);
            v_cache[dst + i] = v[src + i];
            v_cache[dst + i + half] = v[src + i + half];
        }
    }
}

template <typename T>
__device__ void gated_act(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                          unsigned int width, unsigned int gate_stride, unsigned int up_stride, unsigned int act) {
    const unsigned long long row = blockIdx.y;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < width; i += gridDim.x * blockDim.x) {
        const float g = to_f32(gate[row * gate_stride + i]);
        const float u = to_f32(up[row * up_stride + i]);
        out[row * width + i] = round_to<T>(gate_activation(g, act) * u);
    }
}

#define INSTANTIATE(SUFFIX, T)                                                                        \
    extern "C" __global__ void add_rms_norm_##SUFFIX(T* out, T* sum_out, const T* x, const T* residual, \
                                                     const T* weight, unsigned int hidden, float eps) { \
        add_rms_norm<T>(out, sum_out, x, residual, weight, hidden, eps);                              \
    }                                                                                                 \
    extern "C" __global__ void rope_write_kv_##SUFFIX(                                                \
        T* q_out, T* k_cache, T* v_cache, const T* q, const T* k, const T* v, const float* cos_table,  \
        const float* sin_table, const unsigned int* positions, const unsigned int* slots,             \
        unsigned int num_heads, unsigned int num_kv_heads, unsigned int head_dim) {                   \
        rope_write_kv<T>(q_out, k_cache, v_cache, q, k, v, cos_table, sin_table, positions, slots,    \
                         num_heads, num_kv_heads, head_dim);                                          \
    }                                                                                                 \
    extern "C" __global__ void gated_act_##SUFFIX(T* out, const T* gate, const T* up, unsigned int width, \
                                                  unsigned int gate_stride, unsigned int up_stride,   \
                                                  unsigned int act) {                                 \
        gated_act<T>(out, gate, up, width, gate_stride, up_stride, act);                              \
    }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)

#define INSTANTIATE8(SUFFIX, T)                                                                       \
    extern "C" __global__ void add_rms_norm8_##SUFFIX(T* out, T* sum_out, const T* x, const T* residual, \
                                                      const T* weight, unsigned int hidden, float eps) { \
        add_rms_norm8<T>(out, sum_out, x, residual, weight, hidden, eps);                             \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(1024) add_rms_norm_f32_residual_##SUFFIX(T* out, float* sum_out, const T* x,    \
                                                                  const float* residual, const T* weight, \
                                                                  unsigned int hidden, float eps,         \
                                                                  unsigned char* xq_out, float2* ds_out) { \
        add_rms_norm_f32_residual<T, true>(out, sum_out, x, residual, weight, hidden, eps, xq_out, ds_out); \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(1024) rms_norm_f32_stream_##SUFFIX(T* out, const float* stream, const T* weight, \
                                                            unsigned int hidden, float eps,            \
                                                            unsigned char* xq_out, float2* ds_out) {   \
        add_rms_norm_f32_residual<T, false>(out, nullptr, nullptr, stream, weight, hidden, eps, xq_out, ds_out); \
    }

INSTANTIATE8(bf16, bf16)
INSTANTIATE8(f16, f16)
