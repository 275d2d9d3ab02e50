//! CUDA path of paged attention: launches `paged_attention.cu` (compiled once per process by
//! NVRTC through candle's cudarc, loaded into each device's module cache by candle).
//!
//! Owns: reading the kernel's u32 metadata (`kernel_metadata`: the caller's device copy, or
//! one upload per call),
//! the launch shape, dtype dispatch (F32, BF16, F16; q and the pool share one dtype).
//! Does not own: validation (done by `check_shapes` before the op runs), the kernel's math.
//! Compiling and caching the source: `crate::nvrtc`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::{kernel_metadata, AttentionLayout, CUDA_SOURCE};
use crate::nvrtc::{contiguous_view, CudaModule};

/// Threads per block: one chunk of context positions per iteration.
const NUM_THREADS: u32 = 128;
/// Each thread accumulates at most this many output dims (`MAX_DIMS_PER_THREAD` in the .cu).
const MAX_DIMS_PER_THREAD: usize = 4;

/// The kernel source as an NVRTC module.
pub static MODULE: CudaModule = CudaModule::new("hearth_paged_attention", "paged_attention.cu", CUDA_SOURCE);

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
    let q = contiguous_view::<T>(inputs.q.0, inputs.q.1, "paged attention (cuda): q")?;
    let k_cache = contiguous_view::<T>(inputs.k_cache.0, inputs.k_cache.1, "paged attention (cuda): k_cache")?;
    let v_cache = contiguous_view::<T>(inputs.v_cache.0, inputs.v_cache.1, "paged attention (cuda): v_cache")?;
    let num_out = num_rows * num_heads * head_dim;
    // SAFETY: every element is written by the kernel (each (row, head) block writes its row).
    let out = unsafe { dev.alloc::<T>(num_out.max(1))? };
    let shape = Shape::from((num_rows, num_heads, head_dim));
    if num_rows == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
    }

    // The step's metadata on the device: the caller's (one upload per step, graph-safe) or
    // uploaded here.
    let uploaded;
    let device_metadata = match &layout.device_metadata {
        Some(t) => Some(t.storage_and_layout()),
        None => None,
    };
    let meta: CudaView<u32> = match &device_metadata {
        Some((storage, meta_layout)) => match &**storage {
            candle_core::Storage::Cuda(s) => contiguous_view::<u32>(s, meta_layout, "paged attention (cuda): metadata")?,
            _ => candle_core::bail!("paged attention (cuda): the attention metadata is not on the GPU"),
        },
        None => {
            uploaded = dev.clone_htod(&kernel_metadata(&layout.sequences, layout.block_size, None))?;
            uploaded.slice(0..)
        }
    };
    if meta.len() < 2 * num_rows + 1 {
        candle_core::bail!("paged attention (cuda): metadata has {} entries for {num_rows} rows", meta.len());
    }
    let row_pos = meta.slice(0..num_rows);
    let row_table = meta.slice(num_rows..2 * num_rows);
    let block_tables = meta.slice(2 * num_rows..);
    let func = MODULE.function(q_storage, kernel)?;

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
