// A Q/K/V launch that also does what rope_write_kv does (fused.cu) with its products: rotates q
// and k (rope_rotate, rope.cuh) and writes q to q_out [NCOLS][q rows], k and v to the pool
// [slots][num_kv_heads][head_dim] at each activation row's slot; one launch fewer per layer.
// Shared by the int8 matvec (matvec_int8.cu) and the dense one (dense_matvec.cu); needs
// dtypes.cuh and rope.cuh before it. head_dim = 0: no rotation (a plain group launch).
struct RopeKv {
    void* q_out;
    void* k_cache;
    void* v_cache;
    const float* cos;  // [positions][head_dim / 2]
    const float* sin;
    const unsigned int* positions;  // [NCOLS]
    const unsigned int* slots;      // [NCOLS]
    unsigned int head_dim;          // a multiple of 8
    unsigned int num_kv_heads;
};

// The rows of a rotating launch's block of WARPS warps (one output row each; blocks take Q's rows,
// then K's, then V's). Q and K blocks take rows i .. i + WARPS / 2 - 1 of a head and their
// partners i + head_dim / 2 (warps 0 .. WARPS / 2 - 1 and the rest), so that a block holds whole
// rotation pairs; they exchange the products, rounded to T as rope_write_kv reads them, through
// shared memory, and the first half of the warps rotates them (lane c: activation row c). V blocks
// take WARPS consecutive rows, unrotated. products(m, row, acc): row `row` of matrix m against
// the block's activation rows, acc[c] complete in lane 0.
template <typename T, int NCOLS, int WARPS, typename Matrix, typename Products>
__device__ void qkv_rope_rows(const Matrix& mq, const Matrix& mk, const Matrix& mv, const RopeKv& rope, Products products) {
    static_assert(WARPS % 2 == 0 && 8 % WARPS == 0, "whole rotation pairs in a block of a head_dim that is a multiple of 8");
    constexpr unsigned int PAIRS = WARPS / 2;
    __shared__ float rounded[WARPS][NCOLS];
    const unsigned int hd = rope.head_dim, half = hd / 2, warp = threadIdx.y;
    const unsigned int bq = (mq.nrows + WARPS - 1) / WARPS, bk = (mk.nrows + WARPS - 1) / WARPS;
    unsigned int block = blockIdx.x;
    float acc[NCOLS];
    if (block >= bq + bk) {
        const unsigned int row = (block - bq - bk) * WARPS + warp;
        products(mv, row, acc);
        if (threadIdx.x == 0)
            for (int c = 0; c < NCOLS; ++c) {
                const unsigned long long at = ((unsigned long long)rope.slots[c] * rope.num_kv_heads + row / hd) * hd + row % hd;
                store((T*)rope.v_cache + at, acc[c]);
            }
        return;
    }
    const bool is_q = block < bq;
    if (!is_q) block -= bq;
    const unsigned int blocks_per_head = half / PAIRS, head = block / blocks_per_head;
    const unsigned int i = (block % blocks_per_head) * PAIRS + warp % PAIRS;
    const unsigned int row = head * hd + i + (warp / PAIRS) * half;
    products(is_q ? mq : mk, row, acc);
    if (threadIdx.x == 0)
        for (int c = 0; c < NCOLS; ++c) rounded[warp][c] = to_f32(round_to<T>(acc[c]));
    __syncthreads();
    if (warp >= PAIRS || threadIdx.x >= NCOLS) return;
    const unsigned int c = threadIdx.x;
    const unsigned long long at = (unsigned long long)rope.positions[c] * half + i;
    const float2 r = rope_rotate(rounded[warp][c], rounded[warp + PAIRS][c], rope.cos[at], rope.sin[at]);
    T* out = is_q ? (T*)rope.q_out + (unsigned long long)c * mq.nrows + head * hd
                  : (T*)rope.k_cache + ((unsigned long long)rope.slots[c] * rope.num_kv_heads + head) * hd;
    store(out + i, r.x);
    store(out + i + half, r.y);
}
