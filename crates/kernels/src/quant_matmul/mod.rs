//! Quantized matrix × activations on the CPU for the ggml block types candle leaves scalar
//! (Q4_1, Q5_0, Q5_1) and for Q8_0, whose candle path (one dot product per output at a time,
//! latency-bound) costs ~3 ms per token row on the 49152 × 576 tied lm_head of SmolLM2:
//! `y[token, row] = Σ_k W[row, k] · x[token, k]`.
//!
//! The fast path ([`QuantizedMatrix::forward`]) follows ggml: each activation row is quantized
//! once (Q8_1 for Q4_1/Q5_1, Q8_0 for Q5_0/Q8_0, bit-identical to candle's `from_float`), then integer
//! dot products per 32-value block are scaled and summed (AVX2 register tiles on x86-64-v3, a
//! portable scalar loop elsewhere), in parallel over chunks of output rows on a small
//! work-sharing pool (`pool.rs`). It therefore matches candle's `QMatMul::forward` (same
//! activation quantization) up to f32 summation order, and the f32 reference
//! ([`forward_reference`]: dequantize + matmul) up to the Q8 activation rounding.
//!
//! Owns: the weight bytes of one matrix (raw GGUF blocks, `[num_rows (out), num_cols (in)]`,
//! row-major, `num_cols / 32` blocks per row; its own copy, or shared with a CPU `QTensor` such
//! as a tied embedding table), validation of shapes and bytes.
//! Does not own: which tensors take this path (the model code asks [`QuantizedMatrix::supports`]).
//!
//! Invariants: `num_cols` is a positive multiple of 32;
//! `data.len() == num_rows · num_cols / 32 · block_bytes(dtype)`.

mod format;
mod matmul;
/// Also runs the CPU paged-attention op's work items.
pub(crate) mod pool;

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod avx2;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Device, Shape, Storage, Tensor};

use crate::{KernelError, Result};
use format::QK;
use matmul::RowKernels;

/// A quantized weight matrix `[num_rows (out), num_cols (in)]` in one of the supported ggml block
/// types, raw bytes as in GGUF.
#[derive(Clone)]
pub struct QuantizedMatrix {
    dtype: GgmlDType,
    num_rows: usize,
    num_cols: usize,
    data: WeightBytes,
}

/// Where the raw blocks live.
#[derive(Clone)]
enum WeightBytes {
    Owned(Vec<u8>),
    /// A CPU `QTensor` shared with its other users (the tied embedding table and lm_head);
    /// its bytes are borrowed on every call (`QTensor::data` borrows CPU storage).
    Shared(Arc<QTensor>),
}

impl std::fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("dtype", &self.dtype)
            .field("num_rows", &self.num_rows)
            .field("num_cols", &self.num_cols)
            .finish()
    }
}

fn invalid(msg: String) -> KernelError {
    KernelError::Candle(candle_core::Error::Msg(msg))
}

impl QuantizedMatrix {
    /// Whether the fast path handles `dtype` (Q4_1, Q5_0, Q5_1, Q8_0).
    pub fn supports(dtype: GgmlDType) -> bool {
        format::block_bytes(dtype).is_some()
    }

    /// Whether this kernel should serve `q` rather than candle's `QMatMul` on this CPU: a
    /// supported type on the CPU, 2-D — except Q8_0 where candle is faster: matrices it repacks
    /// for its AVX512-VNNI / AVX-VNNI kernel (width a multiple of 256, rows a multiple of 16, the
    /// CPU has VNNI; `quant_matmul_bench` on a 2-core EPYC with AVX512-VNNI: [4096, 4096] × 128
    /// tokens 32 ms vs 76 ms here), and builds without AVX2 (candle has NEON Q8_0 kernels).
    /// Elsewhere candle's generic Q8_0 path is 2.6–10× slower than this one (PERF.md).
    pub fn preferred_for(q: &QTensor) -> bool {
        let Ok((num_rows, num_cols)) = q.shape().dims2() else {
            return false;
        };
        Self::supports(q.dtype())
            && q.device().is_cpu()
            && !(q.dtype() == GgmlDType::Q8_0 && candle_has_faster_q8_0(num_rows, num_cols))
    }

    /// Copies the blocks of a CPU `QTensor` `[num_rows, num_cols]`. `Ok(None)` when the dtype is
    /// not supported or the tensor is not on the CPU; an error when the shape does not fit the
    /// block layout.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        if !Self::supports(q.dtype()) || !q.device().is_cpu() {
            return Ok(None);
        }
        let (num_rows, num_cols) = q
            .shape()
            .dims2()
            .map_err(|_| invalid(format!("quantized matmul: weight must be 2-D [rows, cols], got {:?}", q.shape())))?;
        let data = q.data()?.into_owned();
        Self::from_bytes(q.dtype(), num_rows, num_cols, data).map(Some)
    }

    /// Like [`from_qtensor`](Self::from_qtensor) but without a copy: the matrix keeps `q` and
    /// reads its blocks in place (for a table that also serves another purpose, e.g. a token
    /// embedding tied to the output projection).
    pub fn from_shared_qtensor(q: Arc<QTensor>) -> Result<Option<Self>> {
        if !Self::supports(q.dtype()) || !q.device().is_cpu() {
            return Ok(None);
        }
        let (num_rows, num_cols) = q
            .shape()
            .dims2()
            .map_err(|_| invalid(format!("quantized matmul: weight must be 2-D [rows, cols], got {:?}", q.shape())))?;
        check_layout(q.dtype(), num_rows, num_cols, q.data()?.len())?;
        Ok(Some(Self { dtype: q.dtype(), num_rows, num_cols, data: WeightBytes::Shared(q) }))
    }

    /// Takes ownership of raw GGUF block bytes of a `[num_rows, num_cols]` matrix.
    pub fn from_bytes(dtype: GgmlDType, num_rows: usize, num_cols: usize, data: Vec<u8>) -> Result<Self> {
        check_layout(dtype, num_rows, num_cols, data.len())?;
        Ok(Self { dtype, num_rows, num_cols, data: WeightBytes::Owned(data) })
    }

    /// The raw GGUF blocks, row-major (borrowed in both representations).
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        Ok(match &self.data {
            WeightBytes::Owned(data) => Cow::Borrowed(data.as_slice()),
            WeightBytes::Shared(q) => q.data()?,
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Output features.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// Input features.
    pub fn num_cols(&self) -> usize {
        self.num_cols
    }

    /// Bytes of weight blocks (what one matrix-vector product reads).
    pub fn size_in_bytes(&self) -> usize {
        match &self.data {
            WeightBytes::Owned(data) => data.len(),
            WeightBytes::Shared(q) => q.storage_size_in_bytes(),
        }
    }

    /// `x [.., num_cols]` (CPU, any float dtype) → `[.., num_rows]` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight_shape = Shape::from((self.num_rows, self.num_cols));
        let Some((&num_cols, leading)) = x.dims().split_last() else {
            return Err(invalid("quantized matmul: input is a scalar".into()));
        };
        if num_cols != self.num_cols {
            let err = candle_core::Error::ShapeMismatchBinaryOp {
                lhs: x.shape().clone(),
                rhs: weight_shape,
                op: "quantized-matmul",
            };
            return Err(err.into());
        }
        if !x.device().is_cpu() {
            return Err(invalid(format!("quantized matmul: input is on {:?}, expected the CPU", x.device())));
        }
        let in_dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        let num_tokens: usize = leading.iter().product();
        let mut out = vec![0f32; num_tokens * self.num_rows];
        {
            let (storage, layout) = x32.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                return Err(invalid("quantized matmul: expected f32 CPU storage".into()));
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                return Err(invalid("quantized matmul: input is not contiguous".into()));
            };
            self.forward_f32(&data[start..end], &mut out)?;
        }
        let mut out_dims = leading.to_vec();
        out_dims.push(self.num_rows);
        let out = Tensor::from_vec(out, out_dims, &Device::Cpu)?; // [.., num_rows]
        Ok(out.to_dtype(in_dtype)?)
    }

    /// Slice form of [`forward`](Self::forward): `xs [num_tokens, num_cols]` row-major →
    /// `out [num_tokens, num_rows]`.
    pub fn forward_f32(&self, xs: &[f32], out: &mut [f32]) -> Result<()> {
        if self.num_cols == 0 || !xs.len().is_multiple_of(self.num_cols) {
            return Err(invalid(format!(
                "quantized matmul: {} input values is not a whole number of rows of {}",
                xs.len(),
                self.num_cols
            )));
        }
        let num_tokens = xs.len() / self.num_cols;
        if out.len() != num_tokens * self.num_rows {
            return Err(invalid(format!(
                "quantized matmul: output holds {} values, expected {num_tokens} × {}",
                out.len(),
                self.num_rows
            )));
        }
        let weights = self.bytes()?;
        match self.dtype {
            GgmlDType::Q4_1 => self.run::<format::Q4_1>(&weights, xs, num_tokens, out),
            GgmlDType::Q5_0 => self.run::<format::Q5_0>(&weights, xs, num_tokens, out),
            GgmlDType::Q5_1 => self.run::<format::Q5_1>(&weights, xs, num_tokens, out),
            GgmlDType::Q8_0 => self.run::<format::Q8_0>(&weights, xs, num_tokens, out),
            other => return Err(invalid(format!("quantized matmul: unsupported dtype {other:?}"))),
        }
        Ok(())
    }

    fn run<F: RowKernels>(&self, weights: &[u8], xs: &[f32], num_tokens: usize, out: &mut [f32]) {
        let num_blocks = self.num_cols / QK;
        let acts = matmul::quantize_activations(F::ACTIVATION, xs, num_tokens, num_blocks);
        matmul::matmul::<F>(weights, self.num_rows, &acts, out);
    }
}

/// Whether candle's CPU `QMatMul` has a faster Q8_0 path than this kernel for the shape: where
/// this build has no AVX2 tiles (candle has NEON Q8_0 kernels, ours would be scalar), or where
/// candle 0.11 takes its repacked VNNI kernel (`repack_x86::select`: VNNI detected at run time,
/// `num_cols % 256 == 0`, `num_rows % 16 == 0`; its `MISTRALRS_FORCE_*` overrides are ignored).
fn candle_has_faster_q8_0(num_rows: usize, num_cols: usize) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    {
        let vnni = (std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni"))
            || std::arch::is_x86_feature_detected!("avxvnni");
        vnni && num_cols.is_multiple_of(256) && num_rows.is_multiple_of(16)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
    {
        let _ = (num_rows, num_cols);
        true
    }
}

/// Checks that `num_bytes` of `dtype` blocks form a `[num_rows, num_cols]` matrix.
fn check_layout(dtype: GgmlDType, num_rows: usize, num_cols: usize, num_bytes: usize) -> Result<()> {
    let Some(block_bytes) = format::block_bytes(dtype) else {
        return Err(invalid(format!("quantized matmul: unsupported dtype {dtype:?}")));
    };
    if num_cols == 0 || !num_cols.is_multiple_of(QK) {
        return Err(invalid(format!(
            "quantized matmul: {num_cols} columns is not a positive multiple of the block size {QK}"
        )));
    }
    let expected = num_rows
        .checked_mul(num_cols / QK)
        .and_then(|n| n.checked_mul(block_bytes))
        .ok_or_else(|| invalid(format!("quantized matmul: [{num_rows}, {num_cols}] overflows")))?;
    if num_bytes != expected {
        return Err(invalid(format!(
            "quantized matmul: {dtype:?} [{num_rows}, {num_cols}] needs {expected} bytes, got {num_bytes}"
        )));
    }
    Ok(())
}

/// The slow twin: dequantize `q [num_rows, num_cols]` with candle and multiply in f32.
/// `x [.., num_cols]` → `[.., num_rows]`.
pub fn forward_reference(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    let w = q.dequantize(x.device())?; // [num_rows, num_cols]
    let (num_rows, num_cols) = w.dims2()?;
    let dims = x.dims();
    let Some((_, leading)) = dims.split_last() else {
        return Err(invalid("quantized matmul: input is a scalar".into()));
    };
    let num_tokens: usize = leading.iter().product();
    let x2 = x.to_dtype(DType::F32)?.reshape((num_tokens, num_cols))?; // [num_tokens, num_cols]
    let y = x2.matmul(&w.t()?)?; // [num_tokens, num_rows]
    let mut out_dims = leading.to_vec();
    out_dims.push(num_rows);
    Ok(y.reshape(out_dims)?.to_dtype(x.dtype())?)
}
