//! CUDA path of paged attention: launches `paged_attention.cu` (compiled once per process by
//! NVRTC through candle's cudarc, loaded into each device's module cache by candle).
//!
//! Owns: reading the kernel's u32 metadata (`kernel_metadata`: the caller's device copy, or
//! one upload per call), the launch shapes of both paths (one block per (row, head); split over
//! the sequence + combine), the split path's F32 scratch buffer, dtype dispatch (F32, BF16,
//! F16; q and the pool share one dtype).
//! Does not own: validation (done by `check_shapes` before the op runs), the kernel's math, the
//! number of splits (`super::split`). Compiling and caching the source: `crate::nvrtc`.
//!
//! CUDA-graph safety: everything a launch's shape depends on — grid, shared memory, scratch
//! size — is a function of the tensor shapes, the metadata's length, the sequence count and the
//! device (see `super::split`), so a recorded launch stays valid when a replay rewrites the
//! metadata. Every launch allocates its output and scratch through candle's device allocator
//! (stream-ordered, so recordable like every other op's output); nothing is copied from the
//! host when the caller provides `device_metadata`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::split::{max_row_positions, SplitChoice, MIN_SPLIT_POSITIONS};
use super::{kernel_metadata, AttentionLayout, CUDA_SOURCE};
use crate::nvrtc::{contiguous_view, CudaModule};

/// Threads of an attending block (each warp walks its own share of the positions): many warps
/// when the grid is too small to fill the GPU (a few rows: the positions' load latencies
/// overlap across warps), fewer when many blocks share each SM. With a fixed split (batch-
/// invariant mode) always `INVARIANT_THREADS`: the warp count sets the order of the sums, so it
/// must not depend on the batch.
const FEW_BLOCKS_THREADS: u32 = 512; // `__launch_bounds__(512)` in the .cu
const MANY_BLOCKS_THREADS: u32 = 256;
const INVARIANT_THREADS: u32 = 256;

/// Threads for an automatically split grid of `blocks` attending blocks.
fn auto_threads(blocks: usize, num_sms: usize) -> u32 {
    if blocks <= num_sms {
        FEW_BLOCKS_THREADS
    } else {
        MANY_BLOCKS_THREADS
    }
}

/// The widest head the kernels take: 32 lanes x 16 dims (`DPL` in the .cu).
const MAX_HEAD_DIM: usize = 512;
/// Threads of a combine block (one output dim each, looping when head_dim is larger).
const COMBINE_THREADS: u32 = 128;

/// The kernel source as an NVRTC module.
pub static MODULE: CudaModule = CudaModule::new("hearth_paged_attention", "paged_attention.cu", CUDA_SOURCE);

pub(super) struct Inputs<'a> {
    pub q: (&'a CudaStorage, &'a Layout),
    pub k_cache: (&'a CudaStorage, &'a Layout),
    pub v_cache: (&'a CudaStorage, &'a Layout),
}

pub(super) fn forward(layout: &AttentionLayout, splits: SplitChoice, inputs: Inputs) -> candle_core::Result<(CudaStorage, Shape)> {
    let dtype = inputs.q.0.dtype();
    if inputs.k_cache.0.dtype() != dtype || inputs.v_cache.0.dtype() != dtype {
        candle_core::bail!(
            "paged attention (cuda): q is {dtype:?} but the pool is {:?}/{:?}",
            inputs.k_cache.0.dtype(),
            inputs.v_cache.0.dtype()
        );
    }
    match dtype {
        DType::F32 => launch::<f32>("f32", layout, splits, inputs),
        DType::BF16 => launch::<half::bf16>("bf16", layout, splits, inputs),
        DType::F16 => launch::<half::f16>("f16", layout, splits, inputs),
        other => candle_core::bail!("paged attention (cuda): unsupported dtype {other:?}"),
    }
}

/// Operands and sizes shared by both paths' launches.
struct Launch<'a, T> {
    q: CudaView<'a, T>,
    k_cache: CudaView<'a, T>,
    v_cache: CudaView<'a, T>,
    row_pos: CudaView<'a, u32>,
    row_table: CudaView<'a, u32>,
    block_tables: CudaView<'a, u32>,
    /// num_heads, num_kv_heads, head_dim, block_size, sliding_window (0: none)
    scalars: [u32; 5],
    scale: f32,
    num_row_heads: usize,
    head_dim: usize,
    /// Threads of an attending block.
    threads: u32,
}

impl<T: DeviceRepr> Launch<'_, T> {
    /// Pushes `q .. scale`, the arguments both attending kernels take after their outputs.
    fn push_common<'b>(&'b self, builder: &mut LaunchArgs<'b>) {
        builder.arg(&self.q);
        builder.arg(&self.k_cache);
        builder.arg(&self.v_cache);
        builder.arg(&self.row_pos);
        builder.arg(&self.row_table);
        builder.arg(&self.block_tables);
        for s in &self.scalars {
            builder.arg(s);
        }
        builder.arg(&self.scale);
    }

    /// Dynamic shared memory of an attending block: every warp's accumulator (`gather_warps`).
    fn shared_mem_bytes(&self) -> u32 {
        (self.threads as usize / 32 * self.head_dim * 4) as u32
    }

    /// The attending kernel for this head size: `{name}_{suffix}_d{DPL}`, DPL = dims per lane.
    fn kernel_name(&self, name: &str, suffix: &str) -> String {
        let dims_per_lane = match self.head_dim {
            0..=64 => 2,
            65..=128 => 4,
            129..=256 => 8,
            _ => 16,
        };
        format!("{name}_{suffix}_d{dims_per_lane}")
    }
}

fn launch<T: CudaDType + DeviceRepr>(
    suffix: &str,
    layout: &AttentionLayout,
    splits: SplitChoice,
    inputs: Inputs,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (q_storage, q_layout) = inputs.q;
    let dev = q_storage.device().clone();
    let (num_rows, num_heads, head_dim) = q_layout.shape().dims3()?;
    let (_, block_size, num_kv_heads, _) = inputs.k_cache.1.shape().dims4()?;
    if head_dim > MAX_HEAD_DIM {
        candle_core::bail!("paged attention (cuda): head_dim {head_dim} > {MAX_HEAD_DIM}");
    }
    let shape = Shape::from((num_rows, num_heads, head_dim));
    if num_rows == 0 {
        // SAFETY: nothing is read from an empty output.
        let out = unsafe { dev.alloc::<T>(1)? };
        return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
    }

    // The step's metadata on the device: the caller's (one upload per step, graph-safe) or
    // uploaded here.
    let uploaded;
    let device_metadata = layout.device_metadata.as_ref().map(|t| t.storage_and_layout());
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
    let (num_splits, threads) = match splits {
        SplitChoice::Fixed(_) => (splits.resolve(num_rows, num_heads, 0, 0), INVARIANT_THREADS),
        SplitChoice::Auto => {
            let (max_positions, num_sms) = (max_row_positions(layout, num_rows, meta.len()), multiprocessor_count(&dev)?);
            let num_splits = splits.resolve(num_rows, num_heads, max_positions, num_sms);
            (num_splits, auto_threads(num_rows * num_heads * num_splits, num_sms))
        }
    };
    let launch = Launch {
        q: contiguous_view::<T>(inputs.q.0, inputs.q.1, "paged attention (cuda): q")?,
        k_cache: contiguous_view::<T>(inputs.k_cache.0, inputs.k_cache.1, "paged attention (cuda): k_cache")?,
        v_cache: contiguous_view::<T>(inputs.v_cache.0, inputs.v_cache.1, "paged attention (cuda): v_cache")?,
        row_pos: meta.slice(0..num_rows),
        row_table: meta.slice(num_rows..2 * num_rows),
        block_tables: meta.slice(2 * num_rows..),
        scalars: [num_heads, num_kv_heads, head_dim, block_size, layout.sliding_window.unwrap_or(0)].map(|x| x as u32),
        scale: layout.scale,
        num_row_heads: num_rows * num_heads,
        head_dim,
        threads,
    };
    let out = match num_splits {
        1 => launch_one_block(suffix, q_storage, &launch)?,
        n => launch_split(suffix, q_storage, &launch, n)?,
    };
    Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
}

/// The device's SM count (constant for a device, so graph-safe).
fn multiprocessor_count(dev: &candle_core::CudaDevice) -> candle_core::Result<usize> {
    let count = dev.cuda_stream().context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).w()?;
    Ok(count.max(1) as usize)
}

/// One block per (row, head), writing the output directly.
fn launch_one_block<T: CudaDType + DeviceRepr>(
    suffix: &str,
    q_storage: &CudaStorage,
    launch: &Launch<T>,
) -> candle_core::Result<CudaSlice<T>> {
    let dev = q_storage.device();
    // SAFETY: every element is written by the kernel (each (row, head) block writes its row).
    let out = unsafe { dev.alloc::<T>(launch.num_row_heads * launch.head_dim)? };
    let func = MODULE.function(q_storage, &launch.kernel_name("paged_attention", suffix))?;
    let cfg = LaunchConfig {
        grid_dim: (launch.num_row_heads as u32, 1, 1),
        block_dim: (launch.threads, 1, 1),
        shared_mem_bytes: launch.shared_mem_bytes(),
    };
    let mut builder = func.builder();
    builder.arg(&out);
    launch.push_common(&mut builder);
    // SAFETY: argument types and order match the kernel's signature; the metadata and pool
    // bounds were validated by `AttentionLayout::validate`.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

/// Split over the sequence: `num_splits` partial states per (row, head) into an F32 scratch
/// buffer (`[num_row_heads, num_splits, 2]` stats, then `[num_row_heads, num_splits,
/// head_dim]` accumulators), then the combine kernel writes the output.
fn launch_split<T: CudaDType + DeviceRepr>(
    suffix: &str,
    q_storage: &CudaStorage,
    launch: &Launch<T>,
    num_splits: usize,
) -> candle_core::Result<CudaSlice<T>> {
    let dev = q_storage.device();
    let num_partials = launch.num_row_heads * num_splits;
    // SAFETY: the split kernel writes every partial's stats, and the accumulator of every
    // partial whose stats say it is non-empty; the combine kernel reads nothing else.
    let scratch = unsafe { dev.alloc::<f32>(num_partials * (2 + launch.head_dim))? };
    let stats = scratch.slice(0..2 * num_partials);
    let acc = scratch.slice(2 * num_partials..);

    let split = MODULE.function(q_storage, &launch.kernel_name("paged_attention_split", suffix))?;
    let cfg = LaunchConfig {
        grid_dim: (launch.num_row_heads as u32, num_splits as u32, 1),
        block_dim: (launch.threads, 1, 1),
        shared_mem_bytes: launch.shared_mem_bytes(),
    };
    let min_split_len = MIN_SPLIT_POSITIONS as u32;
    let mut builder = split.builder();
    builder.arg(&stats);
    builder.arg(&acc);
    launch.push_common(&mut builder);
    builder.arg(&min_split_len);
    // SAFETY: as in `launch_one_block`; the scratch holds `num_partials` partials.
    unsafe { builder.launch(cfg) }.w()?;

    // SAFETY: the combine kernel writes every element (each (row, head) block writes its row).
    let out = unsafe { dev.alloc::<T>(launch.num_row_heads * launch.head_dim)? };
    let combine = MODULE.function(q_storage, &format!("paged_attention_combine_{suffix}"))?;
    let cfg = LaunchConfig {
        grid_dim: (launch.num_row_heads as u32, 1, 1),
        block_dim: (COMBINE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (num_splits, head_dim) = (num_splits as u32, launch.head_dim as u32);
    let mut builder = combine.builder();
    builder.arg(&out);
    builder.arg(&stats);
    builder.arg(&acc);
    builder.arg(&num_splits);
    builder.arg(&head_dim);
    // SAFETY: argument types and order match `paged_attention_combine_*`; stats and acc hold
    // `num_row_heads * num_splits` partials written by the split kernel just before on the
    // same stream.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}
