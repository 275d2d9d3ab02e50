//! Quantized weights times a few activation rows on the GPU — the products of a generation step
//! (1..=8 rows), where reading the weights is the whole cost.
//!
//! [`quant_matvec`] reads ggml blocks (Q4_K, Q6_K, Q8_0, Q4_0) straight from the `QTensor`'s
//! device memory and BF16/F16 activations as they are (candle's path first quantizes the
//! activations to Q8_1 in a separate kernel per product), accumulating in F32
//! (`matvec.cu`, NVRTC). [`quant_matvec_reference`] dequantizes the whole matrix and multiplies in
//! F32; tests on the GPU bind the two (`cuda_tests.rs`). [`supported`] says when the fast path
//! applies; callers use candle's QMatMul otherwise (prompts, other block types, the CPU).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::Result;

/// CUDA C source of the kernels.
pub const CUDA_SOURCE: &str = concat!(include_str!("../dtypes.cuh"), include_str!("matvec.cu"));

/// Most activation rows one launch takes (kernels are instantiated for 1..=8).
pub const MAX_ROWS: usize = 8;

/// Whether [`quant_matvec`] handles `w` (`[n, k]`) times `x` (`[rows, k]`).
pub fn supported(w: &QTensor, x: &Tensor) -> bool {
    let block = match w.dtype() {
        GgmlDType::Q4K | GgmlDType::Q6K => 256,
        GgmlDType::Q8_0 | GgmlDType::Q4_0 => 32,
        _ => return false,
    };
    let Ok((_, k)) = w.shape().dims2() else { return false };
    let Ok((rows, x_k)) = x.dims2() else { return false };
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && (1..=MAX_ROWS).contains(&rows)
        && x_k == k
        && k % block == 0
        // activations are read 16 bytes at a time
        && k % 8 == 0
}

/// `x Wᵀ`: `[rows, n]` in `x`'s dtype. Call only where [`supported`] holds.
pub fn quant_matvec(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        cuda::quant_matvec(w, x)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, x);
        Err(crate::KernelError::InvalidMetadata("quant_matvec needs the cuda feature".into()))
    }
}

/// The reference: dequantize `w` to F32 and multiply in F32; result in `x`'s dtype.
pub fn quant_matvec_reference(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let dense = w.dequantize(x.device())?;
    Ok(x.to_dtype(DType::F32)?.matmul(&dense.t()?)?.to_dtype(x.dtype())?)
}
