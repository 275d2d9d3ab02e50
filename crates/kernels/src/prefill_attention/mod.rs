//! Prefill attention: the CUDA kernel for steps with prompt rows — the same operation as
//! [`paged_attention`] (same inputs, same layout, same output), computed FlashAttention-style so
//! K/V is read from global memory once per tile of query rows instead of once per (row, head).
//!
//! Owns: [`prefill_attention`] (the op and its fallback), [`supported`] (when the tiled kernel
//! runs), the kernel (`prefill_attention.cu`) and its launch (`cuda.rs`).
//! Does not own: the attention layout, its validation and metadata (`crate::paged_attention`:
//! [`AttentionLayout`], [`kernel_metadata`](crate::paged_attention::kernel_metadata)), the reference twin
//! ([`crate::paged_attention_reference`]), the generation path ([`paged_attention`]), choosing
//! between the two per step (the caller: `models/src/attention.rs`).
//!
//! # Contract
//! - [`prefill_attention`]`(q, k_cache, v_cache, layout)` has exactly [`paged_attention`]'s
//!   contract: q `[num_rows, num_heads, head_dim]`, pools `[num_blocks, block_size,
//!   num_kv_heads, head_dim]`, causal within each sequence (a row at absolute position `p` sees
//!   positions `max(0, p - window + 1)..=p`), output `[num_rows, num_heads, head_dim]` in q's
//!   dtype; the same validation errors. Any batch is correct: prompt rows, chunks after cached
//!   tokens, and single-token generation rows mixed in one step.
//! - When [`supported`] is false (CPU tensors, head_dim not 64/128/256, or no sequence with more
//!   than one query row) or the pool's dtype is not F32/BF16/F16, it *is* [`paged_attention`].
//! - It uses `layout.device_metadata` when present (same format as paged attention's), else
//!   uploads [`kernel_metadata`](crate::paged_attention::kernel_metadata) once per call. The launch shape depends only on the tensor
//!   shapes, so the op could be recorded in a CUDA graph like paged attention; but the choice in
//!   [`supported`] looks at the step's sequences, so a graph-replayed step must keep calling
//!   [`paged_attention`] (generation steps do: they have no prompt rows).
//! - Efficiency: the kernel is built for prompt rows. Generation rows in a mixed step are
//!   correct but each takes a whole segment of a block (see below), so a step made mostly of
//!   generation rows is faster with [`paged_attention`]; [`supported`] only requires one prompt
//!   row, the caller may apply a stricter rule.
//!
//! # Kernel (`prefill_attention.cu`)
//! Grid `(ceil(num_rows * group / NQV), num_kv_heads)`, 128 threads (4 warps), `group =
//! num_heads / num_kv_heads`. A block owns NQV = 4096 / head_dim *query vectors* (64, 32, 16 for
//! head_dim 64, 128, 256): consecutive (row, query head of its kv head) pairs of the flattened
//! batch, i.e. `NQV / group` rows × all heads of the GQA group (Llama 8B, head_dim 128, 32/8
//! heads: 8 rows × 4 heads). Each K/V tile of BK = 32 positions is loaded into shared memory
//! once (through the block table) and used by all NQV vectors. The block walks its rows in
//! segments of one sequence and, per segment, only the positions some row of the segment sees
//! (`first_visible(first row) ..= last row's position`), so fully masked tiles (causal, window)
//! are never loaded. Scores: lane = position, each warp scores its NQV/4 vectors against the
//! scaled queries in shared memory (float4 reads, 16 B per lane per 4 dims); online softmax per
//! vector with warp shuffles (F32 running max/sum); P through shared memory; lane owns output
//! dims `lane + 32 i` (F32 registers). K and V pass through shared memory in chunks of 64 dims
//! so head_dim 256 fits the same budget.
//!
//! Why these sizes: shared memory is Q (NQV × head_dim F32 = 16 KiB for every head_dim) + a K
//! chunk (32 × 68 F32, padded rows: conflict-free 16-byte reads) + a V chunk (32 × 64) + P (NQV
//! × 32) ≤ 41.5 KiB, under the 48 KiB static limit (no opt-in attribute) and leaving room for
//! several blocks per SM. The per-lane accumulators are NQV/4 × head_dim/32 = 32 F32 registers
//! for every head_dim. NQV = 4096 / head_dim keeps both constant; 4 query vectors per warp or
//! more gives 4+ FMAs per shared-memory read in both products. F32 SIMT math (no tensor cores):
//! the point is removing the per-row, per-head re-reads of K/V that dominate the one-block-per-
//! (row, head) kernel (GQA 4:1 reads K/V 4 × num_rows times; here `num_rows / 8` times, from
//! L2 mostly).
//!
//! Invariants: every valid query vector sees at least its own position, so its running sum is
//! positive at the end; pairs past the last row load zero queries and write nothing; pool
//! indexing is 64-bit. The kernel trusts the metadata, which [`AttentionLayout::validate`]
//! checked.
//!
//! Tests: `tests.rs` (CPU: fallback, `supported`; GPU: the CUDA kernel against
//! [`crate::paged_attention_reference`], skipped without a GPU unless `HEARTH_REQUIRE_GPU=1`;
//! NVRTC compile check that needs no GPU).

#[cfg(feature = "cuda")]
pub mod cuda;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::paged_attention::{check_shapes, paged_attention, AttentionLayout};
use crate::Result;

/// CUDA C source of the kernel (compiled by NVRTC at run time; kept buildable without the
/// `cuda` feature so a CPU-only test can check that it compiles).
pub const CUDA_SOURCE: &str = concat!(include_str!("../dtypes.cuh"), include_str!("prefill_attention.cu"));

/// Head dims the tiled kernel is instantiated for.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// Query vectors ((row, head) pairs) per thread block for `head_dim` (`NQV` in the .cu).
pub const fn vectors_per_block(head_dim: usize) -> usize {
    4096 / head_dim
}

/// Whether [`prefill_attention`] runs the tiled CUDA kernel for `q` and `layout` (otherwise it
/// calls [`paged_attention`]): `q` is on a CUDA device, its head_dim is 64, 128 or 256, and
/// some sequence has more than one query row (a prompt or prompt chunk). It does not look at
/// the pool: a pool dtype other than F32/BF16/F16 also falls back.
pub fn supported(q: &Tensor, layout: &AttentionLayout) -> bool {
    let Ok((_, _, head_dim)) = q.dims3() else { return false };
    q.device().is_cuda()
        && HEAD_DIMS.contains(&head_dim)
        && layout.sequences.iter().any(|s| s.num_query_tokens > 1)
}

/// Attention of `q` `[num_tokens, num_heads, head_dim]` over the paged pool `k_cache`/`v_cache`
/// `[num_blocks, block_size, num_kv_heads, head_dim]`; causal within each sequence. Returns
/// `[num_tokens, num_heads, head_dim]` in q's dtype. Same contract and result as
/// [`paged_attention`] (up to F32 rounding); the tiled kernel when [`supported`], else
/// [`paged_attention`] itself. See the module doc.
pub fn prefill_attention(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, layout: &AttentionLayout) -> Result<Tensor> {
    if !supported(q, layout) || !matches!(k_cache.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return paged_attention(q, k_cache, v_cache, layout);
    }
    check_shapes(q, k_cache, v_cache, layout)?;
    let op = PrefillAttentionOp { layout: layout.clone() };
    // The kernel reads q in the pool's dtype.
    let q_pool = q.to_dtype(k_cache.dtype())?;
    Ok(q_pool.apply_op3_no_bwd(k_cache, v_cache, &op)?.to_dtype(q.dtype())?)
}

/// The custom op (CUDA body only; the CPU never reaches it).
struct PrefillAttentionOp {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    layout: AttentionLayout,
}

impl CustomOp3 for PrefillAttentionOp {
    fn name(&self) -> &'static str {
        "prefill-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("prefill attention has only a CUDA body; on the CPU use paged_attention")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q_storage: &candle_core::CudaStorage,
        q_layout: &Layout,
        k_storage: &candle_core::CudaStorage,
        k_layout: &Layout,
        v_storage: &candle_core::CudaStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let inputs = cuda::Inputs {
            q: (q_storage, q_layout),
            k_cache: (k_storage, k_layout),
            v_cache: (v_storage, v_layout),
        };
        cuda::forward(&self.layout, inputs)
    }
}


#[cfg(test)]
mod tests;
