//! Launches `matvec.cu`: a custom op on the activations whose CUDA body reads the `QTensor`'s
//! blocks by device pointer (the weights stay where candle loaded them, padded as candle pads
//! them; the kernel reads only `n * k` weights' blocks).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::CUDA_SOURCE;
use crate::nvrtc::{contiguous_view, CudaModule};
use crate::Result;

pub static MODULE: CudaModule = CudaModule::new("hearth_quant_matvec", "matvec.cu", CUDA_SOURCE);

/// Output rows per thread block of the float kernels (`ROWS_PER_BLOCK` in matvec.cu) and of the
/// int8-activation kernels (`Q8X_WARPS` in matvec_int8.cu): one warp each.
const ROWS_PER_BLOCK: u32 = 4;
const Q8X_ROWS_PER_BLOCK: u32 = 8;
/// Shared memory a block may use without opting in to more.
const MAX_SHARED_BYTES: usize = 48 * 1024;

/// Shared bytes of an int8-activation kernel for `rows` activation rows of width `k`: a float2
/// (scale, scaled sum) per 32 values, then the int8 values.
fn int8_shared_bytes(rows: usize, k: usize) -> usize {
    rows * (k / 32 * 8 + k)
}

/// Whether `dtype` x `rows`x`k` activations take the int8-activation kernel (Q4_K, Q6_K, when
/// the quantized rows fit the block's shared memory), else the float kernel.
pub(super) fn uses_int8_activations(dtype: GgmlDType, rows: usize, k: usize) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) && int8_shared_bytes(rows, k) <= MAX_SHARED_BYTES
}

struct QuantMatvec<'a> {
    w: &'a QTensor,
}

fn format_name(dtype: GgmlDType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        GgmlDType::Q4K => "q4k",
        GgmlDType::Q6K => "q6k",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q4_0 => "q4_0",
        other => candle_core::bail!("quant_matvec: no kernel for {other:?}"),
    })
}

impl CustomOp1 for QuantMatvec<'_> {
    fn name(&self) -> &'static str {
        "quant-matvec"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("quant_matvec has only a CUDA body")
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::BF16 => self.launch::<half::bf16>(x, x_l, "bf16"),
            DType::F16 => self.launch::<half::f16>(x, x_l, "f16"),
            other => candle_core::bail!("quant_matvec: activations must be BF16 or F16, got {other:?}"),
        }
    }
}

impl QuantMatvec<'_> {
    fn launch<T: CudaDType + DeviceRepr>(&self, x: &CudaStorage, x_l: &Layout, suffix: &str) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, k) = self.w.shape().dims2()?;
        let (rows, x_k) = x_l.shape().dims2()?;
        if x_k != k || !(1..=super::MAX_ROWS).contains(&rows) {
            candle_core::bail!("quant_matvec: weight {n}x{k}, activations {rows}x{x_k}");
        }
        let xv = contiguous_view::<T>(x, x_l, "quant_matvec: activations")?;
        let dev = x.device().clone();
        let weights = self.w.device_ptr()? as u64;
        // SAFETY: every element is written (one warp per output row, all rows covered).
        let out = unsafe { dev.alloc::<T>(rows * n)? };
        let format = format_name(self.w.dtype())?;
        let (kernel, cfg) = if uses_int8_activations(self.w.dtype(), rows, k) {
            let cfg = LaunchConfig {
                grid_dim: ((n as u32).div_ceil(Q8X_ROWS_PER_BLOCK), 1, 1),
                block_dim: (32, Q8X_ROWS_PER_BLOCK, 1),
                shared_mem_bytes: int8_shared_bytes(rows, k) as u32,
            };
            (format!("matvec_q8x_{format}_{suffix}_{rows}"), cfg)
        } else {
            let cfg = LaunchConfig {
                grid_dim: ((n as u32).div_ceil(ROWS_PER_BLOCK), 1, 1),
                block_dim: (32, ROWS_PER_BLOCK, 1),
                shared_mem_bytes: 0,
            };
            (format!("matvec_{format}_{suffix}_{rows}"), cfg)
        };
        let func = MODULE.function(x, &kernel)?;
        let (n_u32, k_u32) = (n as u32, k as u32);
        let mut b = func.builder();
        b.arg(&weights).arg(&xv).arg(&out).arg(&n_u32).arg(&k_u32);
        // SAFETY: argument order and types match `matvec_*` and `matvec_q8x_*` (whose dynamic
        // shared memory is `int8_shared_bytes`); the weight pointer covers n rows
        // of k / block_size blocks (candle's QTensor of shape [n, k]); xv is rows x k.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((rows, n))))
    }
}

pub fn quant_matvec(w: &QTensor, x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    Ok(x.apply_op1_no_bwd(&QuantMatvec { w })?)
}
