//! Q4_K/Q6_K weights times a batch of activation rows on int8 tensor cores — the products of a
//! generation step with more sequences than [`crate::quant_matvec`] takes (9 up to where
//! dequantizing for a cuBLAS GEMM wins), where the weights are still read once per step but the
//! dp4a kernels would run out of arithmetic.
//!
//! [`quant_mma`] rounds the activations to int8 per 32 values exactly as the int8 matvec kernels
//! do (a small kernel of its own, into a transient buffer), then multiplies with `mma.sync`
//! (m16n8k32 for Q4_K's 32-weight groups, m16n8k16 for Q6_K's 16-weight sub-blocks) and scales the
//! integer dot products in F32 (`mma.cu`). The result therefore equals the F32 product of the
//! int8-rounded activations ([`crate::quant_matvec::int8_activations_reference`]) up to summation
//! order and the output rounding; tests on the GPU bind them (`cuda_tests.rs`).
//!
//! Invariants: each output row (token) depends only on its own activation row — the same values
//! whatever the batch around it (checked bit for bit by the tests). Needs compute capability 8.0
//! (`mma.sync` with int8, `cp.async`); [`supported`] says no elsewhere.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::Result;

/// CUDA C source of the kernels.
pub const CUDA_SOURCE: &str = concat!(include_str!("../dtypes.cuh"), include_str!("../ggml_blocks.cuh"), include_str!("mma.cu"));

/// Tokens one thread block multiplies (`8 * NT`, NT = 1..=8 in mma.cu); larger batches take
/// several tiles.
pub const TOKENS_PER_TILE: usize = 64;

/// Whether [`quant_mma`] handles `w` (`[n, k]`) times `x` (`[rows, k]`): Q4_K/Q6_K on a GPU of
/// compute capability 8.0 or newer, BF16/F16 activations.
pub fn supported(w: &QTensor, x: &Tensor) -> bool {
    let Ok((_, k)) = w.shape().dims2() else { return false };
    let Ok((rows, x_k)) = x.dims2() else { return false };
    matches!(w.dtype(), GgmlDType::Q4K | GgmlDType::Q6K)
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && rows > 0
        && x_k == k
        && k % 256 == 0
        && gpu_has_int8_mma(x)
}

fn gpu_has_int8_mma(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::has_int8_mma(x.device())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// `x Wᵀ`: `[rows, n]` in `x`'s dtype. Call only where [`supported`] holds.
pub fn quant_mma(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        cuda::quant_mma(w, x)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, x);
        Err(crate::KernelError::InvalidMetadata("quant_mma needs the cuda feature".into()))
    }
}
