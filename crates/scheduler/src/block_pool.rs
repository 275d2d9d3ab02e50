//! `BlockPool`: the fixed set of KV-cache blocks, their reference counts, and the free queue.
//!
//! Owns: which blocks are free, how many holders each used block has, and the order in which
//! free blocks are handed out (least recently freed first, so a later prefix cache evicts in
//! LRU order). Does not own: which sequence holds which block (that is `BlockTable`'s), block
//! contents, or block hashes (the prefix cache will add `hash: Option<BlockHash>` to
//! `BlockMeta` and a hash -> block map; `allocate` then evicts the hash of the block it pops,
//! and `touch` is already the cache-hit path that revives a freed block).
//!
//! Invariants (`check_invariants`): every block is either free (ref count 0, in the free queue
//! exactly once) or used (ref count >= 1, not in the queue); `num_free + num_used == num_total`.

use crate::error::SchedulerError;
use crate::free_queue::FreeQueue;

/// Index of one KV-cache block in its pool (`0..num_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Per-block bookkeeping. The prefix cache will add the block's hash here.
#[derive(Debug, Clone, Default)]
struct BlockMeta {
    /// Number of holders (block tables, or the caller of `allocate`/`touch`). 0 = free.
    ref_count: u32,
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    free_queue: FreeQueue,
}

impl BlockPool {
    /// Largest pool: block ids are `u32` and `u32::MAX` is reserved by the free queue.
    pub const MAX_NUM_BLOCKS: usize = (u32::MAX - 1) as usize;

    /// A pool of `num_blocks` blocks, all free, handed out in ascending id order at first.
    pub fn new(num_blocks: usize) -> Result<Self, SchedulerError> {
        let num_blocks_u32 = u32::try_from(num_blocks)
            .ok()
            .filter(|&n| n as usize <= Self::MAX_NUM_BLOCKS)
            .ok_or(SchedulerError::TooManyBlocks {
                num_blocks,
                max: Self::MAX_NUM_BLOCKS,
            })?;
        Ok(Self {
            blocks: vec![BlockMeta::default(); num_blocks],
            free_queue: FreeQueue::new_full(num_blocks_u32),
        })
    }

    pub fn num_total(&self) -> usize {
        self.blocks.len()
    }

    pub fn num_free(&self) -> usize {
        self.free_queue.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_total() - self.num_free()
    }

    /// Takes one free block; the caller holds its only reference.
    pub fn allocate(&mut self) -> Result<BlockId, SchedulerError> {
        let block_idx = self
            .free_queue
            .pop_front()
            .ok_or(SchedulerError::OutOfBlocks {
                num_requested: 1,
                num_free: 0,
            })?;
        // Queued blocks have ref count 0 (invariant), so this sets it to 1.
        self.blocks[block_idx as usize].ref_count = 1;
        Ok(BlockId(block_idx))
    }

    /// Takes `num_blocks` free blocks, or none at all if fewer are free.
    pub fn allocate_many(&mut self, num_blocks: usize) -> Result<Vec<BlockId>, SchedulerError> {
        if num_blocks > self.num_free() {
            return Err(SchedulerError::OutOfBlocks {
                num_requested: num_blocks,
                num_free: self.num_free(),
            });
        }
        (0..num_blocks).map(|_| self.allocate()).collect()
    }

    /// Drops one reference; a block whose count reaches 0 goes to the back of the free queue.
    pub fn free(&mut self, id: BlockId) -> Result<(), SchedulerError> {
        let meta = self.meta_mut(id)?;
        if meta.ref_count == 0 {
            return Err(SchedulerError::DoubleFree { block_idx: id.0 });
        }
        meta.ref_count -= 1;
        if meta.ref_count == 0 {
            self.free_queue.push_back(id.0);
        }
        Ok(())
    }

    /// Adds one reference to a block, used or free. A free block leaves the free queue with its
    /// contents intact: this is how a shared prefix gains a holder, and how the prefix cache
    /// will revive a freed block on a cache hit.
    pub fn touch(&mut self, id: BlockId) -> Result<(), SchedulerError> {
        let meta = self.meta_mut(id)?;
        let ref_count = meta
            .ref_count
            .checked_add(1)
            .ok_or(SchedulerError::RefCountOverflow { block_idx: id.0 })?;
        meta.ref_count = ref_count;
        if ref_count == 1 {
            self.free_queue.remove(id.0);
        }
        Ok(())
    }

    /// Reference count of `id`, or `None` if the pool has no such block.
    pub fn ref_count(&self, id: BlockId) -> Option<u32> {
        self.blocks.get(id.0 as usize).map(|meta| meta.ref_count)
    }

    /// Checks the pool's invariants; the error says which one broke and where.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.free_queue.check()?;
        let mut num_used = 0usize;
        for (block_idx, meta) in self.blocks.iter().enumerate() {
            let queued = self.free_queue.contains(block_idx as u32);
            match (meta.ref_count, queued) {
                (0, true) => {}
                (0, false) => {
                    return Err(format!("block {block_idx} has ref count 0 but is not free"))
                }
                (n, true) => {
                    return Err(format!(
                        "block {block_idx} has ref count {n} but is in the free queue"
                    ))
                }
                (_, false) => num_used += 1,
            }
        }
        if self.num_free() + num_used != self.num_total() {
            return Err(format!(
                "free {} + used {num_used} != total {}",
                self.num_free(),
                self.num_total()
            ));
        }
        Ok(())
    }

    fn meta_mut(&mut self, id: BlockId) -> Result<&mut BlockMeta, SchedulerError> {
        let num_total = self.blocks.len();
        self.blocks
            .get_mut(id.0 as usize)
            .ok_or(SchedulerError::UnknownBlock {
                block_idx: id.0,
                num_total,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_hands_out_distinct_blocks_until_empty() {
        let mut pool = BlockPool::new(3).unwrap();
        let ids: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(ids, vec![BlockId(0), BlockId(1), BlockId(2)]);
        assert_eq!(
            pool.allocate(),
            Err(SchedulerError::OutOfBlocks {
                num_requested: 1,
                num_free: 0
            })
        );
        assert_eq!(pool.num_free(), 0);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn freed_blocks_are_reused_least_recently_freed_first() {
        let mut pool = BlockPool::new(3).unwrap();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.free(b).unwrap();
        pool.free(a).unwrap();
        // Queue is now [2, b, a].
        assert_eq!(pool.allocate().unwrap(), BlockId(2));
        assert_eq!(pool.allocate().unwrap(), b);
        assert_eq!(pool.allocate().unwrap(), a);
    }

    #[test]
    fn double_free_is_an_error_and_leaves_the_pool_intact() {
        let mut pool = BlockPool::new(2).unwrap();
        let a = pool.allocate().unwrap();
        pool.free(a).unwrap();
        assert_eq!(
            pool.free(a),
            Err(SchedulerError::DoubleFree { block_idx: a.0 })
        );
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn unknown_block_is_an_error() {
        let mut pool = BlockPool::new(2).unwrap();
        let err = pool.free(BlockId(9)).unwrap_err();
        assert_eq!(
            err,
            SchedulerError::UnknownBlock {
                block_idx: 9,
                num_total: 2
            }
        );
        assert!(err.to_string().contains("unknown block 9"), "{err}");
        assert!(pool.touch(BlockId(2)).is_err());
        assert_eq!(pool.ref_count(BlockId(2)), None);
    }

    #[test]
    fn shared_block_is_freed_only_when_the_last_holder_frees_it() {
        let mut pool = BlockPool::new(2).unwrap();
        let a = pool.allocate().unwrap();
        pool.touch(a).unwrap();
        assert_eq!(pool.ref_count(a), Some(2));
        pool.free(a).unwrap();
        assert_eq!(pool.num_free(), 1);
        pool.free(a).unwrap();
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn touch_revives_a_free_block_out_of_queue_order() {
        let mut pool = BlockPool::new(3).unwrap();
        pool.touch(BlockId(1)).unwrap();
        assert_eq!(pool.ref_count(BlockId(1)), Some(1));
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.check_invariants(), Ok(()));
        assert_eq!(pool.allocate().unwrap(), BlockId(0));
        assert_eq!(pool.allocate().unwrap(), BlockId(2));
    }

    #[test]
    fn allocate_many_is_all_or_nothing() {
        let mut pool = BlockPool::new(3).unwrap();
        let err = pool.allocate_many(4).unwrap_err();
        assert_eq!(
            err,
            SchedulerError::OutOfBlocks {
                num_requested: 4,
                num_free: 3
            }
        );
        assert_eq!(pool.num_free(), 3);
        assert_eq!(pool.allocate_many(3).unwrap().len(), 3);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn empty_pool_is_valid_and_always_out_of_blocks() {
        let mut pool = BlockPool::new(0).unwrap();
        assert_eq!(pool.num_total(), 0);
        assert!(pool.allocate().is_err());
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn pool_larger_than_u32_ids_is_rejected() {
        let num_blocks = BlockPool::MAX_NUM_BLOCKS + 1;
        let err = BlockPool::new(num_blocks).unwrap_err();
        assert!(matches!(err, SchedulerError::TooManyBlocks { .. }), "{err}");
    }
}
