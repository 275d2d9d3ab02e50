//! CUDA launch of `prefill_attention.cu` (compiled once per process by NVRTC, loaded into each
//! device's module cache by candle).
//!
//! Owns: reading the u32 metadata (the caller's `device_metadata`, or one upload of
//! `kernel_metadata` per call), the launch shape (grid `(ceil(num_rows * group / NQV),
//! num_kv_heads)`, 128 threads, static shared memory only), dtype and head_dim dispatch.
//! Does not own: validation (`super::check_shapes` runs before the op), the kernel's math.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::{vectors_per_block, CUDA_SOURCE, HEAD_DIMS};
use crate::nvrtc::{contiguous_view, CudaModule};
use crate::paged_attention::{kernel_metadata, AttentionLayout};

/// Threads per block (`NUM_THREADS` in the .cu).
const NUM_THREADS: u32 = 128;

/// The kernel source as an NVRTC module.
pub static MODULE: CudaModule = CudaModule::new("hearth_prefill_attention", "prefill_attention.cu", CUDA_SOURCE);

pub(super) struct Inputs<'a> {
    pub q: (&'a CudaStorage, &'a Layout),
    pub k_cache: (&'a CudaStorage, &'a Layout),
    pub v_cache: (&'a CudaStorage, &'a Layout),
}

pub(super) fn forward(layout: &AttentionLayout, inputs: Inputs) -> candle_core::Result<(CudaStorage, Shape)> {
    let dtype = inputs.q.0.dtype();
    if inputs.k_cache.0.dtype() != dtype || inputs.v_cache.0.dtype() != dtype {
        candle_core::bail!(
            "prefill attention (cuda): q is {dtype:?} but the pool is {:?}/{:?}",
            inputs.k_cache.0.dtype(),
            inputs.v_cache.0.dtype()
        );
    }
    match dtype {
        DType::F32 => launch::<f32>("f32", layout, inputs),
        DType::BF16 => launch::<half::bf16>("bf16", layout, inputs),
        DType::F16 => launch::<half::f16>("f16", layout, inputs),
        other => candle_core::bail!("prefill attention (cuda): unsupported dtype {other:?}"),
    }
}

fn launch<T: CudaDType + DeviceRepr>(suffix: &str, layout: &AttentionLayout, inputs: Inputs) -> candle_core::Result<(CudaStorage, Shape)> {
    let (q_storage, q_layout) = inputs.q;
    let dev = q_storage.device().clone();
    let (num_rows, num_heads, head_dim) = q_layout.shape().dims3()?;
    let (_, block_size, num_kv_heads, _) = inputs.k_cache.1.shape().dims4()?;
    if !HEAD_DIMS.contains(&head_dim) {
        candle_core::bail!("prefill attention (cuda): head_dim {head_dim} is not one of {HEAD_DIMS:?}");
    }
    let shape = Shape::from((num_rows, num_heads, head_dim));
    if num_rows == 0 {
        // SAFETY: nothing is read from an empty output.
        let out = unsafe { dev.alloc::<T>(1)? };
        return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
    }

    let uploaded;
    let device_metadata = layout.device_metadata.as_ref().map(|t| t.storage_and_layout());
    let meta: CudaView<u32> = match &device_metadata {
        Some((storage, meta_layout)) => match &**storage {
            candle_core::Storage::Cuda(s) => contiguous_view::<u32>(s, meta_layout, "prefill attention (cuda): metadata")?,
            _ => candle_core::bail!("prefill attention (cuda): the attention metadata is not on the GPU"),
        },
        None => {
            uploaded = dev.clone_htod(&kernel_metadata(&layout.sequences, layout.block_size, None))?;
            uploaded.slice(0..)
        }
    };
    if meta.len() < 2 * num_rows + 1 {
        candle_core::bail!("prefill attention (cuda): metadata has {} entries for {num_rows} rows", meta.len());
    }

    let q = contiguous_view::<T>(inputs.q.0, inputs.q.1, "prefill attention (cuda): q")?;
    let k_cache = contiguous_view::<T>(inputs.k_cache.0, inputs.k_cache.1, "prefill attention (cuda): k_cache")?;
    let v_cache = contiguous_view::<T>(inputs.v_cache.0, inputs.v_cache.1, "prefill attention (cuda): v_cache")?;
    let row_pos = meta.slice(0..num_rows);
    let row_table = meta.slice(num_rows..2 * num_rows);
    let block_tables = meta.slice(2 * num_rows..);

    // SAFETY: every element is written: each (row, head) pair belongs to exactly one block's
    // query vectors, and the block writes all head_dim values of each valid vector.
    let out = unsafe { dev.alloc::<T>(num_rows * num_heads * head_dim)? };
    let func = MODULE.function(q_storage, &format!("prefill_attention_{head_dim}_{suffix}"))?;
    let group = num_heads / num_kv_heads;
    let num_tiles = (num_rows * group).div_ceil(vectors_per_block(head_dim));
    let cfg = LaunchConfig {
        grid_dim: (num_tiles as u32, num_kv_heads as u32, 1),
        block_dim: (NUM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let scalars = [num_rows, num_heads, num_kv_heads, block_size, layout.sliding_window.unwrap_or(0)].map(|x| x as u32);
    let scale = layout.scale;
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
    builder.arg(&scale);
    // SAFETY: argument types and order match `prefill_attention_<head_dim>_<suffix>`; the
    // metadata and pool bounds were validated by `AttentionLayout::validate`.
    unsafe { builder.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
}
