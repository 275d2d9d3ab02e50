// Element types and conversions shared by every hearth CUDA C source (prepended to each by its
// module's `CUDA_SOURCE`). NVRTC compiles without the toolkit's headers, so BF16/F16 are plain
// 16-bit structs converted by hand, and the infinities are spelled by their bits (no math.h).
// All arithmetic is F32: `to_f32` reads an element, `store` writes one rounded to nearest even
// (NaN stays NaN).

#define POS_INF __int_as_float(0x7f800000)
#define NEG_INF __int_as_float(0xff800000)

struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };

__device__ __forceinline__ float h2f(unsigned short bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((unsigned int)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 x) { return h2f(x.bits); }

__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(bf16* p, float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p->bits = 0x7fc0;  // NaN
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    p->bits = (unsigned short)(u >> 16);
}
__device__ __forceinline__ void store(f16* p, float x) {
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(x));
    p->bits = bits;
}

// x rounded to T (nearest even), as a value of type T.
template <typename T> __device__ __forceinline__ T round_to(float x) {
    T r;
    store(&r, x);
    return r;
}

// Eight BF16 or F16 values packed in 16 bytes (one vector load) as floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* out) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; ++i) {
        T lo, hi;
        lo.bits = (unsigned short)(w[i] & 0xffffu);
        hi.bits = (unsigned short)(w[i] >> 16);
        out[2 * i] = to_f32(lo);
        out[2 * i + 1] = to_f32(hi);
    }
}

// Eight floats rounded to BF16 or F16 and packed in 16 bytes (one vector store): unpack8's inverse.
template <typename T>
__device__ __forceinline__ uint4 pack8(const float* v) {
    unsigned int w[4];
    for (int i = 0; i < 4; ++i) w[i] = (unsigned int)round_to<T>(v[2 * i]).bits | ((unsigned int)round_to<T>(v[2 * i + 1]).bits << 16);
    uint4 u;
    u.x = w[0];
    u.y = w[1];
    u.z = w[2];
    u.w = w[3];
    return u;
}
