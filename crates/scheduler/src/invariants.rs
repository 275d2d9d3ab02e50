//! `Scheduler::check_invariants`: the whole scheduler's invariants, checked from scratch.
//!
//! Owns: the list of invariants below and their checks (tests call this after every
//! operation). Does not own: any state; it only reads.
//!
//! Invariants:
//! - the pool's own (free/used partition, free queue, hash map <-> block metadata);
//! - no bookkeeping error was swallowed by `schedule`/`abort_request`;
//! - each block's ref count == the number of request block tables containing it (so
//!   `num_blocks_used` counts exactly the referenced blocks);
//! - every request is in exactly one of `waiting` (status Waiting/Preempted) or `running`
//!   (status Running), each once; `running.len() <= max_num_seqs`;
//! - every request in flight (planned, not yet updated) is known and running;
//! - each request's block hashes equal the chain recomputed from its tokens (full blocks);
//! - a table block that holds a hash is full and computed, and holds the request's hash for
//!   that block index (so a cache hit always finds the tokens its hash promises);
//! - waiting requests hold no blocks and have nothing computed; running requests have at
//!   least one uncomputed token, a table covering their computed tokens, and no blocks past
//!   their tokens;
//! - tokens fit `max_model_len`, and fewer than `max_tokens` outputs were appended;
//! - the last plan respected its budgets (`StepPlan::check_budgets`).

use std::collections::HashSet;

use crate::block_pool::BlockId;
use crate::prefix_cache::extend_block_hashes;
use crate::request::{Request, RequestStatus};
use crate::scheduler::Scheduler;

impl Scheduler {
    /// Checks every invariant listed in `invariants.rs`; the error names the first that broke.
    pub fn check_invariants(&self) -> Result<(), String> {
        let pool = self.kv.pool();
        pool.check_invariants()?;
        if let Some(err) = &self.internal_error {
            return Err(format!(
                "bookkeeping error during an infallible call: {err}"
            ));
        }
        self.last_plan_check.clone()?;
        self.check_queues()?;
        let mut num_holders = vec![0u32; pool.num_total()];
        for request in self.requests.values() {
            for &id in request.block_table.blocks() {
                let holders = num_holders.get_mut(id.0 as usize).ok_or_else(|| {
                    format!("request {} holds out-of-range block {}", request.id, id.0)
                })?;
                *holders += 1;
            }
            self.check_request(request)?;
        }
        for (block_idx, &expected) in num_holders.iter().enumerate() {
            let actual = pool.ref_count(BlockId(block_idx as u32));
            if actual != Some(expected) {
                return Err(format!(
                    "block {block_idx}: ref count {actual:?} but {expected} tables hold it"
                ));
            }
        }
        Ok(())
    }

    fn check_queues(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for id in &self.waiting {
            let status = self.requests.get(id).map(|request| request.status);
            if !matches!(
                status,
                Some(RequestStatus::Waiting | RequestStatus::Preempted)
            ) {
                return Err(format!("waiting request {id} has status {status:?}"));
            }
            if !seen.insert(*id) {
                return Err(format!("request {id} is queued twice"));
            }
        }
        for id in &self.running {
            let status = self.requests.get(id).map(|request| request.status);
            if status != Some(RequestStatus::Running) {
                return Err(format!("running request {id} has status {status:?}"));
            }
            if !seen.insert(*id) {
                return Err(format!("request {id} is queued twice"));
            }
        }
        if let Some(id) = self.in_flight.iter().find(|id| {
            self.requests.get(id).map(|request| request.status) != Some(RequestStatus::Running)
        }) {
            return Err(format!("request {id} is in flight but not running"));
        }
        if seen.len() != self.requests.len() {
            return Err(format!(
                "{} requests known but {} queued",
                self.requests.len(),
                seen.len()
            ));
        }
        if self.running.len() > self.config.max_num_seqs {
            return Err(format!(
                "{} running requests, max_num_seqs is {}",
                self.running.len(),
                self.config.max_num_seqs
            ));
        }
        Ok(())
    }

    fn check_request(&self, request: &Request) -> Result<(), String> {
        let id = request.id;
        let block_size = self.config.block_size;
        let mut expected_hashes = Vec::new();
        extend_block_hashes(
            &mut expected_hashes,
            request.token_ids(),
            block_size,
            request.cache_salt(),
        );
        if expected_hashes != request.block_hashes() {
            return Err(format!(
                "request {id}: block hashes do not chain from its tokens"
            ));
        }
        let num_full_computed_blocks = request.num_computed_tokens / block_size;
        for (block_idx, &block) in request.block_table.blocks().iter().enumerate() {
            let Some(hash) = self.kv.pool().block_hash(block) else {
                continue;
            };
            if block_idx >= num_full_computed_blocks
                || request.block_hashes().get(block_idx) != Some(&hash)
            {
                return Err(format!(
                    "request {id}: block {} at index {block_idx} holds {hash}, which is not \
                     its computed block hash",
                    block.0
                ));
            }
        }
        let num_tokens = request.num_tokens();
        let capacity = request.block_table.num_tokens_capacity();
        let num_blocks = request.block_table.num_blocks();
        match request.status {
            RequestStatus::Running => {
                if request.num_computed_tokens >= num_tokens
                    || capacity < request.num_computed_tokens
                {
                    return Err(format!(
                        "running request {id}: {} of {num_tokens} tokens computed, table holds \
                         {capacity}",
                        request.num_computed_tokens
                    ));
                }
                if num_blocks > num_tokens.div_ceil(block_size) {
                    return Err(format!(
                        "running request {id}: {num_blocks} blocks for {num_tokens} tokens"
                    ));
                }
            }
            _ => {
                if num_blocks != 0 || request.num_computed_tokens != 0 {
                    return Err(format!(
                        "waiting request {id} holds {num_blocks} blocks, {} computed tokens",
                        request.num_computed_tokens
                    ));
                }
            }
        }
        if num_tokens > self.config.max_model_len
            || request.num_output_tokens() >= request.max_tokens
        {
            return Err(format!(
                "request {id}: {num_tokens} tokens ({} outputs, max_tokens {}), max_model_len {}",
                request.num_output_tokens(),
                request.max_tokens,
                self.config.max_model_len
            ));
        }
        if request.num_prompt_tokens() == 0 {
            return Err(format!("request {id} has an empty prompt"));
        }
        Ok(())
    }
}
