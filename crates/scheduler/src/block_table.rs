//! `BlockTable`: one sequence's KV-cache blocks, in position order, and position -> slot.
//!
//! Owns: the list of blocks a sequence holds one reference to each, and the mapping from a
//! token position to its slot (`block_id * block_size + position % block_size`). Does not own:
//! the blocks themselves (the `BlockPool` does), how many tokens are computed (the request's
//! `num_computed_tokens`, kept by the scheduler), or hashing.
//!
//! Invariants: the table holds exactly one pool reference per entry in `blocks`; capacity is
//! `blocks.len() * block_size` and only grows until `release`, which returns every reference
//! and leaves the table empty. `ensure_capacity` is all-or-nothing.

use crate::block_pool::{BlockId, BlockPool};
use crate::error::SchedulerError;

#[derive(Debug, Clone)]
pub struct BlockTable {
    block_size: usize,
    blocks: Vec<BlockId>,
}

impl BlockTable {
    /// An empty table whose blocks hold `block_size` tokens each (`block_size >= 1`).
    pub fn new(block_size: usize) -> Result<Self, SchedulerError> {
        if block_size == 0 {
            return Err(SchedulerError::InvalidBlockSize { block_size });
        }
        Ok(Self {
            block_size,
            blocks: Vec::new(),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Number of token positions the table's blocks can hold.
    pub fn num_tokens_capacity(&self) -> usize {
        // Cannot overflow: `ensure_capacity` checked the product when it grew the table.
        self.blocks.len() * self.block_size
    }

    /// Number of additional blocks needed to hold `num_tokens` positions (0 if they fit).
    pub fn num_blocks_needed(&self, num_tokens: usize) -> usize {
        num_tokens
            .div_ceil(self.block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Grows the table so positions `0..num_tokens` have slots. Never shrinks. If the pool has
    /// too few free blocks, returns `OutOfBlocks` and allocates nothing.
    pub fn ensure_capacity(
        &mut self,
        num_tokens: usize,
        pool: &mut BlockPool,
    ) -> Result<(), SchedulerError> {
        let num_needed = self.num_blocks_needed(num_tokens);
        if num_needed == 0 {
            return Ok(());
        }
        let num_blocks_after = self.blocks.len() + num_needed;
        // Every slot index (last block id * block_size + offset) must fit in usize.
        if num_blocks_after
            .max(pool.num_total())
            .checked_mul(self.block_size)
            .is_none()
        {
            return Err(SchedulerError::CapacityOverflow { num_tokens });
        }
        let new_blocks = pool.allocate_many(num_needed)?;
        self.blocks.extend(new_blocks);
        Ok(())
    }

    /// Appends a block the caller already holds a reference for (e.g. taken with
    /// `BlockPool::touch` to share a prefix); the table takes over that reference.
    pub fn push_held_block(&mut self, id: BlockId) {
        self.blocks.push(id);
    }

    /// Slot of the token at `position`, or `None` if the table has no block for it.
    pub fn slot(&self, position: usize) -> Option<usize> {
        let block = self.blocks.get(position / self.block_size)?;
        (block.0 as usize)
            .checked_mul(self.block_size)?
            .checked_add(position % self.block_size)
    }

    /// Returns every block to the pool, tail first (so that, once a prefix cache keeps freed
    /// blocks, a sequence's last blocks are evicted before its shared prefix). The table is
    /// empty afterwards. Reports the first pool error but still releases the other blocks.
    pub fn release(&mut self, pool: &mut BlockPool) -> Result<(), SchedulerError> {
        let mut first_error = None;
        for id in self.blocks.drain(..).rev() {
            if let Err(err) = pool.free(id) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_capacity_allocates_ceil_of_tokens_over_block_size() {
        let mut pool = BlockPool::new(10).unwrap();
        let mut table = BlockTable::new(4).unwrap();
        table.ensure_capacity(0, &mut pool).unwrap();
        assert_eq!(table.num_blocks(), 0);
        table.ensure_capacity(1, &mut pool).unwrap();
        assert_eq!(table.num_blocks(), 1);
        table.ensure_capacity(4, &mut pool).unwrap();
        assert_eq!(table.num_blocks(), 1);
        table.ensure_capacity(9, &mut pool).unwrap();
        assert_eq!(table.num_blocks(), 3);
        assert_eq!(table.num_tokens_capacity(), 12);
        table.ensure_capacity(2, &mut pool).unwrap();
        assert_eq!(table.num_blocks(), 3, "never shrinks");
        assert_eq!(pool.num_free(), 7);
    }

    #[test]
    fn slot_maps_position_into_its_block() {
        let mut pool = BlockPool::new(4).unwrap();
        let _other = pool.allocate().unwrap(); // so the table gets blocks 1 and 2
        let mut table = BlockTable::new(4).unwrap();
        table.ensure_capacity(6, &mut pool).unwrap();
        assert_eq!(table.blocks(), &[BlockId(1), BlockId(2)]);
        assert_eq!(table.slot(0), Some(4));
        assert_eq!(table.slot(3), Some(7));
        assert_eq!(table.slot(4), Some(8));
        assert_eq!(table.slot(7), Some(11));
        assert_eq!(table.slot(8), None);
    }

    #[test]
    fn ensure_capacity_out_of_blocks_allocates_nothing() {
        let mut pool = BlockPool::new(2).unwrap();
        let mut table = BlockTable::new(2).unwrap();
        let err = table.ensure_capacity(5, &mut pool).unwrap_err();
        assert_eq!(
            err,
            SchedulerError::OutOfBlocks {
                num_requested: 3,
                num_free: 2
            }
        );
        assert_eq!(table.num_blocks(), 0);
        assert_eq!(pool.num_free(), 2);
    }

    #[test]
    fn release_returns_all_blocks_and_empties_the_table() {
        let mut pool = BlockPool::new(5).unwrap();
        let mut table = BlockTable::new(3).unwrap();
        table.ensure_capacity(10, &mut pool).unwrap();
        assert_eq!(pool.num_free(), 1);
        table.release(&mut pool).unwrap();
        assert_eq!(pool.num_free(), 5);
        assert_eq!(table.num_tokens_capacity(), 0);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn release_frees_tail_blocks_first() {
        let mut pool = BlockPool::new(3).unwrap();
        let mut table = BlockTable::new(1).unwrap();
        table.ensure_capacity(3, &mut pool).unwrap();
        table.release(&mut pool).unwrap();
        // Least recently freed first: block 2 was freed first.
        assert_eq!(pool.allocate().unwrap(), BlockId(2));
    }

    #[test]
    fn shared_prefix_block_survives_one_release() {
        let mut pool = BlockPool::new(4).unwrap();
        let mut first = BlockTable::new(2).unwrap();
        first.ensure_capacity(2, &mut pool).unwrap();
        let prefix = first.blocks()[0];
        pool.touch(prefix).unwrap();
        let mut second = BlockTable::new(2).unwrap();
        second.push_held_block(prefix);
        second.ensure_capacity(4, &mut pool).unwrap();
        assert_eq!(second.slot(1), first.slot(1));
        first.release(&mut pool).unwrap();
        assert_eq!(pool.ref_count(prefix), Some(1));
        second.release(&mut pool).unwrap();
        assert_eq!(pool.num_free(), 4);
        assert_eq!(pool.check_invariants(), Ok(()));
    }

    #[test]
    fn zero_block_size_is_rejected() {
        let err = BlockTable::new(0).unwrap_err();
        assert_eq!(err, SchedulerError::InvalidBlockSize { block_size: 0 });
    }

    #[test]
    fn absurd_capacity_is_an_error_not_an_overflow() {
        let mut pool = BlockPool::new(2).unwrap();
        let mut table = BlockTable::new(usize::MAX / 2).unwrap();
        let err = table.ensure_capacity(usize::MAX, &mut pool).unwrap_err();
        assert_eq!(
            err,
            SchedulerError::CapacityOverflow {
                num_tokens: usize::MAX
            }
        );
        assert_eq!(pool.num_free(), 2);
    }
}
