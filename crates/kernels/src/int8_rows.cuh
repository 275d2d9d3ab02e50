// Activations as int8 for the dp4a matvec kernels (matvec_int8.cu), one function shared by the
// kernels that quantize: the matvec blocks themselves (quantize_rows) and the norm before a
// generation step's products (fused.cu), so both produce the same bits.
//
// Per 32 consecutive values of a row, q = round(x / d) with d = max|x| / 127, and s = d * sum(q)
// (what a Q4_K min term needs).

// The 8 values v (of a 32-value group whose 4 threads are adjacent lanes 4i .. 4i + 3) as int8,
// packed; *group = (d, s) of the whole group. All 32 lanes of the warp call it (shuffles); lanes
// without values pass zeros.
__device__ __forceinline__ uint2 quantize_group8(const float v[8], float2* group) {
    float amax = 0.0f;
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int q[8], sum = 0;
    for (int i = 0; i < 8; ++i) {
        q[i] = __float2int_rn(v[i] * inv);
        sum += q[i];
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    group->x = d;
    group->y = d * (float)sum;
    uint2 packed;
    packed.x = (q[0] & 0xFF) | ((q[1] & 0xFF) << 8) | ((q[2] & 0xFF) << 16) | ((unsigned int)(q[3] & 0xFF) << 24);
    packed.y = (q[4] & 0xFF) | ((q[5] & 0xFF) << 8) | ((q[6] & 0xFF) << 16) | ((unsigned int)(q[7] & 0xFF) << 24);
    return packed;
}
