//! Sizing the KV pool from a memory budget: how many blocks fit, and how long a request can be.
//!
//! Owns: the arithmetic from (budget bytes, the model's KV bytes per token, block size) to a
//! pool shape. Does not own: finding the budget (the CLI reads free memory or `--kv-memory`).
//!
//! Invariant: `(num_blocks + 1) * block_size * bytes_per_token <= budget_bytes` (the pool
//! tensors carry one scratch block beyond the `num_blocks` sequences use), and the pool holds
//! at least one block.

use crate::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolPlan {
    pub block_size: usize,
    pub num_blocks: usize,
    pub bytes_per_token: u64,
}

impl KvPoolPlan {
    /// The largest pool of `block_size`-token blocks within `budget_bytes`.
    pub fn for_budget(budget_bytes: u64, bytes_per_token: u64, block_size: usize) -> Result<Self> {
        if bytes_per_token == 0 || block_size == 0 {
            return Err(EngineError::Invalid("KV bytes per token and block size must be positive".into()));
        }
        let bytes_per_block = bytes_per_token.saturating_mul(block_size as u64);
        // One block of the budget is the pool's scratch block (`PagedKvCache::scratch_block`).
        let num_blocks = usize::try_from((budget_bytes / bytes_per_block).saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize - 1);
        if num_blocks == 0 {
            return Err(EngineError::Invalid(format!(
                "a KV memory budget of {budget_bytes} bytes holds no block of {block_size} tokens ({bytes_per_block} bytes); raise --kv-memory"
            )));
        }
        Ok(Self { block_size, num_blocks, bytes_per_token })
    }

    pub fn num_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }

    pub fn num_bytes(&self) -> u64 {
        self.num_tokens() as u64 * self.bytes_per_token
    }

    /// The longest request (prompt + max_tokens) this pool and the model's context allow.
    pub fn max_request_len(&self, context_length: usize) -> usize {
        context_length.min(self.num_tokens())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_becomes_whole_blocks_within_the_budget() {
        let plan = KvPoolPlan::for_budget(10_000, 100, 16).unwrap();
        assert_eq!(plan.num_blocks, 5);
        assert_eq!(plan.num_tokens(), 80);
        assert!(plan.num_bytes() + 16 * 100 <= 10_000);
        assert_eq!(plan.max_request_len(8192), 80);
        assert_eq!(plan.max_request_len(50), 50);
    }

    #[test]
    fn budget_below_one_block_is_a_clear_error() {
        let err = KvPoolPlan::for_budget(1_000, 100, 16).unwrap_err().to_string();
        assert!(err.contains("raise --kv-memory"), "{err}");
    }
}
