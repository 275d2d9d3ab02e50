// Reading ggml's quantized blocks, shared by the matvec and the tensor-core matmul kernels
// (prepended after dtypes.cuh). Block layouts are described at the top of quant_matvec/matvec.cu.

__device__ __forceinline__ unsigned short ld16(const unsigned char* p) { return *(const unsigned short*)p; }
// Four bytes from a 2-byte aligned address.
__device__ __forceinline__ unsigned int ld32_a2(const unsigned char* p) {
    return (unsigned int)ld16(p) | ((unsigned int)ld16(p + 2) << 16);
}

// Scale and min (6 bits each) of group g (0..7) from the 12 packed bytes (head.y, .z, .w),
// with word selects and shifts only (no byte indexing of registers, which spills to local memory).
__device__ __forceinline__ void q4k_scale_min(const uint4& head, unsigned int g, unsigned int* scale, unsigned int* min) {
    const unsigned int shift = 8 * (g & 3);
    const unsigned int y = (head.y >> shift) & 0xFF, z = (head.z >> shift) & 0xFF, w = (head.w >> shift) & 0xFF;
    if (g < 4) {
        *scale = y & 63;
        *min = z & 63;
    } else {
        *scale = (w & 0xF) | ((y >> 6) << 4);
        *min = (w >> 4) | ((z >> 6) << 4);
    }
}
