//! hearth-scheduler: the continuous-batching scheduler with a prefix cache, as pure
//! bookkeeping.
//!
//! Owns: requests and their token counts, the block pool (ref counts, LRU free queue), block
//! tables, block hashes and the prefix cache, and the per-step plan. Does not own: tensors,
//! I/O, threads, async, sampling, or anything about models. Every operation is plain data
//! manipulation whose invariants can be checked after each call
//! (`Scheduler::check_invariants`, `BlockPool::check_invariants`).
//!
//! Vocabulary: a *block* holds the KV entries of `block_size` consecutive tokens of one
//! sequence; a *slot* is one token's row in the flattened KV cache
//! (`block_id * block_size + position % block_size`); a *block table* lists a sequence's
//! blocks in position order; a *block hash* identifies a full block by its tokens and
//! everything before them. There are no prefill/decode phases: each step a request computes
//! some of its uncomputed tokens (`num_computed_tokens` catches up to its length).
//!
//! Step protocol: `Scheduler::schedule` returns a `StepPlan`; the engine runs it and calls
//! `Scheduler::update(&plan, &sampled)`, which advances each entry's `num_computed_tokens` by
//! its new tokens, registers newly full blocks in the prefix cache, appends each sampled token
//! (or, if `finished`, frees the request), with exactly one `SampledToken` per entry whose
//! `samples` is true. The `max_tokens`-th sample of a request must be `finished`. Several
//! plans may be in flight (scheduled, not yet updated): they never share a request, and are
//! updated in any order, each once.
//!
//! Modules: `config`, `request`, `plan` (data); `scheduler` (policy); `kv_cache_manager`
//! (a request's blocks); `prefix_cache` (hashes); `block_pool`, `free_queue`, `block_table`
//! (blocks); `invariants` (checks).

mod block_pool;
mod block_table;
mod config;
mod error;
mod free_queue;
mod invariants;
mod kv_cache_manager;
mod plan;
mod prefix_cache;
mod request;
mod scheduler;

pub use block_pool::{BlockId, BlockPool, Registration};
pub use block_table::BlockTable;
pub use config::SchedulerConfig;
pub use error::SchedulerError;
pub use plan::{SampledToken, ScheduledRequest, SchedulerStats, StepPlan};
pub use prefix_cache::{hash_block, BlockHash};
pub use request::{NewRequest, RequestId, RequestStatus};
pub use scheduler::Scheduler;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod scheduler_error_tests;
#[cfg(test)]
mod scheduler_in_flight_tests;
#[cfg(test)]
mod scheduler_proptests;
#[cfg(test)]
mod scheduler_tests;
