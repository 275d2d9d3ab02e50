//! CUDA launches of `fused.cu`: each public function of `super` as a candle custom op whose
//! CUDA body checks shapes and layouts, allocates the output and launches one kernel.
//!
//! `rope_write_kv` writes the KV pool in place: the pool tensors ride in the op (not as op
//! inputs) and are written through their device pointers, like the paged-attention op reads
//! them; the step's K/V rows must not be read by anything launched earlier that is still
//! pending on another stream (candle runs one stream per device).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::{GatedActivation, RopeKvInputs, CUDA_SOURCE, NORM_CHUNKS};
use crate::nvrtc::{contiguous_view, cuda_operand, CudaModule, Operand};
use crate::quant_matvec::Int8Rows;
use crate::Result;

pub static MODULE: CudaModule = CudaModule::new("hearth_fused", "fused.cu", CUDA_SOURCE);

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("fused kernels: unsupported dtype {other:?}"),
    })
}

fn cpu_unsupported<T>(name: &str) -> candle_core::Result<T> {
    candle_core::bail!("{name}: the fused op has only a CUDA body; the CPU runs the reference")
}

/// Dispatches `$body` with `$t` bound to the Rust type of `$dtype`.
macro_rules! with_dtype {
    ($dtype:expr, $t:ident, $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            DType::F16 => {
                type $t = half::f16;
                $body
            }
            other => candle_core::bail!("fused kernels: unsupported dtype {other:?}"),
        }
    };
}

// ---- add_rms_norm ------------------------------------------------------------------------

struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_l: &Layout,
        r: &CudaStorage,
        r_l: &Layout,
        w: &CudaStorage,
        w_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, hidden) = x_l.shape().dims2()?;
        if r_l.shape() != x_l.shape() || w_l.shape().dims() != [hidden] {
            candle_core::bail!("add_rms_norm: x {:?}, residual {:?}, weight {:?}", x_l.shape(), r_l.shape(), w_l.shape());
        }
        with_dtype!(x.dtype(), T, launch_add_rms_norm::<T>(self.eps, (x, x_l), (r, r_l), (w, w_l), rows, hidden))
    }
}

fn launch_add_rms_norm<T: CudaDType + DeviceRepr>(
    eps: f32,
    x: Operand,
    r: Operand,
    w: Operand,
    rows: usize,
    hidden: usize,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = x.0.device().clone();
    let xv = contiguous_view::<T>(x.0, x.1, "add_rms_norm: x")?;
    let rv = contiguous_view::<T>(r.0, r.1, "add_rms_norm: residual")?;
    let wv = contiguous_view::<T>(w.0, w.1, "add_rms_norm: weight")?;
    // SAFETY: the kernel writes every element of both halves.
    let out = unsafe { dev.alloc::<T>(2 * rows * hidden)? };
    let (normed, sum) = (out.slice(0..rows * hidden), out.slice(rows * hidden..));
    if rows > 0 {
        // 16-byte loads and sums kept in registers where rows allow (`add_rms_norm8` in fused.cu)
        let chunks = hidden / 8;
        let aligned = [x.1, r.1, w.1].iter().all(|l| l.start_offset() % 8 == 0);
        let vectorized = x.0.dtype() != DType::F32 && hidden.is_multiple_of(8) && aligned && chunks <= NORM_CHUNKS * 1024;
        let (kernel, threads) = match vectorized {
            true => ("add_rms_norm8", threads_for(chunks)),
            false => ("add_rms_norm", threads_for(hidden)),
        };
        let func = MODULE.function(x.0, &format!("{kernel}_{}", suffix(x.0.dtype())?))?;
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut b = func.builder();
        b.arg(&normed).arg(&sum).arg(&xv).arg(&rv).arg(&wv);
        let hidden_u32 = hidden as u32;
        b.arg(&hidden_u32).arg(&eps);
        // SAFETY: argument order and types match `add_rms_norm_*` and `add_rms_norm8_*` (whose
        // operands start 16-byte aligned and whose threads cover every chunk); views cover rows x
        // hidden.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((2, rows, hidden))))
}

/// Threads per block for a row of `width` elements: a multiple of 32, at most 1024.
fn threads_for(width: usize) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, 1024) as u32
}

pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (x, residual) = (x.contiguous()?, residual.contiguous()?);
    let both = x.apply_op3_no_bwd(&residual, weight, &AddRmsNorm { eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

/// `add_rms_norm_f32_residual_*`: `x` (BF16/F16) plus the F32 `residual` -> `(normed in x's
/// dtype, sum in F32)`, rows of a multiple of 8 elements, at most `NORM_CHUNKS * 8 * 1024`.
pub fn add_rms_norm_f32_residual(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (normed, sum, _) = f32_stream_norm(Some(x), residual, weight, eps, false)?;
    Ok((normed, sum.expect("the adding kernel returns the sum")))
}

/// `rms_norm_f32_stream_*`: the F32 `stream`'s norm in `weight`'s dtype (BF16/F16), same rows.
pub fn rms_norm_f32_stream(stream: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(f32_stream_norm(None, stream, weight, eps, false)?.0)
}

/// [`add_rms_norm_f32_residual`] (`x` given) or [`rms_norm_f32_stream`], with the normed rows
/// also quantized for the int8 matvec kernels by the same launch.
pub fn f32_stream_norm_int8(x: Option<&Tensor>, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Option<Tensor>, Int8Rows)> {
    let (normed, sum, int8) = f32_stream_norm(x, residual, weight, eps, true)?;
    let (values, scales) = int8.expect("asked for int8 rows");
    let int8 = Int8Rows { values, scales, of: normed.id() };
    Ok((normed, sum, int8))
}

/// The normed rows, the sum (with `x`: the adding kernel), and with `int8` the normed rows'
/// int8 values and scales.
#[allow(clippy::type_complexity)]
fn f32_stream_norm(
    x: Option<&Tensor>,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
    int8: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>, Option<(Tensor, Tensor)>)> {
    let (residual, weight) = (residual.contiguous()?, weight.contiguous()?);
    let x = x.map(|x| x.contiguous()).transpose()?;
    let (rows, hidden) = residual.dims2()?;
    let x_fits = x.as_ref().is_none_or(|x| x.dims() == [rows, hidden] && x.dtype() == weight.dtype());
    if !x_fits || weight.dims() != [hidden] || residual.dtype() != DType::F32 {
        candle_core::bail!(
            "add_rms_norm_f32_residual: x {:?}, residual {:?} {:?}, weight {:?} {:?}",
            x.as_ref().map(|x| (x.dims().to_vec(), x.dtype())),
            residual.dims(),
            residual.dtype(),
            weight.dims(),
            weight.dtype()
        );
    }
    let x_guard = x.as_ref().map(|x| x.storage_and_layout());
    let guards = [&residual, &weight].map(|t| t.storage_and_layout());
    let cuda = |i: usize| cuda_operand(&guards[i].0, guards[i].1, "add_rms_norm_f32_residual");
    let x_operand = x_guard.as_ref().map(|(s, l)| cuda_operand(s, l, "add_rms_norm_f32_residual")).transpose()?;
    if int8 && !hidden.is_multiple_of(256) {
        candle_core::bail!("add_rms_norm_f32_residual: int8 rows need a width of whole 256-value blocks, got {hidden}");
    }
    let (normed, sum, int8) =
        with_dtype!(weight.dtype(), T, launch_f32_stream_norm::<T>(eps, x_operand, cuda(0)?, cuda(1)?, rows, hidden, int8)?);
    let wrap = |storage, shape: &[usize]| Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false);
    let int8 = int8.map(|(values, scales)| (wrap(values, &[rows, hidden]), wrap(scales, &[rows, hidden / 16])));
    Ok((wrap(normed, &[rows, hidden]), sum.map(|sum| wrap(sum, &[rows, hidden])), int8))
}

/// A norm launch's outputs: the normed rows, the sum (the adding kernel), the int8 values and
/// scales (when asked for).
type NormStorages = (CudaStorage, Option<CudaStorage>, Option<(CudaStorage, CudaStorage)>);

fn launch_f32_stream_norm<T: CudaDType + DeviceRepr>(
    eps: f32,
    x: Option<Operand>,
    r: Operand,
    w: Operand,
    rows: usize,
    hidden: usize,
    int8: bool,
) -> candle_core::Result<NormStorages> {
    let chunks = hidden / 8;
    if w.0.dtype() == DType::F32 || !hidden.is_multiple_of(8) || chunks > NORM_CHUNKS * 1024 || rows == 0 {
        candle_core::bail!("add_rms_norm_f32_residual: {rows} rows of {hidden} {:?}", w.0.dtype());
    }
    if x.iter().chain([&w, &r]).any(|o| !o.1.start_offset().is_multiple_of(8)) {
        candle_core::bail!("add_rms_norm_f32_residual: operands must start on 16-byte boundaries");
    }
    let dev = r.0.device().clone();
    let rv = contiguous_view::<f32>(r.0, r.1, "add_rms_norm_f32_residual: residual")?;
    let wv = contiguous_view::<T>(w.0, w.1, "add_rms_norm_f32_residual: weight")?;
    // SAFETY: the kernel writes every element of normed (and of sum, when it adds).
    let normed = unsafe { dev.alloc::<T>(rows * hidden)? };
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads_for(chunks), 1, 1), shared_mem_bytes: 0 };
    let hidden_u32 = hidden as u32;
    let dtype = suffix(w.0.dtype())?;
    // SAFETY: with int8, the kernel writes every value (rows x hidden) and scale pair (rows x
    // hidden / 32).
    let int8 = if int8 { Some(unsafe { (dev.alloc::<u8>(rows * hidden)?, dev.alloc::<f32>(rows * hidden / 16)?) }) } else { None };
    let null = 0u64;
    let sum = match x {
        Some(x) => {
            let xv = contiguous_view::<T>(x.0, x.1, "add_rms_norm_f32_residual: x")?;
            let sum = unsafe { dev.alloc::<f32>(rows * hidden)? };
            let func = MODULE.function(r.0, &format!("add_rms_norm_f32_residual_{dtype}"))?;
            let mut b = func.builder();
            b.arg(&normed).arg(&sum).arg(&xv).arg(&rv).arg(&wv).arg(&hidden_u32).arg(&eps);
            push_int8(&mut b, &int8, &null);
            // SAFETY: argument order and types match `add_rms_norm_f32_residual_*`; every view
            // covers rows x hidden (weight: hidden) from a 16-byte boundary; the threads cover
            // every chunk; the int8 outputs (or nulls) as allocated above.
            unsafe { b.launch(cfg) }.w()?;
            Some(CudaStorage::wrap_cuda_slice(sum, dev.clone()))
        }
        None => {
            let func = MODULE.function(r.0, &format!("rms_norm_f32_stream_{dtype}"))?;
            let mut b = func.builder();
            b.arg(&normed).arg(&rv).arg(&wv).arg(&hidden_u32).arg(&eps);
            push_int8(&mut b, &int8, &null);
            // SAFETY: as above, for `rms_norm_f32_stream_*` (no x, no sum).
            unsafe { b.launch(cfg) }.w()?;
            None
        }
    };
    let int8 = int8.map(|(values, scales)| (CudaStorage::wrap_cuda_slice(values, dev.clone()), CudaStorage::wrap_cuda_slice(scales, dev.clone())));
    Ok((CudaStorage::wrap_cuda_slice(normed, dev), sum, int8))
}

/// The norm kernels' last two arguments: the int8 outputs, or two null pointers.
fn push_int8<'a>(b: &mut LaunchArgs<'a>, int8: &'a Option<(CudaSlice<u8>, CudaSlice<f32>)>, null: &'a u64) {
    match int8 {
        Some((values, scales)) => b.arg(values).arg(scales),
        None => b.arg(null).arg(null),
    };
}

// ---- rope_write_kv -----------------------------------------------------------------------

struct RopeWriteKv<'a> {
    rope: &'a RopeKvInputs<'a>,
    k_cache: &'a Tensor,
    v_cache: &'a Tensor,
}

impl CustomOp3 for RopeWriteKv<'_> {
    fn name(&self) -> &'static str {
        "rope-write-kv"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        k: &CudaStorage,
        k_l: &Layout,
        v: &CudaStorage,
        v_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        with_dtype!(q.dtype(), T, self.launch::<T>((q, q_l), (k, k_l), (v, v_l)))
    }
}

impl RopeWriteKv<'_> {
    fn launch<T: CudaDType + DeviceRepr>(&self, q: Operand, k: Operand, v: Operand) -> candle_core::Result<(CudaStorage, Shape)> {
        let (tokens, num_heads, head_dim) = q.1.shape().dims3()?;
        let (_, num_kv_heads, _) = k.1.shape().dims3()?;
        let (_, _, cache_kv_heads, cache_head_dim) = self.k_cache.dims4()?;
        let half = head_dim / 2;
        if k.1.shape().dims() != [tokens, num_kv_heads, head_dim]
            || v.1.shape() != k.1.shape()
            || self.v_cache.dims() != self.k_cache.dims()
            || (cache_kv_heads, cache_head_dim) != (num_kv_heads, head_dim)
            || head_dim % 2 != 0
            || self.rope.cos.dim(1)? != half
            || self.rope.sin.dims() != self.rope.cos.dims()
            || self.rope.positions.dims() != [tokens]
            || self.rope.slot_mapping.dims() != [tokens]
        {
            candle_core::bail!(
                "rope_write_kv: q {:?}, k {:?}, v {:?}, pool {:?}, cos {:?}, positions {:?}, slots {:?} do not fit",
                q.1.shape(),
                k.1.shape(),
                v.1.shape(),
                self.k_cache.dims(),
                self.rope.cos.dims(),
                self.rope.positions.dims(),
                self.rope.slot_mapping.dims()
            );
        }
        let dev = q.0.device().clone();
        let qv = contiguous_view::<T>(q.0, q.1, "rope_write_kv: q")?;
        let kv = contiguous_view::<T>(k.0, k.1, "rope_write_kv: k")?;
        let vv = contiguous_view::<T>(v.0, v.1, "rope_write_kv: v")?;
        let guards = [self.k_cache, self.v_cache, self.rope.cos, self.rope.sin, self.rope.positions, self.rope.slot_mapping]
            .map(|t| t.storage_and_layout());
        let cuda = |i: usize| cuda_operand(&guards[i].0, guards[i].1, "rope_write_kv");
        let k_cache = contiguous_view::<T>(cuda(0)?.0, cuda(0)?.1, "rope_write_kv: k_cache")?;
        let v_cache = contiguous_view::<T>(cuda(1)?.0, cuda(1)?.1, "rope_write_kv: v_cache")?;
        let cos = contiguous_view::<f32>(cuda(2)?.0, cuda(2)?.1, "rope_write_kv: cos")?;
        let sin = contiguous_view::<f32>(cuda(3)?.0, cuda(3)?.1, "rope_write_kv: sin")?;
        let positions = contiguous_view::<u32>(cuda(4)?.0, cuda(4)?.1, "rope_write_kv: positions")?;
        let slots = contiguous_view::<u32>(cuda(5)?.0, cuda(5)?.1, "rope_write_kv: slots")?;
        // SAFETY: the kernel writes every element of q_out.
        let q_out = unsafe { dev.alloc::<T>((tokens * num_heads * head_dim).max(1))? };
        if tokens > 0 {
            let func = MODULE.function(q.0, &format!("rope_write_kv_{}", suffix(q.0.dtype())?))?;
            // One block per (token, head): a lone generation token still spreads over the GPU.
            let heads = (num_heads + num_kv_heads) as u32;
            let cfg = LaunchConfig { grid_dim: (tokens as u32, heads, 1), block_dim: (threads_for(half), 1, 1), shared_mem_bytes: 0 };
            let mut b = func.builder();
            b.arg(&q_out).arg(&k_cache).arg(&v_cache).arg(&qv).arg(&kv).arg(&vv);
            b.arg(&cos).arg(&sin).arg(&positions).arg(&slots);
            let dims = [num_heads as u32, num_kv_heads as u32, head_dim as u32];
            b.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
            // SAFETY: argument order and types match `rope_write_kv_*`; shapes were checked
            // above; slots index the pool (built from block tables the attention op validates).
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(q_out, dev), Shape::from((tokens, num_heads, head_dim))))
    }
}

pub fn rope_write_kv(q: &Tensor, k: &Tensor, v: &Tensor, rope: &RopeKvInputs, k_cache: &Tensor, v_cache: &Tensor) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(q.apply_op3_no_bwd(&k, &v, &RopeWriteKv { rope, k_cache, v_cache })?)
}

// ---- gated_act ---------------------------------------------------------------------------

struct GatedAct {
    act: GatedActivation,
}

/// Rows of a `[rows, width]` operand with unit inner stride: (view from its first element,
/// row stride).
fn strided_rows<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> candle_core::Result<(candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>, usize)> {
    let (rows, width) = l.shape().dims2()?;
    let stride = l.stride();
    if width > 1 && stride[1] != 1 {
        candle_core::bail!("gated_act: {what} rows must be contiguous");
    }
    let row_stride = if rows > 1 { stride[0] } else { width };
    let len = if rows == 0 { 0 } else { (rows - 1) * row_stride + width };
    let start = l.start_offset();
    Ok((s.as_cuda_slice::<T>()?.slice(start..start + len), row_stride))
}

impl CustomOp2 for GatedAct {
    fn name(&self) -> &'static str {
        "gated-act"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_unsupported(self.name())
    }

    fn cuda_fwd(&self, g: &CudaStorage, g_l: &Layout, u: &CudaStorage, u_l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        if g_l.shape() != u_l.shape() {
            candle_core::bail!("gated_act: gate {:?} and up {:?} differ", g_l.shape(), u_l.shape());
        }
        with_dtype!(g.dtype(), T, self.launch::<T>((g, g_l), (u, u_l)))
    }
}

impl GatedAct {
    fn launch<T: CudaDType + DeviceRepr>(&self, g: Operand, u: Operand) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, width) = g.1.shape().dims2()?;
        let dev = g.0.device().clone();
        let (gv, g_stride) = strided_rows::<T>(g.0, g.1, "gate")?;
        let (uv, u_stride) = strided_rows::<T>(u.0, u.1, "up")?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>((rows * width).max(1))? };
        if rows > 0 && width > 0 {
            let func = MODULE.function(g.0, &format!("gated_act_{}", suffix(g.0.dtype())?))?;
            let blocks_per_row = width.div_ceil(256).min(64) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks_per_row, rows as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let args = [width as u32, g_stride as u32, u_stride as u32, self.act as u32];
            let mut b = func.builder();
            b.arg(&out).arg(&gv).arg(&uv);
            b.arg(&args[0]).arg(&args[1]).arg(&args[2]).arg(&args[3]);
            // SAFETY: argument order and types match `gated_act_*`; views cover every row.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((rows, width))))
    }
}

pub fn gated_act(gate: &Tensor, up: &Tensor, act: GatedActivation) -> Result<Tensor> {
    Ok(gate.apply_op2_no_bwd(up, &GatedAct { act })?)
}
