//! Requests as the scheduler sees them: ids, status, the caller's `NewRequest`, and the
//! scheduler's per-request state (`Request`).
//!
//! Owns: a request's tokens (prompt + generated so far), `num_computed_tokens`, its block
//! table, the hashes of its full blocks (extended as tokens are appended), and its status.
//! Does not own: policy (when it runs or is preempted: `scheduler`), allocation and caching of
//! its blocks (`kv_cache_manager`), or sampling.
//!
//! Invariants: `block_hashes` is the hash chain of `token_ids`' full blocks
//! (`block_hashes.len() == token_ids.len() / block_size`); `num_computed_tokens <=
//! token_ids.len()`; the first `num_registered_blocks` blocks of the table have been offered
//! to the prefix cache, and `num_registered_blocks * block_size <= num_computed_tokens`.

use std::fmt;

use crate::block_table::BlockTable;
use crate::prefix_cache::{extend_block_hashes, BlockHash};

/// Caller-chosen request identifier, unique among unfinished requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a request is. `Finished` and `Aborted` requests are forgotten by the scheduler at
/// once, so its queries only ever report the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Queued, never admitted; holds no blocks.
    Waiting,
    /// Admitted; holds blocks covering its computed tokens.
    Running,
    /// Was running, lost its blocks; queued at the front to be recomputed.
    Preempted,
    Finished,
    Aborted,
}

/// A request as the caller submits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    pub id: RequestId,
    pub prompt_token_ids: Vec<u32>,
    /// Upper bound on sampled tokens; the `max_tokens`-th sample must finish the request.
    pub max_tokens: usize,
    /// Model/adapter salt, hashed into the first block's hash so caches of different models
    /// or adapters never mix.
    pub cache_salt: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) id: RequestId,
    token_ids: Vec<u32>,
    num_prompt_tokens: usize,
    pub(crate) max_tokens: usize,
    cache_salt: u64,
    block_hashes: Vec<BlockHash>,
    pub(crate) status: RequestStatus,
    pub(crate) num_computed_tokens: usize,
    pub(crate) block_table: BlockTable,
    /// Leading table blocks already offered to the prefix cache.
    pub(crate) num_registered_blocks: usize,
    /// Prefix-cache hit (tokens) at first admission; `None` until then.
    pub(crate) num_cached_prompt_tokens: Option<usize>,
}

impl Request {
    /// A waiting request; `block_table` must be empty and use the scheduler's block size.
    pub(crate) fn new(new_request: NewRequest, block_table: BlockTable) -> Self {
        let NewRequest {
            id,
            prompt_token_ids,
            max_tokens,
            cache_salt,
        } = new_request;
        let mut block_hashes = Vec::new();
        let block_size = block_table.block_size();
        extend_block_hashes(&mut block_hashes, &prompt_token_ids, block_size, cache_salt);
        Self {
            id,
            num_prompt_tokens: prompt_token_ids.len(),
            token_ids: prompt_token_ids,
            max_tokens,
            cache_salt,
            block_hashes,
            status: RequestStatus::Waiting,
            num_computed_tokens: 0,
            block_table,
            num_registered_blocks: 0,
            num_cached_prompt_tokens: None,
        }
    }

    pub(crate) fn token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    pub(crate) fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub(crate) fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }

    pub(crate) fn num_output_tokens(&self) -> usize {
        self.token_ids.len() - self.num_prompt_tokens
    }

    pub(crate) fn num_uncomputed_tokens(&self) -> usize {
        self.token_ids
            .len()
            .saturating_sub(self.num_computed_tokens)
    }

    pub(crate) fn cache_salt(&self) -> u64 {
        self.cache_salt
    }

    /// Hashes of the full blocks of `token_ids`, in order.
    pub(crate) fn block_hashes(&self) -> &[BlockHash] {
        &self.block_hashes
    }

    /// Appends a sampled token and hashes the block it completes, if any.
    pub(crate) fn append_token(&mut self, token_id: u32) {
        self.token_ids.push(token_id);
        let block_size = self.block_table.block_size();
        extend_block_hashes(
            &mut self.block_hashes,
            &self.token_ids,
            block_size,
            self.cache_salt,
        );
    }
}
