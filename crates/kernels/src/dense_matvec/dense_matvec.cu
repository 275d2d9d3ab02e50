// Dense BF16/F16 weights x few activation rows (1..8) for generation steps, compiled at run time by
// NVRTC: y[c][row] = sum_k W[row][k] * x[c][k], F32 accumulation, one rounding to the output type.
// Reading W is the whole cost, so a warp takes one row and its lanes read consecutive 16-byte
// pieces (8 values), UNROLL pieces per lane before using any, so enough bytes are in flight to
// cover DRAM latency; the activations (a few KiB) come from L1/L2.
//
// Grouped launches (dense_matvec_group_*) take up to three matrices of one width against the same
// activations (Q/K/V, optionally rotated and written to the KV pool as rope_write_kv does), or a
// gated MLP's gate and up projections with the activation applied in the epilogue (the same
// kernel, gated): one launch instead of three, or of two plus gated_act. In
// a batch-1 step of a small model each launch costs microseconds of ramp and tail, as much as
// reading a small matrix.

#define DENSE_ROWS_PER_BLOCK 4
#define UNROLL 4

// Row `row` of w against the activations: the warp's sums, complete in every lane.
template <typename T, int NCOLS>
__device__ __forceinline__ void dense_row(const T* __restrict__ w, const T* __restrict__ x, unsigned int row,
                                          unsigned int ncols, float* acc) {
    const unsigned int lane = threadIdx.x, pieces = ncols / 8;
    const uint4* row_w = (const uint4*)(w + (unsigned long long)row * ncols);
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
}

template <typename T, int NCOLS>
__device__ void dense_matvec(const T* __restrict__ w, const T* __restrict__ x, T* __restrict__ y,
                             unsigned int nrows, unsigned int ncols) {
    const unsigned int row = blockIdx.x * DENSE_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= nrows) return;
    float acc[NCOLS];
    dense_row<T, NCOLS>(w, x, row, ncols, acc);
    if (threadIdx.x == 0)
        for (int c = 0; c < NCOLS; ++c) store(y + (unsigned long long)c * nrows + row, acc[c]);
}

// One matrix of a grouped launch: nrows x ncols weights, output [NCOLS][nrows].
struct DenseMatrix {
    const void* w;
    void* y;
    unsigned int nrows;
    unsigned int unused;
};

// Blocks take m[0]'s rows, then m[1]'s, then m[2]'s (group_launch.cuh). Gated (gated = 1 +
// the activation of activation.cuh, count = 2): m[0] is the gate and m[1] the up projection of
// one height; each warp computes both rows and writes act(gate) * up to m[0].y, the two products
// rounded to T first, as the separate gated_act kernel receives them (the same bits).
struct DenseMatrices {
    DenseMatrix m[3];
    unsigned int count;
    unsigned int gated;
};

// With rope.head_dim != 0: Q, K, V (m[0..3]) rotated and written as rope_write_kv does
// (qkv_rope.cuh); q is the output.
template <typename T, int NCOLS>
__device__ void dense_matvec_group(const DenseMatrices& ms, const RopeKv& rope, const T* __restrict__ x, unsigned int ncols) {
    if (rope.head_dim != 0) {
        const auto products = [&](const DenseMatrix& m, unsigned int row, float* acc) { dense_row<T, NCOLS>((const T*)m.w, x, row, ncols, acc); };
        qkv_rope_rows<T, NCOLS, DENSE_ROWS_PER_BLOCK>(ms.m[0], ms.m[1], ms.m[2], rope, products);
        return;
    }
    if (ms.gated != 0) {
        const unsigned int row = blockIdx.x * DENSE_ROWS_PER_BLOCK + threadIdx.y;
        if (row >= ms.m[0].nrows) return;
        float g[NCOLS], u[NCOLS];
        dense_row<T, NCOLS>((const T*)ms.m[0].w, x, row, ncols, g);
        dense_row<T, NCOLS>((const T*)ms.m[1].w, x, row, ncols, u);
        if (threadIdx.x == 0)
            for (int c = 0; c < NCOLS; ++c) {
                const float gc = to_f32(round_to<T>(g[c])), uc = to_f32(round_to<T>(u[c]));
                store((T*)ms.m[0].y + (unsigned long long)c * ms.m[0].nrows + row, gate_activation(gc, ms.gated - 1) * uc);
            }
        return;
    }
    unsigned int block;
    const DenseMatrix mat = group_block_matrix<DenseMatrix, DENSE_ROWS_PER_BLOCK>(ms.m[0], ms.m[1], ms.m[2], ms.count, &block);
    const unsigned int row = block * DENSE_ROWS_PER_BLOCK + threadIdx.y;
    if (row >= mat.nrows) return;
    float acc[NCOLS];
    dense_row<T, NCOLS>((const T*)mat.w, x, row, ncols, acc);
    if (threadIdx.x == 0)
        for (int c = 0; c < NCOLS; ++c) store((T*)mat.y + (unsigned long long)c * mat.nrows + row, acc[c]);
}

#define DENSE_KERNEL(SUFFIX, T, N)                                                                    \
    extern "C" __global__ void dense_matvec_##SUFFIX##_##N(const T* w, const T* x, T* y, unsigned int nrows, \
                                                           unsigned int ncols) {                      \
        dense_matvec<T, N>(w, x, y, nrows, ncols);                                                    \
    }                                                                                                 \
    extern "C" __global__ void dense_matvec_group_##SUFFIX##_##N(DenseMatrices matrices, RopeKv rope, \
                                                                 const T* x, unsigned int ncols) {    \
        dense_matvec_group<T, N>(matrices, rope, x, ncols);                                           \
    }
#define DENSE_ALL_COLS(SUFFIX, T)                                                                     \
    DENSE_KERNEL(SUFFIX, T, 1) DENSE_KERNEL(SUFFIX, T, 2) DENSE_KERNEL(SUFFIX, T, 3) DENSE_KERNEL(SUFFIX, T, 4) \
    DENSE_KERNEL(SUFFIX, T, 5) DENSE_KERNEL(SUFFIX, T, 6) DENSE_KERNEL(SUFFIX, T, 7) DENSE_KERNEL(SUFFIX, T, 8)

DENSE_ALL_COLS(bf16, bf16)
DENSE_ALL_COLS(f16, f16)
