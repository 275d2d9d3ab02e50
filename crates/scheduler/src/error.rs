//! The one error type of `hearth-scheduler`.
//!
//! Owns: every failure the scheduler's bookkeeping can report. Does not own: recovery policy
//! (preemption on `OutOfBlocks` is the caller's decision). Messages name the offending value.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedulerError {
    /// Not enough free blocks; nothing was allocated by the failing call.
    #[error("out of KV-cache blocks: {num_requested} requested, {num_free} free")]
    OutOfBlocks {
        num_requested: usize,
        num_free: usize,
    },

    /// A block id that this pool never handed out (e.g. from another pool).
    #[error("unknown block {block_idx}: the pool has {num_total} blocks")]
    UnknownBlock { block_idx: u32, num_total: usize },

    /// Freeing a block whose reference count is already zero.
    #[error("block {block_idx} freed while already free (double free)")]
    DoubleFree { block_idx: u32 },

    /// Reference count would overflow `u32`.
    #[error("block {block_idx} reference count overflow")]
    RefCountOverflow { block_idx: u32 },

    #[error("block_size must be at least 1, got {block_size}")]
    InvalidBlockSize { block_size: usize },

    /// Block ids are `u32`; a pool cannot hold more blocks than that.
    #[error("a block pool holds at most {max} blocks, got {num_blocks}")]
    TooManyBlocks { num_blocks: usize, max: usize },

    /// `num_tokens` needs more blocks, or a larger slot index, than `usize` can hold.
    #[error("capacity for {num_tokens} tokens overflows the slot index range")]
    CapacityOverflow { num_tokens: usize },
}
