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

/// The binding both rotating launches' GPU tests share (`quant_matvec` and `dense_matvec`).
#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::fused::{self, QkvRope, RopeKvInputs};
    use crate::relative_diff;

    /// Q/K/V of `heads` and `kv_heads` heads of 64 over a width of 512, as a launch takes them.
    pub(crate) struct Shape {
        pub hidden: usize,
        pub head_dim: usize,
        pub heads: usize,
        pub kv_heads: usize,
    }

    pub(crate) const SHAPE: Shape = Shape { hidden: 512, head_dim: 64, heads: 4, kv_heads: 2 };
    const MAX_POSITIONS: usize = 64;

    /// For BF16 and F16 and 1, 2, 3 and 8 rows: `launch(x, target)` (rotated q) equals
    /// `products(x)` (q, k, v) then `rope_write_kv` bit for bit, q and both pools, and writes
    /// the pools; `supported(x, target)` holds. Then a target it cannot rotate (heads 12 wide, a
    /// pool of another dtype) is declined, and a pool of the wrong shape is refused.
    pub(crate) fn check_rotating_launch(
        device: &Device,
        supported: impl Fn(&Tensor, &QkvRope) -> bool,
        launch: impl Fn(&Tensor, &QkvRope) -> crate::Result<Tensor>,
        products: impl Fn(&Tensor) -> [Tensor; 3],
    ) {
        let Shape { hidden, head_dim, heads, kv_heads } = SHAPE;
        let cos = Tensor::randn(0f32, 1.0, (MAX_POSITIONS, head_dim / 2), device).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (MAX_POSITIONS, head_dim / 2), device).unwrap();
        let indices = |rows: u32, f: &dyn Fn(u32) -> u32| Tensor::new((0..rows).map(f).collect::<Vec<u32>>(), device).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            for rows in [1, 2, 3, 8] {
                let what = format!("{dtype:?} rows {rows}");
                let x = Tensor::randn(0f32, 1.0, (rows, hidden), device).unwrap().to_dtype(dtype).unwrap();
                let positions = indices(rows as u32, &|r| (7 * r + 3) % MAX_POSITIONS as u32);
                let slots = indices(rows as u32, &|r| 5 * r + 1);
                let rope = RopeKvInputs { cos: &cos, sin: &sin, positions: &positions, slot_mapping: &slots };
                let pool = || Tensor::zeros((4, 16, kv_heads, head_dim), dtype, device).unwrap();
                let (k_fused, v_fused, k_apart, v_apart) = (pool(), pool(), pool(), pool());

                let target = QkvRope { rope: &rope, k_cache: &k_fused, v_cache: &v_fused, head_dim };
                assert!(supported(&x, &target), "{what}");
                let fused_q = launch(&x, &target).unwrap();
                let [gq, gk, gv] = products(&x);
                let heads_of = |t: &Tensor, n: usize| t.reshape((rows, n, head_dim)).unwrap();
                let apart_q = fused::rope_write_kv(&heads_of(&gq, heads), &heads_of(&gk, kv_heads), &heads_of(&gv, kv_heads), &rope, &k_apart, &v_apart).unwrap();
                assert_eq!(fused_q.dims(), [rows, heads, head_dim]);
                assert_eq!(relative_diff(&fused_q, &apart_q), 0.0, "{what}: rotated q");
                assert_eq!(relative_diff(&k_fused, &k_apart), 0.0, "{what}: k in the pool");
                assert_eq!(relative_diff(&v_fused, &v_apart), 0.0, "{what}: v in the pool");
                let written = |t: &Tensor| t.abs().unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
                assert!(written(&k_fused) > 0.0 && written(&v_fused) > 0.0, "{what}: k and v written");
            }
        }
        let x = Tensor::randn(0f32, 1.0, (1, hidden), device).unwrap().to_dtype(DType::BF16).unwrap();
        let (positions, slots) = (indices(1, &|_| 0), indices(1, &|_| 0));
        let rope = RopeKvInputs { cos: &cos, sin: &sin, positions: &positions, slot_mapping: &slots };
        let pool = |dtype, width| Tensor::zeros((4, 16, kv_heads, width), dtype, device).unwrap();
        let (bf16_pool, f32_pool, narrow_pool) = (pool(DType::BF16, head_dim), pool(DType::F32, head_dim), pool(DType::BF16, head_dim / 2));
        let target = |pool: &Tensor, head_dim| supported(&x, &QkvRope { rope: &rope, k_cache: pool, v_cache: pool, head_dim });
        assert!(!target(&bf16_pool, 12), "heads of a width that is not a multiple of 8");
        assert!(!target(&f32_pool, head_dim), "a pool of another dtype");
        let wrong = QkvRope { rope: &rope, k_cache: &narrow_pool, v_cache: &narrow_pool, head_dim };
        let err = launch(&x, &wrong).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
