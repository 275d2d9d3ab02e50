//! Fused elementwise steps of a transformer block, each beside its reference twin written with
//! ordinary candle ops:
//!
//! - [`add_rms_norm`]: `sum = x + residual; out = rms_norm(sum) * weight` (returns both).
//! - [`rope_write_kv`]: rotary embedding of q and k (half-split / NeoX convention, F32 tables
//!   indexed by position), k and v written to the paged pool at each token's slot; returns the
//!   rotated q.
//! - [`gated_act`]: `act(gate) * up` with SiLU or tanh-GELU.
//!
//! The fast paths are CUDA kernels (`fused.cu`, NVRTC) for F32/BF16/F16 with F32 math, one
//! launch each where the unfused path takes several (RoPE + KV write: ~16). Elsewhere, and for
//! unsupported dtypes or layouts, the functions run the reference. Tests on the GPU bind the two
//! (`cuda_tests.rs`).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub(crate) mod qkv_rope_launch;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::{DType, Tensor, D};

use crate::{write_kv, Result};

/// CUDA C source of the kernels.
pub const CUDA_SOURCE: &str =
    concat!(include_str!("../dtypes.cuh"), include_str!("../activation.cuh"), include_str!("../int8_rows.cuh"), include_str!("../rope.cuh"), include_str!("fused.cu"));

/// 8-element chunks one thread of the vectorized norms keeps in registers (`NORM_CHUNKS` in
/// fused.cu): rows of up to `NORM_CHUNKS * 8 * 1024` elements.
#[cfg(feature = "cuda")]
const NORM_CHUNKS: usize = 4;

/// The activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatedActivation {
    Silu = 0,
    GeluTanh = 1,
}

#[cfg(feature = "cuda")]
fn fast_path_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// `x + residual` and its RMS norm times `weight`: `(normed, sum)`, both `[rows, hidden]`.
pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && fast_path_dtype(x.dtype()) && residual.dtype() == x.dtype() && weight.dtype() == x.dtype() {
        return cuda::add_rms_norm(x, residual, weight, eps);
    }
    add_rms_norm_reference(x, residual, weight, eps)
}

/// `x + residual` in F32 on an F32 residual stream and its RMS norm times `weight`: `(normed` in
/// `x`'s dtype, `sum` in F32`)`. The sum is not rounded to `x`'s dtype, so the stream between
/// blocks keeps F32 precision on a GPU whose activations are BF16/F16. One kernel on a GPU for
/// BF16/F16 rows of a multiple of 8 elements; tensor ops elsewhere (the reference).
pub fn add_rms_norm_f32_residual(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == weight.dtype() && x.dims() == residual.dims() && f32_stream_fast_path(residual, weight) {
        return cuda::add_rms_norm_f32_residual(x, residual, weight, eps);
    }
    add_rms_norm_f32_residual_reference(x, residual, weight, eps)
}

/// The RMS norm of an F32 residual stream times a BF16/F16 `weight`, in the weight's dtype: the
/// first block's norm on a GPU (no block output to add yet). One kernel on a GPU under the same
/// conditions as [`add_rms_norm_f32_residual`]; tensor ops elsewhere (the reference).
pub fn rms_norm_f32_stream(stream: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if stream.device().is_cuda() && f32_stream_fast_path(stream, weight) {
        return cuda::rms_norm_f32_stream(stream, weight, eps);
    }
    rms_norm_f32_stream_reference(stream, weight, eps)
}

/// [`add_rms_norm_f32_residual`] (with `x`: `(normed, Some(sum))`) or [`rms_norm_f32_stream`]
/// (without: `(normed, None)`) whose kernel also quantizes the normed rows for a generation
/// step's int8 products ([`crate::quant_matvec::Int8Rows`], bit for bit what those kernels
/// would make of `normed`). GPU only, where [`int8_rows_supported`] holds.
pub fn f32_stream_norm_int8(
    x: Option<&Tensor>,
    stream: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Option<Tensor>, crate::quant_matvec::Int8Rows)> {
    #[cfg(feature = "cuda")]
    if int8_rows_supported(stream, weight) && x.is_none_or(|x| x.device().is_cuda() && x.dtype() == weight.dtype() && x.dims() == stream.dims()) {
        return cuda::f32_stream_norm_int8(x, stream, weight, eps);
    }
    let _ = (x, weight, eps);
    Err(crate::KernelError::InvalidMetadata(format!(
        "int8 norm rows need an F32 stream of rows of whole 256-value blocks on a GPU, got {:?} {:?} on {:?}",
        stream.dims(),
        stream.dtype(),
        stream.device()
    )))
}

/// Whether [`f32_stream_norm_int8`] takes this F32 stream and weight: the GPU norm kernel's
/// conditions, rows the int8 products take, widths of whole 256-value blocks.
pub fn int8_rows_supported(stream: &Tensor, weight: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    if let Ok((rows, hidden)) = stream.dims2() {
        return stream.device().is_cuda() && f32_stream_fast_path(stream, weight) && crate::quant_matvec::int8_rows_useful(rows, hidden);
    }
    let _ = (stream, weight);
    false
}

pub fn rms_norm_f32_stream_reference(stream: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(rms_norm_f32(&stream.to_dtype(DType::F32)?, weight, eps)?.to_dtype(weight.dtype())?)
}

/// Whether the kernels take an F32 stream `[rows > 0, hidden]` with a BF16/F16 `weight`.
#[cfg(feature = "cuda")]
fn f32_stream_fast_path(stream: &Tensor, weight: &Tensor) -> bool {
    let hidden = stream.dims().last().copied().unwrap_or(0);
    matches!(weight.dtype(), DType::BF16 | DType::F16)
        && stream.dtype() == DType::F32
        && weight.dims() == [hidden]
        && hidden % 8 == 0
        && hidden / 8 <= NORM_CHUNKS * 1024
        && stream.rank() == 2
        && stream.dim(0).is_ok_and(|rows| rows > 0)
}

pub fn add_rms_norm_f32_residual_reference(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let sum = (x.to_dtype(DType::F32)? + residual.to_dtype(DType::F32)?)?;
    Ok((rms_norm_f32(&sum, weight, eps)?.to_dtype(x.dtype())?, sum))
}

pub fn add_rms_norm_reference(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let sum = (x + residual)?;
    Ok((rms_norm_f32(&sum.to_dtype(DType::F32)?, weight, eps)?.to_dtype(x.dtype())?, sum))
}

/// The references' norm of F32 rows: `f / sqrt(mean(f²) + eps) * weight`, in F32.
fn rms_norm_f32(f: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let mean_square = f.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(f.broadcast_div(&(mean_square + eps as f64)?.sqrt()?)?.broadcast_mul(&weight.to_dtype(DType::F32)?)?)
}

/// Rotary tables and pool slots of one step, shared by every layer's [`rope_write_kv`].
pub struct RopeKvInputs<'a> {
    /// `[max_positions, head_dim / 2]` F32.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// `[num_tokens]` u32.
    pub positions: &'a Tensor,
    pub slot_mapping: &'a Tensor,
}

/// What a Q/K/V launch also does with its products (`quant_matvec::quant_matvec_qkv_rope`,
/// `dense_matvec::dense_matvec_qkv_rope`): what [`rope_write_kv`] does, rotate q and k and write
/// k and v to the pool (`[num_blocks, block_size, kv_heads, head_dim]`) at each row's slot.
pub struct QkvRope<'a> {
    pub rope: &'a RopeKvInputs<'a>,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub head_dim: usize,
}

impl QkvRope<'_> {
    /// Whether a rotating launch can take Q, K, V of `heights` rows with activations of `dtype`:
    /// whole heads of `head_dim`, a multiple of 8 (a launch's block holds whole rotation pairs),
    /// K and V of one height, a pool of `dtype`.
    pub fn fits(&self, heights: [usize; 3], dtype: DType) -> bool {
        let head_dim = self.head_dim;
        head_dim > 0
            && head_dim.is_multiple_of(8)
            && heights[0].is_multiple_of(head_dim)
            && heights[1] == heights[2]
            && heights[1].is_multiple_of(head_dim)
            && self.k_cache.dtype() == dtype
            && self.v_cache.dtype() == dtype
    }
}

/// Rotates `q` `[tokens, heads, head_dim]` and `k` `[tokens, kv_heads, head_dim]`, writes the
/// rotated k and `v` to the pool (`[num_blocks, block_size, kv_heads, head_dim]`) at each token's
/// slot, and returns the rotated q.
pub fn rope_write_kv(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &RopeKvInputs,
    k_cache: &Tensor,
    v_cache: &Tensor,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda()
        && fast_path_dtype(q.dtype())
        && [k.dtype(), v.dtype(), k_cache.dtype(), v_cache.dtype()].iter().all(|&d| d == q.dtype())
        && rope.cos.dtype() == DType::F32
        && rope.sin.dtype() == DType::F32
    {
        return cuda::rope_write_kv(q, k, v, rope, k_cache, v_cache);
    }
    rope_write_kv_reference(q, k, v, rope, k_cache, v_cache)
}

/// Half-split rotation of `x` `[tokens, heads, head_dim]` by per-token `cos`/`sin` rows.
fn rotate_half_split(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let f = x.to_dtype(DType::F32)?;
    let (x1, x2) = (f.narrow(D::Minus1, 0, half)?, f.narrow(D::Minus1, half, half)?);
    // [tokens, 1, half] broadcast over heads
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let first = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let second = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Ok(Tensor::cat(&[first, second], D::Minus1)?.to_dtype(x.dtype())?)
}

pub fn rope_write_kv_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rope: &RopeKvInputs,
    k_cache: &Tensor,
    v_cache: &Tensor,
) -> Result<Tensor> {
    let cos = rope.cos.index_select(rope.positions, 0)?;
    let sin = rope.sin.index_select(rope.positions, 0)?;
    let q = rotate_half_split(q, &cos, &sin)?;
    let k = rotate_half_split(k, &cos, &sin)?;
    write_kv(k_cache, v_cache, &k, v, rope.slot_mapping)?;
    Ok(q)
}

/// `act(gate) * up`, `[rows, width]` each (rows may be strided views of one matrix).
pub fn gated_act(gate: &Tensor, up: &Tensor, act: GatedActivation) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gate.device().is_cuda() && fast_path_dtype(gate.dtype()) && up.dtype() == gate.dtype() {
        return cuda::gated_act(gate, up, act);
    }
    gated_act_reference(gate, up, act)
}

pub fn gated_act_reference(gate: &Tensor, up: &Tensor, act: GatedActivation) -> Result<Tensor> {
    let g = gate.to_dtype(DType::F32)?;
    let activated = match act {
        GatedActivation::Silu => (&g / (g.neg()?.exp()? + 1.0)?)?,
        GatedActivation::GeluTanh => g.gelu()?,
    };
    Ok((activated * up.to_dtype(DType::F32)?)?.to_dtype(gate.dtype())?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{QkvRope, RopeKvInputs};

    /// A rotating launch takes whole heads of a multiple of 8, K and V of one height, and a pool
    /// of the activations' dtype.
    #[test]
    fn a_rotating_launch_fits_whole_heads_and_its_pool_dtype() {
        let t = |dtype| Tensor::zeros(1, dtype, &Device::Cpu).unwrap();
        let (table, index, pool) = (t(DType::F32), t(DType::U32), t(DType::BF16));
        let rope = RopeKvInputs { cos: &table, sin: &table, positions: &index, slot_mapping: &index };
        let target = |head_dim| QkvRope { rope: &rope, k_cache: &pool, v_cache: &pool, head_dim };
        assert!(target(64).fits([256, 128, 128], DType::BF16));
        assert!(!target(64).fits([256, 128, 192], DType::BF16), "K and V of different heights");
        assert!(!target(64).fits([256, 96, 96], DType::BF16), "K of part of a head");
        assert!(!target(12).fits([48, 24, 24], DType::BF16), "heads of a width that is not a multiple of 8");
        assert!(!target(0).fits([0, 0, 0], DType::BF16), "no heads");
        assert!(!target(64).fits([256, 128, 128], DType::F16), "a pool of another dtype");
    }
}
