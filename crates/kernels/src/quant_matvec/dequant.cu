// Whole Q4_K / Q6_K matrices to BF16 or F16 (appended to matvec.cu, whose block loaders it uses),
// for products with many activation rows: one tensor-core GEMM in the activations' own dtype
// then follows, with no cast of the activations (BF16 keeps the range F16 lacks) and none of
// the result. Eight lanes per super-block take the same pieces as the matvec kernels; super-blocks
// are numbered row-major, so super-block s covers outputs [256 s, 256 s + 256). Values are
// computed in F32 exactly as ggml defines them and rounded once to the output type.

// Eight values to out[0..8] (16-byte aligned) in one store.
template <typename T>
__device__ __forceinline__ void store8(T* out, const float* v) {
    *(uint4*)out = pack8<T>(v);
}

// Q4_K: w = d * scale * q - dmin * min per 32-weight group; the lane's 16 low nibbles are
// weights [64 j + l0, +16), its 16 high nibbles the next group's.
template <typename T>
__device__ void dequant_q4k(const unsigned char* __restrict__ w, T* __restrict__ out, unsigned long long num_superblocks) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long s = tid / 8;
    if (s >= num_superblocks) return;
    const unsigned int t = tid % 8, j = t / 2, l0 = (t % 2) * 16;
    const Q4KPiece p = q4k_load(w + s * 144, j, l0);
    const float d = h2f((unsigned short)(p.head.x & 0xffffu)), dmin = h2f((unsigned short)(p.head.x >> 16));
    unsigned int scale_lo, min_lo, scale_hi, min_hi;
    q4k_scale_min(p.head, 2 * j, &scale_lo, &min_lo);
    q4k_scale_min(p.head, 2 * j + 1, &scale_hi, &min_hi);
    const float s_lo = d * (float)scale_lo, m_lo = dmin * (float)min_lo;
    const float s_hi = d * (float)scale_hi, m_hi = dmin * (float)min_hi;
    const unsigned int qw[4] = {p.qs.x, p.qs.y, p.qs.z, p.qs.w};
    float lo[16], hi[16];
    for (int i = 0; i < 4; ++i)
        for (int b = 0; b < 4; ++b) {
            lo[4 * i + b] = s_lo * (float)((qw[i] >> (8 * b)) & 0xF) - m_lo;
            hi[4 * i + b] = s_hi * (float)((qw[i] >> (8 * b + 4)) & 0xF) - m_hi;
        }
    T* o = out + s * 256 + j * 64 + l0;
    store8<T>(o, lo);
    store8<T>(o + 8, lo + 8);
    store8<T>(o + 32, hi);
    store8<T>(o + 40, hi + 8);
}

// Q6_K: w = d * scale * (q - 32) per 16-weight group; the lane's quarters i = 0..3 are weights
// [128 n + l0 + 32 i, +8).
template <typename T>
__device__ void dequant_q6k(const unsigned char* __restrict__ w, T* __restrict__ out, unsigned long long num_superblocks) {
    const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long s = tid / 8;
    if (s >= num_superblocks) return;
    const unsigned int t = tid % 8, n = t / 4, l0 = (t % 4) * 8;
    const Q6KPiece p = q6k_load(w + s * 210, n, l0);
    const float d = h2f(p.d);
    unsigned int q[4][2];
    q6k_values(p, q);
    T* o = out + s * 256 + 128 * n + l0;
    for (int i = 0; i < 4; ++i) {
        const float scale = d * (float)p.scales[i];
        float v[8];
        for (int h = 0; h < 2; ++h)
            for (int b = 0; b < 4; ++b) v[4 * h + b] = scale * (float)((int)((q[i][h] >> (8 * b)) & 0xFF) - 32);
        store8<T>(o + 32 * i, v);
    }
}

// Q8_0 (34 B / 32 weights: f16 d, i8 qs[32]) and Q5_0 (22 B / 32: f16 d, u32 qh (bit j = the
// fifth bit of weight j), u8 qs[16]: weight j < 16 low nibble of qs[j], j >= 16 high nibble of
// qs[j - 16]; value - 16): one thread per 32-weight block, both 2-byte aligned.
template <typename T>
__device__ void dequant_q8_0(const unsigned char* __restrict__ w, T* __restrict__ out, unsigned long long num_blocks) {
    const unsigned long long b = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= num_blocks) return;
    const unsigned char* blk = w + b * 34;
    const float d = h2f(ld16(blk));
    for (int part = 0; part < 4; ++part) {
        float v[8];
        for (int i = 0; i < 4; ++i) {
            const unsigned int pair = ld16(blk + 2 + 8 * part + 2 * i);
            v[2 * i] = d * (float)(signed char)(pair & 0xFF);
            v[2 * i + 1] = d * (float)(signed char)(pair >> 8);
        }
        store8<T>(out + b * 32 + 8 * part, v);
    }
}

template <typename T>
__device__ void dequant_q5_0(const unsigned char* __restrict__ w, T* __restrict__ out, unsigned long long num_blocks) {
    const unsigned long long b = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= num_blocks) return;
    const unsigned char* blk = w + b * 22;
    const float d = h2f(ld16(blk));
    const unsigned int qh = ld32_a2(blk + 2);
    for (int part = 0; part < 4; ++part) {
        float v[8];
        for (int i = 0; i < 8; ++i) {
            const unsigned int j = 8 * part + i;  // weight 0..31
            const unsigned int byte = blk[6 + (j % 16)];
            const unsigned int low = j < 16 ? (byte & 0xF) : (byte >> 4);
            v[i] = d * (float)((int)(low | (((qh >> j) & 1u) << 4)) - 16);
        }
        store8<T>(out + b * 32 + 8 * part, v);
    }
}

#define DEQUANT_KERNEL(FMT, SUFFIX, T)                                                                  \
    extern "C" __global__ void dequant_##FMT##_##SUFFIX(const unsigned char* w, T* out,                 \
                                                        unsigned long long num_superblocks) {           \
        dequant_##FMT<T>(w, out, num_superblocks);                                                      \
    }
DEQUANT_KERNEL(q4k, bf16, bf16)
DEQUANT_KERNEL(q4k, f16, f16)
DEQUANT_KERNEL(q6k, bf16, bf16)
DEQUANT_KERNEL(q6k, f16, f16)
DEQUANT_KERNEL(q8_0, bf16, bf16)
DEQUANT_KERNEL(q8_0, f16, f16)
DEQUANT_KERNEL(q5_0, bf16, bf16)
DEQUANT_KERNEL(q5_0, f16, f16)
