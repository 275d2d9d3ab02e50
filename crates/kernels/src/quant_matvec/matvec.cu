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

#define ROWS_PER_BLOCK 4

// 8 consecutive activations (16 bytes, 16-byte aligned) as floats.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out) {
    const uint4 v = *(const uint4*)p;
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; ++i) {
        T lo, hi;
        lo.bits = (unsigned short)(w[i] & 0xffffu);
        hi.bits = (unsigned short)(w[i] >> 16);
        out[2 * i] = to_f32(lo);
        out[2 * i + 1] = to_f32(hi);
    }
}

__device__ __forceinline__ unsigned short ld16(const unsigned char* p) { return *(const unsigned short*)p; }

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
    for (unsigned int sb = lane / 8; sb < nsb; sb += 4) {
        const unsigned char* b = row_w + sb * 144;
        const uint4 head = *(const uint4*)b;  // d, dmin, scales[12]
        const uint4 qv = *(const uint4*)(b + 16 + 32 * j + l0);
        const float d = h2f((unsigned short)(head.x & 0xffffu)), dmin = h2f((unsigned short)(head.x >> 16));
        const unsigned char* sc = (const unsigned char*)&head + 4;
        // scale/min of groups 2j (low nibbles) and 2j+1 (high nibbles)
        float s[2], m[2];
        for (int h = 0; h < 2; ++h) {
            const int g = 2 * j + h;
            unsigned int scale, min;
            if (g < 4) {
                scale = sc[g] & 63;
                min = sc[g + 4] & 63;
            } else {
                scale = (sc[g + 4] & 0xF) | ((sc[g - 4] >> 6) << 4);
                min = (sc[g + 4] >> 4) | ((sc[g] >> 6) << 4);
            }
            s[h] = d * (float)scale;
            m[h] = dmin * (float)min;
        }
        const unsigned char* q = (const unsigned char*)&qv;
        const unsigned int k0 = sb * 256 + j * 64 + l0;
        for (int c = 0; c < NCOLS; ++c) {
            const T* xc = x + (unsigned long long)c * ncols;
            float xl[16], xh[16];
            load8(xc + k0, xl);
            load8(xc + k0 + 8, xl + 8);
            load8(xc + k0 + 32, xh);
            load8(xc + k0 + 40, xh + 8);
            float dl = 0.0f, dh = 0.0f, sl = 0.0f, sh = 0.0f;
            for (int i = 0; i < 16; ++i) {
                dl += xl[i] * (float)(q[i] & 0xF);
                dh += xh[i] * (float)(q[i] >> 4);
                sl += xl[i];
                sh += xh[i];
            }
            acc[c] += s[0] * dl - m[0] * sl + s[1] * dh - m[1] * sh;
        }
    }
    finish<T, NCOLS>(acc, y, row, nrows);
}

// ---- Q6_K: 8 lanes per super-block; lane t takes half n = t/4 and l in [8(t%4), 8(t%4)+8) --
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
    for (unsigned int sb = lane / 8; sb < nsb; sb += 4) {
        const unsigned char* b = row_w + sb * 210;
        unsigned char ql_a[8], ql_b[8], qh[8];
        for (int i = 0; i < 8; i += 2) {
            const unsigned short a = ld16(b + 64 * n + l0 + i), bb = ld16(b + 64 * n + 32 + l0 + i);
            const unsigned short h = ld16(b + 128 + 32 * n + l0 + i);
            ql_a[i] = a & 0xff; ql_a[i + 1] = a >> 8;
            ql_b[i] = bb & 0xff; ql_b[i + 1] = bb >> 8;
            qh[i] = h & 0xff; qh[i + 1] = h >> 8;
        }
        const signed char* scales = (const signed char*)(b + 192 + 8 * n);
        const float d = h2f(ld16(b + 208));
        const int is = l0 / 16;  // the 8 lanes' l ranges never straddle 16
        const float s1 = d * scales[is], s2 = d * scales[is + 2], s3 = d * scales[is + 4], s4 = d * scales[is + 6];
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
                const int q1 = (int)((ql_a[i] & 0xF) | (((qh[i] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql_b[i] & 0xF) | (((qh[i] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql_a[i] >> 4) | (((qh[i] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql_b[i] >> 4) | (((qh[i] >> 6) & 3) << 4)) - 32;
                d1 += x1[i] * (float)q1;
                d2 += x2[i] * (float)q2;
                d3 += x3[i] * (float)q3;
                d4 += x4[i] * (float)q4;
            }
            acc[c] += s1 * d1 + s2 * d2 + s3 * d3 + s4 * d4;
        }
    }
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
        signed char q[32];
        for (int i = 0; i < 32; i += 2) {
            const unsigned short v = ld16(b + 2 + i);
            q[i] = (signed char)(v & 0xff);
            q[i + 1] = (signed char)(v >> 8);
        }
        for (int c = 0; c < NCOLS; ++c) {
            const T* xc = x + (unsigned long long)c * ncols + blk * 32;
            float dot = 0.0f;
            for (int part = 0; part < 4; ++part) {
                float xv[8];
                load8(xc + 8 * part, xv);
                for (int i = 0; i < 8; ++i) dot += xv[i] * (float)q[8 * part + i];
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
        unsigned char q[16];
        for (int i = 0; i < 16; i += 2) {
            const unsigned short v = ld16(b + 2 + i);
            q[i] = v & 0xff;
            q[i + 1] = v >> 8;
        }
        for (int c = 0; c < NCOLS; ++c) {
            const T* xc = x + (unsigned long long)c * ncols + blk * 32;
            float lo[16], hi[16];
            load8(xc, lo);
            load8(xc + 8, lo + 8);
            load8(xc + 16, hi);
            load8(xc + 24, hi + 8);
            float dot = 0.0f;
            for (int i = 0; i < 16; ++i) dot += lo[i] * (float)((int)(q[i] & 0xF) - 8) + hi[i] * (float)((int)(q[i] >> 4) - 8);
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
