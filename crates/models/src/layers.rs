//! The building blocks every architecture shares: `Linear` (dense or quantized behind one
//! type), `Embedding`, `RmsNorm`, rotary position tables and the gated MLP.
//!
//! Shapes: activations are `[num_tokens, features]` — a flattened batch has no batch axis.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use hearth_kernels::fused::{self, GatedActivation, QkvRope};
use hearth_kernels::quant_matvec::Int8Rows;
use hearth_kernels::{dense_matvec, quant_matvec, quant_mma, QuantizedMatrix};

use crate::config::{Activation, ModelConfig, RopeScaling};
use crate::numerics;
use crate::Result;

/// A weight matrix as stored for compute: candle's dense/quantized matmul, or hearth's own
/// CPU kernel for the block types candle runs without SIMD (Q4_1, Q5_0, Q5_1) and for Q8_0
/// where candle has no repacked kernel (`QuantizedMatrix::preferred_for`).
///
/// On the CPU activations are F32. On a GPU quantized weights stay quantized in device memory
/// (candle's QMatMul) and activations are BF16/F16; dense weights are in the activation dtype.
#[derive(Clone)]
pub enum LinearWeight {
    Candle(QMatMul),
    Hearth(Arc<QuantizedMatrix>),
}

impl LinearWeight {
    /// Picks hearth's kernel when it covers the tensor's type and device (CPU only), else
    /// candle's path. Float-typed tensors (F32/F16/BF16 GGUF) become dense `dtype` weights.
    pub fn from_qtensor(q: QTensor, dtype: DType) -> Result<Self> {
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Ok(Self::Candle(QMatMul::Tensor(q.dequantize(&q.device())?.to_dtype(dtype)?)));
        }
        Self::from_arc(Arc::new(q))
    }

    /// A quantized (non-float) tensor, possibly shared with other users (a tied embedding
    /// table): hearth's kernel where it is preferred on this CPU, else candle's path. Neither
    /// copies the blocks.
    pub fn from_arc(q: Arc<QTensor>) -> Result<Self> {
        if QuantizedMatrix::preferred_for(&q) {
            if let Some(matrix) = QuantizedMatrix::from_shared_qtensor(q.clone())? {
                return Ok(Self::Hearth(Arc::new(matrix)));
            }
        }
        Ok(Self::Candle(QMatMul::from_arc(q)?))
    }
}

/// A quantized tensor's raw GGUF blocks: its type, shape and bytes.
pub struct QuantizedBlocks {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl QuantizedBlocks {
    pub fn of_qtensor(q: &QTensor) -> Result<Self> {
        Ok(Self { dtype: q.dtype(), dims: q.shape().dims().to_vec(), bytes: q.data()?.into_owned() })
    }

    /// The blocks as a `QTensor` on `device`.
    pub fn to_qtensor(&self, device: &Device) -> Result<QTensor> {
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(self.dtype, &self.bytes, self.dims.clone(), device)?)
    }
}

impl LinearWeight {
    /// The raw blocks of a quantized weight; `None` for a dense one.
    pub fn quantized_blocks(&self) -> Result<Option<QuantizedBlocks>> {
        Ok(match self {
            Self::Candle(QMatMul::QTensor(q)) => Some(QuantizedBlocks::of_qtensor(q)?),
            Self::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_)) => None,
            Self::Hearth(m) => Some(QuantizedBlocks {
                dtype: m.dtype(),
                dims: vec![m.num_rows(), m.num_cols()],
                bytes: m.bytes()?.into_owned(),
            }),
        })
    }

    /// Bytes of the weight as stored for compute (quantized blocks or dense elements): what one
    /// product reads.
    pub fn stored_bytes(&self) -> u64 {
        match self {
            Self::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => tensor_bytes(t),
            Self::Hearth(m) => m.size_in_bytes() as u64,
        }
    }

    /// Rows of the matrix: the layer's output features.
    pub fn out_features(&self) -> usize {
        match self {
            Self::Candle(QMatMul::QTensor(q)) => q.shape().dims().first().copied().unwrap_or(0),
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims().first().copied().unwrap_or(0),
            Self::Hearth(m) => m.num_rows(),
        }
    }

    /// Elements of the matrix (`out_dim × in_dim`).
    pub fn num_weights(&self) -> u64 {
        match self {
            Self::Candle(QMatMul::QTensor(q)) => q.shape().elem_count() as u64,
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.elem_count() as u64,
            Self::Hearth(m) => (m.num_rows() * m.num_cols()) as u64,
        }
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Quantized products of at least this many activation rows on a GPU (prompt chunks, large
/// batches) dequantize the weight to F16 and run one tensor-core GEMM instead of candle's MMQ
/// kernels. H100, 8B Q4_K_M (crates/kernels/PERF.md): pp512 6,673 -> 9,834 tok/s, pp4096
/// 4,254 -> 5,912; at 64 rows and below MMQ was faster (tg128 at batch 64: 3,596 vs 2,271), and
/// `quant_mma` is faster still (5,549).
/// `HEARTH_DEQUANT_GEMM_ROWS=N` changes the threshold; 0 turns the path off.
const DEQUANT_GEMM_MIN_ROWS: usize = 128;

fn dequantized_gemm_min_rows() -> Option<usize> {
    static ROWS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let rows = std::env::var("HEARTH_DEQUANT_GEMM_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEQUANT_GEMM_MIN_ROWS);
        (rows > 0).then_some(rows)
    })
}

/// `HEARTH_QUANT_MMA=0` turns `quant_mma` off (for comparisons): products of up to 8 rows go to
/// the matvec kernels, larger ones up to the GEMM threshold to candle's MMQ kernels.
fn quant_mma_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("HEARTH_QUANT_MMA").map_or(true, |v| v.trim() != "0"))
}

/// Fewest rows that take `quant_mma` rather than the matvec kernels. The matvec kernels keep
/// NCOLS partial sums per lane and their registers grow with the rows: from 5 rows the tensor
/// cores were twice as fast (H100, tg64 tok/s, 8B / 1B Q4_K_M: batch 5 441 -> 984 / 2,757 ->
/// 4,450; batch 8 703 -> 1,571 / 4,375 -> 7,130), at 3-4 rows the two were within 4 % either way.
/// `HEARTH_MMA_MIN_ROWS=N` moves the crossover (up to 9: the matvec kernels take at most 8 rows).
const MMA_MIN_ROWS: usize = 4;

fn mma_min_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let rows = std::env::var("HEARTH_MMA_MIN_ROWS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(MMA_MIN_ROWS);
        rows.clamp(1, quant_matvec::MAX_ROWS + 1)
    })
}

/// Whether `x`'s rows are a batched generation step for `quant_mma` (where its kernels support
/// the weights): from [`mma_min_rows`] up to the dequantize-and-GEMM threshold.
fn quant_mma_rows(x: &Tensor) -> Result<bool> {
    let rows = x.dim(0)?;
    Ok(quant_mma_enabled() && rows >= mma_min_rows() && dequantized_gemm_min_rows().is_none_or(|gemm_rows| rows < gemm_rows))
}

/// `x Wᵀ` with `W` dequantized for this call (`[n, k]`, a transient buffer): one cuBLAS GEMM on
/// tensor cores with F32 accumulation. Q4_K/Q6_K/Q8_0/Q5_0 weights are dequantized to `x`'s own
/// dtype (BF16 or F16), so the activations and the result are not cast; other block types go to
/// F16 through candle, with `x` cast to F16 and the result back (as llama.cpp's cuBLAS path does).
/// Bound to the dequantize-to-F32 product by `tests/gpu_layers.rs`.
pub fn dequantized_gemm(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    if quant_matvec::dequantize_supported(q, x.dtype()) {
        let w = quant_matvec::dequantize_16bit(q, x.dtype())?;
        return Ok(x.matmul(&w.t()?)?);
    }
    let w = q.dequantize_f16(x.device())?;
    Ok(x.to_dtype(DType::F16)?.matmul(&w.t()?)?.to_dtype(x.dtype())?)
}

/// Batch-invariant mode's product ([`crate::numerics`]): one kernel for every row count —
/// `quant_mma` for Q4_K/Q6_K, `dense_mma` (the same kernel) for dense weights (cast to the
/// activations' type when stored in another) and for every other block type (dequantized to the
/// activations' type for this call).
fn batch_invariant_matmul(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let dense = match w {
        QMatMul::QTensor(q) if quant_mma::supported(q, &x) => return Ok(quant_mma::quant_mma(q, &x)?),
        QMatMul::QTensor(q) if quant_matvec::dequantize_supported(q, x.dtype()) => quant_matvec::dequantize_16bit(q, x.dtype())?,
        QMatMul::QTensor(q) => q.dequantize(x.device())?.to_dtype(x.dtype())?,
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(x.dtype())?,
    };
    if !quant_mma::dense_supported(&dense, &x) {
        return Err(crate::ModelError::Unsupported(format!(
            "batch-invariant mode needs BF16 or F16 activations on a GPU of compute capability 8.0 or newer (activations are {:?})",
            x.dtype()
        )));
    }
    Ok(quant_mma::dense_mma(&dense, &x)?)
}

/// `x Wᵀ` through candle. Its GPU quantized kernels take F32/BF16/F16 contiguous activations
/// for the common block types and return the activation dtype; the remaining types (Q8_1,
/// Q8K) run in F32.
fn candle_matmul(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if x.device().is_cuda() && numerics::batch_invariant() {
        return batch_invariant_matmul(w, x);
    }
    match w {
        QMatMul::QTensor(q) if !x.device().is_cpu() => {
            let x = x.contiguous()?;
            if quant_mma_rows(&x)? && quant_mma::supported(q, &x) {
                return Ok(quant_mma::quant_mma(q, &x)?);
            }
            // Generation-sized products: hearth's kernels read BF16/F16 activations directly.
            if quant_matvec::supported(q, &x) {
                return Ok(quant_matvec::quant_matvec(q, &x)?);
            }
            if let Some(rows) = dequantized_gemm_min_rows() {
                if x.dim(0)? >= rows && x.dtype() != DType::F32 {
                    return dequantized_gemm(q, &x);
                }
            }
            let direct = matches!(
                q.dtype(),
                GgmlDType::Q4_0
                    | GgmlDType::Q4_1
                    | GgmlDType::Q5_0
                    | GgmlDType::Q5_1
                    | GgmlDType::Q8_0
                    | GgmlDType::Q2K
                    | GgmlDType::Q3K
                    | GgmlDType::Q4K
                    | GgmlDType::Q5K
                    | GgmlDType::Q6K
            );
            if direct || x.dtype() == DType::F32 {
                Ok(w.forward(&x)?)
            } else {
                Ok(w.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
            }
        }
        // Generation-sized products of dense BF16/F16 weights: a streaming kernel instead of a
        // cuBLAS GEMM with one to eight rows.
        QMatMul::Tensor(dense) if dense_matvec::supported(dense, x) => Ok(dense_matvec::dense_matvec(dense, x)?),
        _ => Ok(w.forward(x)?),
    }
}

/// `y = x Wᵀ + b` with `W` dense or quantized.
#[derive(Clone)]
pub struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: LinearWeight, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// `[num_tokens, in_dim]` -> `[num_tokens, out_dim]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Candle(w) => candle_matmul(w, x)?,
            LinearWeight::Hearth(w) => w.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Whether the int8 matvec kernels read this layer's weight (Q4_K/Q6_K, no bias), so that
    /// [`Int8Rows`] of its input are worth making.
    pub fn reads_int8_rows(&self) -> bool {
        self.bias.is_none() && self.candle_qtensor().is_some_and(|q| matches!(q.dtype(), GgmlDType::Q4K | GgmlDType::Q6K))
    }

    /// The weight when candle holds it quantized (what hearth's GPU matvec kernels read).
    fn candle_qtensor(&self) -> Option<&QTensor> {
        match &self.weight {
            LinearWeight::Candle(QMatMul::QTensor(q)) => Some(q.as_ref()),
            _ => None,
        }
    }

    /// `x` through several layers that read it (Q, K, V; gate, up): on a GPU, quantized
    /// generation-sized products take one grouped launch (`quant_matvec_group`, which quantizes
    /// `x` once, up to 8 rows; `quant_mma_group` for batches), and so do dense BF16/F16 ones
    /// (`dense_matvec_group`, up to 8 rows); otherwise one forward each. The same results
    /// either way (up to summation order for `quant_mma_group`, whose slices follow the group).
    /// `int8`: `x` already quantized by the norm before (for the int8 launch only; see
    /// [`RmsNorm::forward_for_int8_products`]).
    pub fn forward_many<const N: usize>(linears: [&Linear; N], x: &Tensor, int8: Option<&Int8Rows>) -> Result<[Tensor; N]> {
        let quantized: Option<Vec<&QTensor>> = linears.iter().map(|linear| linear.candle_qtensor()).collect();
        let grouped = match &quantized {
            Some(qs) if N > 1 && !x.device().is_cpu() => {
                let invariant = numerics::batch_invariant();
                if !invariant && !quant_mma_rows(x)? && quant_matvec::group_supported(qs, x) {
                    Some(quant_matvec::quant_matvec_group(qs, x, int8)?)
                } else if (invariant || quant_mma_rows(x)?) && quant_mma::group_supported(qs, x) {
                    Some(quant_mma::quant_mma_group(qs, x)?)
                } else {
                    None
                }
            }
            _ => Linear::dense_group(&linears, x)?,
        };
        let outputs: Vec<Tensor> = match grouped {
            Some(outputs) => {
                linears
                    .iter()
                    .zip(outputs)
                    .map(|(linear, y)| Ok(match &linear.bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    }))
                    .collect::<Result<_>>()?
            }
            _ => linears.iter().map(|linear| linear.forward(x)).collect::<Result<_>>()?,
        };
        let count = outputs.len();
        outputs.try_into().map_err(|_| candle_core::Error::Msg(format!("forward_many: {count} outputs for {N} layers")).into())
    }

    /// Bytes of the weight and bias as stored (what one forward reads).
    pub fn stored_bytes(&self) -> u64 {
        self.weight.stored_bytes() + self.bias.as_ref().map_or(0, tensor_bytes)
    }

    /// Elements of the weight matrix.
    pub fn num_weights(&self) -> u64 {
        self.weight.num_weights()
    }
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.out_features()
    }

    /// Q, K and V of a generation step on a GPU, when they are bias-free int8 or dense BF16/F16
    /// matvecs: the products, and what `fused::rope_write_kv` does with them (`target`), in one
    /// launch — q rotated, `[rows, heads, head_dim]`; `None` where that launch does not apply.
    pub fn qkv_rope(linears: [&Linear; 3], x: &Tensor, int8: Option<&Int8Rows>, target: &QkvRope) -> Result<Option<Tensor>> {
        // batch-invariant mode: the batched products' path for every batch size
        if linears.iter().any(|linear| linear.bias.is_some()) || numerics::batch_invariant() {
            return Ok(None);
        }
        let dense: Option<Vec<&Tensor>> = linears.iter().map(|linear| linear.dense_weight()).collect();
        if let Some([q, k, v]) = dense.and_then(|ws| <[&Tensor; 3]>::try_from(ws).ok()) {
            if !dense_matvec::qkv_rope_supported([q, k, v], x, target) {
                return Ok(None);
            }
            return Ok(Some(dense_matvec::dense_matvec_qkv_rope([q, k, v], x, target)?));
        }
        let weights: Option<Vec<&QTensor>> = linears.iter().map(|linear| linear.candle_qtensor()).collect();
        let Some([q, k, v]) = weights.and_then(|ws| <[&QTensor; 3]>::try_from(ws).ok()) else { return Ok(None) };
        if quant_mma_rows(x)? || !quant_matvec::qkv_rope_supported([q, k, v], x, target) {
            return Ok(None);
        }
        Ok(Some(quant_matvec::quant_matvec_qkv_rope([q, k, v], x, int8, target)?))
    }

    /// Dense BF16/F16 layers' generation-sized products in one launch (`dense_matvec_group`,
    /// the same values as one `dense_matvec` each), or `None` where that launch does not apply.
    fn dense_group(linears: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let dense: Option<Vec<&Tensor>> = linears.iter().map(|linear| linear.dense_weight()).collect();
        match dense {
            // batch-invariant mode: one fixed GEMM path for every batch size (candle_matmul)
            Some(ws) if ws.len() > 1 && !numerics::batch_invariant() && dense_matvec::group_supported(&ws, x) => {
                Ok(Some(dense_matvec::dense_matvec_group(&ws, x)?))
            }
            _ => Ok(None),
        }
    }

    /// The weight when candle holds it dense (what hearth's GPU dense matvec kernels read).
    fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Candle(QMatMul::Tensor(dense)) => Some(dense),
            _ => None,
        }
    }

    /// `x`'s rows through the layer, or — with no rows — an empty F32 `[0, out_features]` on
    /// the host: a GPU cannot allocate an empty buffer, and a step whose sequences are all
    /// mid-prompt wants no logits.
    pub fn forward_rows_f32(&self, x: impl FnOnce() -> Result<Tensor>, num_rows: usize) -> Result<Tensor> {
        if num_rows == 0 {
            return Ok(Tensor::zeros((0, self.out_features()), DType::F32, &Device::Cpu)?);
        }
        Ok(self.forward(&x()?)?.to_dtype(DType::F32)?)
    }
}

/// Token embedding table, kept quantized when stored quantized (rows are dequantized on lookup).
#[derive(Clone)]
pub enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// `[num_tokens]` u32 -> `[num_tokens, hidden]`
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(q) => q.embedding(ids)?.to_dtype(dtype)?,
            Self::Dense(t) => t.index_select(ids, 0)?,
        })
    }

    /// Bytes of the whole table as stored.
    pub fn stored_bytes(&self) -> u64 {
        match self {
            Self::Quantized(q) => q.storage_size_in_bytes() as u64,
            Self::Dense(t) => tensor_bytes(t),
        }
    }

    /// Rows of the table (the vocabulary).
    pub fn num_rows(&self) -> usize {
        match self {
            Self::Quantized(q) => q.shape().dims().first().copied().unwrap_or(0),
            Self::Dense(t) => t.dims().first().copied().unwrap_or(0),
        }
    }

    /// The same table on `device` (a copy unless already there).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(match self {
            Self::Quantized(q) if q.device().same_device(device) => Self::Quantized(q.clone()),
            Self::Quantized(q) => Self::Quantized(Arc::new(QuantizedBlocks::of_qtensor(q)?.to_qtensor(device)?)),
            Self::Dense(t) => Self::Dense(t.to_device(device)?),
        })
    }

    /// The same table as an output projection (tied embeddings), sharing its blocks.
    pub fn as_linear(&self) -> Result<Linear> {
        let weight = match self {
            Self::Quantized(q) => LinearWeight::from_arc(q.clone())?,
            Self::Dense(t) => LinearWeight::Candle(QMatMul::Tensor(t.clone())),
        };
        Ok(Linear::new(weight, None))
    }
}

/// `x / rms(x) * weight`. Architectures whose norms are `1 + w` (Gemma) fold the 1 in at load.
#[derive(Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps: eps as f32 }
    }

    /// Bytes of the weight vector.
    pub fn stored_bytes(&self) -> u64 {
        tensor_bytes(&self.weight)
    }

    /// The same norm on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { weight: self.weight.to_device(device)?, eps: self.eps })
    }

    /// Normalizes over the last dimension of any-rank input, into the weight's dtype (an F32
    /// residual stream on a GPU is normalized in F32, then rounded to the activations' type).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if x.dtype() == DType::F32 && matches!(self.weight.dtype(), DType::BF16 | DType::F16) {
            return Ok(fused::rms_norm_f32_stream(&x, &self.weight, self.eps)?);
        }
        if x.dtype() != self.weight.dtype() {
            let normed = candle_nn::ops::rms_norm(&x, &self.weight.to_dtype(x.dtype())?, self.eps)?;
            return Ok(normed.to_dtype(self.weight.dtype())?);
        }
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?)
    }

    /// The norm before a block's products on the residual stream: of `delta + residual`
    /// ([`Self::forward_residual`]) or, before the first block, of `residual` alone; returns the
    /// normed rows, the new residual, and — when `products_read_int8` (the products'
    /// `Linear::reads_int8_rows`) on a GPU generation step whose products take int8 activations
    /// (few rows, F32 stream, widths of whole 256-value blocks, not batch-invariant) — the normed
    /// rows quantized by the same kernel, so that no product's blocks quantize them again (`None`
    /// elsewhere; the products then quantize themselves, same results).
    pub fn forward_for_int8_products(
        &self,
        delta: Option<&Tensor>,
        residual: &Tensor,
        products_read_int8: bool,
    ) -> Result<(Tensor, Tensor, Option<Int8Rows>)> {
        let int8 = products_read_int8
            && residual.device().is_cuda()
            && !numerics::batch_invariant()
            && delta.is_none_or(|d| d.dtype() == self.weight.dtype() && d.dims() == residual.dims())
            && fused::int8_rows_supported(residual, &self.weight)
            && !quant_mma_rows(residual)?;
        if int8 {
            let (normed, sum, rows) = fused::f32_stream_norm_int8(delta, residual, &self.weight, self.eps)?;
            return Ok((normed, sum.unwrap_or_else(|| residual.clone()), Some(rows)));
        }
        Ok(match delta {
            Some(delta) => {
                let (normed, sum) = self.forward_residual(delta, residual)?;
                (normed, sum, None)
            }
            None => (self.forward(residual)?, residual.clone(), None),
        })
    }

    /// `(norm(x + residual), x + residual)` for `[tokens, hidden]` inputs: one fused kernel on a
    /// GPU (`hearth_kernels::fused::add_rms_norm`), an add and the norm elsewhere. The sum keeps
    /// the residual's dtype: an F32 residual stream with BF16/F16 `x` adds in F32
    /// (`fused::add_rms_norm_f32_residual`), the norm comes out in `x`'s dtype.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        if residual.dtype() == DType::F32 && x.dtype() != DType::F32 {
            return Ok(fused::add_rms_norm_f32_residual(x, residual, &self.weight, self.eps)?);
        }
        if x.device().is_cuda() {
            return Ok(fused::add_rms_norm(x, residual, &self.weight, self.eps)?);
        }
        let sum = (x + residual)?;
        Ok((self.forward(&sum)?, sum))
    }
}

/// Precomputed cos/sin tables for rotary embeddings in the half-split (NeoX / Hugging Face)
/// convention, indexed by absolute position.
#[derive(Clone)]
pub struct Rope {
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(
        config: &ModelConfig,
        theta: f64,
        scaling: Option<&RopeScaling>,
        freq_factors: Option<&Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let half = config.head_dim / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / config.head_dim as f64))
            .collect();
        match scaling {
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
                let low_wavelen = *original_max_position as f64 / low_freq_factor;
                let high_wavelen = *original_max_position as f64 / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (*original_max_position as f64 / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            None => {}
        }
        if let Some(factors) = freq_factors {
            let factors = factors.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            inv_freq.iter_mut().zip(factors).for_each(|(f, k)| *f /= k);
        }
        let num_positions = config.context_length.max(1);
        let mut cos = Vec::with_capacity(num_positions * half);
        let mut sin = Vec::with_capacity(num_positions * half);
        for pos in 0..num_positions {
            for f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (num_positions, half), device)?,
            sin: Tensor::from_vec(sin, (num_positions, half), device)?,
        })
    }

    /// The same tables on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { cos: self.cos.to_device(device)?, sin: self.sin.to_device(device)? })
    }

    /// The F32 `(cos, sin)` tables, `[max_positions, head_dim / 2]`.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Rotates `x` `[num_tokens, num_heads, head_dim]` by each token's position.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        // [num_tokens, head_dim / 2]
        let cos = self.cos.index_select(positions, 0)?.to_dtype(dtype)?;
        let sin = self.sin.index_select(positions, 0)?.to_dtype(dtype)?;
        // rope_thd takes [batch, tokens, heads, head_dim] and [tokens, head_dim / 2] tables.
        let x = x.unsqueeze(0)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?.squeeze(0)?)
    }
}

/// Gated MLP: `down(act(gate(x)) * up(x))`.
#[derive(Clone)]
pub struct Mlp {
    pub gate_up: GateUp,
    pub down: Linear,
    pub activation: Activation,
}

/// Gate and up projections, separate or fused in one matrix (Phi-3).
#[derive(Clone)]
pub enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

impl Mlp {
    /// Whether the gate and up projections take [`Int8Rows`] (see `Linear::reads_int8_rows`).
    pub fn reads_int8_rows(&self) -> bool {
        matches!(&self.gate_up, GateUp::Separate { gate, up } if gate.reads_int8_rows() && up.reads_int8_rows())
    }

    fn gated_activation(&self) -> GatedActivation {
        match self.activation {
            Activation::Silu => GatedActivation::Silu,
            Activation::GeluTanh => GatedActivation::GeluTanh,
        }
    }

    /// Generation-sized steps on a GPU with quantized or dense BF16/F16, bias-free gate and up
    /// projections: both products and the activation in one launch (`quant_matvec_gated`,
    /// `dense_matvec_gated`); `None` elsewhere.
    fn gated_matvec(&self, x: &Tensor, int8: Option<&Int8Rows>) -> Result<Option<Tensor>> {
        let GateUp::Separate { gate, up } = &self.gate_up else { return Ok(None) };
        // Batch-invariant mode: the gated matvec rounds differently from the batched products.
        if gate.bias.is_some() || up.bias.is_some() || numerics::batch_invariant() {
            return Ok(None);
        }
        let act = self.gated_activation();
        if let (Some(g), Some(u)) = (gate.dense_weight(), up.dense_weight()) {
            if dense_matvec::gated_supported(g, u, x) {
                return Ok(Some(dense_matvec::dense_matvec_gated(g, u, x, act)?));
            }
            return Ok(None);
        }
        let (Some(g), Some(u)) = (gate.candle_qtensor(), up.candle_qtensor()) else { return Ok(None) };
        if quant_mma_rows(x)? || !quant_matvec::gated_supported(g, u, x) {
            return Ok(None);
        }
        Ok(Some(quant_matvec::quant_matvec_gated(g, u, x, act, int8)?))
    }

    /// `int8`: `x` already quantized for the gated int8 launch (or `None`).
    pub fn forward(&self, x: &Tensor, int8: Option<&Int8Rows>) -> Result<Tensor> {
        if let Some(activated) = self.gated_matvec(x, int8)? {
            return self.down.forward(&activated);
        }
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let [gate, up] = Linear::forward_many([gate, up], x, int8)?;
                (gate, up)
            }
            GateUp::Fused(fused) => {
                // [num_tokens, 2 * intermediate] -> two [num_tokens, intermediate]
                let both = fused.forward(x)?;
                let half = both.dim(D::Minus1)? / 2;
                (both.narrow(D::Minus1, 0, half)?, both.narrow(D::Minus1, half, half)?)
            }
        };
        if gate.device().is_cuda() {
            return self.down.forward(&fused::gated_act(&gate, &up, self.gated_activation())?);
        }
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        self.down.forward(&(gate * up)?)
    }
}
