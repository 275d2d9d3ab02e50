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
// The inner loop: each warp runs its own online softmax over its share of the positions (warp w
// of W takes positions begin + w, + W, + 2W, ...; a lane looks up one position's slot), so the
// loop has no block-wide barrier. A position's score is a warp-wide dot product (lane `lane` holds
// dims lane, lane + 32, ...: coalesced K reads). Positions go through a warp a group at a time
// (up to four): the group's K and V rows are loaded together, so all of them are in flight at
// once, then the warp folds the group's scores and V rows into its running max, sum and output. At the end the warps' states (max, sum, output) are
// combined in warp order, as the split path's combine kernel does for splits. The order of every
// sum depends only on the row's own positions and the block's warp count (which the host keeps
// fixed in batch-invariant mode), never on the other rows of the batch.

#define IN_FLIGHT 4  // positions a warp has in flight at once
#define MAX_DIMS_PER_THREAD 4  // output dims per thread after the warps' accumulators are gathered
#define MAX_WARPS 32

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
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

// A lane's dims of a head row: d = lane + 32 j for j < DPL (DPL = ceil(head_dim / 32), at most 16).
template <int DPL>
struct LaneRow {
    float v[DPL];
};

template <typename T, int DPL>
__device__ __forceinline__ LaneRow<DPL> load_lane_row(const T* row, unsigned int head_dim) {
    const unsigned int lane = threadIdx.x % 32;
    LaneRow<DPL> r;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
        const unsigned int d = lane + 32 * j;
        r.v[j] = d < head_dim ? to_f32(row[d]) : 0.0f;
    }
    return r;
}

// A warp's running state over its positions: its max and sum (warp-uniform) and its part of the
// unnormalized output (lane dims, see LaneRow).
template <int DPL>
struct AttendState {
    float running_max;
    float running_sum;
    LaneRow<DPL> acc;
};

template <int DPL>
__device__ __forceinline__ AttendState<DPL> attend_start() {
    AttendState<DPL> s;
    s.running_max = NEG_INF;
    s.running_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) s.acc.v[j] = 0.0f;
    return s;
}

// Positions whose K and V rows a warp loads together (all in flight at once): IN_FLIGHT while a
// lane's share of the rows stays small, fewer for wide heads (registers).
template <int DPL>
struct Group {
    static constexpr int size = DPL <= 4 ? IN_FLIGHT : (DPL == 8 ? 2 : 1);
};

// Online softmax of the query (lane dims in `q`) over this warp's share of positions [begin, end)
// of the row's sequence, folded into the warp's `st`: afterwards acc = sum_p exp(s_p -
// running_max) v_p and running_sum = sum_p exp(s_p - running_max) over the warp's positions. A
// warp without positions keeps running_max = -inf, running_sum = 0. The warp takes its positions
// a group (Group<DPL>::size) at a time and loads the group's K and V rows together, so a group
// costs one memory round trip (K first and V after the scores took two); the running max, sum
// and output are rescaled once per group.
template <typename T, int DPL>
__device__ void attend_range(
    const T* __restrict__ k_cache,
    const T* __restrict__ v_cache,
    const RowHead& r,
    const LaneRow<DPL>& q,
    unsigned int begin,
    unsigned int end,
    unsigned int head_dim,
    unsigned int block_size,
    float scale,
    AttendState<DPL>& st
) {
    constexpr int GROUP = Group<DPL>::size;
    const unsigned int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
    for (unsigned int chunk = begin; chunk < end; chunk += blockDim.x) {
        // The warp's positions in this chunk (count of them warp-uniform, >= 1), the lane's own
        // position and its slot.
        const unsigned int first = chunk + warp;
        if (first >= end) break;
        const unsigned int count = umin(32u, (end - first + num_warps - 1) / num_warps);
        const unsigned int p = first + lane * num_warps;
        const unsigned long long my_slot =
            lane < count ? (unsigned long long)r.table[p / block_size] * block_size + p % block_size : 0;
        for (unsigned int i = 0; i < count; i += GROUP) {
            float dot[GROUP];
            LaneRow<DPL> v[GROUP];
#pragma unroll
            for (int u = 0; u < GROUP; ++u) {
                const unsigned long long slot = __shfl_sync(0xffffffffu, my_slot, (i + u) % 32);
                dot[u] = 0.0f;
                if (i + u < count) {
                    const unsigned long long at = slot * r.row_stride + r.head_offset;
                    const LaneRow<DPL> k = load_lane_row<T, DPL>(k_cache + at, head_dim);
                    v[u] = load_lane_row<T, DPL>(v_cache + at, head_dim);
#pragma unroll
                    for (int j = 0; j < DPL; ++j) dot[u] += q.v[j] * k.v[j];
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int u = 0; u < GROUP; ++u) dot[u] += __shfl_xor_sync(0xffffffffu, dot[u], o);
            // Every lane holds every score of the group; position i is always in it.
            float new_max = st.running_max;
#pragma unroll
            for (int u = 0; u < GROUP; ++u)
                if (i + u < count) new_max = fmaxf(new_max, dot[u] * scale);
            const float correction = expf(st.running_max - new_max);
            float group_sum = 0.0f;
#pragma unroll
            for (int j = 0; j < DPL; ++j) st.acc.v[j] *= correction;
#pragma unroll
            for (int u = 0; u < GROUP; ++u) {
                if (i + u < count) {
                    const float w = expf(dot[u] * scale - new_max);
                    group_sum += w;
#pragma unroll
                    for (int j = 0; j < DPL; ++j) st.acc.v[j] += w * v[u].v[j];
                }
            }
            st.running_sum = st.running_sum * correction + group_sum;
            st.running_max = new_max;
        }
    }
}

// The warps' states combined in warp order (rescaled to their common max): thread t gets dims
// t + i * blockDim.x of the unnormalized output in out[i]; the returned state holds the block's max
// and sum. `gather` holds num_warps * head_dim floats (dynamic shared memory), `stats` 2 *
// num_warps.
template <int DPL>
__device__ __forceinline__ void gather_warps(AttendState<DPL>& st, float* gather, float* stats, unsigned int head_dim,
                                             float out[MAX_DIMS_PER_THREAD]) {
    const unsigned int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
        const unsigned int d = lane + 32 * j;
        if (d < head_dim) gather[warp * head_dim + d] = st.acc.v[j];
    }
    if (lane == 0) {
        stats[2 * warp] = st.running_max;
        stats[2 * warp + 1] = st.running_sum;
    }
    __syncthreads();
    float block_max = NEG_INF;
    for (unsigned int w = 0; w < num_warps; ++w)
        if (stats[2 * w + 1] > 0.0f) block_max = fmaxf(block_max, stats[2 * w]);
    float block_sum = 0.0f;
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) out[i] = 0.0f;
    for (unsigned int w = 0; w < num_warps; ++w) {
        if (stats[2 * w + 1] <= 0.0f) continue;  // a warp without positions
        const float scale = expf(stats[2 * w] - block_max);
        block_sum += scale * stats[2 * w + 1];
        for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
            const unsigned int d = threadIdx.x + i * blockDim.x;
            if (d < head_dim) out[i] += scale * gather[w * head_dim + d];
        }
    }
    st.running_max = block_max;
    st.running_sum = block_sum;
}

template <typename T, int DPL>
__device__ __forceinline__ LaneRow<DPL> load_q(const T* q, const RowHead& r, unsigned int num_heads, unsigned int head_dim) {
    return load_lane_row<T, DPL>(q + ((unsigned long long)r.row * num_heads + r.head) * head_dim, head_dim);
}

// One block per (row, head): grid (num_rows * num_heads).
template <typename T, int DPL>
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
    extern __shared__ float gather[];
    __shared__ float stats[2 * MAX_WARPS];
    const RowHead r = row_head(blockIdx.x, row_pos, row_table, block_tables, num_heads, num_kv_heads, head_dim, sliding_window);
    const LaneRow<DPL> qv = load_q<T, DPL>(q, r, num_heads, head_dim);
    AttendState<DPL> st = attend_start<DPL>();
    attend_range<T, DPL>(k_cache, v_cache, r, qv, r.first, r.pos + 1, head_dim, block_size, scale, st);
    float acc[MAX_DIMS_PER_THREAD];
    gather_warps<DPL>(st, gather, stats, head_dim, acc);

    const float inv = 1.0f / st.running_sum;
    T* out_row = out + ((unsigned long long)r.row * num_heads + r.head) * head_dim;
    for (int i = 0; i < MAX_DIMS_PER_THREAD; ++i) {
        const unsigned int d = threadIdx.x + i * blockDim.x;
        if (d >= head_dim) break;
        store(out_row + d, acc[i] * inv);
    }
}

// Split over the sequence: grid (num_rows * num_heads, num_splits); block (x, y) writes the
// partial state of row-head x over its y-th range of visible positions (see the file comment).
template <typename T, int DPL>
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
    extern __shared__ float gather[];
    __shared__ float stats[2 * MAX_WARPS];
    const unsigned int split = blockIdx.y;
    const unsigned int num_splits = gridDim.y;
    const unsigned long long partial = (unsigned long long)blockIdx.x * num_splits + split;
    const RowHead r = row_head(blockIdx.x, row_pos, row_table, block_tables, num_heads, num_kv_heads, head_dim, sliding_window);

    const unsigned int span = r.pos + 1 - r.first;
    const unsigned int split_len = umax((span + num_splits - 1) / num_splits, min_split_len);
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

    const LaneRow<DPL> qv = load_q<T, DPL>(q, r, num_heads, head_dim);
    AttendState<DPL> st = attend_start<DPL>();
    attend_range<T, DPL>(k_cache, v_cache, r, qv, begin, end, head_dim, block_size, scale, st);
    float acc[MAX_DIMS_PER_THREAD];
    gather_warps<DPL>(st, gather, stats, head_dim, acc);

    if (threadIdx.x == 0) {
        partial_stats[2 * partial] = st.running_max;
        partial_stats[2 * partial + 1] = st.running_sum;
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

// Kernels per type and per DPL (lane dims: head_dim up to 32 * DPL), named `..._SUFFIX_dDPL`; at
// most 512 threads a block (the host's largest choice), so registers are capped to fit.
#define INSTANTIATE_DPL(SUFFIX, T, DPL)                                                        \
    extern "C" __global__ void __launch_bounds__(512) paged_attention_##SUFFIX##_d##DPL(       \
        T* out, const T* q, const T* k_cache, const T* v_cache, const unsigned int* row_pos,   \
        const unsigned int* row_table, const unsigned int* block_tables,                       \
        unsigned int num_heads, unsigned int num_kv_heads, unsigned int head_dim,              \
        unsigned int block_size, unsigned int sliding_window, float scale) {                   \
        paged_attention<T, DPL>(out, q, k_cache, v_cache, row_pos, row_table, block_tables,     \
                                num_heads, num_kv_heads, head_dim, block_size, sliding_window, \
                                scale);                                                        \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(512) paged_attention_split_##SUFFIX##_d##DPL( \
        float* partial_stats, float* partial_acc, const T* q, const T* k_cache,                \
        const T* v_cache, const unsigned int* row_pos, const unsigned int* row_table,          \
        const unsigned int* block_tables, unsigned int num_heads, unsigned int num_kv_heads,   \
        unsigned int head_dim, unsigned int block_size, unsigned int sliding_window,           \
        float scale, unsigned int min_split_len) {                                             \
        paged_attention_split<T, DPL>(partial_stats, partial_acc, q, k_cache, v_cache, row_pos, \
                                      row_table, block_tables, num_heads, num_kv_heads,         \
                                      head_dim, block_size, sliding_window, scale,              \
                                      min_split_len);                                           \
    }
#define INSTANTIATE(SUFFIX, T)                                                                 \
    INSTANTIATE_DPL(SUFFIX, T, 2)                                                              \
    INSTANTIATE_DPL(SUFFIX, T, 4)                                                              \
    INSTANTIATE_DPL(SUFFIX, T, 8)                                                              \
    INSTANTIATE_DPL(SUFFIX, T, 16)                                                             \
    extern "C" __global__ void paged_attention_combine_##SUFFIX(                               \
        T* out, const float* partial_stats, const float* partial_acc, unsigned int num_splits, \
        unsigned int head_dim) {                                                               \
        paged_attention_combine<T>(out, partial_stats, partial_acc, num_splits, head_dim);     \
    }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, bf16)
INSTANTIATE(f16, f16)
