// Dense BF16/F16 weights x few activation rows (1..8) for generation steps, compiled at run time by
// NVRTC: y[c][row] = sum_k W[row][k] * x[c][k], F32 accumulation, one rounding to the output type.
// Reading W is the whole cost, so a warp takes one row and its lanes read consecutive 16-byte
// pieces (8 values), UNROLL pieces per lane before using any, so enough bytes are in flight to
// cover DRAM latency; the activations (a few KiB) come from L1/L2.

#define DENSE_ROWS_PER_BLOCK 4
#define UNROLL 4

template <typename T, int NCOLS>
__device__ void dense_matvec(const T* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                             unsigned int nrows, unsigned int ncols) {
    const unsigned int row = blockIdx.x * DENSE_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= nrows) return;
    const unsigned int lane = threadIdx.x, pieces = ncols / 8;
    const uint4* row_w = (const uint4*)(w + (unsigned long long)row * ncols);
    float acc[NCOLS];
    for (int c = 0; c < NCOLS; ++c) acc[c] = 0.0f;
    for (unsigned int base = lane; base < pieces; base += 32 * UNROLL) {
        uint4 wv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
            if (base + 32 * u < pieces) wv[u] = row_w[base + 32 * u];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const unsigned int p = base + 32 * u;
            if (p >= pieces) break;
            float wf[8];
            unpack8<T>(wv[u], wf);
            for (int c = 0; c < NCOLS; ++c) {
                float xf[8];
                unpack8<T>(*(const uint4*)(x + (unsigned long long)c * ncols + 8ull * p), xf);
                for (int i = 0; i < 8; ++i) acc[c] += wf[i] * xf[i];
            }
        }
    }
    for (int c = 0; c < NCOLS; ++c)
        for (int o = 16; o > 0; o >>= 1) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], o);
    if (lane == 0)
        for (int c = 0; c < NCOLS; ++c) store(y + (unsigned long long)c * nrows + row, acc[c]);
}

#define DENSE_KERNEL(SUFFIX, T, N)                                                                    \
    extern "C" __global__ void dense_matvec_##SUFFIX##_##N(const T* w, const T* x, T* y, unsigned int nrows, \
                                                           unsigned int ncols) {                      \
        dense_matvec<T, N>(w, x, y, nrows, ncols);                                                    \
    }
#define DENSE_ALL_COLS(SUFFIX, T)                                                                     \
    DENSE_KERNEL(SUFFIX, T, 1) DENSE_KERNEL(SUFFIX, T, 2) DENSE_KERNEL(SUFFIX, T, 3) DENSE_KERNEL(SUFFIX, T, 4) \
    DENSE_KERNEL(SUFFIX, T, 5) DENSE_KERNEL(SUFFIX, T, 6) DENSE_KERNEL(SUFFIX, T, 7) DENSE_KERNEL(SUFFIX, T, 8)

DENSE_ALL_COLS(bf16, bf16)
DENSE_ALL_COLS(f16, f16)
