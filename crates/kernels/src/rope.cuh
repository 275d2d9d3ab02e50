// The half-split (NeoX) rotary rotation of one pair of a head, x1 = x[i] and x2 = x[i + head_dim / 2],
// by the position's cos c and sin s. Each product and sum rounded as written (no contraction into
// FMAs, whose choice is the compiler's), so that the kernels that rotate (rope_write_kv in
// fused.cu; the Q/K/V matvec that rotates in its epilogue, matvec_int8.cu) give the same bits.
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, float c, float s) {
    return make_float2(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)), __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
}
