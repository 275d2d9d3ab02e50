// Q4_K and Q6_K x few activation rows with int8 activations (appended to matvec.cu, whose helpers
// it uses). The float kernels above spend ~5 instructions per weight (unpack, convert, FMA, sums)
// and are bound by instruction issue at ~2e12 weights/s, about 1 TB/s of Q4_K on the H100. Here
// the block first quantizes its activation rows into shared memory (or copies them there, when
// the norm before already quantized them), and then multiplies with dp4a (four int8 products per
// instruction).
//
// Activations: int8 per 32 consecutive values (int8_rows.cuh). Products are exact integer dot
// products of the weight quants and q, scaled in F32, so the result differs from the F32 product
// only by the rounding of x to int8 (relative error ~1/254 per value).
//
// Shared memory: float2 (d, s) per 32-value group of every row, then the int8 rows (16-byte
// chunks swizzled, `xq_offset`).
// Block: Q8X_WARPS warps, one output row each; every warp takes part in the quantization.
// Within a row, 4 lanes share a super-block and each takes 64 of its weights, so a warp walks 8
// super-blocks per step. With 32 weights per lane (session 9) the scale decoding, activation
// scales and loop were paid per 32 weights: Nsight counted ~140 warp instructions per piece and
// the integer pipe was the busiest (8B Q4_K_M gate/up at 2.1 TB/s, issue slots 60 % busy).

#define Q8X_WARPS 8

// Launch bounds per activation rows: one row stays within 40 registers, so that six blocks fit
// an SM (48 warps); quantize_rows' batched loads alone would take it to 48 (40 warps). Bounds on
// more rows made ptxas use more registers than without, so those have none.
#define Q8X_BOUNDS_1 __launch_bounds__(Q8X_WARPS * 32, 6)
#define Q8X_BOUNDS_2
#define Q8X_BOUNDS_3
#define Q8X_BOUNDS_4
#define Q8X_BOUNDS_5
#define Q8X_BOUNDS_6
#define Q8X_BOUNDS_7
#define Q8X_BOUNDS_8

__device__ __forceinline__ int dp4a(unsigned int a, unsigned int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// Byte offset of activation k of row c in the shared int8 rows. Within every 128-byte line the
// eight 16-byte chunks are XOR-swizzled by f(line mod 4) = 0, 3, 6, 5, so that the 16-byte reads
// of a quarter warp fall in distinct banks for both formats: Q4_K lanes read chunks {c, c + 4} of
// four lines, Q6_K lanes chunks {2i, 2i + 1} of four lines.
__device__ __forceinline__ unsigned int xq_offset(unsigned int c, unsigned int ncols, unsigned int k) {
    const unsigned int off = c * ncols + k, line = (off >> 7) & 3u;
    return (off & ~0x70u) | ((((off >> 4) & 7u) ^ (line ^ (line << 1))) << 4);
}

// Quantizes rows x[NCOLS][ncols] into ds/xq. Each thread takes 8 consecutive values per piece;
// the 4 threads of a 32-value group are adjacent lanes of one warp. A thread loads
// QUANTIZE_BATCH pieces before it quantizes any: with one load per loop turn, every turn waited
// a full L2 round trip before its shuffles, and a 14,336-wide row (the 8B down projection) is 7
// turns (8B Q4_K_M batch 1: 362 -> 376 tok/s, the bound with no quantization at all 379; a
// batch of 8 needs more than the 40 registers of Q8X_BOUNDS_1 and spills: 328). Every thread of
// the block runs the same turns so whole warps reach the shuffles.
#define QUANTIZE_BATCH 4

template <typename T, int NCOLS>
__device__ void quantize_rows(const T* __restrict__ x, unsigned int ncols, float2* ds, unsigned char* xq) {
    const unsigned int tid = threadIdx.y * 32 + threadIdx.x, nthreads = 32 * blockDim.y;
    const unsigned int pieces = NCOLS * ncols / 8;
    for (unsigned int first = 0; first < pieces; first += QUANTIZE_BATCH * nthreads) {
        uint4 raw[QUANTIZE_BATCH];
#pragma unroll
        for (int i = 0; i < QUANTIZE_BATCH; ++i) {
            const unsigned int p = first + i * nthreads + tid;
            // rows are contiguous: piece p starts at value 8p
            raw[i] = p < pieces ? *(const uint4*)(x + 8ull * p) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int i = 0; i < QUANTIZE_BATCH; ++i) {
            if (first + i * nthreads >= pieces) break;  // the same for the whole block
            const unsigned int p = first + i * nthreads + tid;
            float v[8];
            unpack8<T>(raw[i], v);
            float2 group;
            const uint2 packed = quantize_group8(v, &group);
            if (p < pieces) {
                *(uint2*)(xq + xq_offset(0, 0, 8u * p)) = packed;
                if (p % 4 == 0) ds[p / 4] = group;
            }
        }
    }
    __syncthreads();
}

// One output row of Q4_K weights against the quantized activations: this lane's partial sums.
// 4 lanes per super-block; lane j takes group pair j (qs bytes 32j..32j+32: 64 weights).
template <int NCOLS>
__device__ void q8x_q4k_row(const unsigned char* __restrict__ w, unsigned int row, unsigned int ncols,
                            const float2* ds, const unsigned char* xq, float* acc) {
    const unsigned int nsb = ncols / 256;
    const unsigned char* row_w = w + (unsigned long long)row * nsb * 144;
    const unsigned int lane = threadIdx.x, j = lane % 4, half = 16 * (j & 1);
    for (unsigned int sb = lane / 4; sb < nsb; sb += 8) {
        const unsigned char* b = row_w + sb * 144;
        const uint4 head = *(const uint4*)b;
        const uint4 qa = *(const uint4*)(b + 16 + 32 * j), qb = *(const uint4*)(b + 32 + 32 * j);
        const float d = h2f((unsigned short)(head.x & 0xffffu)), dmin = h2f((unsigned short)(head.x >> 16));
        // scales/mins of groups 2j, 2j+1 as two bytes each
        const unsigned int y = head.y >> half, z = head.z >> half, wv = head.w >> half;
        const unsigned int sc = j < 2 ? y & 0x3F3Fu : (wv & 0x0F0Fu) | ((y >> 2) & 0x3030u);
        const unsigned int mn = j < 2 ? z & 0x3F3Fu : ((wv >> 4) & 0x0F0Fu) | ((z >> 2) & 0x3030u);
        const unsigned int qw[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
        const unsigned int k0 = sb * 256 + j * 64;
        for (int c = 0; c < NCOLS; ++c) {
            int dot_lo = 0, dot_hi = 0;
            for (int h = 0; h < 2; ++h) {
                const uint4 xl = *(const uint4*)(xq + xq_offset(c, ncols, k0 + 16 * h));
                const uint4 xh = *(const uint4*)(xq + xq_offset(c, ncols, k0 + 32 + 16 * h));
                const unsigned int xlw[4] = {xl.x, xl.y, xl.z, xl.w}, xhw[4] = {xh.x, xh.y, xh.z, xh.w};
                for (int i = 0; i < 4; ++i) {
                    dot_lo = dp4a(qw[4 * h + i] & 0x0F0F0F0Fu, xlw[i], dot_lo);
                    dot_hi = dp4a((qw[4 * h + i] >> 4) & 0x0F0F0F0Fu, xhw[i], dot_hi);
                }
            }
            const float4 g = *(const float4*)(ds + c * (ncols / 32) + sb * 8 + 2 * j);  // (d, s) of both groups
            const float a = d * ((float)(sc & 0xFF) * g.x * (float)dot_lo + (float)(sc >> 8) * g.z * (float)dot_hi);
            acc[c] += a - dmin * ((float)(mn & 0xFF) * g.y + (float)(mn >> 8) * g.w);
        }
    }
}

// 16 bytes at a 2-byte-aligned address (Q6_K blocks are 210 bytes): five aligned words,
// realigned by funnel shifts. The fifth word stays inside the block for every field read here.
__device__ __forceinline__ uint4 ld128_a2(const unsigned char* p) {
    const unsigned int* a = (const unsigned int*)((unsigned long long)p & ~3ull);
    const unsigned int shift = 8u * (unsigned int)((unsigned long long)p & 3u);
    const unsigned int w0 = a[0], w1 = a[1], w2 = a[2], w3 = a[3], w4 = a[4];
    return make_uint4(__funnelshift_r(w0, w1, shift), __funnelshift_r(w1, w2, shift), __funnelshift_r(w2, w3, shift),
                      __funnelshift_r(w3, w4, shift));
}

// One output row of Q6_K weights against the quantized activations: this lane's partial sums.
// 4 lanes per super-block; lane j takes half n = j / 2 and l in [l0, l0 + 16), l0 = 16 (j % 2), of
// all four quarters (64 weights, one 16-weight scale each).
template <int NCOLS>
__device__ void q8x_q6k_row(const unsigned char* __restrict__ w, unsigned int row, unsigned int ncols,
                            const float2* ds, const unsigned char* xq, float* acc) {
    const unsigned int nsb = ncols / 256;
    const unsigned char* row_w = w + (unsigned long long)row * nsb * 210;
    const unsigned int lane = threadIdx.x, n = (lane % 4) / 2, l0 = 16 * (lane % 2);
    for (unsigned int sb = lane / 4; sb < nsb; sb += 8) {
        const unsigned char* b = row_w + sb * 210;
        const uint4 ua = ld128_a2(b + 64 * n + l0), ub = ld128_a2(b + 64 * n + 32 + l0), uh = ld128_a2(b + 128 + 32 * n + l0);
        const signed char* scales = (const signed char*)(b + 192 + 8 * n + l0 / 16);
        float scale[4];
        for (int i = 0; i < 4; ++i) scale[i] = (float)scales[2 * i];
        const float d = h2f(ld16(b + 208));
        const unsigned int qa[4] = {ua.x, ua.y, ua.z, ua.w}, qb[4] = {ub.x, ub.y, ub.z, ub.w}, qh[4] = {uh.x, uh.y, uh.z, uh.w};
        unsigned int q[4][4];  // quarter i, word h: 6-bit values 0..63 (int8 as they are)
        for (int h = 0; h < 4; ++h) {
            q[0][h] = (qa[h] & 0x0F0F0F0Fu) | ((qh[h] << 4) & 0x30303030u);
            q[1][h] = (qb[h] & 0x0F0F0F0Fu) | ((qh[h] << 2) & 0x30303030u);
            q[2][h] = ((qa[h] >> 4) & 0x0F0F0F0Fu) | (qh[h] & 0x30303030u);
            q[3][h] = ((qb[h] >> 4) & 0x0F0F0F0Fu) | ((qh[h] >> 2) & 0x30303030u);
        }
        const unsigned int k0 = sb * 256 + 128 * n + l0;
        for (int c = 0; c < NCOLS; ++c) {
            float a = 0.0f;
            for (int i = 0; i < 4; ++i) {
                const uint4 x = *(const uint4*)(xq + xq_offset(c, ncols, k0 + 32 * i));
                const unsigned int xw[4] = {x.x, x.y, x.z, x.w};
                int dot = 0;
                // sum (q - 32) x: the offset as a dp4a with bytes of -32
                for (int h = 0; h < 4; ++h) dot = dp4a(0xE0E0E0E0u, xw[h], dp4a(q[i][h], xw[h], dot));
                a += scale[i] * ds[c * (ncols / 32) + (k0 + 32 * i) / 32].x * (float)dot;
            }
            acc[c] += d * a;
        }
    }
}

#define FORMAT_Q4K 0
#define FORMAT_Q6K 1

// Up to three matrices of one width against the same activation rows in one launch (a block's
// rows all come from one matrix: blocks [0, blocks0) the first, then the second, the third).
// The activations are quantized once per block, and two or three launches become one.
struct Q8xMatrix {
    const unsigned char* w;
    void* y;
    unsigned int nrows;
    unsigned int format;
};

// Gated mode (gated = 1 + the activation): m[0] is the gate and m[1] the up projection (same
// height); each warp computes both rows and writes act(gate) * up to m[0].y. The two products are
// rounded to T first, as the separate gated_act kernel sees them, so both paths agree.
struct Q8xMatrices {
    Q8xMatrix m[3];
    unsigned int count;  // 1..=3
    unsigned int gated;  // 0, or 1 + activation (activation.cuh) with count = 2
};

__device__ __forceinline__ unsigned int blocks_for(unsigned int nrows) { return (nrows + Q8X_WARPS - 1) / Q8X_WARPS; }

// The same shared rows from activations the producer already quantized exactly as quantize_rows
// does (quantize_group8, int8_rows.cuh; the norm before a generation step's Q/K/V and gate/up):
// xq_in [NCOLS][ncols] int8 and ds_in [NCOLS][ncols / 32] (scale, scaled sum). A copy, no
// arithmetic, where every block of a launch redid the quantization (8B Q4_K_M: batch 2 +5 %,
// batch 1 +1 %; PERF.md).
template <int NCOLS>
__device__ void load_quantized_rows(const unsigned char* __restrict__ xq_in, const float2* __restrict__ ds_in,
                                    unsigned int ncols, float2* ds, unsigned char* xq) {
    const unsigned int tid = threadIdx.y * 32 + threadIdx.x, nthreads = 32 * blockDim.y;
    // 16-byte chunks (a swizzle unit of xq_offset), four loads in flight per thread
#pragma unroll 4
    for (unsigned int q = tid; q < NCOLS * ncols / 16; q += nthreads)
        *(uint4*)(xq + xq_offset(0, 0, 16u * q)) = *(const uint4*)(xq_in + 16ull * q);
    for (unsigned int g = tid; g < NCOLS * ncols / 32; g += nthreads) ds[g] = ds_in[g];
    __syncthreads();
}

template <int NCOLS>
__device__ __forceinline__ void q8x_matrix_row(const Q8xMatrix& mat, unsigned int row, unsigned int ncols,
                                               const float2* ds, const unsigned char* xq, float* acc) {
    for (int c = 0; c < NCOLS; ++c) acc[c] = 0.0f;
    if (mat.format == FORMAT_Q4K) q8x_q4k_row<NCOLS>(mat.w, row, ncols, ds, xq, acc);
    else q8x_q6k_row<NCOLS>(mat.w, row, ncols, ds, xq, acc);
}

template <typename T, int NCOLS>
__device__ void gated_rows(const Q8xMatrix& gate, const Q8xMatrix& up, unsigned int act, unsigned int ncols,
                           const float2* ds, const unsigned char* xq) {
    const unsigned int row = blockIdx.x * Q8X_WARPS + threadIdx.y;
    if (row >= gate.nrows) return;
    float g[NCOLS], u[NCOLS];
    q8x_matrix_row<NCOLS>(gate, row, ncols, ds, xq, g);
    q8x_matrix_row<NCOLS>(up, row, ncols, ds, xq, u);
    reduce_and_store_prologue<NCOLS>(g);
    reduce_and_store_prologue<NCOLS>(u);
    if (threadIdx.x == 0)
        for (int c = 0; c < NCOLS; ++c) {
            const float gc = to_f32(round_to<T>(g[c])), uc = to_f32(round_to<T>(u[c]));
            store((T*)gate.y + (unsigned long long)c * gate.nrows + row, gate_activation(gc, act) * uc);
        }
}

// GATED: the gated mode's own entry point, so the plain group kernel keeps its registers.
// xq_in / ds_in: x already quantized (load_quantized_rows), or null.
template <typename T, int NCOLS, bool GATED>
__device__ void matvec_q8x_group(const Q8xMatrices& ms, const RopeKv& rope, const T* __restrict__ x,
                                 const unsigned char* __restrict__ xq_in, const float2* __restrict__ ds_in,
                                 unsigned int ncols) {
    extern __shared__ float2 ds[];
    unsigned char* xq = (unsigned char*)(ds + NCOLS * (ncols / 32));
    if (xq_in != nullptr) load_quantized_rows<NCOLS>(xq_in, ds_in, ncols, ds, xq);
    else quantize_rows<T, NCOLS>(x, ncols, ds, xq);
    if (GATED) {
        gated_rows<T, NCOLS>(ms.m[0], ms.m[1], ms.gated - 1, ncols, ds, xq);
        return;
    }
    if (rope.head_dim != 0) {
        const auto products = [&](const Q8xMatrix& m, unsigned int row, float* acc) {
            q8x_matrix_row<NCOLS>(m, row, ncols, ds, xq, acc);
            reduce_and_store_prologue<NCOLS>(acc);
        };
        qkv_rope_rows<T, NCOLS, Q8X_WARPS>(ms.m[0], ms.m[1], ms.m[2], rope, products);
        return;
    }
    unsigned int block;
    const Q8xMatrix mat = group_block_matrix<Q8xMatrix, Q8X_WARPS>(ms.m[0], ms.m[1], ms.m[2], ms.count, &block);
    const unsigned int row = block * Q8X_WARPS + threadIdx.y;
    if (row >= mat.nrows) return;
    float acc[NCOLS];
    q8x_matrix_row<NCOLS>(mat, row, ncols, ds, xq, acc);
    finish<T, NCOLS>(acc, (T*)mat.y, row, mat.nrows);
}

template <typename T, int NCOLS, int FORMAT>
__device__ void matvec_q8x(const unsigned char* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                           unsigned int nrows, unsigned int ncols) {
    Q8xMatrices one;
    one.gated = 0;
    one.m[0].w = w;
    one.m[0].y = y;
    one.m[0].nrows = nrows;
    one.m[0].format = FORMAT;
    one.count = 1;
    RopeKv no_rope;
    no_rope.head_dim = 0;
    matvec_q8x_group<T, NCOLS, false>(one, no_rope, x, nullptr, nullptr, ncols);
}

#define Q8X_KERNEL(FMT, FORMAT, SUFFIX, T, N)                                                         \
    extern "C" __global__ void Q8X_BOUNDS_##N matvec_q8x_##FMT##_##SUFFIX##_##N(const unsigned char* w, const T* x, T* y, \
                                                                   unsigned int nrows, unsigned int ncols) { \
        matvec_q8x<T, N, FORMAT>(w, x, y, nrows, ncols);                                              \
    }
#define Q8X_GROUP_KERNEL(SUFFIX, T, N)                                                                \
    extern "C" __global__ void Q8X_BOUNDS_##N matvec_q8x_group_##SUFFIX##_##N(                       \
        Q8xMatrices matrices, RopeKv rope, const T* x, const unsigned char* xq_in, const float2* ds_in, \
        unsigned int ncols) {                                                                         \
        matvec_q8x_group<T, N, false>(matrices, rope, x, xq_in, ds_in, ncols);                        \
    }                                                                                                 \
    extern "C" __global__ void Q8X_BOUNDS_##N matvec_q8x_gated_##SUFFIX##_##N(                       \
        Q8xMatrices matrices, const T* x, const unsigned char* xq_in, const float2* ds_in,            \
        unsigned int ncols) {                                                                         \
        RopeKv no_rope;                                                                               \
        no_rope.head_dim = 0;                                                                         \
        matvec_q8x_group<T, N, true>(matrices, no_rope, x, xq_in, ds_in, ncols);                      \
    }
#define Q8X_ALL(SUFFIX, T, N) \
    Q8X_KERNEL(q4k, FORMAT_Q4K, SUFFIX, T, N) Q8X_KERNEL(q6k, FORMAT_Q6K, SUFFIX, T, N) Q8X_GROUP_KERNEL(SUFFIX, T, N)
#define Q8X_ALL_COLS(SUFFIX, T)                                                                      \
    Q8X_ALL(SUFFIX, T, 1) Q8X_ALL(SUFFIX, T, 2) Q8X_ALL(SUFFIX, T, 3) Q8X_ALL(SUFFIX, T, 4)          \
    Q8X_ALL(SUFFIX, T, 5) Q8X_ALL(SUFFIX, T, 6) Q8X_ALL(SUFFIX, T, 7) Q8X_ALL(SUFFIX, T, 8)

Q8X_ALL_COLS(bf16, bf16)
Q8X_ALL_COLS(f16, f16)
