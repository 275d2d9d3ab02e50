//! Launches `matvec.cu`: a custom op on the activations whose CUDA body reads the `QTensor`'s
//! blocks by device pointer (the weights stay where candle loaded them, padded as candle pads
//! them; the kernel reads only `n * k` weights' blocks).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};

use super::{int8_shared_bytes, uses_int8_activations, Int8Rows, CUDA_SOURCE, MAX_GROUP};
use crate::fused::qkv_rope_launch::{rope_views, RopeKvArgs};
use crate::fused::{GatedActivation, QkvRope};
use crate::nvrtc::{contiguous_view, cuda_operand, split_group_output, CudaModule};
use crate::Result;

pub static MODULE: CudaModule = CudaModule::new("hearth_quant_matvec", "matvec.cu", CUDA_SOURCE);

/// Output rows per thread block of the float kernels (`ROWS_PER_BLOCK` in matvec.cu) and of the
/// int8-activation kernels (`Q8X_WARPS` in matvec_int8.cu): one warp each.
const ROWS_PER_BLOCK: u32 = 4;
const Q8X_ROWS_PER_BLOCK: u32 = 8;

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
        func.allow_shared_bytes(cfg.shared_mem_bytes as usize)?;
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

/// One matrix of a grouped launch (`Q8xMatrix` in matvec_int8.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GroupMatrix {
    w: u64,
    y: u64,
    nrows: u32,
    format: u32,
}

/// The grouped kernel's first argument (`Q8xMatrices` in matvec_int8.cu), passed by value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GroupMatrices {
    m: [GroupMatrix; MAX_GROUP],
    count: u32,
    /// 0, or 1 + the gate activation (gate and up in m[0], m[1]; one output)
    gated: u32,
}

// SAFETY: plain old data with the C layout of `Q8xMatrices`.
unsafe impl DeviceRepr for GroupMatrices {}

/// `x Wᵢᵀ` for every matrix of the group, one launch; the outputs lie one after the other in a
/// flat `[rows * Σ nᵢ]` result (matrix i's `[rows, nᵢ]` block at `rows * Σ_{j<i} nⱼ`). Gated:
/// `ws` = [gate, up] and the one output is `act(x gateᵀ) * (x upᵀ)`, flat `[rows * n]`. With
/// `rope`: `ws` = [Q, K, V], the one output is q rotated, flat `[rows * n_q]`, and k (rotated)
/// and v go to the pool.
struct QuantMatvecGroup<'a> {
    ws: &'a [&'a QTensor],
    gated: Option<GatedActivation>,
    /// `x` already quantized (the blocks copy it), or `None` (every block quantizes `x`).
    int8: Option<&'a Int8Rows>,
    rope: Option<&'a QkvRope<'a>>,
}

impl CustomOp1 for QuantMatvecGroup<'_> {
    fn name(&self) -> &'static str {
        "quant-matvec-group"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("quant_matvec_group has only a CUDA body")
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::BF16 => self.launch::<half::bf16>(x, x_l, "bf16"),
            DType::F16 => self.launch::<half::f16>(x, x_l, "f16"),
            other => candle_core::bail!("quant_matvec_group: activations must be BF16 or F16, got {other:?}"),
        }
    }
}

impl QuantMatvecGroup<'_> {
    fn launch<T: CudaDType + DeviceRepr>(&self, x: &CudaStorage, x_l: &Layout, suffix: &str) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, k) = x_l.shape().dims2()?;
        if !(1..=MAX_GROUP).contains(&self.ws.len()) || !uses_int8_activations(GgmlDType::Q4K, rows, k) {
            candle_core::bail!("quant_matvec_group: {} matrices, activations {rows}x{k}", self.ws.len());
        }
        let xv = contiguous_view::<T>(x, x_l, "quant_matvec_group: activations")?;
        let dev = x.device().clone();
        let stream = dev.cuda_stream();
        let heights: Vec<usize> = self.ws.iter().map(|w| w.shape().dims()[0]).collect();
        if self.gated.is_some() && (heights.len() != 2 || heights[0] != heights[1]) {
            candle_core::bail!("quant_matvec_gated: gate and up must have one height, got {heights:?}");
        }
        let total_n: usize = if self.gated.is_some() || self.rope.is_some() { heights[0] } else { heights.iter().sum() };
        // SAFETY: every element is written (one warp per output row of every matrix, or per
        // gate/up row pair).
        let out = unsafe { dev.alloc::<T>(rows * total_n)? };
        let (base, guard) = out.device_ptr(&stream);
        let gated = self.gated.map_or(0, |act| 1 + act as u32);
        let mut group = GroupMatrices { count: self.ws.len() as u32, gated, ..Default::default() };
        let (mut offset, mut blocks) = (0, 0);
        for (slot, w) in group.m.iter_mut().zip(self.ws) {
            let (n, w_k) = w.shape().dims2()?;
            let format = match w.dtype() {
                GgmlDType::Q4K => 0,
                GgmlDType::Q6K => 1,
                other => candle_core::bail!("quant_matvec_group: no int8 kernel for {other:?}"),
            };
            if w_k != k {
                candle_core::bail!("quant_matvec_group: weight {n}x{w_k}, activations {rows}x{k}");
            }
            let y = base + (offset * std::mem::size_of::<T>()) as u64;
            *slot = GroupMatrix { w: w.device_ptr()? as u64, y, nrows: n as u32, format };
            offset += rows * n;
            blocks += (n as u32).div_ceil(Q8X_ROWS_PER_BLOCK);
        }
        if gated != 0 {
            // both matrices' rows in the same blocks, the result where the gate's would go
            blocks = (total_n as u32).div_ceil(Q8X_ROWS_PER_BLOCK);
            group.m[1].y = group.m[0].y;
        }
        let rope_guards = self.rope.map(|rope| (rope.head_dim, rope.tensors().map(|t| t.storage_and_layout())));
        let rope_views = match &rope_guards {
            Some((head_dim, guards)) => Some(rope_views::<T, _>(guards, &heights, rows, *head_dim)?),
            None => None,
        };
        let rope_ptrs = rope_views.as_ref().map(|views| views.pointers(&stream));
        let mut rope_args = RopeKvArgs::default();
        if let (Some(rope), Some((ptrs, _))) = (self.rope, &rope_ptrs) {
            // q's rotated rows are the output; k's and v's rows go to the pool only
            (group.m[1].y, group.m[2].y) = (0, 0);
            rope_args = RopeKvArgs::new(rope, ptrs, group.m[0].y, heights[1]);
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (32, Q8X_ROWS_PER_BLOCK, 1),
            shared_mem_bytes: int8_shared_bytes(rows, k) as u32,
        };
        let mode = if gated != 0 { "gated" } else { "group" };
        let func = MODULE.function(x, &format!("matvec_q8x_{mode}_{suffix}_{rows}"))?;
        func.allow_shared_bytes(cfg.shared_mem_bytes as usize)?;
        let k_u32 = k as u32;
        let int8_guards = self.int8.map(|rows| [&rows.values, &rows.scales].map(|t| t.storage_and_layout()));
        let int8_views = match &int8_guards {
            Some([(values, values_l), (scales, scales_l)]) => {
                let (values, scales) = (cuda_operand(values, values_l, "int8 rows")?, cuda_operand(scales, scales_l, "int8 rows")?);
                let values = contiguous_view::<u8>(values.0, values.1, "quant_matvec_group: int8 values")?;
                let scales = contiguous_view::<f32>(scales.0, scales.1, "quant_matvec_group: int8 scales")?;
                if values.len() != rows * k || scales.len() != rows * k / 16 {
                    candle_core::bail!("quant_matvec_group: int8 rows of {} values, {} scales for {rows}x{k}", values.len(), scales.len());
                }
                Some((values, scales))
            }
            None => None,
        };
        let null = 0u64;
        let mut b = func.builder();
        b.arg(&group);
        if gated == 0 {
            b.arg(&rope_args);
        }
        b.arg(&xv);
        match &int8_views {
            Some((values, scales)) => b.arg(values).arg(scales),
            None => b.arg(&null).arg(&null),
        };
        b.arg(&k_u32);
        // SAFETY: arguments match `matvec_q8x_group_*` / `matvec_q8x_gated_*`; each matrix
        // pointer covers its n rows of k / 256 blocks, each output pointer its rows x n elements
        // inside `out` (gated: one output); xv is rows x k; the int8 rows (or nulls) hold rows x k
        // values and rows x k / 32 scale pairs. With rope: the pool, tables, positions and slots
        // as `rope_views` checked them (q's output alone in `out`); positions index the tables
        // and slots the pool as for `rope_write_kv` (the batch built them from validated block
        // tables).
        unsafe { b.launch(cfg) }.w()?;
        drop((guard, rope_ptrs));
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(rows * total_n)))
    }
}

pub fn quant_matvec_group(ws: &[&QTensor], x: &Tensor, int8: Option<&Int8Rows>) -> Result<Vec<Tensor>> {
    let x = x.contiguous()?;
    let rows = x.dim(0)?;
    let flat = x.apply_op1_no_bwd(&QuantMatvecGroup { ws, gated: None, int8, rope: None })?;
    Ok(split_group_output(&flat, rows, ws.iter().map(|w| w.shape().dims()[0]))?)
}

pub fn quant_matvec_gated(gate: &QTensor, up: &QTensor, x: &Tensor, act: GatedActivation, int8: Option<&Int8Rows>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (rows, n) = (x.dim(0)?, gate.shape().dims()[0]);
    Ok(x.apply_op1_no_bwd(&QuantMatvecGroup { ws: &[gate, up], gated: Some(act), int8, rope: None })?.reshape((rows, n))?)
}

pub fn quant_matvec_qkv_rope(ws: [&QTensor; 3], x: &Tensor, int8: Option<&Int8Rows>, rope: &QkvRope) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (rows, n) = (x.dim(0)?, ws[0].shape().dims()[0]);
    let q = x.apply_op1_no_bwd(&QuantMatvecGroup { ws: &ws, gated: None, int8, rope: Some(rope) })?;
    Ok(q.reshape((rows, n / rope.head_dim, rope.head_dim))?)
}

/// Threads per block of the dequantization kernels (eight per super-block).
const DEQUANT_THREADS: u32 = 256;

/// A dequantize kernel's format: its name in dequant.cu, weights per block, threads per block.
struct DequantFormat {
    name: &'static str,
    block_weights: usize,
    block_threads: u64,
}

fn dequant_format(dtype: GgmlDType) -> Option<DequantFormat> {
    let (name, block_weights, block_threads) = match dtype {
        GgmlDType::Q4K => ("q4k", 256, 8),
        GgmlDType::Q6K => ("q6k", 256, 8),
        GgmlDType::Q8_0 => ("q8_0", 32, 1),
        GgmlDType::Q5_0 => ("q5_0", 32, 1),
        _ => return None,
    };
    Some(DequantFormat { name, block_weights, block_threads })
}

/// Weights per block of the formats [`dequantize_16bit`] converts.
pub fn dequant_block_weights(dtype: GgmlDType) -> Option<usize> {
    dequant_format(dtype).map(|f| f.block_weights)
}

pub fn dequantize_16bit(w: &QTensor, dtype: DType) -> Result<Tensor> {
    let Device::Cuda(dev) = w.device() else {
        return Err(candle_core::Error::Msg("dequantize_16bit: the weights are not on a GPU".into()).into());
    };
    let (n, k) = w.shape().dims2()?;
    let Some(format) = dequant_format(w.dtype()) else {
        return Err(candle_core::Error::Msg(format!("dequantize_16bit: no kernel for {:?}", w.dtype())).into());
    };
    if k % format.block_weights != 0 || n * k == 0 {
        return Err(candle_core::Error::Msg(format!("dequantize_16bit: weight {n}x{k} is not whole blocks")).into());
    }
    let storage = match dtype {
        DType::BF16 => launch_dequantize::<half::bf16>(w, &dev, &format, "bf16")?,
        DType::F16 => launch_dequantize::<half::f16>(w, &dev, &format, "f16")?,
        other => return Err(candle_core::Error::Msg(format!("dequantize_16bit: BF16 or F16 only, got {other:?}")).into()),
    };
    Ok(Tensor::from_storage(Storage::Cuda(storage), (n, k), BackpropOp::none(), false))
}

fn launch_dequantize<T: CudaDType + DeviceRepr>(
    w: &QTensor,
    dev: &candle_core::CudaDevice,
    format: &DequantFormat,
    suffix: &str,
) -> candle_core::Result<CudaStorage> {
    let num_blocks = (w.shape().elem_count() / format.block_weights) as u64;
    // SAFETY: the kernel writes every output of every block.
    let out = unsafe { dev.alloc::<T>(w.shape().elem_count())? };
    let func = MODULE.function_on(dev, &format!("dequant_{}_{suffix}", format.name))?;
    let threads = num_blocks * format.block_threads;
    let cfg = LaunchConfig {
        grid_dim: (threads.div_ceil(DEQUANT_THREADS as u64) as u32, 1, 1),
        block_dim: (DEQUANT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let weights = w.device_ptr()? as u64;
    let mut b = func.builder();
    b.arg(&weights).arg(&out).arg(&num_blocks);
    // SAFETY: argument order and types match `dequant_*`; the weight pointer holds num_blocks
    // blocks of the format, out as many times its block's weights.
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
