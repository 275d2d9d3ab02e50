// The gate activations of gated MLPs, shared by the fused gated_act kernel and the gate/up
// matvec that applies it in its epilogue (prepended after dtypes.cuh): act 0 = SiLU, 1 = GELU
// with the tanh approximation.

__device__ __forceinline__ float gate_activation(float g, unsigned int act) {
    if (act == 0) return g / (1.0f + expf(-g));
    const float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
    return 0.5f * g * (1.0f + tanhf(inner));
}
