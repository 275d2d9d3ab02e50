//! hearth-scheduler: pure bookkeeping for the paged KV cache and (later) the per-step plan.
//!
//! Owns: the block pool (which KV-cache blocks are free, who references them), block tables
//! (one sequence's blocks in order, token position -> slot), and this crate's error type.
//! Does not own: tensors, I/O, threads, async, or anything about models. Every operation is
//! plain data manipulation whose invariants can be checked after each call
//! (`BlockPool::check_invariants`).
//!
//! Vocabulary: a *block* holds the KV entries of `block_size` consecutive tokens of one
//! sequence; a *slot* is one token's row in the flattened KV cache
//! (`block_id * block_size + position % block_size`); a *block table* lists a sequence's
//! blocks in position order.

mod block_pool;
mod block_table;
mod error;
mod free_queue;

pub use block_pool::{BlockId, BlockPool};
pub use block_table::BlockTable;
pub use error::SchedulerError;

#[cfg(test)]
mod proptests;
