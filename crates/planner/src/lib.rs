//! Where a model runs: one node, or pipeline stages of contiguous layers over several nodes,
//! with predicted generation tokens/s and time to first token — before any weights are loaded.
//!
//! Owns: the planner's inputs ([`ModelShape`], [`NodeSpec`], [`Link`], [`Host`], [`Cluster`],
//! [`PlanOptions`]), the cost model (`cost`: memory-bandwidth roofline for decode,
//! compute/bandwidth roofline for prompts, link latency and bandwidth per hop, all-reduces for
//! tensor parallelism), the search (`search`: exact dynamic program over contiguous layer
//! splits for every order of ≤ 6 nodes; tensor parallelism over the GPUs of one host),
//! the answer ([`plan`] → [`Plan`] with [`Placement`], [`Prediction`] and [`PlanNote`]s),
//! quantization what-ifs ([`choose_quantization`]), split prefill/decode
//! ([`decide_prefill_split`]), a table of common hardware (`hardware`) and parsing of
//! quantities (`units`).
//! Does not own: reading model files, measuring machines, discovery or transport (the CLI and
//! `hearth-cluster` feed it numbers). Depends on no other hearth crate; pure functions only
//! (no I/O, no clocks, no randomness).
//!
//! Invariants (property-tested in `proptests`): every layer is placed exactly once, in order,
//! in non-empty stages on distinct nodes (or split evenly over tensor-parallel ranks of one
//! host); no stage or rank exceeds its node's usable memory; a plan is
//! never predicted slower than the best single node that holds the model; the same input gives
//! the same plan.

pub mod cluster;
pub mod cost;
pub mod error;
pub mod hardware;
pub mod model;
pub mod plan;
pub mod prefill_split;
pub mod quant;
mod search;
pub mod units;

#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod proptests;

pub use cluster::{
    Cluster, Host, Link, NodeId, NodeSpec, PairLink, TENSOR_PARALLEL_MIN_LINK_BANDWIDTH,
};
pub use cost::{all_reduce_seconds, PlanOptions, ALL_REDUCES_PER_LAYER, DEFAULT_MEMORY_HEADROOM};
pub use error::{PlanError, Result};
pub use model::{ModelShape, ShapeDims, TensorCost, TensorRole, WeightBlock};
pub use plan::{
    evaluate_placement, plan, Placement, Plan, PlanNote, Prediction, SingleNodeOption, Stage,
    TensorParallelRank,
};
pub use prefill_split::{best_prefill_split, decide_prefill_split, PrefillSplit, SplitOutcome};
pub use quant::{choose_among, choose_quantization, Quant, QuantChoice, QuantOption};
pub use search::EXACT_ORDERS_MAX_NODES;
