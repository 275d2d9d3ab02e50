//! Dense BF16/F16 weights times a few activation rows on the GPU — the products of a generation
//! step of an unquantized model (1..=8 rows), where reading the weights is the whole cost.
//!
//! [`dense_matvec`] runs `dense_matvec.cu` (NVRTC): one warp per output row, 16-byte loads, four
//! per lane in flight, F32 accumulation. For one row cuBLAS picks a GEMM kernel that does not
//! reach the bandwidth a plain streaming kernel does (crates/kernels/PERF.md).
//! [`dense_matvec_group`] and [`dense_matvec_gated`] run the same rows for up to three matrices
//! (Q/K/V), or gate and up with the activation, in one launch; [`dense_matvec_qkv_rope`] also
//! rotates Q/K/V and writes the pool, as `fused::rope_write_kv` does.
//! [`dense_matvec_reference`] is the F32 product; GPU tests bind the two (`cuda_tests.rs`).
//! [`supported`] says when the fast path applies; callers use the matmul otherwise.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::{DType, Tensor};

use crate::fused::QkvRope;
use crate::Result;

/// CUDA C source of the kernels.
pub const CUDA_SOURCE: &str = concat!(
    include_str!("../dtypes.cuh"),
    include_str!("../activation.cuh"),
    include_str!("../rope.cuh"),
    include_str!("../qkv_rope.cuh"),
    include_str!("../group_launch.cuh"),
    include_str!("dense_matvec.cu")
);

/// Most activation rows one launch takes (kernels are instantiated for 1..=8).
pub const MAX_ROWS: usize = 8;

/// Whether [`dense_matvec`] handles `w` (`[n, k]`) times `x` (`[rows, k]`): both BF16 or both
/// F16 on a GPU, 1..=8 rows, k a multiple of 8 and both starting on a 16-byte boundary (the
/// kernel reads 16-byte pieces), `w` contiguous.
pub fn supported(w: &Tensor, x: &Tensor) -> bool {
    let (Ok((_, k)), Ok((rows, x_k))) = (w.dims2(), x.dims2()) else { return false };
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && w.dtype() == x.dtype()
        && w.is_contiguous()
        && (1..=MAX_ROWS).contains(&rows)
        && x_k == k
        && k.is_multiple_of(8)
        && w.layout().start_offset().is_multiple_of(8)
        && x.layout().start_offset().is_multiple_of(8)
}

/// `x Wᵀ`: `[rows, n]` in `x`'s dtype. Call only where [`supported`] holds.
pub fn dense_matvec(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        cuda::dense_matvec(w, x)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, x);
        Err(crate::KernelError::InvalidMetadata("dense_matvec needs the cuda feature".into()))
    }
}

/// Most matrices [`dense_matvec_group`] takes in one launch (`DenseMatrices` in the .cu).
pub const MAX_GROUP: usize = 3;

/// Whether [`dense_matvec_group`] handles the matrices `ws` (1..=[`MAX_GROUP`], each
/// [`supported`] with `x`, so of one width) times `x`.
pub fn group_supported(ws: &[&Tensor], x: &Tensor) -> bool {
    (1..=MAX_GROUP).contains(&ws.len()) && ws.iter().all(|w| supported(w, x))
}

/// `[x W₀ᵀ, x W₁ᵀ, …]` in one launch (the Q, K, V projections of a generation step): the same
/// values as [`dense_matvec`] one by one. Call only where [`group_supported`] holds.
pub fn dense_matvec_group(ws: &[&Tensor], x: &Tensor) -> Result<Vec<Tensor>> {
    #[cfg(feature = "cuda")]
    {
        let flat = cuda::dense_matvec_group(ws, x, cuda::Epilogue::Plain)?;
        let heights = ws.iter().map(|w| w.dim(0)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(crate::nvrtc::split_group_output(&flat, x.dim(0)?, heights)?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ws, x);
        Err(crate::KernelError::InvalidMetadata("dense_matvec_group needs the cuda feature".into()))
    }
}

/// Whether [`dense_matvec_gated`] handles `gate` and `up` (one height) times `x`.
pub fn gated_supported(gate: &Tensor, up: &Tensor, x: &Tensor) -> bool {
    group_supported(&[gate, up], x) && gate.dims().first() == up.dims().first()
}

/// `act(x gateᵀ) * (x upᵀ)`, `[rows, n]`, in one launch: a gated MLP's gate/up projections and
/// its activation, the same bits as [`dense_matvec`] twice and then [`crate::fused::gated_act`].
/// Call only where [`gated_supported`] holds.
pub fn dense_matvec_gated(gate: &Tensor, up: &Tensor, x: &Tensor, act: crate::fused::GatedActivation) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        cuda::dense_matvec_group(&[gate, up], x, cuda::Epilogue::Gated(act))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate, up, x, act);
        Err(crate::KernelError::InvalidMetadata("dense_matvec_gated needs the cuda feature".into()))
    }
}

/// Whether [`dense_matvec_qkv_rope`] handles Q/K/V `ws` times `x` into `rope`
/// ([`QkvRope::fits`]).
pub fn qkv_rope_supported(ws: [&Tensor; 3], x: &Tensor, rope: &QkvRope) -> bool {
    group_supported(&ws, x) && rope.fits(ws.map(|w| w.dims().first().copied().unwrap_or(0)), x.dtype())
}

/// The Q, K, V products of a generation step and, in the same launch, what
/// [`crate::fused::rope_write_kv`] does with them: q rotated `[rows, heads, head_dim]`, the same
/// bits as [`dense_matvec_group`] then `rope_write_kv` (k and v in the pool too). Call only where
/// [`qkv_rope_supported`] holds.
pub fn dense_matvec_qkv_rope(ws: [&Tensor; 3], x: &Tensor, rope: &QkvRope) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        let q = cuda::dense_matvec_group(&ws, x, cuda::Epilogue::Rope(rope))?;
        Ok(q.reshape((x.dim(0)?, ws[0].dim(0)? / rope.head_dim, rope.head_dim))?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ws, x, rope);
        Err(crate::KernelError::InvalidMetadata("dense_matvec_qkv_rope needs the cuda feature".into()))
    }
}

/// The reference: the product in F32, rounded to `x`'s dtype.
pub fn dense_matvec_reference(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let product = x.to_dtype(DType::F32)?.matmul(&w.to_dtype(DType::F32)?.t()?)?;
    Ok(product.to_dtype(x.dtype())?)
}
