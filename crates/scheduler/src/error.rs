//! The one error type of `hearth-scheduler`.
//!
//! Owns: every failure the scheduler can report: pool bookkeeping, configuration, request
//! admission (`add_request`) and step results (`update`). Does not own: recovery policy
//! (the scheduler turns `OutOfBlocks` into preemption itself; other errors go to the caller).
//! Invariant: every message names the offending values (ids, counts, limits).

use thiserror::Error;

use crate::request::{RequestId, RequestStatus};

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

    /// A block already holds a different hash: registering would corrupt the prefix cache.
    #[error("block {block_idx} already holds a different block hash")]
    BlockHashConflict { block_idx: u32 },

    /// A `SchedulerConfig` field that must be at least 1 is 0.
    #[error("scheduler config: {field} must be at least 1, got 0")]
    ZeroConfigValue { field: &'static str },

    /// Bookkeeping found an id in a queue but not in the request set (a bug; reported by
    /// `check_invariants`).
    #[error("request {id} is queued but unknown")]
    UnknownRequest { id: RequestId },

    #[error("request {id}: the prompt is empty")]
    EmptyPrompt { id: RequestId },

    #[error("request {id}: max_tokens must be at least 1, got 0")]
    ZeroMaxTokens { id: RequestId },

    #[error("request {id} already exists (waiting or running)")]
    DuplicateRequest { id: RequestId },

    /// `num_prompt_tokens + max_tokens` exceeds the model's context length.
    #[error(
        "request {id}: {num_prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the \
         model context length {max_model_len}"
    )]
    ExceedsModelLen {
        id: RequestId,
        num_prompt_tokens: usize,
        max_tokens: usize,
        max_model_len: usize,
    },

    /// The request could not run even alone: its prompt plus max_tokens need more blocks than
    /// the pool has.
    #[error(
        "request {id}: {num_tokens} tokens (prompt + max_tokens) need {num_blocks_needed} \
         KV-cache blocks but the pool has only {num_blocks}"
    )]
    ExceedsPoolCapacity {
        id: RequestId,
        num_tokens: usize,
        num_blocks_needed: usize,
        num_blocks: usize,
    },

    /// `update` got a sampled token for a request the plan does not sample.
    #[error("sampled token for request {id}, which the plan does not sample")]
    UnexpectedSample { id: RequestId },

    #[error("request {id} has more than one sampled token in one step")]
    DuplicateSample { id: RequestId },

    #[error("request {id} is sampled by the plan but has no sampled token")]
    MissingSample { id: RequestId },

    /// A sample would make the request's `max_tokens`-th output (or a later one) without
    /// finishing it.
    #[error("request {id}: output {num_output_tokens} reached max_tokens {max_tokens} without finishing")]
    MaxTokensExceeded {
        id: RequestId,
        num_output_tokens: usize,
        max_tokens: usize,
    },

    /// The plan does not match the request's state (applied twice, or not from the latest
    /// `schedule`). Nothing was applied.
    #[error(
        "stale plan for request {id}: plan says {plan_num_computed_tokens} computed tokens, \
         the request has {num_computed_tokens} and is {status:?}"
    )]
    StalePlan {
        id: RequestId,
        plan_num_computed_tokens: usize,
        num_computed_tokens: usize,
        status: RequestStatus,
    },
}
