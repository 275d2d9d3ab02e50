//! Property tests: random sequences of pool and block-table operations, with every invariant
//! checked after every operation against a simple model (who holds which block).
//!
//! Owns nothing at run time (test-only module). Checked after each step: the pool's own
//! invariants; each block's ref count equals the number of holders (table entries plus blocks
//! held directly by the test); every slot a table maps lies inside its own block; failed
//! operations leave the pool unchanged. At the end, releasing everything returns the pool to
//! full.

use proptest::prelude::*;

use crate::{BlockId, BlockPool, BlockTable, SchedulerError};

const NUM_TABLES: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Allocate,
    FreeHeld {
        held_idx: usize,
    },
    EnsureCapacity {
        table_idx: usize,
        num_tokens: usize,
    },
    Release {
        table_idx: usize,
    },
    /// Share `from`'s first block as the first block of empty table `to` (a prefix hit).
    SharePrefix {
        from_idx: usize,
        to_idx: usize,
    },
    /// Revive a free block by id (what a prefix-cache hit on a freed block will do).
    TouchBlock {
        block_idx: u32,
    },
    /// Free a block by id without holding it: must fail when its ref count is 0.
    FreeUnheld {
        block_idx: u32,
    },
}

fn op_strategy(num_blocks: usize) -> impl Strategy<Value = Op> {
    let max_block_idx = num_blocks as u32 + 2; // include out-of-range ids
    prop_oneof![
        3 => Just(Op::Allocate),
        2 => (0..16usize).prop_map(|held_idx| Op::FreeHeld { held_idx }),
        4 => (0..NUM_TABLES, 0..80usize)
            .prop_map(|(table_idx, num_tokens)| Op::EnsureCapacity { table_idx, num_tokens }),
        1 => (0..NUM_TABLES).prop_map(|table_idx| Op::Release { table_idx }),
        1 => (0..NUM_TABLES, 0..NUM_TABLES)
            .prop_map(|(from_idx, to_idx)| Op::SharePrefix { from_idx, to_idx }),
        1 => (0..max_block_idx).prop_map(|block_idx| Op::TouchBlock { block_idx }),
        1 => (0..max_block_idx).prop_map(|block_idx| Op::FreeUnheld { block_idx }),
    ]
}

struct World {
    pool: BlockPool,
    tables: Vec<BlockTable>,
    /// Blocks the test itself holds one reference to each (may repeat).
    held: Vec<BlockId>,
}

impl World {
    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = (self.pool.num_free(), self.snapshot_refs());
        match *op {
            Op::Allocate => match self.pool.allocate() {
                Ok(id) => self.held.push(id),
                Err(err) => {
                    prop_assert_eq!(
                        err,
                        SchedulerError::OutOfBlocks {
                            num_requested: 1,
                            num_free: 0
                        }
                    );
                    prop_assert_eq!(self.pool.num_free(), 0);
                }
            },
            Op::FreeHeld { held_idx } => {
                if held_idx < self.held.len() {
                    let id = self.held.swap_remove(held_idx);
                    self.pool.free(id).map_err(fail)?;
                }
            }
            Op::EnsureCapacity {
                table_idx,
                num_tokens,
            } => {
                let table = &mut self.tables[table_idx];
                let num_needed = table.num_blocks_needed(num_tokens);
                match table.ensure_capacity(num_tokens, &mut self.pool) {
                    Ok(()) => prop_assert!(table.num_tokens_capacity() >= num_tokens),
                    Err(SchedulerError::OutOfBlocks {
                        num_requested,
                        num_free,
                    }) => {
                        prop_assert_eq!(num_requested, num_needed);
                        prop_assert!(num_free < num_needed);
                        prop_assert_eq!(&before, &(self.pool.num_free(), self.snapshot_refs()));
                    }
                    Err(err) => return Err(fail(err)),
                }
            }
            Op::Release { table_idx } => {
                self.tables[table_idx]
                    .release(&mut self.pool)
                    .map_err(fail)?;
                prop_assert_eq!(self.tables[table_idx].num_blocks(), 0);
            }
            Op::SharePrefix { from_idx, to_idx } => {
                let shareable = from_idx != to_idx && self.tables[to_idx].num_blocks() == 0;
                if let Some(&prefix) = self.tables[from_idx].blocks().first().filter(|_| shareable)
                {
                    self.pool.touch(prefix).map_err(fail)?;
                    self.tables[to_idx].push_held_block(prefix);
                }
            }
            Op::TouchBlock { block_idx } => {
                let id = BlockId(block_idx);
                match self.pool.touch(id) {
                    Ok(()) => self.held.push(id),
                    Err(err) => {
                        prop_assert!((block_idx as usize) >= self.pool.num_total(), "{}", err);
                        prop_assert_eq!(&before, &(self.pool.num_free(), self.snapshot_refs()));
                    }
                }
            }
            Op::FreeUnheld { block_idx } => {
                let id = BlockId(block_idx);
                // Only exercise the error paths; freeing a held block would desync the model.
                if self.pool.ref_count(id).is_none_or(|count| count == 0) {
                    prop_assert!(self.pool.free(id).is_err());
                    prop_assert_eq!(&before, &(self.pool.num_free(), self.snapshot_refs()));
                }
            }
        }
        self.check()
    }

    fn snapshot_refs(&self) -> Vec<Option<u32>> {
        (0..self.pool.num_total() as u32)
            .map(|block_idx| self.pool.ref_count(BlockId(block_idx)))
            .collect()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.pool.check_invariants().map_err(TestCaseError::fail)?;
        let mut num_holders = vec![0u32; self.pool.num_total()];
        let table_blocks = self.tables.iter().flat_map(|table| table.blocks());
        for id in table_blocks.chain(self.held.iter()) {
            num_holders[id.0 as usize] += 1;
        }
        for (block_idx, &expected) in num_holders.iter().enumerate() {
            let actual = self.pool.ref_count(BlockId(block_idx as u32));
            prop_assert_eq!(actual, Some(expected), "ref count of block {}", block_idx);
        }
        for table in &self.tables {
            for position in 0..table.num_tokens_capacity() {
                let slot = table.slot(position);
                let block = table.blocks()[position / table.block_size()];
                prop_assert_eq!(slot.map(|s| s / table.block_size()), Some(block.0 as usize));
            }
            prop_assert_eq!(table.slot(table.num_tokens_capacity()), None);
        }
        Ok(())
    }

    fn release_everything(&mut self) -> Result<(), TestCaseError> {
        for table in &mut self.tables {
            table.release(&mut self.pool).map_err(fail)?;
        }
        for id in self.held.drain(..) {
            self.pool.free(id).map_err(fail)?;
        }
        self.check()
    }
}

fn fail(err: SchedulerError) -> TestCaseError {
    TestCaseError::fail(err.to_string())
}

fn world_and_ops() -> impl Strategy<Value = (usize, usize, Vec<Op>)> {
    (0..24usize, 1..9usize).prop_flat_map(|(num_blocks, block_size)| {
        (
            Just(num_blocks),
            Just(block_size),
            prop::collection::vec(op_strategy(num_blocks), 0..120),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_keep_invariants_and_freeing_everything_refills_the_pool(
        (num_blocks, block_size, ops) in world_and_ops()
    ) {
        let mut world = World {
            pool: BlockPool::new(num_blocks).map_err(fail)?,
            tables: (0..NUM_TABLES)
                .map(|_| BlockTable::new(block_size))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            held: Vec::new(),
        };
        for op in &ops {
            world.apply(op)?;
        }
        world.release_everything()?;
        prop_assert_eq!(world.pool.num_free(), num_blocks);
        prop_assert_eq!(world.pool.num_used(), 0);
    }
}
