//! Writing a benchmark model: the header first (offsets computed from the planned sizes), then
//! each tensor's data streamed in row chunks, generated and quantized in parallel (rayon), so
//! memory stays at a few chunks whatever the model's size.
//!
//! Invariants: the bytes depend only on (seed, tensor index, chunk index) — never on the number
//! of threads; rows are quantized independently (block types never span rows), so quantizing a
//! chunk of rows equals quantizing the whole matrix; the file appears under its final name only
//! once complete (written as `NAME.partial`, then renamed).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::gguf_writer::{padding, write_header, TensorHeader};
use super::plan::{bench_metadata, plan_tensors, Init, PlannedTensor, WEIGHT_STD};
use super::shapes::{BenchQuant, BenchShape};
use crate::{ModelError, Result};

/// Elements generated and quantized per task (4 MiB of f32).
const CHUNK_ELEMENTS: usize = 1 << 20;

pub struct BenchModelParams {
    pub shape: BenchShape,
    pub quant: BenchQuant,
    pub vocab_size: usize,
    /// `tokenizer.*` keys copied into the file.
    pub tokenizer_metadata: Vec<(String, Value)>,
    pub seed: u64,
}

/// Reported after each tensor is written.
pub struct Progress<'a> {
    pub tensor: &'a PlannedTensor,
    pub num_tensors_done: usize,
    pub num_tensors: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Default)]
pub struct BenchModelSummary {
    pub num_bytes: u64,
    pub num_params: u64,
    /// storage type (`Q4K`) -> (tensors, parameters)
    pub by_type: BTreeMap<String, (usize, u64)>,
}

/// The file's size and type mix, from the plan alone (nothing is generated).
pub fn summarize(params: &BenchModelParams) -> Result<BenchModelSummary> {
    let tensors = plan_tensors(&params.shape, params.vocab_size, params.quant)?;
    let metadata = bench_metadata(&params.shape, params.quant, params.vocab_size, params.tokenizer_metadata.clone())?;
    let headers = headers(&tensors);
    let mut sink = std::io::sink();
    let (header_len, _) = write_header(&mut sink, Path::new("(size estimate)"), &metadata, &headers)?;
    summary(&tensors, header_len)
}

/// Writes the model to `out`, calling `on_progress` after each tensor. On failure the partial
/// file is removed.
pub fn write_bench_model(
    params: &BenchModelParams,
    out: &Path,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<BenchModelSummary> {
    let partial = partial_path(out);
    let result = write_partial(params, &partial, on_progress).and_then(|summary| {
        std::fs::rename(&partial, out).map_err(|source| ModelError::Write { path: out.to_path_buf(), source })?;
        Ok(summary)
    });
    if result.is_err() {
        // Best effort: the write error is the one worth reporting.
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn write_partial(params: &BenchModelParams, partial: &Path, on_progress: &mut dyn FnMut(&Progress)) -> Result<BenchModelSummary> {
    let tensors = plan_tensors(&params.shape, params.vocab_size, params.quant)?;
    let metadata = bench_metadata(&params.shape, params.quant, params.vocab_size, params.tokenizer_metadata.clone())?;
    let write_err = |source| ModelError::Write { path: partial.to_path_buf(), source };
    let file = File::create(partial).map_err(write_err)?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let (header_len, offsets) = write_header(&mut w, partial, &metadata, &headers(&tensors))?;
    let summary = summary(&tensors, header_len)?;
    let mut position = header_len;
    for (tensor_idx, (tensor, &offset)) in tensors.iter().zip(&offsets).enumerate() {
        if position != header_len + offset {
            return Err(ModelError::Unsupported(format!(
                "internal error: `{}` would start at byte {position}, the header says {}",
                tensor.name,
                header_len + offset
            )));
        }
        let len = write_tensor(&mut w, partial, tensor, tensor_idx as u64, params.seed)?;
        let pad = padding(len);
        w.write_all(&vec![0u8; pad as usize]).map_err(write_err)?;
        position += len + pad;
        on_progress(&Progress {
            tensor,
            num_tensors_done: tensor_idx + 1,
            num_tensors: tensors.len(),
            bytes_done: position,
            bytes_total: summary.num_bytes,
        });
    }
    let file = w.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    Ok(summary)
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

fn headers(tensors: &[PlannedTensor]) -> Vec<TensorHeader<'_>> {
    tensors.iter().map(|t| TensorHeader { name: &t.name, dims: &t.dims, dtype: t.dtype }).collect()
}

fn summary(tensors: &[PlannedTensor], header_len: u64) -> Result<BenchModelSummary> {
    let mut s = BenchModelSummary { num_bytes: header_len, ..Default::default() };
    for t in tensors {
        let len = t.num_bytes()?;
        s.num_bytes += len + padding(len);
        s.num_params += t.num_elements() as u64;
        let entry = s.by_type.entry(format!("{:?}", t.dtype)).or_default();
        entry.0 += 1;
        entry.1 += t.num_elements() as u64;
    }
    Ok(s)
}

/// Generates, encodes and writes one tensor; returns its length in bytes.
fn write_tensor<W: Write>(w: &mut W, path: &Path, tensor: &PlannedTensor, tensor_idx: u64, seed: u64) -> Result<u64> {
    let write_err = |source| ModelError::Write { path: path.to_path_buf(), source };
    let row_len = tensor.dims.last().copied().unwrap_or(1);
    let num_rows = tensor.num_elements() / row_len.max(1);
    let mut fixed = |values: Vec<f32>| -> Result<u64> {
        let bytes = encode(values, 1, row_len, tensor.dtype)?;
        w.write_all(&bytes).map_err(write_err)?;
        Ok(bytes.len() as u64)
    };
    match &tensor.init {
        Init::Ones => return fixed(vec![1.0; tensor.num_elements()]),
        Init::Values(values) => return fixed(values.clone()),
        Init::Random => {}
    }
    let rows_per_chunk = (CHUNK_ELEMENTS / row_len.max(1)).max(1);
    let num_chunks = num_rows.div_ceil(rows_per_chunk);
    // A window of chunks in flight: enough to keep every thread busy, few enough to bound memory.
    let window = 2 * rayon::current_num_threads().max(1);
    let mut written = 0u64;
    for first in (0..num_chunks).step_by(window) {
        let chunks: Vec<Result<Vec<u8>>> = (first..(first + window).min(num_chunks))
            .into_par_iter()
            .map(|chunk_idx| {
                let row_start = chunk_idx * rows_per_chunk;
                let rows = rows_per_chunk.min(num_rows - row_start);
                let mut rng = SplitMix64::new(seed, tensor_idx, chunk_idx as u64);
                let mut values = vec![0f32; rows * row_len];
                rng.fill_normal(&mut values, WEIGHT_STD);
                encode(values, rows, row_len, tensor.dtype)
            })
            .collect();
        for bytes in chunks {
            let bytes = bytes?;
            w.write_all(&bytes).map_err(write_err)?;
            written += bytes.len() as u64;
        }
    }
    Ok(written)
}

/// `values` (`rows` × `row_len`, row-major) in `dtype`'s on-disk form.
fn encode(values: Vec<f32>, rows: usize, row_len: usize, dtype: GgmlDType) -> Result<Vec<u8>> {
    Ok(match dtype {
        GgmlDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlDType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        GgmlDType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        block_type => {
            let t = Tensor::from_vec(values, (rows, row_len), &Device::Cpu)?;
            QTensor::quantize(&t, block_type)?.data()?.into_owned()
        }
    })
}

/// SplitMix64, seeded per (seed, tensor, chunk) so chunks are generated independently.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64, tensor_idx: u64, chunk_idx: u64) -> Self {
        let mut s = Self(seed);
        let a = s.next_u64() ^ tensor_idx.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut s = Self(a);
        let b = s.next_u64() ^ chunk_idx.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self(b)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Normal(0, std) values by Box–Muller, two per pair of 24-bit uniforms.
    fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
        for pair in out.chunks_mut(2) {
            let bits = self.next_u64();
            let u1 = ((bits >> 40) as f32 + 1.0) * SCALE; // (0, 1]: ln is finite
            let u2 = ((bits >> 16) & 0xFF_FFFF) as f32 * SCALE;
            let radius = (-2.0 * u1.ln()).sqrt() * std;
            let (sin, cos) = (2.0 * std::f32::consts::PI * u2).sin_cos();
            pair[0] = radius * cos;
            if let Some(second) = pair.get_mut(1) {
                *second = radius * sin;
            }
        }
    }
}
