//! Tensor parallelism: one model split across the ranks of a group, each rank holding a share
//! of every layer's heads and MLP features, joined by collectives.
//!
//! - `shard_spec`: which weight splits along which axis (derived from the single-device
//!   config, so model files do not fork), refusals of shapes that do not divide, coverage, and
//!   cutting dense tensors and quantized blocks.
//! - `collective`: the [`Collective`] trait the forward calls (all-reduce sum, all-gather) and
//!   its in-process thread implementation with tagged, ordered, time-bounded rounds.
//! - `nccl`: the same trait over NCCL, one GPU per rank.
//! - `sharded`: a rank's model sliced from a loaded [`crate::Transformer`] onto its device, and
//!   its forward (an all-reduce after attention's o-projection and after the MLP's down
//!   projection, a gather of the vocabulary-sharded logits).
//! - `group`: all ranks of a group in this process (one thread per rank per step).
//!
//! Does not own: placement (the planner), requests and sampling (the engine's executor).

pub mod collective;
pub mod group;
pub mod nccl;
pub mod shard_spec;
pub mod sharded;

pub use collective::{Collective, CollectiveOp, CollectiveTag, ThreadCollective, ThreadGroup};
pub use group::{GroupParams, TensorParallelGroup};
pub use nccl::NcclCollective;
pub use shard_spec::{RankShape, ShardSpec, Split, WeightLayout, WeightShard};
pub use sharded::{shard_spec, weight_layout, ShardedTransformer};
