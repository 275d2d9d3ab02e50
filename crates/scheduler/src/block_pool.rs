//! `BlockPool`: the fixed set of KV-cache blocks, their reference counts, the free queue, and
//! the prefix cache's hash -> block map.
//!
//! Owns: which blocks are free, how many holders each used block has, the order in which free
//! blocks are handed out (least recently freed first, so cached blocks are evicted in LRU
//! order), and which block holds which registered `BlockHash`. A freed block keeps its hash and
//! stays findable (`cached_block`) while it sits in the free queue; `touch` revives it on a
//! cache hit, and `allocate` evicts the hash of the block it pops. Does not own: which sequence
//! holds which block (that is `BlockTable`'s), block contents, how hashes are computed
//! (`prefix_cache`), or when a block is full enough to register (`KvCacheManager`).
//!
//! Invariants (`check_invariants`): every block is either free (ref count 0, in the free queue
//! exactly once) or used (ref count >= 1, not in the queue); `num_free + num_used == num_total`;
//! a block's metadata holds hash `h` exactly when the map sends `h` to that block.

use crate::error::SchedulerError;
use crate::free_queue::FreeQueue;
use crate::prefix_cache::{BlockHash, PrefixCache};

/// Index of one KV-cache block in its pool (`0..num_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Per-block bookkeeping.
#[derive(Debug, Clone, Default)]
struct BlockMeta {
    /// Number of holders (block tables, or the caller of `allocate`/`touch`). 0 = free.
    ref_count: u32,
    /// The registered hash of the block's contents, kept while free until evicted.
    hash: Option<BlockHash>,
}

/// What `BlockPool::register` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The block now holds the hash.
    Registered,
    /// The block already held this hash (e.g. it was a cache hit).
    AlreadyRegistered,
    /// Another block holds this hash; this block stays unregistered.
    HeldByOtherBlock(BlockId),
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    free_queue: FreeQueue,
    prefix_cache: PrefixCache,
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
            prefix_cache: PrefixCache::default(),
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

    /// Number of blocks holding a registered hash (used or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.prefix_cache.len()
    }

    /// Takes the least recently freed block, evicting its hash if it has one; the caller holds
    /// its only reference.
    pub fn allocate(&mut self) -> Result<BlockId, SchedulerError> {
        let block_idx = self
            .free_queue
            .pop_front()
            .ok_or(SchedulerError::OutOfBlocks {
                num_requested: 1,
                num_free: 0,
            })?;
        let id = BlockId(block_idx);
        let meta = &mut self.blocks[block_idx as usize];
        // Queued blocks have ref count 0 (invariant), so this sets it to 1.
        meta.ref_count = 1;
        if let Some(hash) = meta.hash.take() {
            self.prefix_cache.remove(hash, id);
        }
        Ok(id)
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

    /// Drops one reference; a block whose count reaches 0 goes to the back of the free queue
    /// (keeping its hash, so it stays a cache hit until evicted).
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
    /// contents and hash intact: this is how a shared prefix gains a holder, and how a prefix
    /// cache hit revives a freed block.
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

    /// The block registered under `hash`, used or free.
    pub fn cached_block(&self, hash: BlockHash) -> Option<BlockId> {
        self.prefix_cache.get(hash)
    }

    /// The hash `id` is registered under, if any.
    pub fn block_hash(&self, id: BlockId) -> Option<BlockHash> {
        self.blocks.get(id.0 as usize).and_then(|meta| meta.hash)
    }

    /// Registers `hash` (the hash of `id`'s full contents) so later requests can find `id`.
    /// If another block already holds `hash`, `id` stays unregistered. A block holding a
    /// different hash is an error (its contents cannot have changed while it was held).
    pub fn register(
        &mut self,
        id: BlockId,
        hash: BlockHash,
    ) -> Result<Registration, SchedulerError> {
        match self.meta_mut(id)?.hash {
            Some(held) if held == hash => return Ok(Registration::AlreadyRegistered),
            Some(_) => return Err(SchedulerError::BlockHashConflict { block_idx: id.0 }),
            None => {}
        }
        let holder = self.prefix_cache.insert_if_absent(hash, id);
        if holder != id {
            return Ok(Registration::HeldByOtherBlock(holder));
        }
        self.meta_mut(id)?.hash = Some(hash);
        Ok(Registration::Registered)
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
        for (hash, id) in self.prefix_cache.iter() {
            let held = self.block_hash(id);
            if held != Some(hash) {
                return Err(format!(
                    "prefix cache maps {hash} to block {} whose metadata holds {held:?}",
                    id.0
                ));
            }
        }
        for (block_idx, meta) in self.blocks.iter().enumerate() {
            if let Some(hash) = meta.hash {
                if self.prefix_cache.get(hash) != Some(BlockId(block_idx as u32)) {
                    return Err(format!(
                        "block {block_idx} holds {hash} but the prefix cache does not map it there"
                    ));
                }
            }
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
    fn freed_block_stays_cached_until_allocate_evicts_it() {
        let mut pool = BlockPool::new(2).unwrap();
        let a = pool.allocate().unwrap();
        assert_eq!(pool.register(a, BlockHash(5)), Ok(Registration::Registered));
        assert_eq!(
            pool.register(a, BlockHash(5)),
            Ok(Registration::AlreadyRegistered)
        );
        assert_eq!(
            pool.register(a, BlockHash(6)),
            Err(SchedulerError::BlockHashConflict { block_idx: a.0 })
        );
        pool.free(a).unwrap();
        assert_eq!(pool.cached_block(BlockHash(5)), Some(a));
        assert_eq!(pool.num_cached_blocks(), 1);
        assert_eq!(pool.check_invariants(), Ok(()));
        // Queue is [1, a]: block 1 goes first, then `a` is evicted.
        assert_eq!(pool.allocate().unwrap(), BlockId(1));
        assert_eq!(pool.allocate().unwrap(), a);
        assert_eq!(pool.cached_block(BlockHash(5)), None);
        assert_eq!(pool.block_hash(a), None);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn second_block_with_a_registered_hash_stays_unregistered() {
        let mut pool = BlockPool::new(2).unwrap();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, BlockHash(9)).unwrap();
        assert_eq!(
            pool.register(b, BlockHash(9)),
            Ok(Registration::HeldByOtherBlock(a))
        );
        assert_eq!(pool.block_hash(b), None);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn pool_larger_than_u32_ids_is_rejected() {
        let num_blocks = BlockPool::MAX_NUM_BLOCKS + 1;
        let err = BlockPool::new(num_blocks).unwrap_err();
        assert!(matches!(err, SchedulerError::TooManyBlocks { .. }), "{err}");
    }
}
