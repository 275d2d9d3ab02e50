//! Q4_K/Q6_K weights times a batch of activation rows on BF16/F16 tensor cores — the products of
//! a generation step of several sequences (from 4, where the matvec kernels' per-row registers
//! start to cost more than the tensor cores save, up to where dequantizing the whole matrix for
//! a cuBLAS GEMM wins). The weights are still read once per step
//! (per 64 tokens); each warp turns its share of the blocks into the mma's operands in registers,
//! so no dequantized copy is written.
//!
//! [`quant_mma`] (`mma.cu`): each weight becomes `v * (d * scale) - dmin * min` in the activations'
//! type (one rounding, with the group's scale and min rounded to that type first), then `mma.sync`
//! m16n8k16 accumulates in F32. The activations are used as they are (no int8 rounding), so the
//! result equals the F32 product of the dequantized weights ([`crate::quant_matvec::quant_matvec_reference`])
//! up to those roundings and summation order; tests on the GPU bind them (`cuda_tests.rs`).
//!
//! [`dense_mma`] runs dense BF16/F16 weights through the same kernel (batch-invariant mode's
//! product for every weight that is not Q4_K/Q6_K).
//!
//! Invariants: each output row (token) depends only on its own activation row — the same bits
//! whatever the batch around it (tested), because tiles, slices and summation order depend on the
//! matrix alone. Needs compute capability 8.0 (`mma.sync` with BF16, `cp.async`); [`supported`]
//! says no elsewhere.

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
/// several tiles, side by side on the GPU so the weights come from DRAM about once.
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
        && gpu_has_bf16_mma(x)
}

fn gpu_has_bf16_mma(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::has_bf16_mma(x.device())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// Whether [`dense_mma`] handles `w` (`[n, k]`) times `x` (`[rows, k]`): BF16 or F16 weights of
/// the activations' own type on a GPU of compute capability 8.0 or newer, any width.
pub fn dense_supported(w: &Tensor, x: &Tensor) -> bool {
    let Ok((n, k)) = w.dims2() else { return false };
    let Ok((rows, x_k)) = x.dims2() else { return false };
    matches!(x.dtype(), DType::BF16 | DType::F16) && w.dtype() == x.dtype() && n > 0 && rows > 0 && x_k == k && k > 0 && gpu_has_bf16_mma(x)
}

/// `x Wᵀ` for a dense weight, through the same kernel as the quantized formats (the weights are
/// the mma's operands as they are): `[rows, n]` in `x`'s dtype, each token's result independent
/// of its batch. A width that is not a multiple of 256 is zero-padded in both operands first (a
/// copy of each per call; the zeros add exactly nothing). Call only where [`dense_supported`]
/// holds.
pub fn dense_mma(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        let k = x.dim(1)?;
        if k % 256 == 0 {
            return cuda::dense_mma(w, x);
        }
        let pad = k.next_multiple_of(256) - k;
        cuda::dense_mma(&w.pad_with_zeros(1, 0, pad)?, &x.pad_with_zeros(1, 0, pad)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, x);
        Err(crate::KernelError::InvalidMetadata("dense_mma needs the cuda feature".into()))
    }
}

/// Most matrices [`quant_mma_group`] takes in one launch (`MmaMatrices` in mma.cu).
pub const MAX_GROUP: usize = 3;

/// Whether [`quant_mma_group`] handles the matrices `ws` (1..=[`MAX_GROUP`], each [`supported`],
/// one width) times `x`.
pub fn group_supported(ws: &[&QTensor], x: &Tensor) -> bool {
    (1..=MAX_GROUP).contains(&ws.len()) && ws.iter().all(|w| supported(w, x))
}

/// `x Wᵀ`: `[rows, n]` in `x`'s dtype. Call only where [`supported`] holds.
pub fn quant_mma(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let mut outputs = quant_mma_group(&[w], x)?;
    Ok(outputs.remove(0))
}

/// `[x W₀ᵀ, x W₁ᵀ, …]` in one launch (the Q, K, V or gate and up projections of a batched
/// generation step): fewer launches, and one grid the GPU fills better than several small ones.
/// Call only where [`group_supported`] holds.
pub fn quant_mma_group(ws: &[&QTensor], x: &Tensor) -> Result<Vec<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        cuda::quant_mma_group(ws, x)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ws, x);
        Err(crate::KernelError::InvalidMetadata("quant_mma_group needs the cuda feature".into()))
    }
}
