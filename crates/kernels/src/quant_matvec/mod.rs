//! Quantized weights times a few activation rows on the GPU — the products of a generation step
//! (1..=8 rows), where reading the weights is the whole cost.
//!
//! [`quant_matvec`] reads ggml blocks (Q4_K, Q6_K, Q8_0, Q4_0) straight from the `QTensor`'s
//! device memory, accumulating in F32 (NVRTC). Q4_K and Q6_K first quantize the activations to
//! int8 per 32 values inside the kernel's block and multiply with dp4a (`matvec_int8.cu`; the
//! rounding is what [`int8_activations_reference`] does); when the quantized rows do not fit a
//! block's shared memory, and for Q8_0/Q4_0, the activations are read as they are
//! (`matvec.cu`). [`quant_matvec_reference`] dequantizes the whole matrix and multiplies in F32;
//! tests on the GPU bind the kernels to it (`cuda_tests.rs`). [`supported`] says when the fast path
//! applies; callers use candle's QMatMul otherwise (prompts, other block types, the CPU).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::fused::QkvRope;
use crate::Result;

/// CUDA C source of the kernels.
pub const CUDA_SOURCE: &str = concat!(
    include_str!("../dtypes.cuh"),
    include_str!("../activation.cuh"),
    include_str!("../ggml_blocks.cuh"),
    include_str!("../int8_rows.cuh"),
    include_str!("../rope.cuh"),
    include_str!("../qkv_rope.cuh"),
    include_str!("../group_launch.cuh"),
    include_str!("matvec.cu"),
    include_str!("matvec_int8.cu"),
    include_str!("dequant.cu")
);

/// Most activation rows one launch takes (kernels are instantiated for 1..=8).
pub const MAX_ROWS: usize = 8;

/// Most matrices [`quant_matvec_group`] takes in one launch (`Q8xMatrices` in matvec_int8.cu).
pub const MAX_GROUP: usize = 3;

/// Shared memory an int8-activation block may use (the launches opt in beyond 48 KiB). The
/// quantized rows of a 14,336-wide down projection take 17.9 KB each: under 48 KiB only two
/// rows fitted, and three went to the float kernel (8B Q4_K_M tg64 at batch 3: 515 tok/s with
/// 48 KiB, 577 with 96 KiB, 570 with 160 KiB on the H100).
const MAX_SHARED_BYTES: usize = 96 * 1024;

/// Shared bytes of an int8-activation kernel for `rows` activation rows of width `k`: a float2
/// (scale, scaled sum) per 32 values, then the int8 values.
fn int8_shared_bytes(rows: usize, k: usize) -> usize {
    rows * (k / 32 * 8 + k)
}

/// Whether `dtype` x `rows`x`k` activations take the int8-activation kernels (Q4_K, Q6_K, when
/// the quantized rows fit a block's shared memory), else the float kernels.
/// `HEARTH_INT8_ACTIVATIONS=0` sends every product to the float kernels (slower, no rounding of
/// the activations).
pub fn uses_int8_activations(dtype: GgmlDType, rows: usize, k: usize) -> bool {
    int8_activations_enabled()
        && matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K)
        && int8_shared_bytes(rows, k) <= MAX_SHARED_BYTES
}

fn int8_activations_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("HEARTH_INT8_ACTIVATIONS").map_or(true, |v| v.trim() != "0"))
}

/// Activation rows already quantized as the int8 kernels quantize them (per 32 values a scale
/// and a scaled sum, then the int8 values), by the kernel that produced the rows: the norm
/// before a generation step's Q/K/V and gate/up products (`fused::f32_stream_norm_int8`).
/// [`quant_matvec_group`] and [`quant_matvec_gated`] then copy them instead of having every block
/// quantize `x` again. Bound to the rows they were made from: a product given other rows refuses.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Int8Rows {
    /// `[rows, k]` U8: the int8 values.
    pub(crate) values: Tensor,
    /// `[rows, k / 32 * 2]` F32: (scale, scale * sum of the group's values) per 32 values.
    pub(crate) scales: Tensor,
    /// The rows these are.
    pub(crate) of: candle_core::TensorId,
}

impl Int8Rows {
    /// Whether these are `x`'s rows.
    pub fn are_rows_of(&self, x: &Tensor) -> bool {
        self.of == x.id()
    }
}

/// Whether a producer should make [`Int8Rows`] of `rows` x `k` activations for the int8 kernels
/// (widths of whole Q4_K/Q6_K super-blocks, rows the int8 kernels take: the same answer for
/// either format, so Q4_K stands for both).
pub fn int8_rows_useful(rows: usize, k: usize) -> bool {
    (1..=MAX_ROWS).contains(&rows) && k.is_multiple_of(256) && uses_int8_activations(GgmlDType::Q4K, rows, k)
}

/// Whether [`quant_matvec_group`] handles the matrices `ws` (1..=[`MAX_GROUP`], Q4_K/Q6_K, one
/// width) times `x`.
pub fn group_supported(ws: &[&QTensor], x: &Tensor) -> bool {
    let Ok((rows, k)) = x.dims2() else { return false };
    (1..=MAX_GROUP).contains(&ws.len()) && ws.iter().all(|w| supported(w, x) && uses_int8_activations(w.dtype(), rows, k))
}

/// `[x W₀ᵀ, x W₁ᵀ, …]` in one launch that quantizes `x` once (the Q, K, V or gate and up
/// projections of a generation step), or copies `int8` (`x` already quantized; the same results).
/// Call only where [`group_supported`] holds.
pub fn quant_matvec_group(ws: &[&QTensor], x: &Tensor, int8: Option<&Int8Rows>) -> Result<Vec<Tensor>> {
    check_int8_rows(x, int8)?;
    #[cfg(feature = "cuda")]
    {
        cuda::quant_matvec_group(ws, x, int8)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ws, x);
        Err(crate::KernelError::InvalidMetadata("quant_matvec_group needs the cuda feature".into()))
    }
}

/// Whether [`quant_matvec_gated`] handles `gate` and `up` (one height) times `x`.
pub fn gated_supported(gate: &QTensor, up: &QTensor, x: &Tensor) -> bool {
    group_supported(&[gate, up], x) && gate.shape().dims().first() == up.shape().dims().first()
}

/// `act(x gateᵀ) * (x upᵀ)`, `[rows, n]`, in one launch: a gated MLP's gate/up projections and
/// its activation (each product rounded to `x`'s dtype first, as [`crate::fused::gated_act`]
/// receives them); `int8` as for [`quant_matvec_group`]. Call only where [`gated_supported`] holds.
pub fn quant_matvec_gated(
    gate: &QTensor,
    up: &QTensor,
    x: &Tensor,
    act: crate::fused::GatedActivation,
    int8: Option<&Int8Rows>,
) -> Result<Tensor> {
    check_int8_rows(x, int8)?;
    #[cfg(feature = "cuda")]
    {
        cuda::quant_matvec_gated(gate, up, x, act, int8)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (gate, up, x, act);
        Err(crate::KernelError::InvalidMetadata("quant_matvec_gated needs the cuda feature".into()))
    }
}

/// Whether [`quant_matvec_qkv_rope`] handles Q/K/V `ws` times `x` into `rope`
/// ([`QkvRope::fits`]).
pub fn qkv_rope_supported(ws: [&QTensor; 3], x: &Tensor, rope: &QkvRope) -> bool {
    group_supported(&ws, x) && rope.fits(ws.map(|w| w.shape().dims()[0]), x.dtype())
}

/// The Q, K, V products of a generation step and, in the same launch, what
/// [`crate::fused::rope_write_kv`] does with them: q rotated `[rows, heads, head_dim]` (the same
/// bits as the grouped products then `rope_write_kv`; k and v in the pool too). `int8` as for
/// [`quant_matvec_group`]. Call only where [`qkv_rope_supported`] holds.
pub fn quant_matvec_qkv_rope(ws: [&QTensor; 3], x: &Tensor, int8: Option<&Int8Rows>, rope: &QkvRope) -> Result<Tensor> {
    check_int8_rows(x, int8)?;
    #[cfg(feature = "cuda")]
    {
        cuda::quant_matvec_qkv_rope(ws, x, int8, rope)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (ws, x, rope);
        Err(crate::KernelError::InvalidMetadata("quant_matvec_qkv_rope needs the cuda feature".into()))
    }
}

/// `int8` must be `x`'s own rows: quantized other rows would silently give another product.
fn check_int8_rows(x: &Tensor, int8: Option<&Int8Rows>) -> Result<()> {
    match int8 {
        Some(int8) if !int8.are_rows_of(x) => Err(crate::KernelError::InvalidMetadata(format!(
            "int8 activation rows of tensor {:?} given with the activations of tensor {:?}",
            int8.of,
            x.id()
        ))),
        _ => Ok(()),
    }
}

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

/// Whether [`dequantize_16bit`] converts `w` to `dtype`: Q4_K/Q6_K/Q8_0/Q5_0 `[n, k]` weights on
/// a GPU (k whole blocks), BF16 or F16.
pub fn dequantize_supported(w: &QTensor, dtype: DType) -> bool {
    let Ok((_, k)) = w.shape().dims2() else { return false };
    #[cfg(feature = "cuda")]
    let block = cuda::dequant_block_weights(w.dtype());
    #[cfg(not(feature = "cuda"))]
    let block: Option<usize> = None;
    w.device().is_cuda() && matches!(dtype, DType::BF16 | DType::F16) && block.is_some_and(|b| k % b == 0)
}

/// `w` (`[n, k]`) dequantized to `dtype` on its GPU: every weight computed in F32 as ggml
/// defines it (what [`QTensor::dequantize`] gives) and rounded once. For products with many
/// activation rows, which then run as one GEMM in the activations' dtype. Call only where
/// [`dequantize_supported`] holds.
pub fn dequantize_16bit(w: &QTensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        cuda::dequantize_16bit(w, dtype)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, dtype);
        Err(crate::KernelError::InvalidMetadata("dequantize_16bit needs the cuda feature".into()))
    }
}

/// Activations as the Q4_K/Q6_K kernels see them: per 32 consecutive values of a row, `d =
/// max|x| / 127` and each value becomes `d * round_half_even(x / d)`. `x`: `[rows, k]`, k a
/// multiple of 32; result F32 on `x`'s device.
pub fn int8_activations_reference(x: &Tensor) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let rounded: Vec<f32> = values
        .chunks(32)
        .flat_map(|group| {
            let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (d, inv) = if amax > 0.0 { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
            group.iter().map(move |v| d * (v * inv).round_ties_even())
        })
        .collect();
    Ok(Tensor::from_vec(rounded, (rows, k), x.device())?)
}

/// The reference: dequantize `w` to F32 and multiply in F32; result in `x`'s dtype.
pub fn quant_matvec_reference(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let dense = w.dequantize(x.device())?;
    Ok(x.to_dtype(DType::F32)?.matmul(&dense.t()?)?.to_dtype(x.dtype())?)
}
