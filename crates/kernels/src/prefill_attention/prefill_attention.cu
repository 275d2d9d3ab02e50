// Tiled (FlashAttention-style) attention for prompt rows over the paged KV pool, compiled at
// run time by NVRTC after `dtypes.cuh` (BF16/F16 converted by hand).
//
// Work split: grid (ceil(num_rows * group / NQV), num_kv_heads), 128 threads (4 warps).
// `group` = num_heads / num_kv_heads. The block's *query vectors* are NQV consecutive
// (row, query head of this kv head) pairs of the flattened batch: pair t = row * group + g,
// t in [blockIdx.x * NQV, blockIdx.x * NQV + NQV). Warp w owns pairs w*QW .. w*QW+QW-1
// (QW = NQV / 4). Consecutive pairs cover consecutive rows, so one K/V tile loaded into shared
// memory serves every row and every query head of the GQA group in the block.
//
// The rows of a block may belong to several sequences (at a boundary between sequences, or
// generation rows). The block walks its rows in *segments* of consecutive rows of one sequence
// (same block-table offset in the metadata); for each segment it streams the positions
// [first_visible(first row), last row's position] in tiles of BK = 32 positions. Positions of
// consecutive rows are consecutive, so the union of their visible ranges is that interval:
// no tile the block loads is fully masked (causal / sliding-window tiles are skipped by
// construction). Query vectors outside the segment do no work for its tiles.
//
// Per tile: K is loaded into shared memory (F32) in chunks of DC = 64 dims, every lane of a
// warp scores one position (lane = position in the tile) for each of the warp's QW query
// vectors against the scaled queries in shared memory; online softmax per query vector with
// warp shuffles (running max m, running sum l, F32); probabilities go to shared memory; then V
// is loaded in chunks of DC dims and lane `lane` accumulates output dims lane + 32 i (F32
// registers, QW * HD / 32 per lane). At the end each valid vector writes acc / l.
//
// Shared memory (static, F32): Q [NQV][HD] (16 KiB for every HD: NQV = 4096 / HD), K chunk
// [BK][DC + 4] (8.5 KiB; +4 floats of padding keep the 16-byte per-lane row reads
// conflict-free), V chunk [BK][DC] (8 KiB), P [NQV][BK] (<= 8 KiB). At most 41.5 KiB < 48 KiB.
//
// Metadata: the paged-attention kernel's u32 array (`kernel_metadata`): row_pos[num_rows],
// row_table[num_rows], block_tables[...]. Pools are [num_blocks, block_size, num_kv_heads,
// head_dim]; q and out [num_rows, num_heads, head_dim]. Pool indexing is 64-bit.

#define NUM_WARPS 4
#define NUM_THREADS (NUM_WARPS * 32)
#define BK 32
#define DC 64
#define KPAD 4

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ unsigned int first_visible(unsigned int pos, unsigned int sliding_window) {
    return (sliding_window != 0 && pos + 1 > sliding_window) ? pos + 1 - sliding_window : 0;
}

// Copies DC dims (starting at `dim0`) of positions [tile, tile + BK) of one kv head into
// `dst` (row stride `dst_stride` floats); positions >= end are zero-filled. All threads call it.
template <typename T>
__device__ __forceinline__ void load_chunk(
    float* dst,
    unsigned int dst_stride,
    const T* __restrict__ cache,
    const unsigned int* __restrict__ table,
    unsigned int tile,
    unsigned int end,
    unsigned int block_size,
    unsigned long long row_stride,
    unsigned long long head_offset,
    unsigned int dim0
) {
    for (unsigned int idx = threadIdx.x; idx < BK * DC; idx += NUM_THREADS) {
        const unsigned int j = idx / DC;
        const unsigned int d = idx % DC;
        const unsigned int p = tile + j;
        float x = 0.0f;
        if (p < end) {
            const unsigned long long slot = (unsigned long long)table[p / block_size] * block_size + p % block_size;
            x = to_f32(cache[slot * row_stride + head_offset + dim0 + d]);
        }
        dst[j * dst_stride + d] = x;
    }
}

template <typename T, int HD>
__device__ void prefill_attention(
    T* __restrict__ out,
    const T* __restrict__ q,
    const T* __restrict__ k_cache,
    const T* __restrict__ v_cache,
    const unsigned int* __restrict__ row_pos,
    const unsigned int* __restrict__ row_table,
    const unsigned int* __restrict__ block_tables,
    unsigned int num_rows,
    unsigned int num_heads,
    unsigned int num_kv_heads,
    unsigned int block_size,
    unsigned int sliding_window,  // 0: none
    float scale
) {
    constexpr int NQV = 4096 / HD;       // query vectors per block
    constexpr int QW = NQV / NUM_WARPS;  // query vectors per warp
    constexpr int NCHUNK = HD / DC;      // dim chunks
    constexpr int DPL = HD / 32;         // output dims per lane per vector
    constexpr int CPL = DC / 32;         // output dims per lane per chunk

    __shared__ __align__(16) float q_sh[NQV * HD];
    __shared__ __align__(16) float k_sh[BK * (DC + KPAD)];
    __shared__ __align__(16) float v_sh[BK * DC];
    __shared__ __align__(16) float p_sh[NQV * BK];

    const unsigned int warp = threadIdx.x / 32;
    const unsigned int lane = threadIdx.x % 32;
    const unsigned int kv_head = blockIdx.y;
    const unsigned int group = num_heads / num_kv_heads;
    const unsigned long long pair0 = (unsigned long long)blockIdx.x * NQV;
    const unsigned long long row_stride = (unsigned long long)num_kv_heads * HD;
    const unsigned long long head_offset = (unsigned long long)kv_head * HD;

    // Scaled queries of the block (zeros for pairs past the last row).
    for (unsigned int idx = threadIdx.x; idx < NQV * HD; idx += NUM_THREADS) {
        const unsigned int v = idx / HD;
        const unsigned int d = idx % HD;
        const unsigned long long t = pair0 + v;
        const unsigned long long row = t / group;
        float x = 0.0f;
        if (row < num_rows) {
            const unsigned int head = kv_head * group + (unsigned int)(t % group);
            x = to_f32(q[(row * num_heads + head) * HD + d]) * scale;
        }
        q_sh[idx] = x;
    }

    // This warp's query vectors.
    unsigned int my_row[QW];
    unsigned int my_pos[QW];
    unsigned int my_first[QW];
    float m[QW];
    float l[QW];
    float acc[QW][DPL];
#pragma unroll
    for (int r = 0; r < QW; ++r) {
        const unsigned long long t = pair0 + warp * QW + r;
        const unsigned long long row = t / group;
        my_row[r] = row < num_rows ? (unsigned int)row : 0xffffffffu;
        my_pos[r] = row < num_rows ? row_pos[row] : 0;
        my_first[r] = first_visible(my_pos[r], sliding_window);
        m[r] = NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[r][i] = 0.0f;
    }

    const unsigned long long last_pair = pair0 + NQV - 1;
    const unsigned int row_first = (unsigned int)(pair0 / group);
    const unsigned long long last_row = last_pair / group;
    const unsigned int row_last = last_row < num_rows ? (unsigned int)last_row : num_rows - 1;

    for (unsigned int seg_first = row_first; seg_first <= row_last;) {
        // The segment: consecutive rows of one sequence (same block table).
        const unsigned int table_offset = row_table[seg_first];
        unsigned int seg_last = seg_first;
        while (seg_last < row_last && row_table[seg_last + 1] == table_offset) ++seg_last;
        const unsigned int* table = block_tables + table_offset;
        const unsigned int begin = first_visible(row_pos[seg_first], sliding_window);
        const unsigned int end = row_pos[seg_last] + 1;

        // Does this warp own a vector of the segment? (uniform across the warp)
        bool warp_active = false;
#pragma unroll
        for (int r = 0; r < QW; ++r) warp_active |= my_row[r] >= seg_first && my_row[r] <= seg_last;

        for (unsigned int tile = begin; tile < end; tile += BK) {
            float s[QW];
#pragma unroll
            for (int r = 0; r < QW; ++r) s[r] = 0.0f;

            // Scores: lane = position tile + lane.
#pragma unroll
            for (int c = 0; c < NCHUNK; ++c) {
                __syncthreads();  // k_sh is free (previous chunk / tile done)
                load_chunk(k_sh, DC + KPAD, k_cache, table, tile, end, block_size, row_stride, head_offset, c * DC);
                __syncthreads();
                if (warp_active) {
                    const float* k_row = k_sh + lane * (DC + KPAD);
#pragma unroll 4
                    for (int d = 0; d < DC; d += 4) {
                        const float4 kv = *(const float4*)(k_row + d);
#pragma unroll
                        for (int r = 0; r < QW; ++r) {
                            const float4 qv = *(const float4*)(q_sh + (warp * QW + r) * HD + c * DC + d);
                            s[r] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
                        }
                    }
                }
            }

            // Online softmax per query vector; probabilities to p_sh.
            if (warp_active) {
                const unsigned int p = tile + lane;
#pragma unroll
                for (int r = 0; r < QW; ++r) {
                    const bool in_segment = my_row[r] >= seg_first && my_row[r] <= seg_last;
                    const bool visible = in_segment && p >= my_first[r] && p <= my_pos[r];
                    const float score = visible ? s[r] : NEG_INF;
                    const float tile_max = warp_max(score);
                    float prob = 0.0f;
                    if (tile_max != NEG_INF) {  // uniform across the warp
                        const float new_m = fmaxf(m[r], tile_max);
                        const float correction = expf(m[r] - new_m);  // 0 when m was -inf
                        prob = visible ? expf(score - new_m) : 0.0f;
                        l[r] = l[r] * correction + warp_sum(prob);
                        m[r] = new_m;
#pragma unroll
                        for (int i = 0; i < DPL; ++i) acc[r][i] *= correction;
                    }
                    p_sh[(warp * QW + r) * BK + lane] = prob;
                }
                __syncwarp();
            }

            // Output: acc += P V, lane owns dims c * DC + lane + 32 i.
#pragma unroll
            for (int c = 0; c < NCHUNK; ++c) {
                __syncthreads();  // v_sh is free
                load_chunk(v_sh, DC, v_cache, table, tile, end, block_size, row_stride, head_offset, c * DC);
                __syncthreads();
                if (warp_active) {
#pragma unroll 2
                    for (int j = 0; j < BK; j += 4) {
                        float vv[4][CPL];
#pragma unroll
                        for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
                            for (int i = 0; i < CPL; ++i) vv[jj][i] = v_sh[(j + jj) * DC + lane + 32 * i];
                        }
#pragma unroll
                        for (int r = 0; r < QW; ++r) {
                            const float4 pv = *(const float4*)(p_sh + (warp * QW + r) * BK + j);
#pragma unroll
                            for (int i = 0; i < CPL; ++i) {
                                acc[r][c * CPL + i] += pv.x * vv[0][i] + pv.y * vv[1][i] + pv.z * vv[2][i] + pv.w * vv[3][i];
                            }
                        }
                    }
                }
            }
        }
        seg_first = seg_last + 1;
    }

    // Every valid vector saw its own position, so l > 0.
#pragma unroll
    for (int r = 0; r < QW; ++r) {
        if (my_row[r] == 0xffffffffu) continue;
        const unsigned long long t = pair0 + warp * QW + r;
        const unsigned int head = kv_head * group + (unsigned int)(t % group);
        T* out_row = out + ((unsigned long long)my_row[r] * num_heads + head) * HD;
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int c = 0; c < NCHUNK; ++c) {
#pragma unroll
            for (int i = 0; i < CPL; ++i) store(out_row + c * DC + lane + 32 * i, acc[r][c * CPL + i] * inv);
        }
    }
}

#define INSTANTIATE(SUFFIX, T, HD)                                                              \
    extern "C" __global__ void __launch_bounds__(NUM_THREADS) prefill_attention_##HD##_##SUFFIX( \
        T* out, const T* q, const T* k_cache, const T* v_cache, const unsigned int* row_pos,    \
        const unsigned int* row_table, const unsigned int* block_tables, unsigned int num_rows, \
        unsigned int num_heads, unsigned int num_kv_heads, unsigned int block_size,             \
        unsigned int sliding_window, float scale) {                                             \
        prefill_attention<T, HD>(out, q, k_cache, v_cache, row_pos, row_table, block_tables,    \
                                 num_rows, num_heads, num_kv_heads, block_size, sliding_window, \
                                 scale);                                                        \
    }

INSTANTIATE(f32, float, 64)
INSTANTIATE(bf16, bf16, 64)
INSTANTIATE(f16, f16, 64)
INSTANTIATE(f32, float, 128)
INSTANTIATE(bf16, bf16, 128)
INSTANTIATE(f16, f16, 128)
INSTANTIATE(f32, float, 256)
INSTANTIATE(bf16, bf16, 256)
INSTANTIATE(f16, f16, 256)
