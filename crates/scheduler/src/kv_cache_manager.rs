//! `KvCacheManager`: a request's blocks — allocation, prefix-cache lookup, caching full
//! blocks, freeing.
//!
//! Owns: the `BlockPool` and every call that changes a request's block table or
//! `num_computed_tokens`/`num_registered_blocks` as a consequence of block bookkeeping. Does
//! not own: which request runs or is preempted (`scheduler`), token budgets, or the hash
//! function (`prefix_cache`).
//!
//! Invariants: a request's table holds one pool reference per entry; allocation calls are
//! all-or-nothing (on error neither the pool nor the request changed); a table block holds a
//! hash only if the block is full and computed, and then it is that request's hash for that
//! block index (registration only ever uses the request's own chain).

use crate::block_pool::{BlockId, BlockPool};
use crate::error::SchedulerError;
use crate::request::Request;

#[derive(Debug, Clone)]
pub(crate) struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
}

impl KvCacheManager {
    /// `block_size >= 1` (checked by the scheduler's config validation).
    pub(crate) fn new(num_blocks: usize, block_size: usize) -> Result<Self, SchedulerError> {
        Ok(Self {
            pool: BlockPool::new(num_blocks)?,
            block_size,
        })
    }

    pub(crate) fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub(crate) fn num_blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// The longest run of `request`'s leading full blocks whose hashes are cached, leaving at
    /// least one token to compute: at most `(num_tokens - 1) / block_size` blocks.
    pub(crate) fn find_cached_prefix(&self, request: &Request) -> Vec<BlockId> {
        let max_num_blocks = request.num_tokens().saturating_sub(1) / self.block_size;
        request
            .block_hashes()
            .iter()
            .take(max_num_blocks)
            .map_while(|&hash| self.pool.cached_block(hash))
            .collect()
    }

    /// Admits `request` (no blocks yet): takes the `cached` prefix blocks (one reference each,
    /// reviving free ones), sets `num_computed_tokens` to the tokens they hold, and allocates
    /// room for `num_new_tokens` more. All or nothing: `OutOfBlocks` changes nothing.
    pub(crate) fn allocate_for_admission(
        &mut self,
        request: &mut Request,
        cached: &[BlockId],
        num_new_tokens: usize,
    ) -> Result<(), SchedulerError> {
        let num_cached_tokens = cached.len() * self.block_size;
        let num_blocks_total = self.num_blocks_for(num_cached_tokens + num_new_tokens);
        let num_new_blocks = num_blocks_total.saturating_sub(cached.len());
        // Reviving a free cached block takes it out of the free queue.
        let num_revived = cached
            .iter()
            .filter(|&&id| self.pool.ref_count(id) == Some(0))
            .count();
        let num_free = self.pool.num_free().saturating_sub(num_revived);
        if num_new_blocks > num_free {
            return Err(SchedulerError::OutOfBlocks {
                num_requested: num_new_blocks,
                num_free,
            });
        }
        for &id in cached {
            if let Err(err) = self.pool.touch(id) {
                self.free(request)?;
                return Err(err);
            }
            request.block_table.push_held_block(id);
        }
        let num_tokens = num_cached_tokens + num_new_tokens;
        if let Err(err) = request
            .block_table
            .ensure_capacity(num_tokens, &mut self.pool)
        {
            self.free(request)?;
            return Err(err);
        }
        request.num_computed_tokens = num_cached_tokens;
        request.num_registered_blocks = cached.len();
        Ok(())
    }

    /// Grows a running request's table to cover `num_new_tokens` past its computed tokens.
    /// All or nothing.
    pub(crate) fn allocate_for_step(
        &mut self,
        request: &mut Request,
        num_new_tokens: usize,
    ) -> Result<(), SchedulerError> {
        let num_tokens = request.num_computed_tokens + num_new_tokens;
        request
            .block_table
            .ensure_capacity(num_tokens, &mut self.pool)
    }

    /// Registers every block of `request` that is full and computed and not yet offered to the
    /// cache. A block whose hash another block already holds stays unregistered.
    pub(crate) fn cache_full_blocks(
        &mut self,
        request: &mut Request,
    ) -> Result<(), SchedulerError> {
        let num_full_blocks = request.num_computed_tokens / self.block_size;
        for block_idx in request.num_registered_blocks..num_full_blocks {
            let block = request.block_table.blocks().get(block_idx);
            let hash = request.block_hashes().get(block_idx);
            if let (Some(&id), Some(&hash)) = (block, hash) {
                self.pool.register(id, hash)?;
            }
        }
        request.num_registered_blocks = request.num_registered_blocks.max(num_full_blocks);
        Ok(())
    }

    /// Returns all of `request`'s blocks to the pool (tail first, so its last blocks are
    /// evicted before its prefix) and resets its computed state.
    pub(crate) fn free(&mut self, request: &mut Request) -> Result<(), SchedulerError> {
        request.num_computed_tokens = 0;
        request.num_registered_blocks = 0;
        request.block_table.release(&mut self.pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_table::BlockTable;
    use crate::request::{NewRequest, RequestId};

    fn request(id: u64, prompt: &[u32]) -> Request {
        let new_request = NewRequest {
            id: RequestId(id),
            prompt_token_ids: prompt.to_vec(),
            max_tokens: 1,
            cache_salt: 0,
        };
        Request::new(new_request, BlockTable::new(2).unwrap())
    }

    /// Block ids in the order the pool would hand them out.
    fn allocation_order(pool: &BlockPool) -> Vec<BlockId> {
        let mut pool = pool.clone();
        std::iter::from_fn(|| pool.allocate().ok()).collect()
    }

    #[test]
    fn admission_that_does_not_fit_after_reviving_cached_blocks_changes_nothing() {
        let mut kv = KvCacheManager::new(4, 2).unwrap();
        let mut first = request(1, &[1, 2, 3, 4, 5]);
        kv.allocate_for_admission(&mut first, &[], 5).unwrap(); // blocks 0, 1, 2
        first.num_computed_tokens = 5;
        kv.cache_full_blocks(&mut first).unwrap(); // registers 0 and 1
        kv.free(&mut first).unwrap(); // free queue: 3, 2, 1, 0
        let held = kv.pool.allocate().unwrap();
        let spare = kv.pool.allocate().unwrap();
        kv.pool.free(spare).unwrap(); // free queue: 1, 0, 2 (1 and 0 cached)
        let order_before = allocation_order(&kv.pool);

        let mut second = request(2, &[1, 2, 3, 4, 9, 9, 9, 9]);
        let cached = kv.find_cached_prefix(&second);
        assert_eq!(cached, [BlockId(0), BlockId(1)]);
        // 2 new blocks needed; 3 are free, but reviving the 2 cached ones leaves only 1.
        let err = kv
            .allocate_for_admission(&mut second, &cached, 4)
            .unwrap_err();
        assert_eq!(
            err,
            SchedulerError::OutOfBlocks {
                num_requested: 2,
                num_free: 1
            }
        );
        assert_eq!(second.block_table.num_blocks(), 0);
        assert_eq!(allocation_order(&kv.pool), order_before, "LRU order kept");
        assert_eq!(kv.pool.ref_count(held), Some(1));
        assert_eq!(kv.pool.check_invariants(), Ok(()));
    }

    #[test]
    fn cache_hit_never_covers_the_last_token() {
        let mut kv = KvCacheManager::new(4, 2).unwrap();
        let mut first = request(1, &[1, 2, 3, 4]);
        kv.allocate_for_admission(&mut first, &[], 4).unwrap();
        first.num_computed_tokens = 4;
        kv.cache_full_blocks(&mut first).unwrap();
        assert_eq!(kv.pool.num_cached_blocks(), 2);
        assert_eq!(kv.find_cached_prefix(&request(2, &[1, 2, 3, 4])).len(), 1);
        assert_eq!(
            kv.find_cached_prefix(&request(3, &[1, 2, 3, 4, 5])).len(),
            2
        );
        assert_eq!(kv.find_cached_prefix(&request(4, &[1, 2])).len(), 0);
    }
}
