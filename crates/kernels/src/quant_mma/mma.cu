// Q4_K / Q6_K weights times a batch of activation rows (a generation step of 9..=127 sequences)
// on int8 tensor cores (mma.sync, sm_80+). y[c][row] = sum_k W[row][k] * x[c][k]; x and y BF16 or
// F16, F32 accumulation.
//
// Two launches:
// 1. `mma_quantize_*` rounds the activations to int8 per 32 consecutive values, exactly as the
//    matvec kernels' quantize_rows does (d = max|x| / 127, q = round_half_even(x / d), s = d * sum(q)),
//    into xq [rows_pad][k] and ds [k / 32][rows_pad] (group-major, so one super-block's scales of a
//    token tile are one contiguous run). Padding rows are zero.
// 2. `mma_{q4k,q6k}_*_NT` multiplies: a block takes 64 weight rows (four row warps of 16, each
//    doubled into MMA_PARTS warps that split every super-block between them), one tile of 8 * NT
//    tokens and one slice of the super-blocks (grid.z; small matrices are sliced so the grid fills
//    the GPU, and `mma_reduce_*` adds the slices' F32 partial products in order). Per 256-value
//    super-block the tile's quantized activations are copied to shared memory with cp.async and
//    each warp's weights are loaded into registers, both one super-block ahead of the products;
//    for every 32-value group (Q4_K) or 16-value sub-block (Q6_K) and every 8-token column tile a
//    warp issues one integer mma. The integer dot products are then scaled in F32:
//      Q4_K: acc += d * scale_g * d_x * dot - dmin * min_g * s_x
//      Q6_K: acc += d * scale_s * d_x * dot
//    which is the int8 matvec's arithmetic, so both bind to the same rounded-activation reference.
//
// Fragments (PTX ISA, mma.m16n8k32 / m16n8k16 with .s8): lane = 4 * gid + tig. A (16 weight rows x
// K): a0 row gid, a1 row gid + 8 (k16: two registers; k32: a2/a3 the same rows, second half of K);
// B (K x 8 tokens): column gid; C: rows gid / gid + 8, columns 2 tig, 2 tig + 1. Within a register
// the four bytes are four consecutive k of the first (or second) half at 4 * tig. Which real weight
// index sits at which k does not matter to a dot product as long as A and B agree, so each lane
// takes the 8 (k32) or 4 (k16) real values that are contiguous in the block's bytes.

#define MMA_ROW_WARPS 4  // warps of 16 weight rows: 64 rows per block
#define MMA_PARTS 2      // warps per 16 rows, each taking its share of every super-block
#define MMA_WARPS (MMA_ROW_WARPS * MMA_PARTS)
#define MMA_ROWS (16 * MMA_ROW_WARPS)
// A super-block is four units (Q4_K: group pairs j; Q6_K: 64-value runs i = 2h + lh); a warp
// takes UNITS of them.
#define UNITS (4 / MMA_PARTS)
// Shared-memory row strides of the token tile (256 int8 values plus padding) chosen so that the
// fragment loads of the 8 tokens of a column tile hit distinct banks: 72 words (8-byte loads of
// Q4_K) and 68 words (4-byte loads of Q6_K).
#define Q4K_STRIDE 288
#define Q6K_STRIDE 272

// ---- activations -----------------------------------------------------------------------------

// grid (k / 256, rows_pad), 32 threads: each thread quantizes 8 consecutive values of one row.
template <typename T>
__device__ void mma_quantize(const T* __restrict__ x, unsigned int rows, unsigned int k, unsigned int rows_pad,
                             unsigned char* __restrict__ xq, float2* __restrict__ ds) {
    const unsigned int row = blockIdx.y, col = blockIdx.x * 256 + threadIdx.x * 8;
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (row < rows) unpack8<T>(*(const uint4*)(x + (unsigned long long)row * k + col), v);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int q[8], sum = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        q[i] = __float2int_rn(v[i] * inv);
        sum += q[i];
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    uint2 packed;
    packed.x = (q[0] & 0xFF) | ((q[1] & 0xFF) << 8) | ((q[2] & 0xFF) << 16) | ((unsigned int)(q[3] & 0xFF) << 24);
    packed.y = (q[4] & 0xFF) | ((q[5] & 0xFF) << 8) | ((q[6] & 0xFF) << 16) | ((unsigned int)(q[7] & 0xFF) << 24);
    *(uint2*)(xq + (unsigned long long)row * k + col) = packed;
    if (threadIdx.x % 4 == 0) ds[(unsigned long long)(col / 32) * rows_pad + row] = make_float2(d, d * (float)sum);
}

// ---- tensor-core helpers ---------------------------------------------------------------------

__device__ __forceinline__ void mma_k32(int c[4], const unsigned int a[4], unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_k16(int c[4], unsigned int a0, unsigned int a1, unsigned int b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* global) {
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(global));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;"); }

// Copies super-block sb of the token tile (NTOK tokens from tok0) into shared memory: the int8
// values (row stride STRIDE) and the eight groups' (d, s) pairs, group-major ([8][NTOK]).
template <int NTOK, int STRIDE>
__device__ __forceinline__ void stage_tokens(unsigned char* xs, float2* dss, const unsigned char* xq, const float2* ds,
                                             unsigned int sb, unsigned int k, unsigned int rows_pad, unsigned int tok0) {
    const unsigned int tid = threadIdx.y * 32 + threadIdx.x;
    for (unsigned int i = tid; i < NTOK * 16; i += 32 * MMA_WARPS) {
        const unsigned int n = i / 16, chunk = i % 16;
        cp_async16(xs + n * STRIDE + chunk * 16, xq + (unsigned long long)(tok0 + n) * k + sb * 256 + chunk * 16);
    }
    for (unsigned int i = tid; i < 8 * NTOK / 2; i += 32 * MMA_WARPS) {
        const unsigned int g = i / (NTOK / 2), pair = i % (NTOK / 2);
        cp_async16(dss + g * NTOK + 2 * pair, ds + (unsigned long long)(sb * 8 + g) * rows_pad + tok0 + 2 * pair);
    }
}

// The lane's results: rows gid, gid + 8 of the warp's 16, tokens 2 tig, 2 tig + 1 of each tile.
template <typename T, int NT>
__device__ __forceinline__ void store_tile(const float acc[NT][4], T* y, unsigned int row0, unsigned int nrows,
                                           unsigned int tok0, unsigned int rows) {
    const unsigned int tig = threadIdx.x % 4;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned int row = row0 + (i / 2) * 8, tok = tok0 + t * 8 + 2 * tig + i % 2;
            if (row < nrows && tok < rows) store(y + (unsigned long long)tok * nrows + row, acc[t][i]);
        }
}

// ---- Q4_K ------------------------------------------------------------------------------------

// A lane's share of one row's super-block: the header and, per group pair j, the 8 bytes at
// 8 * tig of the pair's 32 (low nibbles: group 2j, high: group 2j + 1).
struct Q4KLane {
    uint4 head;
    uint2 qs[UNITS];  // group pairs j = part * UNITS + u
};

__device__ __forceinline__ Q4KLane q4k_lane(const unsigned char* b, unsigned int tig, unsigned int part) {
    Q4KLane l;
    l.head = *(const uint4*)b;
#pragma unroll
    for (int u = 0; u < UNITS; ++u) l.qs[u] = *(const uint2*)(b + 16 + 32 * (part * UNITS + u) + 8 * tig);
    return l;
}

template <int NT>
__device__ __forceinline__ void q4k_super_block(const Q4KLane& r0, const Q4KLane& r1, unsigned int part,
                                                const unsigned char* xs, const float2* dss, float acc[NT][4]) {
    const unsigned int gid = threadIdx.x / 4, tig = threadIdx.x % 4;
    const float d0 = h2f((unsigned short)(r0.head.x & 0xffffu)), m0 = h2f((unsigned short)(r0.head.x >> 16));
    const float d1 = h2f((unsigned short)(r1.head.x & 0xffffu)), m1 = h2f((unsigned short)(r1.head.x >> 16));
#pragma unroll
    for (int v = 0; v < 2 * UNITS; ++v) {
        const int u = v / 2, shift = 4 * (v % 2);
        const unsigned int g = 2 * (part * UNITS + u) + v % 2;
        unsigned int sc0, mn0, sc1, mn1;
        q4k_scale_min(r0.head, g, &sc0, &mn0);
        q4k_scale_min(r1.head, g, &sc1, &mn1);
        const float f0 = d0 * (float)sc0, fm0 = m0 * (float)mn0, f1 = d1 * (float)sc1, fm1 = m1 * (float)mn1;
        const unsigned int a[4] = {(r0.qs[u].x >> shift) & 0x0F0F0F0Fu, (r1.qs[u].x >> shift) & 0x0F0F0F0Fu,
                                   (r0.qs[u].y >> shift) & 0x0F0F0F0Fu, (r1.qs[u].y >> shift) & 0x0F0F0F0Fu};
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const uint2 b = *(const uint2*)(xs + (t * 8 + gid) * Q4K_STRIDE + g * 32 + tig * 8);
            int c[4] = {0, 0, 0, 0};
            mma_k32(c, a, b.x, b.y);
            const float4 dd = *(const float4*)(dss + g * (NT * 8) + t * 8 + 2 * tig);  // tokens 2 tig, 2 tig + 1
            acc[t][0] += f0 * dd.x * (float)c[0] - fm0 * dd.y;
            acc[t][1] += f0 * dd.z * (float)c[1] - fm0 * dd.w;
            acc[t][2] += f1 * dd.x * (float)c[2] - fm1 * dd.y;
            acc[t][3] += f1 * dd.z * (float)c[3] - fm1 * dd.w;
        }
    }
}

// ---- Q6_K ------------------------------------------------------------------------------------

// Four bytes at p, a 2-byte aligned address: one load when it is 4-byte aligned, else two
// aligned words and a byte permute.
__device__ __forceinline__ unsigned int ld32_any(const unsigned char* p) {
    if (((unsigned long long)p & 3) == 0) return *(const unsigned int*)p;
    const unsigned int* w = (const unsigned int*)(p - 2);
    return __byte_perm(w[0], w[1], 0x5432);
}

// A lane's share of one row's super-block: for half h and 16-value run lh, the 4 bytes at 4 * tig of
// ql[64h + 16lh ..], ql[64h + 32 + 16lh ..] and qh[32h + 16lh ..]; the eight scales of half h; d.
struct Q6KLane {
    unsigned int ql_a[UNITS], ql_b[UNITS], qh[UNITS];  // runs i = 2h + lh = part * UNITS + u
    unsigned int scales[UNITS][2];                     // scales[8h .. 8h + 8) of run u
    float d;
};

__device__ __forceinline__ Q6KLane q6k_lane(const unsigned char* b, unsigned int tig, unsigned int part) {
    Q6KLane l;
#pragma unroll
    for (int u = 0; u < UNITS; ++u) {
        const unsigned int i = part * UNITS + u, h = i / 2, lh = i % 2;
        l.ql_a[u] = ld32_any(b + 64 * h + 16 * lh + 4 * tig);
        l.ql_b[u] = ld32_any(b + 64 * h + 32 + 16 * lh + 4 * tig);
        l.qh[u] = ld32_any(b + 128 + 32 * h + 16 * lh + 4 * tig);
        l.scales[u][0] = ld32_any(b + 192 + 8 * h);
        l.scales[u][1] = ld32_any(b + 196 + 8 * h);
    }
    l.d = h2f(ld16(b + 208));
    return l;
}

// The int8 weights (value - 32) of quarter q (values 32q apart within a half) of the lane's run u.
__device__ __forceinline__ unsigned int q6k_quarter(const Q6KLane& l, int u, int q) {
    const unsigned int lo = q % 2 == 0 ? l.ql_a[u] : l.ql_b[u];
    const unsigned int low = (lo >> (4 * (q / 2))) & 0x0F0F0F0Fu;
    const unsigned int high = ((l.qh[u] >> (2 * q)) << 4) & 0x30303030u;
    return minus32_bytes(low | high);
}

// d * the scale of quarter q of run u (sub-block 8h + 2q + lh: byte lh + 2q of the run's eight).
__device__ __forceinline__ float q6k_scale(const Q6KLane& l, int u, unsigned int lh, int q) {
    return l.d * (float)(signed char)((l.scales[u][q / 2] >> (8 * (lh + 2 * (q % 2)))) & 0xFFu);
}

template <int NT>
__device__ __forceinline__ void q6k_super_block(const Q6KLane& r0, const Q6KLane& r1, unsigned int part,
                                                const unsigned char* xs, const float2* dss, float acc[NT][4]) {
    const unsigned int gid = threadIdx.x / 4, tig = threadIdx.x % 4;
#pragma unroll
    for (int u = 0; u < UNITS; ++u)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const unsigned int i = part * UNITS + u;
            const unsigned int s = 8 * (i / 2) + 2 * q + i % 2;  // sub-block: values 16 s .. 16 s + 16
            const unsigned int a0 = q6k_quarter(r0, u, q), a1 = q6k_quarter(r1, u, q);
            const float f0 = q6k_scale(r0, u, i % 2, q), f1 = q6k_scale(r1, u, i % 2, q);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                const unsigned int b = *(const unsigned int*)(xs + (t * 8 + gid) * Q6K_STRIDE + s * 16 + tig * 4);
                int c[4] = {0, 0, 0, 0};
                mma_k16(c, a0, a1, b);
                const float4 dd = *(const float4*)(dss + (s / 2) * (NT * 8) + t * 8 + 2 * tig);
                acc[t][0] += f0 * dd.x * (float)c[0];
                acc[t][1] += f0 * dd.z * (float)c[1];
                acc[t][2] += f1 * dd.x * (float)c[2];
                acc[t][3] += f1 * dd.z * (float)c[3];
            }
        }
}

// ---- the product -----------------------------------------------------------------------------

#define FORMAT_Q4K 0
#define FORMAT_Q6K 1

// Lanes of part > 0 hand their sums to part 0 through shared memory (the token buffers, free by
// then), which adds them in part order: one fixed order, whatever the batch.
template <int NT>
__device__ __forceinline__ bool reduce_parts(float acc[NT][4], float* scratch) {
    const unsigned int row_warp = threadIdx.y % MMA_ROW_WARPS, part = threadIdx.y / MMA_ROW_WARPS;
    // [part - 1][row_warp][t * 4 + i][lane]: consecutive lanes, consecutive words
    static_assert((MMA_PARTS - 1) * MMA_ROW_WARPS * NT * 4 * 32 * 4 <= 2 * NT * 8 * Q6K_STRIDE, "scratch fits the token buffers");
    float* mine = scratch + (row_warp * NT * 4) * 32 + threadIdx.x;
    const unsigned int part_stride = MMA_ROW_WARPS * NT * 4 * 32;
    if (part > 0)
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int i = 0; i < 4; ++i) mine[(part - 1) * part_stride + (t * 4 + i) * 32] = acc[t][i];
    __syncthreads();
    if (part > 0) return false;
#pragma unroll
    for (int p = 1; p < MMA_PARTS; ++p)
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[t][i] += mine[(p - 1) * part_stride + (t * 4 + i) * 32];
    return true;
}

// A lane's weights of one super-block in either format.
template <int FORMAT>
struct Lane;
template <>
struct Lane<FORMAT_Q4K> {
    Q4KLane r;
    __device__ __forceinline__ void load(const unsigned char* b, unsigned int tig, unsigned int part) { r = q4k_lane(b, tig, part); }
    template <int NT>
    __device__ __forceinline__ void multiply(const Lane& r1, unsigned int part, const unsigned char* xs, const float2* dss, float acc[NT][4]) const {
        q4k_super_block<NT>(r, r1.r, part, xs, dss, acc);
    }
};
template <>
struct Lane<FORMAT_Q6K> {
    Q6KLane r;
    __device__ __forceinline__ void load(const unsigned char* b, unsigned int tig, unsigned int part) { r = q6k_lane(b, tig, part); }
    template <int NT>
    __device__ __forceinline__ void multiply(const Lane& r1, unsigned int part, const unsigned char* xs, const float2* dss, float acc[NT][4]) const {
        q6k_super_block<NT>(r, r1.r, part, xs, dss, acc);
    }
};

// Block (x: 64 weight rows, y: a tile of 8 * NT tokens, z: a slice of the super-blocks). With
// one slice (gridDim.z == 1) the block stores y; otherwise F32 partial sums into
// partial[z][rows][nrows], which mma_reduce adds in slice order.
template <typename T, int NT, int FORMAT>
__device__ void mma_matmul(const unsigned char* __restrict__ w, const unsigned char* __restrict__ xq,
                           const float2* __restrict__ ds, T* __restrict__ y, float* __restrict__ partial,
                           unsigned int nrows, unsigned int k, unsigned int rows, unsigned int rows_pad) {
    constexpr int NTOK = NT * 8;
    constexpr int STRIDE = FORMAT == FORMAT_Q4K ? Q4K_STRIDE : Q6K_STRIDE;
    constexpr unsigned int BLOCK_BYTES = FORMAT == FORMAT_Q4K ? 144 : 210;
    __shared__ __align__(16) unsigned char xs[2][NTOK * STRIDE];
    __shared__ __align__(16) float2 dss[2][8 * NTOK];
    const unsigned int nsb = k / 256, tok0 = blockIdx.y * NTOK;
    const unsigned int sb_begin = blockIdx.z * nsb / gridDim.z, sb_end = (blockIdx.z + 1) * nsb / gridDim.z;
    const unsigned int gid = threadIdx.x / 4, tig = threadIdx.x % 4;
    const unsigned int row_warp = threadIdx.y % MMA_ROW_WARPS, part = threadIdx.y / MMA_ROW_WARPS;
    const unsigned int row0 = blockIdx.x * MMA_ROWS + row_warp * 16 + gid;
    // Rows past the matrix read the last row (valid memory); their results are not stored.
    const unsigned char* w0 = w + (unsigned long long)(row0 < nrows ? row0 : nrows - 1) * nsb * BLOCK_BYTES;
    const unsigned char* w1 = w + (unsigned long long)(row0 + 8 < nrows ? row0 + 8 : nrows - 1) * nsb * BLOCK_BYTES;
    float acc[NT][4];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    stage_tokens<NTOK, STRIDE>(xs[0], dss[0], xq, ds, sb_begin, k, rows_pad, tok0);
    cp_async_commit();
    Lane<FORMAT> cur0, cur1;  // this super-block's weights; the next one's load during its products
    cur0.load(w0 + sb_begin * BLOCK_BYTES, tig, part);
    cur1.load(w1 + sb_begin * BLOCK_BYTES, tig, part);
    for (unsigned int sb = sb_begin; sb < sb_end; ++sb) {
        const unsigned int buf = (sb - sb_begin) % 2;
        const bool more = sb + 1 < sb_end;
        if (more) stage_tokens<NTOK, STRIDE>(xs[buf ^ 1], dss[buf ^ 1], xq, ds, sb + 1, k, rows_pad, tok0);
        cp_async_commit();  // possibly empty, so that "all but the newest group" is this super-block
        Lane<FORMAT> next0 = cur0, next1 = cur1;
        if (more) {
            next0.load(w0 + (sb + 1) * BLOCK_BYTES, tig, part);
            next1.load(w1 + (sb + 1) * BLOCK_BYTES, tig, part);
        }
        cp_async_wait_one();
        __syncthreads();
        cur0.template multiply<NT>(cur1, part, xs[buf], dss[buf], acc);
        __syncthreads();  // everyone is done with xs[buf] before the next iteration refills it
        cur0 = next0;
        cur1 = next1;
    }
    if (!reduce_parts<NT>(acc, (float*)&xs[0][0])) return;
    if (gridDim.z == 1) store_tile<T, NT>(acc, y, row0, nrows, tok0, rows);
    else store_tile<float, NT>(acc, partial + (unsigned long long)blockIdx.z * rows * nrows, row0, nrows, tok0, rows);
}

// y = the sum of the slices' partial products, in slice order (grid: count / 256 blocks of 256).
template <typename T>
__device__ void mma_reduce(const float* __restrict__ partial, T* __restrict__ y, unsigned int count, unsigned int slices) {
    const unsigned int i = blockIdx.x * 256 + threadIdx.x;
    if (i >= count) return;
    float sum = partial[i];
    for (unsigned int z = 1; z < slices; ++z) sum += partial[(unsigned long long)z * count + i];
    store(y + i, sum);
}

#define MMA_KERNEL(FMT, FORMAT, SUFFIX, T, NT)                                                           \
    extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS) mma_##FMT##_##SUFFIX##_##NT(             \
        const unsigned char* w, const unsigned char* xq, const float2* ds, T* y, float* partial,          \
        unsigned int nrows, unsigned int k, unsigned int rows, unsigned int rows_pad) {                   \
        mma_matmul<T, NT, FORMAT>(w, xq, ds, y, partial, nrows, k, rows, rows_pad);                      \
    }
#define MMA_TILES(FMT, FORMAT, SUFFIX, T)                                                                 \
    MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 1) MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 2)                           \
    MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 3) MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 4)                           \
    MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 5) MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 6)                           \
    MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 7) MMA_KERNEL(FMT, FORMAT, SUFFIX, T, 8)
#define MMA_ALL(SUFFIX, T)                                                                                \
    extern "C" __global__ void mma_quantize_##SUFFIX(const T* x, unsigned int rows, unsigned int k,     \
                                                     unsigned int rows_pad, unsigned char* xq, float2* ds) { \
        mma_quantize<T>(x, rows, k, rows_pad, xq, ds);                                                   \
    }                                                                                                     \
    extern "C" __global__ void mma_reduce_##SUFFIX(const float* partial, T* y, unsigned int count,       \
                                                   unsigned int slices) {                                 \
        mma_reduce<T>(partial, y, count, slices);                                                        \
    }                                                                                                     \
    MMA_TILES(q4k, FORMAT_Q4K, SUFFIX, T) MMA_TILES(q6k, FORMAT_Q6K, SUFFIX, T)

MMA_ALL(bf16, bf16)
MMA_ALL(f16, f16)
