//! Launches `mma.cu`: the tensor-core product (and, for sliced matrices, the sum of the slices) as
//! a custom op on the activations whose CUDA body reads the `QTensor`'s blocks by device pointer,
//! or as a custom op on (dense weight, activations).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};

use super::{CUDA_SOURCE, MAX_GROUP, TOKENS_PER_TILE};
use crate::nvrtc::{contiguous_view, split_group_output, CudaModule};
use crate::Result;

/// `mma.sync` with BF16 operands, `fma.rn.bf16x2` and `cp.async` need PTX for compute capability 8.0.
pub static MODULE: CudaModule = CudaModule::for_arch("hearth_quant_mma", "mma.cu", CUDA_SOURCE, "compute_80");

/// Warps of 16 weight rows per thread block for token tiles of `8 * tiles_of_8` (as
/// `mma_row_warps` in mma.cu); each is split into two parts, so a block has twice as many warps.
fn row_warps(tiles_of_8: usize) -> u32 {
    if tiles_of_8 <= 2 { 2 } else { 4 }
}

/// Blocks of 64 rows a launch aims at: small matrices (few row blocks) are cut into slices of
/// super-blocks until about this many blocks fill the GPU (132 SMs on an H100, two blocks each).
/// Counted in 64-row blocks whatever the launch's block size, so that the slices (and a row's
/// summation order) depend on the matrices alone.
const TARGET_BLOCKS: usize = 256;
const MAX_SLICES: usize = 8;

/// Slices of the super-blocks for matrices of `row_blocks` 64-row blocks and width `k`: a function
/// of the matrices alone, never of the batch, so that a token's result does not depend on the
/// batch around it.
fn slices_for(row_blocks: usize, k: usize) -> usize {
    let mut slices = 1;
    while slices * 2 <= MAX_SLICES && row_blocks * slices * 2 <= TARGET_BLOCKS && slices * 2 <= k / 256 {
        slices *= 2;
    }
    slices
}

/// Whether the GPU of `device` has BF16 `mma.sync` (compute capability 8.0+). Asked of the first
/// GPU once per process: hearth drives one GPU model at a time.
pub fn has_bf16_mma(device: &Device) -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    let Device::Cuda(dev) = device else { return false };
    *ANSWER.get_or_init(|| matches!(dev.cuda_stream().context().compute_capability(), Ok((major, _)) if major >= 8))
}

/// `MmaMatrix::format` (`FORMAT_*` in mma.cu).
const FORMAT_Q4K: u32 = 0;
const FORMAT_Q6K: u32 = 1;
const FORMAT_DENSE: u32 = 2;

/// One matrix of a launch (`MmaMatrix` in mma.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MmaMatrix {
    w: u64,
    nrows: u32,
    format: u32,
    offset: u32,
    blocks: u32,
}

/// The kernel's first argument (`MmaMatrices` in mma.cu), passed by value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MmaMatrices {
    m: [MmaMatrix; MAX_GROUP],
    count: u32,
    total: u32,
}

// SAFETY: plain old data with the C layout of `MmaMatrices`.
unsafe impl DeviceRepr for MmaMatrices {}

/// `x Wᵢᵀ` for every matrix of the group in one launch; the outputs lie one after the other in a
/// flat `[rows * Σ nᵢ]` result (matrix i's `[rows, nᵢ]` block at `rows * Σ_{j<i} nⱼ`).
struct QuantMma<'a> {
    ws: &'a [&'a QTensor],
}

impl CustomOp1 for QuantMma<'_> {
    fn name(&self) -> &'static str {
        "quant-mma"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("quant_mma has only a CUDA body")
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let matrices = self.matrices(x_l.shape().dims2()?.1)?;
        match x.dtype() {
            DType::BF16 => launch::<half::bf16>(matrices, x, x_l, "bf16"),
            DType::F16 => launch::<half::f16>(matrices, x, x_l, "f16"),
            other => candle_core::bail!("quant_mma: activations must be BF16 or F16, got {other:?}"),
        }
    }
}

impl QuantMma<'_> {
    fn matrices(&self, k: usize) -> candle_core::Result<MmaMatrices> {
        if !(1..=MAX_GROUP).contains(&self.ws.len()) {
            candle_core::bail!("quant_mma: {} matrices in one launch (1..={MAX_GROUP})", self.ws.len());
        }
        let mut matrices = MmaMatrices { count: self.ws.len() as u32, ..Default::default() };
        for (slot, w) in matrices.m.iter_mut().zip(self.ws) {
            let format = match w.dtype() {
                GgmlDType::Q4K => FORMAT_Q4K,
                GgmlDType::Q6K => FORMAT_Q6K,
                other => candle_core::bail!("quant_mma: no kernel for {other:?}"),
            };
            let (n, w_k) = w.shape().dims2()?;
            if w_k != k || n == 0 {
                candle_core::bail!("quant_mma: weight {n}x{w_k} against activations of width {k}");
            }
            *slot = MmaMatrix {
                w: w.device_ptr()? as u64,
                nrows: n as u32,
                format,
                offset: matrices.total,
                blocks: 0, // set by `launch` for its block size
            };
            matrices.total += n as u32;
        }
        Ok(matrices)
    }
}

/// `x Wᵀ` for a dense weight `W` (`[n, k]`) of the activations' type, one matrix per launch.
struct DenseMma;

impl CustomOp2 for DenseMma {
    fn name(&self) -> &'static str {
        "dense-mma"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("dense_mma has only a CUDA body")
    }

    fn cuda_fwd(&self, w: &CudaStorage, w_l: &Layout, x: &CudaStorage, x_l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match (w.dtype(), x.dtype()) {
            (DType::BF16, DType::BF16) => dense_launch::<half::bf16>((w, w_l), (x, x_l), "bf16"),
            (DType::F16, DType::F16) => dense_launch::<half::f16>((w, w_l), (x, x_l), "f16"),
            (w, x) => candle_core::bail!("dense_mma: weights {w:?} and activations {x:?} must both be BF16 or F16"),
        }
    }
}

fn dense_launch<T: CudaDType + DeviceRepr>(w: (&CudaStorage, &Layout), x: (&CudaStorage, &Layout), suffix: &str) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, k) = w.1.shape().dims2()?;
    let x_k = x.1.shape().dims2()?.1;
    if x_k != k || n == 0 {
        candle_core::bail!("dense_mma: weight {n}x{k} against activations of width {x_k}");
    }
    if !w.1.start_offset().is_multiple_of(4) {
        candle_core::bail!("dense_mma: the weight must start on an 8-byte boundary");
    }
    let wv = contiguous_view::<T>(w.0, w.1, "dense_mma: weight")?;
    let stream = w.0.device().cuda_stream();
    // The guard keeps the weight's pointer valid (and ordered on the stream) through the launch.
    let (ptr, _guard) = wv.device_ptr(&stream);
    let matrix = MmaMatrix { w: ptr, nrows: n as u32, format: FORMAT_DENSE, offset: 0, blocks: 0 };
    let matrices = MmaMatrices { m: [matrix, MmaMatrix::default(), MmaMatrix::default()], count: 1, total: n as u32 };
    launch::<T>(matrices, x.0, x.1, suffix)
}

/// The product of `matrices` (their pointers valid for the launch) with the activations `x`
/// (`[rows, k]`, k a multiple of 256): a flat `[rows * total]` result.
fn launch<T: CudaDType + DeviceRepr>(mut matrices: MmaMatrices, x: &CudaStorage, x_l: &Layout, suffix: &str) -> candle_core::Result<(CudaStorage, Shape)> {
    let (rows, k) = x_l.shape().dims2()?;
    if k % 256 != 0 || rows == 0 {
        candle_core::bail!("quant_mma: activations {rows}x{k}");
    }
    // Token tiles of 8 * tiles_of_8 rows (the last one padded with zeros in shared memory).
    let tiles_of_8 = rows.min(TOKENS_PER_TILE).div_ceil(8);
    let tiles = rows.div_ceil(8 * tiles_of_8);
    let rows_per_block = 16 * row_warps(tiles_of_8);
    let count = matrices.count as usize;
    for m in &mut matrices.m[..count] {
        m.blocks = m.nrows.div_ceil(rows_per_block);
    }
    let row_blocks = matrices.m[..count].iter().map(|m| m.blocks).sum::<u32>();
    let blocks_of_64: u32 = matrices.m[..count].iter().map(|m| m.nrows.div_ceil(64)).sum();
    let total = matrices.total as usize;
    let xv = contiguous_view::<T>(x, x_l, "quant_mma: activations")?;
    let dev = x.device().clone();
    // SAFETY: the product writes every output element (rows x total).
    let out = unsafe { dev.alloc::<T>(rows * total)? };
    let (rows_u32, k_u32) = (rows as u32, k as u32);
    let slices = slices_for(blocks_of_64 as usize, k);
    // SAFETY: with several slices every slice writes its rows x total partial products.
    let partial = unsafe { dev.alloc::<f32>(if slices > 1 { slices * rows * total } else { 1 })? };
    let product = MODULE.function(x, &format!("mma_{suffix}_{tiles_of_8}"))?;
    let cfg = LaunchConfig {
        grid_dim: (tiles as u32, row_blocks, slices as u32),
        block_dim: (32, 2 * row_warps(tiles_of_8), 1),
        shared_mem_bytes: 0,
    };
    let mut b = product.builder();
    b.arg(&matrices).arg(&xv).arg(&out).arg(&partial).arg(&k_u32).arg(&rows_u32);
    // SAFETY: matches `mma_*_NT` with NT = tiles_of_8; each weight pointer covers its nrows
    // rows of k / 256 blocks (candle's QTensor of shape [nrows, k], or a dense [nrows, k] of T,
    // 8-byte aligned); xv is rows x k; out is
    // rows x total; partial is slices x rows x total when slices > 1 (and unused otherwise).
    unsafe { b.launch(cfg) }.w()?;
    if slices > 1 {
        let count = (rows * total) as u32;
        let reduce = MODULE.function(x, &format!("mma_reduce_{suffix}"))?;
        let cfg = LaunchConfig { grid_dim: (count.div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = reduce.builder();
        let slices_u32 = slices as u32;
        b.arg(&partial).arg(&out).arg(&count).arg(&slices_u32);
        // SAFETY: matches `mma_reduce_*`: partial holds slices x count floats, out count elements.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(rows * total)))
}

pub fn quant_mma_group(ws: &[&QTensor], x: &Tensor) -> Result<Vec<Tensor>> {
    let x = x.contiguous()?;
    let rows = x.dim(0)?;
    let flat = x.apply_op1_no_bwd(&QuantMma { ws })?;
    Ok(split_group_output(&flat, rows, ws.iter().map(|w| w.shape().dims()[0]))?)
}

pub fn dense_mma(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let (rows, n) = (x.dim(0)?, w.dim(0)?);
    Ok(w.apply_op2_no_bwd(&x, &DenseMma)?.reshape((rows, n))?)
}
