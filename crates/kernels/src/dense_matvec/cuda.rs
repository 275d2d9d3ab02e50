//! Launches `dense_matvec.cu` as a custom op on (weight, activations).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use super::{CUDA_SOURCE, MAX_GROUP, MAX_ROWS};
use crate::fused::qkv_rope_launch::{rope_views, RopeKvArgs};
use crate::fused::{GatedActivation, QkvRope};
use crate::nvrtc::{contiguous_view, cuda_operand, CudaModule, Operand};
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

/// One matrix of a grouped launch (`DenseMatrix` in dense_matvec.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GroupMatrix {
    w: u64,
    y: u64,
    nrows: u32,
    unused: u32,
}

/// The grouped kernel's first argument (`DenseMatrices` in dense_matvec.cu), passed by value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GroupMatrices {
    m: [GroupMatrix; MAX_GROUP],
    count: u32,
    /// 0, or 1 + the gate activation (gate and up in m[0], m[1]; one output)
    gated: u32,
}

// SAFETY: plain old data with the C layout of `DenseMatrices`.
unsafe impl DeviceRepr for GroupMatrices {}

/// What a grouped launch does besides its products.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// Each matrix's products as they are.
    Plain,
    /// Gate and up: `act(gate) * up`.
    Gated(GatedActivation),
    /// Q, K, V: q rotated is the output, k rotated and v go to the pool.
    Rope(&'a QkvRope<'a>),
}

/// `x Wᵢᵀ` for every matrix of `ws` in one launch, flat `[rows * Σ nᵢ]` (matrix i's `[rows, nᵢ]`
/// block at `rows * Σ_{j<i} nⱼ`); gated (`ws` = [gate, up]): `act(x gateᵀ) * (x upᵀ)`, `[rows, n]`;
/// rotating (`ws` = [Q, K, V]): q rotated, `[rows, n_q]`.
pub fn dense_matvec_group(ws: &[&Tensor], x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (rows, _) = x.dims2()?;
    let x_guard = x.storage_and_layout();
    let w_guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let x_operand = cuda_operand(&x_guard.0, x_guard.1, "dense_matvec_group")?;
    let w_operands = w_guards.iter().map(|(s, l)| cuda_operand(s, l, "dense_matvec_group")).collect::<candle_core::Result<Vec<_>>>()?;
    let (storage, n) = match x.dtype() {
        DType::BF16 => launch_group::<half::bf16>(&w_operands, x_operand, epilogue, "bf16")?,
        DType::F16 => launch_group::<half::f16>(&w_operands, x_operand, epilogue, "f16")?,
        other => return Err(candle_core::Error::Msg(format!("dense_matvec_group: activations must be BF16 or F16, got {other:?}")).into()),
    };
    let shape = match epilogue {
        Epilogue::Plain => Shape::from(rows * n),
        Epilogue::Gated(_) | Epilogue::Rope(_) => Shape::from((rows, n)),
    };
    Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
}

/// The launch: its output and the output's width (Σ nᵢ; n when gated; Q's height when rotating).
fn launch_group<T: CudaDType + DeviceRepr>(
    ws: &[Operand],
    x: Operand,
    epilogue: Epilogue,
    suffix: &str,
) -> candle_core::Result<(CudaStorage, usize)> {
    let gated = match epilogue {
        Epilogue::Gated(act) => Some(act),
        _ => None,
    };
    let rope = match epilogue {
        Epilogue::Rope(rope) => Some(rope),
        _ => None,
    };
    let (rows, k) = x.1.shape().dims2()?;
    if !(1..=MAX_GROUP).contains(&ws.len()) || !k.is_multiple_of(8) || !(1..=MAX_ROWS).contains(&rows) {
        candle_core::bail!("dense_matvec_group: {} matrices, activations {rows}x{k}", ws.len());
    }
    let heights = ws.iter().map(|w| w.1.shape().dims2().map(|(n, _)| n)).collect::<candle_core::Result<Vec<_>>>()?;
    if gated.is_some() && (heights.len() != 2 || heights[0] != heights[1]) {
        candle_core::bail!("dense_matvec_gated: gate and up must have one height, got {heights:?}");
    }
    if ws.iter().chain([&x]).any(|o| !o.1.start_offset().is_multiple_of(8)) {
        candle_core::bail!("dense_matvec_group: operands must start on a 16-byte boundary");
    }
    let xv = contiguous_view::<T>(x.0, x.1, "dense_matvec_group: activations")?;
    let dev = x.0.device().clone();
    let stream = dev.cuda_stream();
    let total_n: usize = if gated.is_some() || rope.is_some() { heights[0] } else { heights.iter().sum() };
    // SAFETY: every element is written (one warp per output row of every matrix, per gate/up row
    // pair, or per row of Q).
    let out = unsafe { dev.alloc::<T>(rows * total_n)? };
    let (base, out_guard) = out.device_ptr(&stream);
    let views = ws.iter().map(|w| contiguous_view::<T>(w.0, w.1, "dense_matvec_group: weight")).collect::<candle_core::Result<Vec<_>>>()?;
    let mut weight_guards = Vec::with_capacity(views.len());
    let mut group = GroupMatrices { count: ws.len() as u32, gated: gated.map_or(0, |act| 1 + act as u32), ..Default::default() };
    let (mut offset, mut blocks) = (0, 0);
    for ((slot, w), view) in group.m.iter_mut().zip(ws).zip(&views) {
        let (n, w_k) = w.1.shape().dims2()?;
        if w_k != k {
            candle_core::bail!("dense_matvec_group: weight {n}x{w_k}, activations {rows}x{k}");
        }
        let (w_ptr, guard) = view.device_ptr(&stream);
        weight_guards.push(guard);
        *slot = GroupMatrix { w: w_ptr, y: base + (offset * std::mem::size_of::<T>()) as u64, nrows: n as u32, unused: 0 };
        offset += rows * n;
        blocks += (n as u32).div_ceil(ROWS_PER_BLOCK);
    }
    if gated.is_some() {
        // both matrices' rows in the same blocks, the result where the gate's would go
        blocks = (total_n as u32).div_ceil(ROWS_PER_BLOCK);
        group.m[1].y = group.m[0].y;
    }
    let rope_guards = rope.map(|rope| (rope.head_dim, rope.tensors().map(|t| t.storage_and_layout())));
    let rope_views = match &rope_guards {
        Some((head_dim, guards)) => Some(rope_views::<T, _>(guards, &heights, rows, *head_dim)?),
        None => None,
    };
    let rope_ptrs = rope_views.as_ref().map(|views| views.pointers(&stream));
    let mut rope_args = RopeKvArgs::default();
    if let (Some(rope), Some((ptrs, _))) = (rope, &rope_ptrs) {
        // q's rotated rows are the output; k's and v's rows go to the pool only
        (group.m[1].y, group.m[2].y) = (0, 0);
        rope_args = RopeKvArgs::new(rope, ptrs, group.m[0].y, heights[1]);
    }
    let func = MODULE.function(x.0, &format!("dense_matvec_group_{suffix}_{rows}"))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32, ROWS_PER_BLOCK, 1), shared_mem_bytes: 0 };
    let k_u32 = k as u32;
    let mut b = func.builder();
    b.arg(&group).arg(&rope_args).arg(&xv).arg(&k_u32);
    // SAFETY: arguments match `dense_matvec_group_*`; each weight pointer covers its n x k
    // elements, each output pointer its rows x n elements inside `out` (gated: one output); xv is
    // rows x k; every pointer 16-byte aligned (offsets checked above, k a multiple of 8). With
    // rope: the pool, tables, positions and slots as `rope_views` checked them (q's output alone
    // in `out`); positions index the tables and slots the pool as for `rope_write_kv`.
    unsafe { b.launch(cfg) }.w()?;
    drop((out_guard, weight_guards, rope_ptrs));
    Ok((CudaStorage::wrap_cuda_slice(out, dev), total_n))
}
