// Paged attention on CUDA, compiled at run time by NVRTC (after `dtypes.cuh`: BF16/F16 are converted
// by hand, so the source needs nothing from the toolkit's include directory).
//
// Two paths over one inner loop (`attend_range`):
// - one-block (`paged_attention_*`): one thread block per (query row, head) walks all visible
//   positions of the row and writes the normalized output.
// - split over the sequence (`paged_attention_split_*` then `paged_attention_combine_*`, a.k.a.
//   split-K / flash-decoding): grid (row * head, split). Block `split` takes a contiguous range
//   of the row's visible positions and writes an unnormalized partial state (max m, sum
//   l = sum exp(s - m), acc[d] = sum exp(s - m) v[d], all F32) to a scratch buffer; the combine
//   kernel rescales the partials to their common max (log-sum-exp) and writes the output.
//
// The inner loop walks positions in chunks of blockDim.x: each thread scores one position (q·k
// over head_dim, F32), the block reduces the chunk's max and sum (online softmax), then each
// thread accumulates its output dims over the chunk's V rows.
//
// Split ranges are computed here, from the row's actual visible span, never by the host: the
// host fixes only `num_splits` (gridDim.y), from data that is constant for a recorded CUDA graph.
// Each split takes `split_len = max(min_split_len, ceil(span / num_splits) rounded up to
// blockDim.x)` positions; splits past the end of the span write the neutral partial (m = -inf,
// l = 0, acc untouched) that the combine step skips. Every row has at least one visible
// position (its own), so split 0 is never empty and the combined sum is positive.
//
// Metadata (u32): row_pos[num_rows] (absolute position of the row's token), row_table[num_rows]
// (offset of the row's sequence's block table in block_tables), block_tables[...] (block ids).
// Pools are [num_blocks, block_size, num_kv_heads, head_dim]; q and out [num_rows, num_heads,
// head_dim]; partial_stats [num_rows * num_heads, num_splits, 2] (m, l) and partial_acc
// [num_rows * num_heads, num_splits, head_dim], F32. Indexing into the pool is 64-bit.

#define MAX_DIMS_PER_THREAD 4
#define MAX_WARPS 32

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

// The (row, head) a block works on and where its data lives.
struct RowHead {
    unsigned int row;
    unsigned int head;
    unsigned int pos;    // absolute position of the row's token (its last visible position)
    unsigned int first;  // first visible position (sliding window or 0)
    const unsigned int* table;
    unsigned long long row_stride;   // elements between consecutive slots of the pool
    unsigned long long head_offset;  // offset of the kv head inside a slot
};

__device__ __forceinline__ RowHead row_head(
    unsigned int row_head_idx,
    const unsigned int* row_pos,
    const unsigned int* row_table,
    const unsigned int* block_tables,
    unsigned int num_heads,
    unsigned int num_kv_heads,
    unsigned int head_dim,
    unsigned int sliding_window
) {
    RowHead r;
    r.row = row_head_idx / num_heads;
    r.head = row_head_idx % num_heads;
    const unsigned int kv_head = r.head / (num_heads / num_kv_heads);
    r.pos = row_pos[r.row];
    r.first = (sliding_window != 0 && r.pos + 1 > sliding_window) ? r.pos + 1 - sliding_window : 0;
    r.table = block_tables + row_table[r.row];
    r.row_stride = (unsigned long long)num_kv_heads * head_dim;
    r.head_offset = (unsigned long long)kv_head * head_dim;
    return r;
}

// Shared memory of the attending kernels. Dynamic part: q row [head_dim] f32, weights
// [blockDim.x] f32, padding to 8 bytes, slots [blockDim.x] u64. blockDim.x is a multiple of 32,
// at most 1024.
struct AttendSmem {
    float* q;
    float* w;
    unsigned long long* slot;
};

__device__ __forceinline__ AttendSmem attend_smem(unsigned char* smem, unsigned int head_dim) {
    AttendSmem s;
    s.q = (float*)smem;
    s.w = s.q + head_dim;
    const unsigned int num_floats = head_dim + blockDim.x;
    s.slot = (unsigned long long*)(s.q + num_floats + (num_floats & 1));
    return s;
}

template <typename T>
__device__ __forceinline__ void load_q(float* q_sh, const T* q, const RowHead& r, unsigned int num_heads, unsigned int head_dim) {
    const T* q_row = q + ((unsigned long long)r.row * num_heads + r.head) * head_dim;
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) q_sh[d] = to_f32(q_row[d]);
    __syncthreads();
}

// Online softmax of the query in `sm.q` over positions [begin, end) of the row's sequence,
// folded into the running state (running_max, running_sum, acc): afterwards
// acc[i] = sum_p exp(s_p - running_max) v_p[threadIdx.x + i * blockDim.x] and
// running_sum = sum_p exp(s_p - running_max) over all positions folded so far. An empty range
// leaves the state as it was. Every thread of the block must call it with the same range.
template <typename T>
__device__ void attend_range(
    const AttendSmem& sm,
    float* scratch,
    const T* __restrict__ k_cache,
    const T* __restrict__ v_cache,
    const RowHead& r,
    unsigned int begin,
    unsigned int end,
    unsigned int head_dim,
    unsigned int block_size,
    float scale,
    float* acc,
    float& running_max,
    float& running_sum
) {
    for (unsigned int chunk = begin; chunk < end; chunk += blockDim.x) {
        const unsigned int p = chunk + threadIdx.x;
        const bool valid = p < end;
        float score = NEG_INF;
        if (valid) {
            const unsigned long long slot =
                (unsigned long long)r.table[p / block_size] * block_size + p % block_size;
            sm.slot[threadIdx.x] = slot;
            const T* k_row = k_cache + slot * r.row_stride + r.head_offset;
            float dot = 0.0f;
            for (unsigned int d = 0; d < head_dim; ++d) dot += sm.q[d] * to_f32(k_row[d]);
            score = dot * scale;
        }
        const float chunk_max = block_max(score, scratch);
        const float new_max = fmaxf(running_max, chunk_max);
        const float weight = valid ? expf(score - new_max) : 0.0f;
        sm.w[threadIdx.x] = weight;
        const float chunk_sum = block_sum(weight, scratch);  // also orders the w/slot writes
        const float correction = expf(running_max - new_max);
        running_sum = running_sum * correction + chunk_sum;
        running_max = new_max;
        const unsigned int num_in_chunk = umin(blockDim.x, end - chunk);
        for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
            const unsigned int d = threadIdx.x + i * blockDim.x;
            if (d >= head_dim) break;
            float a = acc[i] * correction;
            for (unsigned int j = 0; j < num_in_chunk; ++j) {
                a += sm.w[j] * to_f32(v_cache[sm.slot[j] * r.row_stride + r.head_offset + d]);
            }
            acc[i] = a;
        }
        __syncthreads();  // w and slot are rewritten by the next chunk
    }
}

// One block per (row, head): grid (num_rows * num_heads).
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
    __shared__ float scratch[MAX_WARPS];
    const AttendSmem sm = attend_smem(smem, head_dim);
    const RowHead r = row_head(blockIdx.x, row_pos, row_table, block_tables, num_heads, num_kv_heads, head_dim, sliding_window);
    load_q(sm.q, q, r, num_heads, head_dim);

    float acc[MAX_DIMS_PER_THREAD];
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) acc[i] = 0.0f;
    float running_max = NEG_INF;
    float running_sum = 0.0f;
    attend_range(sm, scratch, k_cache, v_cache, r, r.first, r.pos + 1, head_dim, block_size, scale, acc, running_max, running_sum);

    const float inv = 1.0f / running_sum;
    T* out_row = out + ((unsigned long long)r.row * num_heads + r.head) * head_dim;
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
        const unsigned int d = threadIdx.x + i * blockDim.x;
        if (d >= head_dim) break;
        store(out_row + d, acc[i] * inv);
    }
}

// Split over the sequence: grid (num_rows * num_heads, num_splits); block (x, y) writes the
// partial state of row-head x over its y-th range of visible positions (see the file comment).
template <typename T>
__device__ void paged_attention_split(
    float* __restrict__ partial_stats,
    float* __restrict__ partial_acc,
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
    float scale,
    unsigned int min_split_len
) {
    extern __shared__ unsigned char smem[];
    __shared__ float scratch[MAX_WARPS];
    const unsigned int split = blockIdx.y;
    const unsigned int num_splits = gridDim.y;
    const unsigned long long partial = (unsigned long long)blockIdx.x * num_splits + split;
    const RowHead r = row_head(blockIdx.x, row_pos, row_table, block_tables, num_heads, num_kv_heads, head_dim, sliding_window);

    const unsigned int span = r.pos + 1 - r.first;
    unsigned int split_len = (span + num_splits - 1) / num_splits;
    split_len = (split_len + blockDim.x - 1) / blockDim.x * blockDim.x;
    split_len = umax(split_len, min_split_len);
    const unsigned long long offset = (unsigned long long)split * split_len;
    if (offset >= span) {
        // Neutral partial: the whole block leaves together (no barrier is reached).
        if (threadIdx.x == 0) {
            partial_stats[2 * partial] = NEG_INF;
            partial_stats[2 * partial + 1] = 0.0f;
        }
        return;
    }
    const unsigned int begin = r.first + (unsigned int)offset;
    const unsigned int end = umin(begin + split_len, r.pos + 1);

    const AttendSmem sm = attend_smem(smem, head_dim);
    load_q(sm.q, q, r, num_heads, head_dim);
    float acc[MAX_DIMS_PER_THREAD];
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) acc[i] = 0.0f;
    float running_max = NEG_INF;
    float running_sum = 0.0f;
    attend_range(sm, scratch, k_cache, v_cache, r, begin, end, head_dim, block_size, scale, acc, running_max, running_sum);

    if (threadIdx.x == 0) {
        partial_stats[2 * partial] = running_max;
        partial_stats[2 * partial + 1] = running_sum;
    }
    float* acc_row = partial_acc + partial * head_dim;
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
        const unsigned int d = threadIdx.x + i * blockDim.x;
        if (d >= head_dim) break;
        acc_row[d] = acc[i];
    }
}

// Combines the partials of row-head blockIdx.x: with M the largest partial max,
// out[d] = sum_s exp(m_s - M) acc_s[d] / sum_s exp(m_s - M) l_s over the non-empty splits
// (l_s > 0; empty splits' acc was never written and is not read). grid (num_rows * num_heads).
template <typename T>
__device__ void paged_attention_combine(
    T* __restrict__ out,
    const float* __restrict__ partial_stats,
    const float* __restrict__ partial_acc,
    unsigned int num_splits,
    unsigned int head_dim
) {
    const unsigned long long first_partial = (unsigned long long)blockIdx.x * num_splits;
    const float* stats = partial_stats + 2 * first_partial;
    float global_max = NEG_INF;
    for (unsigned int s = 0; s < num_splits; ++s) {
        if (stats[2 * s + 1] > 0.0f) global_max = fmaxf(global_max, stats[2 * s]);
    }
    float total = 0.0f;
    for (unsigned int s = 0; s < num_splits; ++s) {
        const float l = stats[2 * s + 1];
        if (l > 0.0f) total += l * expf(stats[2 * s] - global_max);
    }
    const float inv = 1.0f / total;
    const float* acc = partial_acc + first_partial * head_dim;
    T* out_row = out + (unsigned long long)blockIdx.x * head_dim;
    for (unsigned int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (unsigned int s = 0; s < num_splits; ++s) {
            const float l = stats[2 * s + 1];
            if (l > 0.0f) o += expf(stats[2 * s] - global_max) * acc[(unsigned long long)s * head_dim + d];
        }
        store(out_row + d, o * inv);
    }
}

#define INSTANTIATE(SUFFIX, T)                                                                 \
    extern "C" __global__ void paged_attention_##SUFFIX(                                       \
        T* out, const T* q, const T* k_cache, const T* v_cache, const unsigned int* row_pos,   \
        const unsigned int* row_table, const unsigned int* block_tables,                       \
        unsigned int num_heads, unsigned int num_kv_heads, unsigned int head_dim,              \
        unsigned int block_size, unsigned int sliding_window, float scale) {                   \
        paged_attention<T>(out, q, k_cache, v_cache, row_pos, row_table, block_tables,          \
                           num_heads, num_kv_heads, head_dim, block_size, sliding_window,      \
                           scale);                                                             \
    }                                                                                          \
    extern "C" __global__ void paged_attention_split_##SUFFIX(                                 \
        float* partial_stats, float* partial_acc, const T* q, const T* k_cache,                \
        const T* v_cache, const unsigned int* row_pos, const unsigned int* row_table,          \
        const unsigned int* block_tables, unsigned int num_heads, unsigned int num_kv_heads,   \
        unsigned int head_dim, unsigned int block_size, unsigned int sliding_window,           \
        float scale, unsigned int min_split_len) {                                             \
        paged_attention_split<T>(partial_stats, partial_acc, q, k_cache, v_cache, row_pos,     \
                                 row_table, block_tables, num_heads, num_kv_heads, head_dim,   \
                                 block_size, sliding_window, scale, min_split_len);            \
    }                                                                                          \
    extern "C" __global__ void paged_attention_combine_##SUFFIX(                               \
        T* out, const float* partial_stats, const float* partial_acc, unsigned int num_splits, \
        unsigned int head_dim) {                                                               \
        paged_attention_combine<T>(out, partial_stats, partial_acc, num_splits, head_dim);     \
    }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
