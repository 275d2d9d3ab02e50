// Q4_K / Q6_K weights times a batch of activation rows (a generation step of 9..=127 sequences;
// every row count in batch-invariant mode, where dense BF16/F16 weights come here too) on BF16/F16
// tensor cores (mma.sync m16n8k16, sm_80+). y[c][row] = sum_k W[row][k] * x[c][k]; x
// and y BF16 or F16, F32 accumulation in the mma's own registers.
//
// One launch takes up to three matrices of one width (Q, K, V; gate, up). A block takes 32 or 64
// weight rows of one of them (two or four row warps of 16, `mma_row_warps`, each doubled into two
// warps that split every half super-block between them), one tile of 8 * NT tokens (NT <= 8) and
// one slice of the super-blocks (grid.z: small matrices are sliced so the grid fills the GPU,
// and `mma_reduce_*` adds the slices' F32 partial products in slice order). Token tiles are the
// fastest grid dimension, so the blocks that read the same weights run side by side and share
// them through L2.
//
// Per stage of 128 values (half a super-block) the tile's activations are copied to shared memory
// with cp.async and each warp's weight bytes are loaded into registers, both one stage ahead of the
// products. A warp's share of a stage is one unit: Q4_K group pair j, or Q6_K 64-value run
// i = 2h + lh (four per super-block, two per stage).
// The weights become the mma's A fragments in the activations' type: a 6-bit or 4-bit value v goes
// into the mantissa of 128 (BF16) or 1024 (F16) by one byte permute, the bias is subtracted
// exactly, and one packed FMA applies the group's scale (and Q4_K's min): w = v * (d * scale) -
// dmin * min, rounded once (relative error 2^-9 in BF16, as the weights of the BF16 prompt GEMM
// have), from d * scale and dmin * min that were rounded to the type first (an error of the same
// size shared by a group's 32 weights; the prompt GEMM computes those in F32).
//
// Fragments (PTX ISA, mma.m16n8k16 with 16-bit operands): lane = 4 * gid + tig. A (16 weight rows x
// 16 k): a0 row gid, a1 row gid + 8 at k 2tig, 2tig + 1; a2, a3 the same rows at k 2tig + 8, + 9.
// B (16 k x 8 tokens): b0 at k 2tig, 2tig + 1, b1 at 2tig + 8, + 9, column gid. C: rows gid / gid + 8,
// columns 2tig, 2tig + 1. A dot product does not care which real weight sits at which k as long as
// A and B agree: lane tig takes the real values 4tig .. 4tig + 3 of each 16 (a0/b0 the first two,
// a2/b1 the last two), which are 4 consecutive bytes of a block and 8 consecutive bytes of a token.

#define MMA_PARTS 2  // warps per 16 rows: one unit of each stage each
// Warps of 16 weight rows per block, by token tiles: 2 (32 rows) for tiles of up to 16 tokens,
// whose blocks are light and whose grids then have twice the blocks (8B tg64 b8 about 1,580 ->
// 1,720 tok/s, b16 2,960 -> 3,086); 4 (64 rows) for larger tiles (b64 about 6,750 with 2, 7,100
// with 4; PERF.md). A row's arithmetic does not depend on it (`row_warps` in cuda.rs must agree).
__host__ __device__ constexpr int mma_row_warps(int nt) { return nt <= 2 ? 2 : 4; }
// Shared-memory row stride of a token in a stage (128 values, 256 bytes, plus padding): 72 words,
// so the 8-byte fragment loads of 8 tokens x 4 lanes hit distinct banks.
#define TOKEN_STRIDE 288

// ---- the two 16-bit types --------------------------------------------------------------------

// Per type: the exponent byte that makes 0x??bb the value BIAS + b (b < 128); a packed FMA; x rounded
// to the type (nearest even) in both halves of a word; the mma. PTX names the type `bf16` or `f16`.
template <typename T> struct Mma;
#define MMA_TYPE(T, MAGIC_BYTE, BIAS_VALUE)                                                                  \
    template <> struct Mma<T> {                                                                              \
        static constexpr unsigned int MAGIC = MAGIC_BYTE;                                                    \
        static constexpr float BIAS = BIAS_VALUE;                                                            \
        static __device__ __forceinline__ unsigned int fma2(unsigned int a, unsigned int b, unsigned int c) { \
            unsigned int d;                                                                                  \
            asm("fma.rn." #T "x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));                       \
            return d;                                                                                        \
        }                                                                                                    \
        static __device__ __forceinline__ unsigned int splat(float x) {                                      \
            unsigned int d;                                                                                  \
            asm("cvt.rn." #T "x2.f32 %0, %1, %1;" : "=r"(d) : "f"(x));                                       \
            return d;                                                                                        \
        }                                                                                                    \
        static __device__ __forceinline__ void mma(float c[4], const unsigned int a[4], unsigned int b0,     \
                                                   unsigned int b1) {                                        \
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." #T "." #T                                  \
                         ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                        \
                         : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                    \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                    \
        }                                                                                                    \
    };
MMA_TYPE(bf16, 0x43u, 128.0f)  // 0x43bb = 128 + b
MMA_TYPE(f16, 0x64u, 1024.0f)  // 0x64bb = 1024 + b

// Four small unsigned values (bytes of q, each < 128) as two packed pairs of T holding exactly
// value - offset: bytes 0, 1 in *lo and 2, 3 in *hi. `unbias` = splat(-(BIAS + offset)), exact.
template <typename T>
__device__ __forceinline__ void bytes_to_pairs(unsigned int q, unsigned int unbias, unsigned int* lo, unsigned int* hi) {
    const unsigned int one = Mma<T>::splat(1.0f);
    *lo = Mma<T>::fma2(__byte_perm(q, Mma<T>::MAGIC, 0x4140), one, unbias);
    *hi = Mma<T>::fma2(__byte_perm(q, Mma<T>::MAGIC, 0x4342), one, unbias);
}

// ---- async copies ----------------------------------------------------------------------------

__device__ __forceinline__ void cp_async16(void* smem, const void* global, bool valid) {
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(smem);
    // src-size 0 writes 16 zero bytes and reads nothing (tokens past the batch)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;"); }

// Copies stage st (values 128 st .. + 128) of the token tile (NTOK tokens from tok0; zeros past
// `rows`) into xs.
template <typename T, int NTOK>
__device__ __forceinline__ void stage_tokens(unsigned char* xs, const T* x, unsigned int st, unsigned int k,
                                             unsigned int rows, unsigned int tok0) {
    const unsigned int tid = threadIdx.y * 32 + threadIdx.x;
#pragma unroll
    for (unsigned int i = tid; i < NTOK * 16; i += 32 * MMA_PARTS * mma_row_warps(NTOK / 8)) {
        const unsigned int n = i / 16, chunk = i % 16, tok = tok0 + n;
        const bool valid = tok < rows;
        const T* src = valid ? x + (unsigned long long)tok * k + st * 128 + chunk * 8 : x;
        cp_async16(xs + n * TOKEN_STRIDE + chunk * 16, src, valid);
    }
}

// The 8 bytes of token t * 8 + gid at values 16 * c16 + 4 tig .. + 3 of the stage: B fragment.
__device__ __forceinline__ uint2 b_fragment(const unsigned char* xs, int t, unsigned int c16) {
    const unsigned int gid = threadIdx.x / 4, tig = threadIdx.x % 4;
    return *(const uint2*)(xs + (t * 8 + gid) * TOKEN_STRIDE + (16 * c16 + 4 * tig) * 2);
}

// The lane's results: rows gid, gid + 8 of the warp's 16, tokens 2 tig, 2 tig + 1 of each tile.
template <typename Out, int NT>
__device__ __forceinline__ void store_tile(const float acc[NT][4], Out* y, unsigned int row0, unsigned int nrows,
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

// A lane's share of one row's unit (group pair j): the block header and, per half c, the 4 bytes
// at 16c + 4tig of the pair's 32 (low nibbles: group 2j, high: group 2j + 1).
struct Q4KLane {
    uint4 head;
    unsigned int qs[2];
};

__device__ __forceinline__ Q4KLane q4k_lane(const unsigned char* b, unsigned int tig, unsigned int j) {
    Q4KLane l;
    l.head = *(const uint4*)b;
#pragma unroll
    for (int c = 0; c < 2; ++c) l.qs[c] = *(const unsigned int*)(b + 16 + 32 * j + 16 * c + 4 * tig);
    return l;
}

// Scale and negated min of group g as packed pairs of T.
template <typename T>
__device__ __forceinline__ void q4k_group_scales(const uint4& head, unsigned int g, unsigned int* scale, unsigned int* neg_min) {
    unsigned int sc, mn;
    q4k_scale_min(head, g, &sc, &mn);
    *scale = Mma<T>::splat(h2f((unsigned short)(head.x & 0xffffu)) * (float)sc);
    *neg_min = Mma<T>::splat(-h2f((unsigned short)(head.x >> 16)) * (float)mn);
}

// Group pair j (values 64j .. 64j + 64, at 64 (j % 2) in the stage) times the token tile.
template <typename T, int NT>
__device__ __forceinline__ void q4k_unit(const Q4KLane& r0, const Q4KLane& r1, unsigned int j,
                                         const unsigned char* xs, float acc[NT][4]) {
    const unsigned int unbias = Mma<T>::splat(-Mma<T>::BIAS);
#pragma unroll
    for (int v = 0; v < 2; ++v) {
        const int shift = 4 * v;
        const unsigned int g = 2 * j + v;
        unsigned int s0, m0, s1, m1;
        q4k_group_scales<T>(r0.head, g, &s0, &m0);
        q4k_group_scales<T>(r1.head, g, &s1, &m1);
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            unsigned int a[4];
            bytes_to_pairs<T>((r0.qs[c] >> shift) & 0x0F0F0F0Fu, unbias, &a[0], &a[2]);
            bytes_to_pairs<T>((r1.qs[c] >> shift) & 0x0F0F0F0Fu, unbias, &a[1], &a[3]);
            a[0] = Mma<T>::fma2(a[0], s0, m0);
            a[2] = Mma<T>::fma2(a[2], s0, m0);
            a[1] = Mma<T>::fma2(a[1], s1, m1);
            a[3] = Mma<T>::fma2(a[3], s1, m1);
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                const uint2 b = b_fragment(xs, t, 4 * (j % 2) + 2 * v + c);
                Mma<T>::mma(acc[t], a, b.x, b.y);
            }
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

// A lane's share of one row's unit (run i = 2h + lh): the 4 bytes at 4 * tig of ql[64h + 16lh ..],
// ql[64h + 32 + 16lh ..] and qh[32h + 16lh ..]; the eight scales of half h; d.
struct Q6KLane {
    unsigned int ql_a, ql_b, qh;
    unsigned int scales[2];
    float d;
};

__device__ __forceinline__ Q6KLane q6k_lane(const unsigned char* b, unsigned int tig, unsigned int i) {
    Q6KLane l;
    const unsigned int h = i / 2, lh = i % 2;
    l.ql_a = ld32_any(b + 64 * h + 16 * lh + 4 * tig);
    l.ql_b = ld32_any(b + 64 * h + 32 + 16 * lh + 4 * tig);
    l.qh = ld32_any(b + 128 + 32 * h + 16 * lh + 4 * tig);
    l.scales[0] = ld32_any(b + 192 + 8 * h);
    l.scales[1] = ld32_any(b + 196 + 8 * h);
    l.d = h2f(ld16(b + 208));
    return l;
}

// The 6-bit values (0..63) of quarter q (values 32q apart within a half) of the lane's run.
__device__ __forceinline__ unsigned int q6k_quarter(const Q6KLane& l, int q) {
    const unsigned int lo = q % 2 == 0 ? l.ql_a : l.ql_b;
    const unsigned int low = (lo >> (4 * (q / 2))) & 0x0F0F0F0Fu;
    const unsigned int high = ((l.qh >> (2 * q)) << 4) & 0x30303030u;
    return low | high;
}

// d * the scale of quarter q of the run (sub-block 8h + 2q + lh: byte lh + 2q of the half's eight).
__device__ __forceinline__ float q6k_scale(const Q6KLane& l, unsigned int lh, int q) {
    return l.d * (float)(signed char)((l.scales[q / 2] >> (8 * (lh + 2 * (q % 2)))) & 0xFFu);
}

// Run i (values 128h + 16lh + 32q .. + 16 for q = 0..3, at 16 (2q + lh) in the stage) times the tile.
template <typename T, int NT>
__device__ __forceinline__ void q6k_unit(const Q6KLane& r0, const Q6KLane& r1, unsigned int i,
                                         const unsigned char* xs, float acc[NT][4]) {
    const unsigned int unbias = Mma<T>::splat(-(Mma<T>::BIAS + 32.0f)), zero = 0, lh = i % 2;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const unsigned int s0 = Mma<T>::splat(q6k_scale(r0, lh, q)), s1 = Mma<T>::splat(q6k_scale(r1, lh, q));
        unsigned int a[4];
        bytes_to_pairs<T>(q6k_quarter(r0, q), unbias, &a[0], &a[2]);
        bytes_to_pairs<T>(q6k_quarter(r1, q), unbias, &a[1], &a[3]);
        a[0] = Mma<T>::fma2(a[0], s0, zero);
        a[2] = Mma<T>::fma2(a[2], s0, zero);
        a[1] = Mma<T>::fma2(a[1], s1, zero);
        a[3] = Mma<T>::fma2(a[3], s1, zero);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const uint2 b = b_fragment(xs, t, 2 * q + lh);
            Mma<T>::mma(acc[t], a, b.x, b.y);
        }
    }
}

// ---- dense weights ---------------------------------------------------------------------------

// A lane's share of one row's unit (values 64 u .. + 64 of a 256-value block) of weights already in
// the activations' type: for each 16 values s, the 8 bytes at values 16 s + 4 tig .. + 3, which are
// a0/a2 (row gid) or a1/a3 (row gid + 8) of that k-step as they are.
struct DenseLane {
    uint2 v[4];
};

__device__ __forceinline__ DenseLane dense_lane(const unsigned char* b, unsigned int tig, unsigned int u) {
    DenseLane l;
#pragma unroll
    for (int s = 0; s < 4; ++s) l.v[s] = *(const uint2*)(b + 2 * (64 * u + 16 * s + 4 * tig));
    return l;
}

// Unit u (values 64 u .. + 64 of the block, at 64 (u % 2) in the stage) times the token tile.
template <typename T, int NT>
__device__ __forceinline__ void dense_unit(const DenseLane& r0, const DenseLane& r1, unsigned int u,
                                           const unsigned char* xs, float acc[NT][4]) {
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        const unsigned int a[4] = {r0.v[s].x, r1.v[s].x, r0.v[s].y, r1.v[s].y};
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const uint2 b = b_fragment(xs, t, 4 * (u % 2) + s);
            Mma<T>::mma(acc[t], a, b.x, b.y);
        }
    }
}

// ---- the product -----------------------------------------------------------------------------

#define FORMAT_Q4K 0
#define FORMAT_Q6K 1
#define FORMAT_DENSE 2  // weights in the activations' type, read as 256-value blocks of 512 bytes

// Lanes of part > 0 hand their sums to part 0 through shared memory (the token buffers, free by
// then), which adds them in part order: one fixed order, whatever the batch.
template <int NT>
__device__ __forceinline__ bool reduce_parts(float acc[NT][4], float* scratch) {
    constexpr unsigned int ROW_WARPS = mma_row_warps(NT);
    const unsigned int row_warp = threadIdx.y % ROW_WARPS, part = threadIdx.y / ROW_WARPS;
    static_assert((MMA_PARTS - 1) * ROW_WARPS * NT * 4 * 32 * 4 <= 2 * NT * 8 * TOKEN_STRIDE, "scratch fits the token buffers");
    // [part - 1][row_warp][t * 4 + i][lane]: consecutive lanes, consecutive words
    float* mine = scratch + (row_warp * NT * 4) * 32 + threadIdx.x;
    const unsigned int part_stride = ROW_WARPS * NT * 4 * 32;
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

// A lane's weights of one super-block in either format, and their products with a token tile.
template <typename T, int FORMAT>
struct Lane;
template <typename T>
struct Lane<T, FORMAT_Q4K> {
    static constexpr unsigned int BLOCK_BYTES = 144;
    Q4KLane r;
    __device__ __forceinline__ void load(const unsigned char* b, unsigned int tig, unsigned int unit) { r = q4k_lane(b, tig, unit); }
    template <int NT>
    __device__ __forceinline__ void multiply(const Lane& r1, unsigned int unit, const unsigned char* xs, float acc[NT][4]) const {
        q4k_unit<T, NT>(r, r1.r, unit, xs, acc);
    }
};
template <typename T>
struct Lane<T, FORMAT_Q6K> {
    static constexpr unsigned int BLOCK_BYTES = 210;
    Q6KLane r;
    __device__ __forceinline__ void load(const unsigned char* b, unsigned int tig, unsigned int unit) { r = q6k_lane(b, tig, unit); }
    template <int NT>
    __device__ __forceinline__ void multiply(const Lane& r1, unsigned int unit, const unsigned char* xs, float acc[NT][4]) const {
        q6k_unit<T, NT>(r, r1.r, unit, xs, acc);
    }
};

template <typename T>
struct Lane<T, FORMAT_DENSE> {
    static constexpr unsigned int BLOCK_BYTES = 512;
    DenseLane r;
    __device__ __forceinline__ void load(const unsigned char* b, unsigned int tig, unsigned int unit) { r = dense_lane(b, tig, unit); }
    template <int NT>
    __device__ __forceinline__ void multiply(const Lane& r1, unsigned int unit, const unsigned char* xs, float acc[NT][4]) const {
        dense_unit<T, NT>(r, r1.r, unit, xs, acc);
    }
};

// Loads stage st's unit (2 (st % 2) + part of super-block st / 2) of both of a lane's rows.
template <typename L>
__device__ __forceinline__ void load_stage(L& r0, L& r1, const unsigned char* w0, const unsigned char* w1,
                                           unsigned int st, unsigned int tig, unsigned int part) {
    constexpr unsigned int BLOCK_BYTES = L::BLOCK_BYTES;
    const unsigned int unit = 2 * (st % 2) + part;
    r0.load(w0 + (st / 2) * BLOCK_BYTES, tig, unit);
    r1.load(w1 + (st / 2) * BLOCK_BYTES, tig, unit);
}

// Up to three matrices of one width against the same tokens in one launch (Q, K, V; gate, up):
// row blocks [0, m[0].blocks) are the first matrix's, then the second's, the third's. Their
// outputs lie one after the other: matrix i's [rows][nrows] at rows * offset in y (and in each
// slice of partial, which holds [slices][rows][total]).
struct MmaMatrix {
    const unsigned char* w;
    unsigned int nrows;
    unsigned int format;
    unsigned int offset;  // output rows of the matrices before this one
    unsigned int blocks;  // its blocks of 16 * mma_row_warps(NT) rows
};
struct MmaMatrices {
    MmaMatrix m[3];
    unsigned int count;  // 1..=3
    unsigned int total;  // output rows of all of them
};

// One matrix's block of 16 * mma_row_warps(NT) rows (block_row) against a token tile and a slice of the super-blocks.
// With one slice (gridDim.z == 1) the block stores y; otherwise F32 partial sums, which
// mma_reduce adds in slice order.
template <typename T, int NT, int FORMAT>
__device__ void mma_matrix(const MmaMatrix& mat, unsigned int block_row, unsigned char* xs, const T* __restrict__ x,
                           T* __restrict__ y, float* __restrict__ partial, unsigned int total, unsigned int k,
                           unsigned int rows) {
    constexpr int NTOK = NT * 8;
    constexpr unsigned int BUFFER = NTOK * TOKEN_STRIDE;
    constexpr unsigned int BLOCK_BYTES = Lane<T, FORMAT>::BLOCK_BYTES;
    const unsigned int nrows = mat.nrows, nsb = k / 256, tok0 = blockIdx.x * NTOK;
    const unsigned int sb_begin = blockIdx.z * nsb / gridDim.z, sb_end = (blockIdx.z + 1) * nsb / gridDim.z;
    const unsigned int gid = threadIdx.x / 4, tig = threadIdx.x % 4;
    constexpr unsigned int ROW_WARPS = mma_row_warps(NT);
    const unsigned int row_warp = threadIdx.y % ROW_WARPS, part = threadIdx.y / ROW_WARPS;
    const unsigned int row0 = block_row * 16 * ROW_WARPS + row_warp * 16 + gid;
    // Rows past the matrix read the last row (valid memory); their results are not stored.
    const unsigned char* w0 = mat.w + (unsigned long long)(row0 < nrows ? row0 : nrows - 1) * nsb * BLOCK_BYTES;
    const unsigned char* w1 = mat.w + (unsigned long long)(row0 + 8 < nrows ? row0 + 8 : nrows - 1) * nsb * BLOCK_BYTES;
    float acc[NT][4];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    // Stage st: values 128 st .. + 128, of super-block st / 2; this warp's unit in it.
    const unsigned int st_begin = 2 * sb_begin, st_end = 2 * sb_end;
    stage_tokens<T, NTOK>(xs, x, st_begin, k, rows, tok0);
    cp_async_commit();
    Lane<T, FORMAT> cur0, cur1;  // this stage's weights; the next one's load during its products
    load_stage(cur0, cur1, w0, w1, st_begin, tig, part);
    for (unsigned int st = st_begin; st < st_end; ++st) {
        const unsigned int buf = (st - st_begin) % 2;
        const bool more = st + 1 < st_end;
        if (more) stage_tokens<T, NTOK>(xs + (buf ^ 1) * BUFFER, x, st + 1, k, rows, tok0);
        cp_async_commit();  // possibly empty, so that "all but the newest group" is this stage
        Lane<T, FORMAT> next0 = cur0, next1 = cur1;
        if (more) load_stage(next0, next1, w0, w1, st + 1, tig, part);
        cp_async_wait_one();
        __syncthreads();
        cur0.template multiply<NT>(cur1, 2 * (st % 2) + part, xs + buf * BUFFER, acc);
        __syncthreads();  // everyone is done with this buffer before the next iteration refills it
        cur0 = next0;
        cur1 = next1;
    }
    if (!reduce_parts<NT>(acc, (float*)xs)) return;
    const unsigned long long out = (unsigned long long)rows * mat.offset;
    if (gridDim.z == 1) store_tile<T, NT>(acc, y + out, row0, nrows, tok0, rows);
    else store_tile<float, NT>(acc, partial + (unsigned long long)blockIdx.z * rows * total + out, row0, nrows, tok0, rows);
}

// Block (x: a tile of 8 * NT tokens, y: 32 or 64 rows of one of the matrices, z: a slice of the
// super-blocks).
template <typename T, int NT>
__device__ void mma_group(const MmaMatrices& ms, const T* __restrict__ x, T* __restrict__ y, float* __restrict__ partial,
                          unsigned int k, unsigned int rows) {
    __shared__ __align__(16) unsigned char xs[2 * NT * 8 * TOKEN_STRIDE];
    // This block's matrix, chosen without indexing the parameter array (which would copy it to
    // local memory).
    unsigned int block_row = blockIdx.y;
    MmaMatrix mat;
    if (ms.count < 2 || block_row < ms.m[0].blocks) {
        mat = ms.m[0];
    } else if (ms.count < 3 || block_row < ms.m[0].blocks + ms.m[1].blocks) {
        mat = ms.m[1];
        block_row -= ms.m[0].blocks;
    } else {
        mat = ms.m[2];
        block_row -= ms.m[0].blocks + ms.m[1].blocks;
    }
    if (mat.format == FORMAT_Q4K) mma_matrix<T, NT, FORMAT_Q4K>(mat, block_row, xs, x, y, partial, ms.total, k, rows);
    else if (mat.format == FORMAT_Q6K) mma_matrix<T, NT, FORMAT_Q6K>(mat, block_row, xs, x, y, partial, ms.total, k, rows);
    else mma_matrix<T, NT, FORMAT_DENSE>(mat, block_row, xs, x, y, partial, ms.total, k, rows);
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

#define MMA_KERNEL(SUFFIX, T, NT)                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * MMA_PARTS * mma_row_warps(NT)) mma_##SUFFIX##_##NT(  \
        MmaMatrices matrices, const T* x, T* y, float* partial, unsigned int k, unsigned int rows) {        \
        mma_group<T, NT>(matrices, x, y, partial, k, rows);                                                \
    }
#define MMA_ALL(SUFFIX, T)                                                                                  \
    extern "C" __global__ void mma_reduce_##SUFFIX(const float* partial, T* y, unsigned int count,         \
                                                   unsigned int slices) {                                   \
        mma_reduce<T>(partial, y, count, slices);                                                          \
    }                                                                                                       \
    MMA_KERNEL(SUFFIX, T, 1) MMA_KERNEL(SUFFIX, T, 2) MMA_KERNEL(SUFFIX, T, 3) MMA_KERNEL(SUFFIX, T, 4)     \
    MMA_KERNEL(SUFFIX, T, 5) MMA_KERNEL(SUFFIX, T, 6) MMA_KERNEL(SUFFIX, T, 7) MMA_KERNEL(SUFFIX, T, 8)

MMA_ALL(bf16, bf16)
MMA_ALL(f16, f16)
