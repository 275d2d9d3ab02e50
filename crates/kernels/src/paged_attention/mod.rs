//! Paged attention: queries of many sequences (flattened, varlen) attend to K/V stored in a pool
//! of fixed-size blocks, reached through each sequence's block table.
//!
//! Layout of the KV pool for one layer: `[num_blocks, block_size, num_kv_heads, head_dim]`.
//! A *slot* is `block_id * block_size + offset_in_block`; token at position `p` of a sequence
//! lives in slot `block_table[p / block_size] * block_size + p % block_size`.
//!
//! Invariants (checked by [`AttentionLayout::validate`]):
//! - sequences are contiguous, in order, and cover every query row exactly once;
//! - `num_query_tokens <= context_len` for every sequence (queries are the last tokens);
//! - every block a sequence reaches is listed in its block table and inside the pool.
//!
//! The fast path is [`paged_attention`], one custom op with a CPU body (`cpu.rs`: parallel over
//! rows and heads, online softmax, no gather; F32) and, with the `cuda` feature, a CUDA body
//! (`cuda.rs` + `paged_attention.cu`, compiled by NVRTC at run time; F32/BF16/F16 with F32
//! accumulation). [`paged_attention_reference`] gathers each sequence's K/V with ordinary
//! tensor ops and runs textbook attention; tests bind the fast paths to it.
//!
//! The CUDA body has two paths (both in `paged_attention.cu`): one thread block per (row, head),
//! and, when that grid is too small for the GPU and rows are long (generation at small batch),
//! a split over the sequence (flash-decoding: partial softmax states per range of positions in
//! a scratch buffer, then a combine kernel). `split.rs` chooses the number of splits on the
//! host from data a recorded CUDA graph holds fixed (shapes, the metadata's table width, the SM
//! count), never from the step's context lengths; the kernel partitions each row's actual span,
//! so any split count gives the same result up to F32 rounding.
//!
//! Files: `mod.rs` (types, metadata, validation, the op), `cpu.rs`, `cuda.rs` (launches),
//! `split.rs` (split count), `reference.rs`, `paged_attention.cu`, tests in `tests.rs` (CPU)
//! and `cuda_tests.rs` / `split_tests.rs` (GPU, NVRTC).

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod reference;
pub mod split;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::{KernelError, Result};
pub use reference::paged_attention_reference;
use split::SplitChoice;

/// CUDA C source of the GPU kernel (compiled by NVRTC at run time; kept buildable without the
/// `cuda` feature so a CPU-only test can check that it compiles).
pub const CUDA_SOURCE: &str = concat!(include_str!("../dtypes.cuh"), include_str!("paged_attention.cu"));

/// One sequence's share of a flattened batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSpan {
    /// Index of the sequence's first query row in the flattened batch.
    pub query_start_idx: usize,
    /// Number of query rows (tokens computed this step) of the sequence.
    pub num_query_tokens: usize,
    /// Number of tokens in the KV cache after this step's writes (past + current).
    pub context_len: usize,
    /// Block ids holding the sequence's K/V, in position order.
    pub block_table: Vec<u32>,
}

/// Everything attention needs besides the tensors: the sequences and the attention shape.
#[derive(Debug, Clone)]
pub struct AttentionLayout {
    pub sequences: Vec<SequenceSpan>,
    pub block_size: usize,
    /// Multiplier applied to q·k (usually `head_dim^-0.5`).
    pub scale: f32,
    /// When set, a query at position `p` sees only positions `> p - sliding_window`.
    pub sliding_window: Option<usize>,
    /// [`kernel_metadata`] of `sequences`, already on the device (u32). A caller running many
    /// layers builds it once per step; when absent the CUDA path uploads it on every call.
    /// CUDA-graph replay needs it: a captured step must not copy from the host.
    pub device_metadata: Option<Tensor>,
}

/// The GPU kernel's view of `sequences` as one u32 array: `[row_pos (num_rows) | row_table
/// (num_rows) | block tables]` — each query row's absolute position, the offset of its
/// sequence's block table in the last section, then the tables. With `table_width`, each
/// sequence's table takes exactly that many entries (padded with 0, never read), so the array
/// has the same length for every step of a given batch size (CUDA graphs); otherwise each
/// table is cut to the blocks its context reaches.
pub fn kernel_metadata(sequences: &[SequenceSpan], block_size: usize, table_width: Option<usize>) -> Vec<u32> {
    let mut row_pos = Vec::new();
    let mut row_table = Vec::new();
    let mut tables = Vec::new();
    for seq in sequences {
        let table_start = tables.len() as u32;
        let used = seq.context_len.div_ceil(block_size).min(seq.block_table.len());
        tables.extend_from_slice(&seq.block_table[..used]);
        if let Some(width) = table_width {
            tables.resize(table_start as usize + width.max(used), 0);
        }
        let first_pos = seq.context_len - seq.num_query_tokens;
        row_pos.extend((0..seq.num_query_tokens).map(|i| (first_pos + i) as u32));
        row_table.extend(std::iter::repeat_n(table_start, seq.num_query_tokens));
    }
    let mut all = row_pos;
    all.extend(row_table);
    all.extend(tables);
    all.push(0); // never empty
    all
}

impl AttentionLayout {
    /// Total query rows described by the layout.
    pub fn num_query_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.num_query_tokens).sum()
    }

    /// Checks the layout against a pool of `num_blocks` blocks and `num_rows` query rows.
    pub fn validate(&self, num_rows: usize, num_blocks: usize) -> Result<()> {
        let bad = |msg: String| Err(KernelError::InvalidMetadata(msg));
        if self.block_size == 0 {
            return bad("block_size is 0".into());
        }
        let mut expected_start = 0;
        for (seq_idx, seq) in self.sequences.iter().enumerate() {
            if seq.query_start_idx != expected_start {
                return bad(format!(
                    "sequence {seq_idx} starts at row {} but row {expected_start} was expected",
                    seq.query_start_idx
                ));
            }
            if seq.num_query_tokens > seq.context_len {
                return bad(format!(
                    "sequence {seq_idx} has {} query tokens but a context of only {}",
                    seq.num_query_tokens, seq.context_len
                ));
            }
            let num_blocks_needed = seq.context_len.div_ceil(self.block_size);
            if seq.block_table.len() < num_blocks_needed {
                return bad(format!(
                    "sequence {seq_idx} needs {num_blocks_needed} blocks for {} tokens, block table has {}",
                    seq.context_len,
                    seq.block_table.len()
                ));
            }
            if let Some(&block) = seq.block_table[..num_blocks_needed]
                .iter()
                .find(|&&b| b as usize >= num_blocks)
            {
                return bad(format!(
                    "sequence {seq_idx} uses block {block} but the pool has {num_blocks}"
                ));
            }
            expected_start += seq.num_query_tokens;
        }
        if expected_start != num_rows {
            return bad(format!(
                "sequences cover {expected_start} query rows, the batch has {num_rows}"
            ));
        }
        Ok(())
    }

    /// Slot of `position` in sequence `seq`.
    pub(crate) fn slot(&self, seq: &SequenceSpan, position: usize) -> usize {
        seq.block_table[position / self.block_size] as usize * self.block_size
            + position % self.block_size
    }

    /// First position visible to a query at `position` (sliding window or 0).
    pub(crate) fn first_visible(&self, position: usize) -> usize {
        match self.sliding_window {
            Some(window) => (position + 1).saturating_sub(window),
            None => 0,
        }
    }
}

/// Attention of `q` `[num_tokens, num_heads, head_dim]` over the paged pool
/// `k_cache`/`v_cache` `[num_blocks, block_size, num_kv_heads, head_dim]`; causal within each
/// sequence. Returns `[num_tokens, num_heads, head_dim]`.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    layout: &AttentionLayout,
) -> Result<Tensor> {
    paged_attention_with(q, k_cache, v_cache, layout, SplitChoice::Auto)
}

/// [`paged_attention`] with the CUDA path's split over the sequence chosen by `splits` (tests
/// and benchmarks fix it; other devices ignore it).
pub fn paged_attention_with(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    layout: &AttentionLayout,
    splits: SplitChoice,
) -> Result<Tensor> {
    check_shapes(q, k_cache, v_cache, layout)?;
    let op = PagedAttentionOp { layout: layout.clone(), splits };
    if q.device().is_cpu() && q.dtype() == DType::F32 && k_cache.dtype() == DType::F32 {
        return Ok(q.apply_op3_no_bwd(k_cache, v_cache, &op)?);
    }
    if q.device().is_cuda() && matches!(k_cache.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        // The kernel reads q in the pool's dtype.
        let q_pool = q.to_dtype(k_cache.dtype())?;
        return Ok(q_pool.apply_op3_no_bwd(k_cache, v_cache, &op)?.to_dtype(q.dtype())?);
    }
    // Other devices and dtypes take the reference path until their kernels exist.
    paged_attention_reference(q, k_cache, v_cache, layout)
}

/// The custom op: CPU and CUDA bodies of one operation.
struct PagedAttentionOp {
    layout: AttentionLayout,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    splits: SplitChoice,
}

impl CustomOp3 for PagedAttentionOp {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu::forward(&self.layout, (q_storage, q_layout), (k_storage, k_layout), (v_storage, v_layout))
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
        cuda::forward(&self.layout, self.splits, inputs)
    }
}

/// Writes `k`, `v` `[num_tokens, num_kv_heads, head_dim]` into the pool at `slot_mapping`
/// `[num_tokens]` (u32), in place.
pub fn write_kv(
    k_cache: &Tensor,
    v_cache: &Tensor,
    k: &Tensor,
    v: &Tensor,
    slot_mapping: &Tensor,
) -> Result<()> {
    let (num_blocks, block_size, num_kv_heads, head_dim) = k_cache.dims4()?;
    let num_slots = num_blocks * block_size;
    let row = num_kv_heads * head_dim;
    let num_tokens = slot_mapping.dim(0)?;
    // [num_tokens, num_kv_heads * head_dim], one slot id repeated along each row.
    let index = slot_mapping
        .reshape((num_tokens, 1))?
        .broadcast_as((num_tokens, row))?
        .contiguous()?;
    for (cache, src) in [(k_cache, k), (v_cache, v)] {
        let src = src.reshape((num_tokens, row))?.to_dtype(cache.dtype())?.contiguous()?;
        // [num_slots, num_kv_heads * head_dim], a view sharing the pool's storage.
        cache.reshape((num_slots, row))?.scatter_set(&index, &src, 0)?;
    }
    Ok(())
}

/// The shape checks of both attention ops (q against the pool, GQA, the layout against both).
pub(crate) fn check_shapes(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, layout: &AttentionLayout) -> Result<()> {
    let (num_tokens, num_heads, head_dim) = q.dims3()?;
    let (num_blocks, block_size, num_kv_heads, kv_head_dim) = k_cache.dims4()?;
    if v_cache.dims() != k_cache.dims() {
        return Err(KernelError::InvalidMetadata(format!(
            "k_cache {:?} and v_cache {:?} differ",
            k_cache.dims(),
            v_cache.dims()
        )));
    }
    if kv_head_dim != head_dim || block_size != layout.block_size {
        return Err(KernelError::InvalidMetadata(format!(
            "q head_dim {head_dim} / block_size {} do not match the pool {:?}",
            layout.block_size,
            k_cache.dims()
        )));
    }
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(KernelError::InvalidMetadata(format!(
            "{num_heads} query heads cannot share {num_kv_heads} kv heads"
        )));
    }
    layout.validate(num_tokens, num_blocks)
}

#[cfg(test)]
mod tests;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
#[cfg(all(test, feature = "cuda"))]
mod split_tests;
