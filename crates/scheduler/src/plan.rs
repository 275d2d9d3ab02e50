//! What one step exchanges with the engine: the `StepPlan` the scheduler hands out, the
//! `SampledToken`s it gets back, and `SchedulerStats`.
//!
//! Owns: these plain data types and the plan's shape check. Does not own: how plans are built
//! (`scheduler`) or run (the engine's executor).
//!
//! Invariants of a plan from `Scheduler::schedule` (`StepPlan::check_budgets`):
//! `num_batched_tokens` is the sum of the entries' new tokens and at most
//! `max_num_batched_tokens`; at most `max_num_seqs` entries, each id once, each with at least
//! one new token and a block table covering `num_computed_tokens + new_token_ids.len()`.

use crate::block_pool::BlockId;
use crate::config::SchedulerConfig;
use crate::request::RequestId;

/// One step: which requests run, with which tokens and blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Requests to run this step: running ones (oldest first), then newly admitted ones.
    pub requests: Vec<ScheduledRequest>,
    /// Requests preempted while building this plan (they lost their blocks).
    pub preempted: Vec<RequestId>,
    /// Sum of `new_token_ids` lengths.
    pub num_batched_tokens: usize,
}

/// One request's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRequest {
    pub id: RequestId,
    /// Tokens already in the KV cache = position of the first new token.
    pub num_computed_tokens: usize,
    /// Tokens to compute this step (at least 1).
    pub new_token_ids: Vec<u32>,
    /// The request's blocks, covering `num_computed_tokens + new_token_ids.len()` positions.
    pub block_table: Vec<BlockId>,
    /// After this step all the request's tokens are computed, so the engine samples its next
    /// token (and must return exactly one `SampledToken` for it).
    pub samples: bool,
    /// Prefix-cache hit (tokens) when the request was first admitted; stable afterwards, also
    /// across preemption (for usage reporting).
    pub num_cached_prompt_tokens: usize,
}

/// The engine's result for one sampled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledToken {
    pub id: RequestId,
    pub token_id: u32,
    /// The request is done (stop token, stop string, or its `max_tokens`-th output); the
    /// token is not appended and the request's blocks are freed.
    pub finished: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub num_running: usize,
    /// Waiting + preempted.
    pub num_waiting: usize,
    /// Blocks with ref count >= 1 (cached-but-free blocks are not used).
    pub num_blocks_used: usize,
    pub num_blocks_total: usize,
    /// Blocks currently holding a registered hash (used or free).
    pub num_cached_blocks: usize,
    /// Prompt tokens looked up in the prefix cache at each request's first admission.
    pub num_prefix_query_tokens: u64,
    /// Of those, tokens found in the cache.
    pub num_prefix_hit_tokens: u64,
    pub num_preemptions: u64,
}

impl StepPlan {
    /// Checks this plan's shape against `config`; the error says what broke.
    pub fn check_budgets(&self, config: &SchedulerConfig) -> Result<(), String> {
        let num_new_tokens: usize = self.requests.iter().map(|r| r.new_token_ids.len()).sum();
        if num_new_tokens != self.num_batched_tokens {
            return Err(format!(
                "plan num_batched_tokens {} != sum of new tokens {num_new_tokens}",
                self.num_batched_tokens
            ));
        }
        if self.num_batched_tokens > config.max_num_batched_tokens {
            return Err(format!(
                "plan batches {} tokens, budget is {}",
                self.num_batched_tokens, config.max_num_batched_tokens
            ));
        }
        if self.requests.len() > config.max_num_seqs {
            return Err(format!(
                "plan has {} requests, max_num_seqs is {}",
                self.requests.len(),
                config.max_num_seqs
            ));
        }
        let mut ids: Vec<RequestId> = self.requests.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("request {} appears twice in the plan", pair[0]));
        }
        for entry in &self.requests {
            let num_tokens = entry.num_computed_tokens + entry.new_token_ids.len();
            let capacity = entry.block_table.len() * config.block_size;
            if entry.new_token_ids.is_empty() || capacity < num_tokens {
                return Err(format!(
                    "request {}: {} new tokens after {} computed, table holds {capacity}",
                    entry.id,
                    entry.new_token_ids.len(),
                    entry.num_computed_tokens
                ));
            }
            if self.preempted.contains(&entry.id) {
                return Err(format!(
                    "request {} is both scheduled and preempted",
                    entry.id
                ));
            }
        }
        Ok(())
    }
}
