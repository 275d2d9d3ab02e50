// Quantized matrix x few-vectors products for generation steps (1..8 activation rows), compiled at
// run time by NVRTC. y[c][row] = sum_k W[row][k] * x[c][k]; W in ggml's block formats, x and y
// BF16 or F16, F32 accumulation. No input quantization pass: activations are read as they are.
//
// One warp per output row (blockDim = (32, ROWS_PER_BLOCK)); within a row, lanes take
// consecutive 16-byte pieces of the quantized blocks so a warp's loads are contiguous; each lane
// reads the activations its weights meet, keeps NCOLS partial sums, and the warp reduces them.
//
// Block layouts (ggml):
//   Q4_K (144 B / 256 weights): f16 d, f16 dmin, u8 scales[12] (6-bit scale/min pairs for eight
//        32-weight groups), u8 qs[128] (group pair j: bytes 32j..32j+32, low nibbles first group)
//   Q6_K (210 B / 256): u8 ql[128], u8 qh[64], i8 scales[16], f16 d
//   Q8_0 (34 B / 32): f16 d, i8 qs[32]
//   Q4_0 (18 B / 32): f16 d, u8 qs[16] (low nibbles weights 0..15, high 16..31), minus 8
// Q6_K, Q8_0 and Q4_0 blocks are only 2-byte aligned, so they are read with 16-bit loads.
//
// Quantized integers become floats without conversion instructions: `byte_as_float` puts a byte
// into the mantissa of 2^23 with one byte permute and subtracts 2^23 (+ the format's offset),
// exactly. Measured alone on the H100 this did not move the Q4_K kernel (~0.9 TB/s under Nsight
// either way): unpacking the activations and one FMA plus one add per weight still bound it by
// instruction issue at ~2e12 weights/s. Q4_K and Q6_K therefore take the int8-activation kernels
// of matvec_int8.cu wherever their shared memory allows.

#define ROWS_PER_BLOCK 4

// 8 consecutive activations (16 bytes, 16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out) {
    unpack8<T>(*(const uint4*)p, out);
}


// Byte k (0..3) of w minus `offset`, as a float: the byte goes into the low mantissa bits of
// 2^23 (0x4B000000) by one PRMT, and 2^23 + offset is subtracted exactly.
__device__ __forceinline__ float byte_as_float(unsigned int w, int k, float offset) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 + k)) - (8388608.0f + offset);
}

template <int NCOLS>
__device__ __forceinline__ void reduce_and_store_prologue(float* acc) {
    for (int c = 0; c < NCOLS; ++c)
        for (int o = 16; o > 0; o >>= 1) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], o);
}

template <typename T, int NCOLS>
__device__ __forceinline__ void finish(float* acc, T* y, unsigned int row, unsigned int nrows) {
    reduce_and_store_prologue<NCOLS>(acc);
    if (threadIdx.x == 0)
        for (int c = 0; c < NCOLS; ++c) store(y + (unsigned long long)c * nrows + row, acc[c]);
}

// ---- Q4_K: 8 lanes per super-block, lane t reads qs[16t..16t+16] (group pair t/2) ----------
struct Q4KPiece {
    uint4 head;  // d, dmin, scales[12]
    uint4 qs;    // 16 bytes of quants: low nibbles group 2j, high nibbles group 2j+1
};

__device__ __forceinline__ Q4KPiece q4k_load(const unsigned char* b, unsigned int j, unsigned int l0) {
    return Q4KPiece{*(const uint4*)b, *(const uint4*)(b + 16 + 32 * j + l0)};
}

template <typename T, int NCOLS>
__device__ __forceinline__ void q4k_accumulate(const Q4KPiece& p, unsigned int sb, unsigned int j, unsigned int l0,
                                               const T* __restrict__ x, unsigned int ncols, float* acc) {
    const float d = h2f((unsigned short)(p.head.x & 0xffffu)), dmin = h2f((unsigned short)(p.head.x >> 16));
    float s[2], m[2];
    for (int h = 0; h < 2; ++h) {
        unsigned int scale, min;
        q4k_scale_min(p.head, 2 * j + h, &scale, &min);
        s[h] = d * (float)scale;
        m[h] = dmin * (float)min;
    }
    const unsigned int qw[4] = {p.qs.x, p.qs.y, p.qs.z, p.qs.w};
    const unsigned int k0 = sb * 256 + j * 64 + l0;
    for (int c = 0; c < NCOLS; ++c) {
        const T* xc = x + (unsigned long long)c * ncols;
        float xl[16], xh[16];
        load8(xc + k0, xl);
        load8(xc + k0 + 8, xl + 8);
        load8(xc + k0 + 32, xh);
        load8(xc + k0 + 40, xh + 8);
        float dl = 0.0f, dh = 0.0f, sl = 0.0f, sh = 0.0f;
        for (int wi = 0; wi < 4; ++wi) {
            const unsigned int lo = qw[wi] & 0x0F0F0F0Fu, hi = (qw[wi] >> 4) & 0x0F0F0F0Fu;
            for (int b = 0; b < 4; ++b) {
                const int i = 4 * wi + b;
                dl += xl[i] * byte_as_float(lo, b, 0.0f);
                dh += xh[i] * byte_as_float(hi, b, 0.0f);
                sl += xl[i];
                sh += xh[i];
            }
        }
        acc[c] += s[0] * dl - m[0] * sl + s[1] * dh - m[1] * sh;
    }
}

template <typename T, int NCOLS>
__device__ void matvec_q4k(const unsigned char* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                           unsigned int nrows, unsigned int ncols) {
    const unsigned int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    if (row >= nrows) return;
    const unsigned int nsb = ncols / 256;
    const unsigned char* row_w = w + (unsigned long long)row * nsb * 144;
    const unsigned int lane = threadIdx.x, t = lane % 8;
    const unsigned int j = t / 2, l0 = (t % 2) * 16;
    float acc[NCOLS];
    for (int c = 0; c < NCOLS; ++c) acc[c] = 0.0f;
    for (unsigned int sb = lane / 8; sb < nsb; sb += 4)
        q4k_accumulate<T, NCOLS>(q4k_load(row_w + sb * 144, j, l0), sb, j, l0, x, ncols, acc);
    finish<T, NCOLS>(acc, y, row, nrows);
}

// ---- Q6_K: 8 lanes per super-block; lane t takes half n = t/4 and l in [8(t%4), 8(t%4)+8) --
struct Q6KPiece {
    unsigned int ql_a[2], ql_b[2], qh[2];  // ql[64n + l0..], ql[64n + 32 + l0..], qh[128 + 32n + l0..]
    int scales[4];                          // scales[8n + l0/16 + 2i], i = 0..3
    unsigned short d;
};

__device__ __forceinline__ Q6KPiece q6k_load(const unsigned char* b, unsigned int n, unsigned int l0) {
    Q6KPiece p;
    for (int h = 0; h < 2; ++h) {
        p.ql_a[h] = ld32_a2(b + 64 * n + l0 + 4 * h);
        p.ql_b[h] = ld32_a2(b + 64 * n + 32 + l0 + 4 * h);
        p.qh[h] = ld32_a2(b + 128 + 32 * n + l0 + 4 * h);
    }
    const signed char* scales = (const signed char*)(b + 192 + 8 * n + l0 / 16);  // 8 lanes' l never straddle 16
    for (int i = 0; i < 4; ++i) p.scales[i] = scales[2 * i];
    p.d = ld16(b + 208);
    return p;
}

// The piece's 6-bit values (0..63; the offset 32 not yet subtracted), four per word: q[i][h] holds
// weights 4h..4h+3 of the lane's 8 in quarter i (quarters 32 weights apart, scale p.scales[i]).
__device__ __forceinline__ void q6k_values(const Q6KPiece& p, unsigned int q[4][2]) {
    for (int h = 0; h < 2; ++h) {
        const unsigned int a = p.ql_a[h], bb = p.ql_b[h], qh = p.qh[h];
        q[0][h] = (a & 0x0F0F0F0Fu) | ((qh << 4) & 0x30303030u);
        q[1][h] = (bb & 0x0F0F0F0Fu) | ((qh << 2) & 0x30303030u);
        q[2][h] = ((a >> 4) & 0x0F0F0F0Fu) | (qh & 0x30303030u);
        q[3][h] = ((bb >> 4) & 0x0F0F0F0Fu) | ((qh >> 2) & 0x30303030u);
    }
}

template <typename T, int NCOLS>
__device__ __forceinline__ void q6k_accumulate(const Q6KPiece& p, unsigned int sb, unsigned int n, unsigned int l0,
                                               const T* __restrict__ x, unsigned int ncols, float* acc) {
    unsigned int q[4][2];
    q6k_values(p, q);
    const float d = h2f(p.d);
    const float s1 = d * p.scales[0], s2 = d * p.scales[1], s3 = d * p.scales[2], s4 = d * p.scales[3];
    const unsigned int k0 = sb * 256 + 128 * n + l0;
    for (int c = 0; c < NCOLS; ++c) {
        const T* xc = x + (unsigned long long)c * ncols + k0;
        float x1[8], x2[8], x3[8], x4[8];
        load8(xc, x1);
        load8(xc + 32, x2);
        load8(xc + 64, x3);
        load8(xc + 96, x4);
        float d1 = 0.0f, d2 = 0.0f, d3 = 0.0f, d4 = 0.0f;
        for (int i = 0; i < 8; ++i) {
            d1 += x1[i] * byte_as_float(q[0][i / 4], i % 4, 32.0f);
            d2 += x2[i] * byte_as_float(q[1][i / 4], i % 4, 32.0f);
            d3 += x3[i] * byte_as_float(q[2][i / 4], i % 4, 32.0f);
            d4 += x4[i] * byte_as_float(q[3][i / 4], i % 4, 32.0f);
        }
        acc[c] += s1 * d1 + s2 * d2 + s3 * d3 + s4 * d4;
    }
}

template <typename T, int NCOLS>
__device__ void matvec_q6k(const unsigned char* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                           unsigned int nrows, unsigned int ncols) {
    const unsigned int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    if (row >= nrows) return;
    const unsigned int nsb = ncols / 256;
    const unsigned char* row_w = w + (unsigned long long)row * nsb * 210;
    const unsigned int lane = threadIdx.x, t = lane % 8;
    const unsigned int n = t / 4, l0 = (t % 4) * 8;
    float acc[NCOLS];
    for (int c = 0; c < NCOLS; ++c) acc[c] = 0.0f;
    for (unsigned int sb = lane / 8; sb < nsb; sb += 4)
        q6k_accumulate<T, NCOLS>(q6k_load(row_w + sb * 210, n, l0), sb, n, l0, x, ncols, acc);
    finish<T, NCOLS>(acc, y, row, nrows);
}

// ---- Q8_0: one lane per 32-weight block --------------------------------------------------
template <typename T, int NCOLS>
__device__ void matvec_q8_0(const unsigned char* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                            unsigned int nrows, unsigned int ncols) {
    const unsigned int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    if (row >= nrows) return;
    const unsigned int nb = ncols / 32;
    const unsigned char* row_w = w + (unsigned long long)row * nb * 34;
    float acc[NCOLS];
    for (int c = 0; c < NCOLS; ++c) acc[c] = 0.0f;
    for (unsigned int blk = threadIdx.x; blk < nb; blk += 32) {
        const unsigned char* b = row_w + blk * 34;
        const float d = h2f(ld16(b));
        // int8 values + 128 (sign bit flipped), four per word
        unsigned int q[8];
        for (int i = 0; i < 8; ++i) q[i] = ld32_a2(b + 2 + 4 * i) ^ 0x80808080u;
        for (int c = 0; c < NCOLS; ++c) {
            const T* xc = x + (unsigned long long)c * ncols + blk * 32;
            float dot = 0.0f;
            for (int part = 0; part < 4; ++part) {
                float xv[8];
                load8(xc + 8 * part, xv);
                for (int i = 0; i < 8; ++i) dot += xv[i] * byte_as_float(q[2 * part + i / 4], i % 4, 128.0f);
            }
            acc[c] += d * dot;
        }
    }
    finish<T, NCOLS>(acc, y, row, nrows);
}

// ---- Q4_0: one lane per 32-weight block --------------------------------------------------
template <typename T, int NCOLS>
__device__ void matvec_q4_0(const unsigned char* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                            unsigned int nrows, unsigned int ncols) {
    const unsigned int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    if (row >= nrows) return;
    const unsigned int nb = ncols / 32;
    const unsigned char* row_w = w + (unsigned long long)row * nb * 18;
    float acc[NCOLS];
    for (int c = 0; c < NCOLS; ++c) acc[c] = 0.0f;
    for (unsigned int blk = threadIdx.x; blk < nb; blk += 32) {
        const unsigned char* b = row_w + blk * 18;
        const float d = h2f(ld16(b));
        // weights 0..15 (low nibbles) and 16..31 (high nibbles), four per word
        unsigned int lo[4], hi[4];
        for (int i = 0; i < 4; ++i) {
            const unsigned int v = ld32_a2(b + 2 + 4 * i);
            lo[i] = v & 0x0F0F0F0Fu;
            hi[i] = (v >> 4) & 0x0F0F0F0Fu;
        }
        for (int c = 0; c < NCOLS; ++c) {
            const T* xc = x + (unsigned long long)c * ncols + blk * 32;
            float xlo[16], xhi[16];
            load8(xc, xlo);
            load8(xc + 8, xlo + 8);
            load8(xc + 16, xhi);
            load8(xc + 24, xhi + 8);
            float dot = 0.0f;
            for (int i = 0; i < 16; ++i)
                dot += xlo[i] * byte_as_float(lo[i / 4], i % 4, 8.0f) + xhi[i] * byte_as_float(hi[i / 4], i % 4, 8.0f);
            acc[c] += d * dot;
        }
    }
    finish<T, NCOLS>(acc, y, row, nrows);
}

#define KERNEL(FMT, SUFFIX, T, N)                                                                     \
    extern "C" __global__ void matvec_##FMT##_##SUFFIX##_##N(const unsigned char* w, const T* x, T* y, \
                                                               unsigned int nrows, unsigned int ncols) { \
        matvec_##FMT<T, N>(w, x, y, nrows, ncols);                                                    \
    }
#define ALL_COLS(FMT, SUFFIX, T) \
    KERNEL(FMT, SUFFIX, T, 1) KERNEL(FMT, SUFFIX, T, 2) KERNEL(FMT, SUFFIX, T, 3) KERNEL(FMT, SUFFIX, T, 4) \
    KERNEL(FMT, SUFFIX, T, 5) KERNEL(FMT, SUFFIX, T, 6) KERNEL(FMT, SUFFIX, T, 7) KERNEL(FMT, SUFFIX, T, 8)
#define ALL_TYPES(FMT) ALL_COLS(FMT, bf16, bf16) ALL_COLS(FMT, f16, f16)

ALL_TYPES(q4k)
ALL_TYPES(q6k)
ALL_TYPES(q8_0)
ALL_TYPES(q4_0)
