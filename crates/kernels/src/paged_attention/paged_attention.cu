// Paged attention on CUDA, compiled at run time by NVRTC (no headers: BF16/F16 are converted by
// hand so the source needs nothing from the toolkit's include directory).
//
// One thread block per (query row, head). The block walks the visible positions of the row's
// sequence in chunks of blockDim.x: each thread scores one position (q·k over head_dim, F32),
// the block reduces the chunk's max and sum (online softmax), then each thread accumulates its
// output dims over the chunk's V rows. Simple and correct first; split-K and tensor cores later.
//
// Metadata (u32): row_pos[num_rows] (absolute position of the row's token), row_table[num_rows]
// (offset of the row's sequence's block table in block_tables), block_tables[...] (block ids).
// Pools are [num_blocks, block_size, num_kv_heads, head_dim]; q and out [num_rows, num_heads,
// head_dim]. Indexing into the pool is 64-bit.

#define MAX_DIMS_PER_THREAD 4
#define MAX_WARPS 32
#define NEG_INF __int_as_float(0xff800000)

struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((unsigned int)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(bf16* p, float x) {
    unsigned int u = __float_as_uint(x);
    unsigned short bits;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        bits = 0x7fc0;  // NaN
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
        bits = (unsigned short)(u >> 16);
    }
    p->bits = bits;
}
__device__ __forceinline__ void store(f16* p, float x) {
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(x));
    p->bits = bits;
}

// Reduces over the block; every thread gets the result. `scratch` holds MAX_WARPS floats.
__device__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, num_warps = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

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

// Dynamic shared memory: q row [head_dim] f32, weights [blockDim.x] f32, padding to 8 bytes,
// slots [blockDim.x] u64. blockDim.x is a multiple of 32, at most 1024.
template <typename T>
__device__ void paged_attention(
    T* __restrict__ out,
    const T* __restrict__ q,
    const T* __restrict__ k_cache,
    const T* __restrict__ v_cache,
    const unsigned int* __restrict__ row_pos,
    const unsigned int* __restrict__ row_table,
    const unsigned int* __restrict__ block_tables,
    unsigned int num_heads,
    unsigned int num_kv_heads,
    unsigned int head_dim,
    unsigned int block_size,
    unsigned int sliding_window,  // 0: none
    float scale
) {
    extern __shared__ unsigned char smem[];
    float* q_sh = (float*)smem;
    float* w_sh = q_sh + head_dim;
    const unsigned int num_floats = head_dim + blockDim.x;
    unsigned long long* slot_sh = (unsigned long long*)(q_sh + num_floats + (num_floats & 1));
    __shared__ float scratch[MAX_WARPS];

    const unsigned int row = blockIdx.x / num_heads;
    const unsigned int head = blockIdx.x % num_heads;
    const unsigned int kv_head = head / (num_heads / num_kv_heads);
    const unsigned int pos = row_pos[row];
    const unsigned int* table = block_tables + row_table[row];
    const unsigned int first = (sliding_window != 0 && pos + 1 > sliding_window) ? pos + 1 - sliding_window : 0;
    const unsigned long long row_stride = (unsigned long long)num_kv_heads * head_dim;
    const unsigned long long head_offset = (unsigned long long)kv_head * head_dim;

    const T* q_row = q + ((unsigned long long)row * num_heads + head) * head_dim;
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) q_sh[d] = to_f32(q_row[d]);
    __syncthreads();

    float acc[MAX_DIMS_PER_THREAD];
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) acc[i] = 0.0f;
    float running_max = NEG_INF;
    float running_sum = 0.0f;

    for (unsigned int chunk = first; chunk <= pos; chunk += blockDim.x) {
        const unsigned int p = chunk + threadIdx.x;
        float score = NEG_INF;
        if (p <= pos) {
            const unsigned long long slot =
                (unsigned long long)table[p / block_size] * block_size + p % block_size;
            slot_sh[threadIdx.x] = slot;
            const T* k_row = k_cache + slot * row_stride + head_offset;
            float dot = 0.0f;
            for (unsigned int d = 0; d < head_dim; ++d) dot += q_sh[d] * to_f32(k_row[d]);
            score = dot * scale;
        }
        const float chunk_max = block_max(score, scratch);
        const float new_max = fmaxf(running_max, chunk_max);
        const float weight = p <= pos ? expf(score - new_max) : 0.0f;
        w_sh[threadIdx.x] = weight;
        const float chunk_sum = block_sum(weight, scratch);  // also orders the w_sh writes
        const float correction = expf(running_max - new_max);
        running_sum = running_sum * correction + chunk_sum;
        running_max = new_max;
        const unsigned int num_in_chunk = umin(blockDim.x, pos + 1 - chunk);
        for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
            const unsigned int d = threadIdx.x + i * blockDim.x;
            if (d >= head_dim) break;
            float a = acc[i] * correction;
            for (unsigned int j = 0; j < num_in_chunk; ++j) {
                a += w_sh[j] * to_f32(v_cache[slot_sh[j] * row_stride + head_offset + d]);
            }
            acc[i] = a;
        }
        __syncthreads();  // w_sh and slot_sh are rewritten by the next chunk
    }

    const float inv = 1.0f / running_sum;
    T* out_row = out + ((unsigned long long)row * num_heads + head) * head_dim;
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
        const unsigned int d = threadIdx.x + i * blockDim.x;
        if (d >= head_dim) break;
        store(out_row + d, acc[i] * inv);
    }
}

#define INSTANTIATE(NAME, T)                                                                   \
    extern "C" __global__ void NAME(                                                           \
        T* out, const T* q, const T* k_cache, const T* v_cache, const unsigned int* row_pos,   \
        const unsigned int* row_table, const unsigned int* block_tables,                       \
        unsigned int num_heads, unsigned int num_kv_heads, unsigned int head_dim,              \
        unsigned int block_size, unsigned int sliding_window, float scale) {                   \
        paged_attention<T>(out, q, k_cache, v_cache, row_pos, row_table, block_tables,          \
                           num_heads, num_kv_heads, head_dim, block_size, sliding_window,      \
                           scale);                                                             \
    }

INSTANTIATE(paged_attention_f32, float)
INSTANTIATE(paged_attention_bf16, bf16)
INSTANTIATE(paged_attention_f16, f16)
