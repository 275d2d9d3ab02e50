//! `SchedulerConfig`: the scheduler's fixed limits, and their validation.
//!
//! Owns: the numbers a scheduler is built with and the check that they are usable. Does not
//! own: how they are chosen (the engine sizes the pool from memory; the model gives
//! `max_model_len`).
//!
//! Invariants after `validate`: every field is at least 1, the pool fits `u32` block ids, and
//! every slot index (`num_blocks * block_size`) fits `usize`.

use crate::block_pool::BlockPool;
use crate::error::SchedulerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Token budget per step (sum of all scheduled requests' new tokens).
    pub max_num_batched_tokens: usize,
    /// Most requests running at once (and so per step).
    pub max_num_seqs: usize,
    /// Model context length: prompt + max_tokens must fit.
    pub max_model_len: usize,
}

impl SchedulerConfig {
    pub(crate) fn validate(&self) -> Result<(), SchedulerError> {
        let fields = [
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("max_model_len", self.max_model_len),
        ];
        if let Some(&(field, _)) = fields.iter().find(|(_, value)| *value == 0) {
            return Err(SchedulerError::ZeroConfigValue { field });
        }
        if self.num_blocks > BlockPool::MAX_NUM_BLOCKS {
            return Err(SchedulerError::TooManyBlocks {
                num_blocks: self.num_blocks,
                max: BlockPool::MAX_NUM_BLOCKS,
            });
        }
        if self.num_blocks.checked_mul(self.block_size).is_none() {
            return Err(SchedulerError::CapacityOverflow {
                num_tokens: usize::MAX,
            });
        }
        Ok(())
    }
}
