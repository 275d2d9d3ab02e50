//! The one error type of `hearth-planner`.
//!
//! Owns: every failure the planner reports: invalid model shapes, nodes, links and options,
//! text that does not parse (`units`, `hardware`), and a model that fits nowhere. Does not own:
//! refusals of a placement that *could* run but is slower (those are [`crate::PlanNote`]s).
//! Invariant: every message names the offending value and what was expected.

use thiserror::Error;

use crate::units::format_bytes;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    #[error("model `{model}`: {reason}")]
    InvalidModel { model: String, reason: String },

    #[error("node `{node}`: {reason}")]
    InvalidNode { node: String, reason: String },

    #[error("link {link}: {reason}")]
    InvalidLink { link: String, reason: String },

    #[error("host `{host}`: {reason}")]
    InvalidHost { host: String, reason: String },

    #[error("plan options: {0}")]
    InvalidOptions(String),

    /// A placement given by hand that is not one (gaps, overlaps, unknown nodes).
    #[error("invalid placement {0}")]
    InvalidPlacement(String),

    #[error("no nodes to plan on")]
    NoNodes,

    #[error("{num_nodes} nodes is more than the planner handles (at most {max_nodes})")]
    TooManyNodes { num_nodes: usize, max_nodes: usize },

    /// No single node and no pipeline over the nodes can hold the model.
    #[error(
        "`{model}` does not fit: one node would need {} (weights + KV cache for {context_tokens} \
         tokens x {concurrent_sequences} sequence(s), {:.0}% headroom kept free); the largest node, \
         `{largest_node}`, can use {}, all nodes together {}",
        format_bytes(*needed_bytes),
        headroom_fraction * 100.0,
        format_bytes(*largest_usable_bytes),
        format_bytes(*total_usable_bytes)
    )]
    DoesNotFit {
        model: String,
        needed_bytes: u64,
        context_tokens: usize,
        concurrent_sequences: usize,
        headroom_fraction: f64,
        largest_node: String,
        largest_usable_bytes: u64,
        total_usable_bytes: u64,
    },

    #[error("cannot read {what} `{input}`: {reason}")]
    Parse {
        what: &'static str,
        input: String,
        reason: String,
    },

    #[error("unknown hardware `{name}` (known: {known})")]
    UnknownHardware { name: String, known: String },
}

pub type Result<T> = std::result::Result<T, PlanError>;
