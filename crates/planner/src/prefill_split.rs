//! Split prefill/decode: a prefill node computes a prompt's KV cache (and its first token) and
//! streams the KV to the decode node, which generates the rest.
//!
//! Owns: [`decide_prefill_split`] (one prefill node, one decode node) and
//! [`best_prefill_split`] (the best prefill node for a decode node). Does not own the
//! transport, or splits where decode itself is a pipeline (not modelled yet).
//!
//! The rule: split TTFT = prompt time on the prefill node + KV transfer (prompt tokens × KV
//! bytes per token ÷ link bandwidth + latency); local TTFT = prompt time on the decode node.
//! Split pays off when the transfer costs less than the compute it saves, i.e. split TTFT <
//! local TTFT. The prefill node must hold the weights plus the prompt's KV; the first token is
//! sampled there and travels with the KV. Transfer is not overlapped with compute (a
//! conservative prediction: streaming layer by layer would hide part of it).

use std::fmt;

use serde::Serialize;

use crate::cluster::{Cluster, NodeId};
use crate::cost::{CostModel, PlanOptions};
use crate::error::{PlanError, Result};
use crate::model::ModelShape;
use crate::units::{format_bytes, format_seconds};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefillSplit {
    pub prefill_node: String,
    pub decode_node: String,
    pub prompt_tokens: usize,
    /// The prompt computed on the decode node itself.
    pub local_ttft_seconds: f64,
    pub kv_transfer_bytes: u64,
    pub kv_transfer_seconds: f64,
    pub outcome: SplitOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitOutcome {
    /// The prefill node holds the model; `pays_off` when the transfer costs less than the
    /// compute it saves.
    Possible {
        remote_prefill_seconds: f64,
        split_ttft_seconds: f64,
        pays_off: bool,
    },
    /// The prefill node cannot hold the weights and the prompt's KV.
    PrefillNodeTooSmall {
        needed_bytes: u64,
        usable_bytes: u64,
    },
}

impl PrefillSplit {
    pub fn use_split(&self) -> bool {
        matches!(self.outcome, SplitOutcome::Possible { pays_off: true, .. })
    }

    /// Remote prefill + transfer, when the prefill node can hold the model.
    pub fn split_ttft_seconds(&self) -> Option<f64> {
        match self.outcome {
            SplitOutcome::Possible {
                split_ttft_seconds, ..
            } => Some(split_ttft_seconds),
            SplitOutcome::PrefillNodeTooSmall { .. } => None,
        }
    }
}

impl fmt::Display for PrefillSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefill, decode) = (&self.prefill_node, &self.decode_node);
        let local = format_seconds(self.local_ttft_seconds);
        match self.outcome {
            SplitOutcome::PrefillNodeTooSmall { needed_bytes, usable_bytes } => write!(
                f,
                "no split prefill: {prefill} cannot hold the model for a {}-token prompt (needs {}, can use {}); \
                 TTFT {local} on {decode}",
                self.prompt_tokens,
                format_bytes(needed_bytes),
                format_bytes(usable_bytes)
            ),
            SplitOutcome::Possible { remote_prefill_seconds, split_ttft_seconds, pays_off } => write!(
                f,
                "{} split prefill on {prefill}: TTFT {} ({} prompt + {} to send {} of KV) vs {local} on {decode}",
                if pays_off { "use" } else { "no" },
                format_seconds(split_ttft_seconds),
                format_seconds(remote_prefill_seconds),
                format_seconds(self.kv_transfer_seconds),
                format_bytes(self.kv_transfer_bytes)
            ),
        }
    }
}

/// Whether computing a `options.prompt_tokens` prompt on `prefill` and streaming its KV to
/// `decode` beats computing it on `decode`, with the predicted TTFT both ways.
pub fn decide_prefill_split(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
    prefill: NodeId,
    decode: NodeId,
) -> Result<PrefillSplit> {
    let cost = CostModel::new(model, cluster, options)?;
    for node in [prefill, decode] {
        if node.0 >= cluster.nodes.len() {
            return Err(PlanError::InvalidOptions(format!(
                "node {} does not exist",
                node.0
            )));
        }
    }
    if prefill == decode {
        return Err(PlanError::InvalidOptions(
            "split prefill needs two different nodes".into(),
        ));
    }
    let all = 0..model.num_layers();
    let prompt_tokens = options.prompt_tokens;
    let kv_transfer_bytes = model
        .kv_bytes_per_token()
        .saturating_mul(prompt_tokens as u64);
    // The prefill node keeps only the prompt's KV, for one sequence.
    let prefill_options = PlanOptions {
        context_tokens: prompt_tokens,
        concurrent_sequences: 1,
        ..options.clone()
    };
    let prefill_cost = CostModel::new(model, cluster, &prefill_options)?;
    let (needed_bytes, usable_bytes) = (
        prefill_cost.stage_memory_bytes(&all),
        prefill_cost.usable_bytes(prefill),
    );
    let local_ttft_seconds = cost.stage_prefill_seconds(decode, &all, prompt_tokens);
    let kv_transfer_seconds = cluster
        .link(prefill, decode)
        .transfer_seconds(kv_transfer_bytes as f64);
    let outcome = if needed_bytes > usable_bytes {
        SplitOutcome::PrefillNodeTooSmall {
            needed_bytes,
            usable_bytes,
        }
    } else {
        let remote_prefill_seconds = cost.stage_prefill_seconds(prefill, &all, prompt_tokens);
        SplitOutcome::Possible {
            remote_prefill_seconds,
            split_ttft_seconds: remote_prefill_seconds + kv_transfer_seconds,
            pays_off: kv_transfer_seconds < local_ttft_seconds - remote_prefill_seconds,
        }
    };
    Ok(PrefillSplit {
        prefill_node: cluster.node(prefill).name.clone(),
        decode_node: cluster.node(decode).name.clone(),
        prompt_tokens,
        local_ttft_seconds,
        kv_transfer_bytes,
        kv_transfer_seconds,
        outcome,
    })
}

/// For a model decoded on `decode`, every other node as prefill node: the one with the least
/// split TTFT among those that can hold the model (or, if none can, the first refusal).
/// `None` for a one-node cluster.
pub fn best_prefill_split(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
    decode: NodeId,
) -> Result<Option<PrefillSplit>> {
    let mut best: Option<PrefillSplit> = None;
    for prefill in cluster.node_ids().filter(|&n| n != decode) {
        let split = decide_prefill_split(model, cluster, options, prefill, decode)?;
        let better = match (&best, split.split_ttft_seconds()) {
            (None, _) => true,
            (Some(current), Some(seconds)) => {
                current.split_ttft_seconds().is_none_or(|c| seconds < c)
            }
            (Some(_), None) => false,
        };
        if better {
            best = Some(split);
        }
    }
    Ok(best)
}
