//! Launches `dense_matvec.cu` as a custom op on (weight, activations).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::{CUDA_SOURCE, MAX_ROWS};
use crate::nvrtc::{contiguous_view, CudaModule};
use crate::Result;

pub static MODULE: CudaModule = CudaModule::new("hearth_dense_matvec", "dense_matvec.cu", CUDA_SOURCE);

/// Output rows per thread block (`DENSE_ROWS_PER_BLOCK` in the .cu): one warp each.
const ROWS_PER_BLOCK: u32 = 4;

struct DenseMatvec;

impl CustomOp2 for DenseMatvec {
    fn name(&self) -> &'static str {
        "dense-matvec"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("dense_matvec has only a CUDA body")
    }

    fn cuda_fwd(&self, w: &CudaStorage, w_l: &Layout, x: &CudaStorage, x_l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match (w.dtype(), x.dtype()) {
            (DType::BF16, DType::BF16) => launch::<half::bf16>((w, w_l), (x, x_l), "bf16"),
            (DType::F16, DType::F16) => launch::<half::f16>((w, w_l), (x, x_l), "f16"),
            (w, x) => candle_core::bail!("dense_matvec: weights {w:?} and activations {x:?} must both be BF16 or F16"),
        }
    }
}

fn launch<T: CudaDType + DeviceRepr>(w: (&CudaStorage, &Layout), x: (&CudaStorage, &Layout), suffix: &str) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, k) = w.1.shape().dims2()?;
    let (rows, x_k) = x.1.shape().dims2()?;
    if x_k != k || !k.is_multiple_of(8) || !(1..=MAX_ROWS).contains(&rows) {
        candle_core::bail!("dense_matvec: weight {n}x{k}, activations {rows}x{x_k}");
    }
    if !w.1.start_offset().is_multiple_of(8) || !x.1.start_offset().is_multiple_of(8) {
        candle_core::bail!("dense_matvec: operands must start on a 16-byte boundary");
    }
    let wv = contiguous_view::<T>(w.0, w.1, "dense_matvec: weight")?;
    let xv = contiguous_view::<T>(x.0, x.1, "dense_matvec: activations")?;
    let dev = x.0.device().clone();
    // SAFETY: every element is written (one warp per output row, all rows covered).
    let out = unsafe { dev.alloc::<T>(rows * n)? };
    let func = MODULE.function(x.0, &format!("dense_matvec_{suffix}_{rows}"))?;
    let cfg = LaunchConfig { grid_dim: ((n as u32).div_ceil(ROWS_PER_BLOCK), 1, 1), block_dim: (32, ROWS_PER_BLOCK, 1), shared_mem_bytes: 0 };
    let (n_u32, k_u32) = (n as u32, k as u32);
    let mut b = func.builder();
    b.arg(&wv).arg(&xv).arg(&out).arg(&n_u32).arg(&k_u32);
    // SAFETY: argument order and types match `dense_matvec_*`; wv is n x k, xv rows x k, both
    // 16-byte aligned (candle's allocations, k a multiple of 8, offsets checked above).
    unsafe { b.launch(cfg) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((rows, n))))
}

pub fn dense_matvec(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    Ok(w.apply_op2_no_bwd(&x, &DenseMatvec)?)
}
