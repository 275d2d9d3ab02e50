//! CUDA path of paged attention: launches `paged_attention.cu` (compiled once per process by
//! NVRTC through candle's cudarc, loaded into each device's module cache by candle).
//!
//! Owns: turning an [`AttentionLayout`] into the kernel's u32 metadata (one upload per call),
//! the launch shape, dtype dispatch (F32, BF16, F16; q and the pool share one dtype).
//! Does not own: validation (done by `check_shapes` before the op runs), the kernel's math.
//!
//! The compiled PTX is cached in a process-wide `OnceLock` (write-once, like candle's module
//! store): compiling costs ~100 ms and the source never changes.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{self, CompileOptions, Ptx};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::{AttentionLayout, CUDA_SOURCE};

/// Threads per block: one chunk of context positions per iteration.
const NUM_THREADS: u32 = 128;
/// Each thread accumulates at most this many output dims (`MAX_DIMS_PER_THREAD` in the .cu).
const MAX_DIMS_PER_THREAD: usize = 4;
const MODULE_NAME: &str = "hearth_paged_attention";

/// NVRTC options: PTX for the oldest architecture CUDA 13 supports; the driver JIT-compiles it
/// for the GPU at hand.
pub fn compile_options() -> CompileOptions {
    CompileOptions { arch: Some("compute_75"), name: Some("paged_attention.cu".into()), ..Default::default() }
}

/// Compiles the kernel source to PTX (no GPU needed, only libnvrtc).
pub fn compile_ptx() -> Result<Ptx, nvrtc::CompileError> {
    nvrtc::compile_ptx_with_opts(CUDA_SOURCE, compile_options())
}

fn cached_ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| compile_ptx().map(|p| p.to_src()).map_err(|e| format!("{e:?}")))
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("compiling the paged-attention CUDA kernel: {e}")))
}

/// `[row_pos (num_rows) | row_table (num_rows) | block tables]`: each row's absolute position
/// and where its sequence's block table starts in the last section.
fn metadata(layout: &AttentionLayout, num_rows: usize) -> Vec<u32> {
    let mut row_pos = Vec::with_capacity(num_rows);
    let mut row_table = Vec::with_capacity(num_rows);
    let mut tables = Vec::new();
    for seq in &layout.sequences {
        let table_start = tables.len() as u32;
        tables.extend_from_slice(&seq.block_table[..seq.context_len.div_ceil(layout.block_size)]);
        let first_pos = seq.context_len - seq.num_query_tokens;
        row_pos.extend((0..seq.num_query_tokens).map(|i| (first_pos + i) as u32));
        row_table.extend(std::iter::repeat_n(table_start, seq.num_query_tokens));
    }
    let mut all = row_pos;
    all.extend(row_table);
    all.extend(tables);
    all.push(0); // never empty
    all
}

pub(super) struct Inputs<'a> {
    pub q: (&'a CudaStorage, &'a Layout),
    pub k_cache: (&'a CudaStorage, &'a Layout),
    pub v_cache: (&'a CudaStorage, &'a Layout),
}

pub(super) fn forward(layout: &AttentionLayout, inputs: Inputs) -> candle_core::Result<(CudaStorage, Shape)> {
    let dtype = inputs.q.0.dtype();
    if inputs.k_cache.0.dtype() != dtype || inputs.v_cache.0.dtype() != dtype {
        candle_core::bail!(
            "paged attention (cuda): q is {dtype:?} but the pool is {:?}/{:?}",
            inputs.k_cache.0.dtype(),
            inputs.v_cache.0.dtype()
        );
    }
    match dtype {
        DType::F32 => launch::<f32>("paged_attention_f32", layout, inputs),
        DType::BF16 => launch::<half::bf16>("paged_attention_bf16", layout, inputs),
        DType::F16 => launch::<half::f16>("paged_attention_f16", layout, inputs),
        other => candle_core::bail!("paged attention (cuda): unsupported dtype {other:?}"),
    }
}

fn view<'a, T: CudaDType>((storage, l): (&'a CudaStorage, &Layout), what: &str) -> candle_core::Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("paged attention (cuda): {what} must be contiguous"),
    }
}

fn launch<T: CudaDType + DeviceRepr>(
    kernel: &str,
    layout: &AttentionLayout,
    inputs: Inputs,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (q_storage, q_layout) = inputs.q;
    let dev = q_storage.device().clone();
    let (num_rows, num_heads, head_dim) = q_layout.shape().dims3()?;
    let (_, block_size, num_kv_heads, _) = inputs.k_cache.1.shape().dims4()?;
    if head_dim > MAX_DIMS_PER_THREAD * NUM_THREADS as usize {
        candle_core::bail!("paged attention (cuda): head_dim {head_dim} > {}", MAX_DIMS_PER_THREAD * NUM_THREADS as usize);
    }
    let q = view::<T>(inputs.q, "q")?;
    let k_cache = view::<T>(inputs.k_cache, "k_cache")?;
    let v_cache = view::<T>(inputs.v_cache, "v_cache")?;
    let num_out = num_rows * num_heads * head_dim;
    // SAFETY: every element is written by the kernel (each (row, head) block writes its row).
    let out = unsafe { dev.alloc::<T>(num_out.max(1))? };
    let shape = Shape::from((num_rows, num_heads, head_dim));
    if num_rows == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
    }

    let meta = dev.clone_htod(&metadata(layout, num_rows))?;
    let row_pos = meta.slice(0..num_rows);
    let row_table = meta.slice(num_rows..2 * num_rows);
    let block_tables = meta.slice(2 * num_rows..);
    let func = dev.get_or_load_custom_func(kernel, MODULE_NAME, cached_ptx()?)?;

    let num_floats = head_dim + NUM_THREADS as usize;
    let shared_mem_bytes = (num_floats + num_floats % 2) * 4 + NUM_THREADS as usize * 8;
    let cfg = LaunchConfig {
        grid_dim: ((num_rows * num_heads) as u32, 1, 1),
        block_dim: (NUM_THREADS, 1, 1),
        shared_mem_bytes: shared_mem_bytes as u32,
    };
    let scalars = [num_heads, num_kv_heads, head_dim, block_size, layout.sliding_window.unwrap_or(0)].map(|x| x as u32);
    let mut builder = func.builder();
    builder.arg(&out);
    builder.arg(&q);
    builder.arg(&k_cache);
    builder.arg(&v_cache);
    builder.arg(&row_pos);
    builder.arg(&row_table);
    builder.arg(&block_tables);
    for s in &scalars {
        builder.arg(s);
    }
    builder.arg(&layout.scale);
    // SAFETY: argument types and order match the kernel's signature; the metadata and pool
    // bounds were validated by `AttentionLayout::validate`.
    unsafe { builder.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
}
