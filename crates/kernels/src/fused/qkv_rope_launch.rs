//! The host side of the Q/K/V launches that rotate and write the pool in their epilogue
//! (`qkv_rope.cuh`; `quant_matvec_qkv_rope`, `dense_matvec_qkv_rope`): the kernel's argument and
//! the checked views of the pool, tables, positions and slots.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaStream, CudaView, DevicePtr, DeviceRepr, SyncOnDrop};
use candle_core::cuda_backend::CudaDType;
use candle_core::{Layout, Storage, Tensor};

use super::QkvRope;
use crate::nvrtc::{contiguous_view, cuda_operand};

/// A grouped kernel's rotation argument (`RopeKv` in qkv_rope.cuh), passed by value; `head_dim` 0:
/// none.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct RopeKvArgs {
    q_out: u64,
    k_cache: u64,
    v_cache: u64,
    cos: u64,
    sin: u64,
    positions: u64,
    slots: u64,
    head_dim: u32,
    num_kv_heads: u32,
}

// SAFETY: plain old data with the C layout of `RopeKv`.
unsafe impl DeviceRepr for RopeKvArgs {}

impl RopeKvArgs {
    /// The argument of a launch that rotates into `rope`: q's rows go to `q_out`, k's and v's
    /// (`kv_height` rows each, whole heads) to the pool; `ptrs` from [`RopeViews::pointers`].
    pub(crate) fn new(rope: &QkvRope, ptrs: &[u64; 6], q_out: u64, kv_height: usize) -> Self {
        let [k_cache, v_cache, cos, sin, positions, slots] = *ptrs;
        let (head_dim, num_kv_heads) = (rope.head_dim as u32, (kv_height / rope.head_dim) as u32);
        Self { q_out, k_cache, v_cache, cos, sin, positions, slots, head_dim, num_kv_heads }
    }
}


impl QkvRope<'_> {
    /// The tensors a rotating launch reads and writes: k_cache, v_cache, cos, sin, positions,
    /// slots.
    pub(crate) fn tensors(&self) -> [&Tensor; 6] {
        [self.k_cache, self.v_cache, self.rope.cos, self.rope.sin, self.rope.positions, self.rope.slot_mapping]
    }
}

/// The rotating launch's operands as views: k_cache, v_cache; cos, sin; positions, slots.
pub(crate) struct RopeViews<'a, T> {
    caches: [CudaView<'a, T>; 2],
    tables: [CudaView<'a, f32>; 2],
    indices: [CudaView<'a, u32>; 2],
}

impl<T> RopeViews<'_, T> {
    /// Device pointers of k_cache, v_cache, cos, sin, positions, slots, and the guards that
    /// order their use on `stream`.
    pub(crate) fn pointers<'s>(&'s self, stream: &'s Arc<CudaStream>) -> ([u64; 6], Vec<SyncOnDrop<'s>>) {
        let ([k, v], [cos, sin], [positions, slots]) = (&self.caches, &self.tables, &self.indices);
        let pairs = [
            k.device_ptr(stream),
            v.device_ptr(stream),
            cos.device_ptr(stream),
            sin.device_ptr(stream),
            positions.device_ptr(stream),
            slots.device_ptr(stream),
        ];
        let ptrs = pairs.each_ref().map(|(ptr, _)| *ptr);
        (ptrs, pairs.into_iter().map(|(_, guard)| guard).collect())
    }
}

/// The views of a rotating Q/K/V launch, checked: Q, K, V heights `heights` of whole heads
/// (K's and V's the pool's kv heads), `rows` positions and slots, tables of `head_dim / 2`
/// F32 columns, a pool of `T`.
pub(crate) fn rope_views<'a, T: CudaDType, G: std::ops::Deref<Target = Storage>>(
    guards: &'a [(G, &'a Layout); 6],
    heights: &[usize],
    rows: usize,
    head_dim: usize,
) -> candle_core::Result<RopeViews<'a, T>> {
    let op = |i: usize| cuda_operand(&guards[i].0, guards[i].1, "qkv_rope");
    let pool = op(0)?.1.shape().dims4()?;
    let (kv_heads, pool_head_dim) = (pool.2, pool.3);
    let fits = heights.len() == 3
        && head_dim.is_multiple_of(8)
        && pool_head_dim == head_dim
        && heights[0].is_multiple_of(head_dim)
        && heights[1] == kv_heads * head_dim
        && heights[2] == heights[1]
        && op(1)?.1.shape().dims4()? == pool
        && op(2)?.1.shape().dims2()?.1 == head_dim / 2
        && op(3)?.1.shape() == op(2)?.1.shape()
        && op(4)?.1.shape().dims() == [rows]
        && op(5)?.1.shape().dims() == [rows];
    if !fits {
        candle_core::bail!(
            "qkv_rope: heights {heights:?}, head_dim {head_dim}, pool {pool:?}, tables {:?}, positions {:?}, slots {:?} do not fit",
            op(2)?.1.shape(),
            op(4)?.1.shape(),
            op(5)?.1.shape()
        );
    }
    let view = |i: usize| op(i).and_then(|(s, l)| contiguous_view::<T>(s, l, "qkv_rope: pool"));
    let table = |i: usize| op(i).and_then(|(s, l)| contiguous_view::<f32>(s, l, "qkv_rope: cos/sin"));
    let index = |i: usize| op(i).and_then(|(s, l)| contiguous_view::<u32>(s, l, "qkv_rope: positions/slots"));
    Ok(RopeViews { caches: [view(0)?, view(1)?], tables: [table(2)?, table(3)?], indices: [index(4)?, index(5)?] })
}
