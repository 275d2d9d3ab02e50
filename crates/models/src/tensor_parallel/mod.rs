//! Tensor parallelism: one model split across the ranks of a group, each rank holding a share
//! of every layer's heads and MLP features, joined by collectives.
//!
//! - `shard_spec`: which weight splits along which axis (derived from the single-device
//!   config, so model files do not fork), refusals of shapes that do not divide, coverage.
//! - `collective`: the [`Collective`] trait the forward calls (all-reduce sum, all-gather) and
//!   its in-process thread implementation with tagged, ordered, time-bounded rounds.
//! - `sharded`: a rank's model sliced from a loaded [`crate::Transformer`], its forward (an
//!   all-reduce after attention's o-projection and after the MLP's down projection, a gather of
//!   the vocabulary-sharded logits), and a CPU-thread group runner.
//!
//! Does not own: NCCL or any device transport (a future `Collective` implementation), placement
//! (the planner), quantized-weight slicing (refused with a message for now).

pub mod collective;
pub mod shard_spec;
pub mod sharded;

pub use collective::{Collective, CollectiveOp, CollectiveTag, ThreadCollective, ThreadGroup};
pub use shard_spec::{RankShape, ShardSpec, Split, WeightLayout, WeightShard};
pub use sharded::{shard_spec, weight_layout, ShardedTransformer, ThreadedGroupParams, ThreadedTensorParallel};
