//! The cost model: what a stage of contiguous layers on a node needs (memory) and costs (time
//! per generated token, time for a prompt), and what a hop between nodes costs.
//!
//! Owns: [`PlanOptions`] and every formula the search and the predictions use, in one place so
//! tests can recompute a plan's numbers independently of the search. Does not own the search
//! (`search`) or the output types (`plan`).
//!
//! The formulas (memory-bandwidth roofline for decode, compute/bandwidth roofline for prompts):
//! - stage memory = its layers' bytes + KV for `context_tokens × concurrent_sequences` tokens
//!   of its layers + the embedding table (first stage) + the head (last stage; a copy of the
//!   embedding table when tied and the last stage is not also the first) + the small `other`
//!   tensors (every stage). It must fit in `memory_bytes × (1 − memory_headroom)`.
//! - stage decode seconds = (layer bytes + KV of `prompt_tokens` tokens of its layers + the head
//!   for the last stage) ÷ memory bandwidth: one sequence generating right after its prompt.
//! - stage prompt seconds = max(FLOPs ÷ compute, bytes ÷ bandwidth), with FLOPs = 2 × params
//!   × P, plus 2 × P × (P + 1) × attention width per layer (scores and values, causal), plus
//!   2 × head params (only the last position needs logits).
//! - hop = link latency + bytes ÷ link bandwidth; decode sends one token's hidden state in BF16
//!   between stages, and the last stage sends its row of F32 logits (vocabulary x 4 bytes) back
//!   to the first, which serves the API and samples (`hearth-pipeline`'s executor; a pipeline is
//!   a ring). On a slow link with a large vocabulary that row dominates the hops.
//!
//! Tensor parallelism over `N` GPUs of one host (Megatron-style: attention heads, KV heads and
//! MLP columns/rows split `N` ways, the vocabulary projection split, embeddings and norms
//! replicated):
//! - rank memory = ⌈layer bytes ÷ N⌉ + the embedding table + ⌈head ÷ N⌉ (nothing more when tied:
//!   the replicated embedding table is the head) + `other` + ⌈KV for `context_tokens ×
//!   concurrent_sequences` tokens of all layers ÷ N⌉; it must fit each rank's usable memory.
//! - decode seconds = max over ranks of ((layer bytes + KV of `prompt_tokens` + head as read) ÷ N
//!   ÷ the rank's bandwidth) + [`ALL_REDUCES_PER_LAYER`] × layers × one all-reduce of a BF16
//!   hidden-state row.
//! - all-reduce of `B` bytes over `N` ranks (ring) = 2 × (N − 1) ÷ N × B ÷ interconnect
//!   bandwidth + the interconnect's latency, taken as the per-collective latency (60 µs for
//!   NVLink, what hearth's eager NCCL all-reduce cost per call on 2× H200:
//!   [`crate::Link::NVLINK_4`]). The gather of the vocabulary-split logits (one more
//!   collective per token, against 2 × layers) is not counted.
//! - time to first token = max over ranks of (prompt FLOPs ÷ N ÷ compute, prompt bytes ÷ N ÷
//!   bandwidth) + 2 × layers all-reduces of the prompt's hidden states (`prompt_tokens` rows).

use std::ops::Range;

use serde::Serialize;

use crate::cluster::{Cluster, Link, NodeId};
use crate::error::{PlanError, Result};
use crate::model::ModelShape;

/// Part of each node's memory the planner leaves free: activations and scratch buffers,
/// allocator fragmentation, the runtime itself (CUDA context, Metal heaps).
pub const DEFAULT_MEMORY_HEADROOM: f64 = 0.10;

/// Bytes per element of the hidden state sent between stages (BF16).
pub const ACTIVATION_BYTES_PER_ELEMENT: u64 = 2;

/// Bytes of one logit in the row the last stage sends back to the first (F32).
pub const LOGIT_BYTES: u64 = 4;

/// All-reduces per layer under tensor parallelism: one after attention's output projection,
/// one after the MLP's down projection.
pub const ALL_REDUCES_PER_LAYER: usize = 2;

/// What the model must serve, beyond its weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanOptions {
    /// Context each sequence may reach; KV is reserved for all of it.
    pub context_tokens: usize,
    /// Sequences whose full-context KV must fit at once.
    pub concurrent_sequences: usize,
    /// Prompt length for the time-to-first-token prediction; decode is predicted at this
    /// context (the KV read per token grows with it).
    pub prompt_tokens: usize,
    /// Fraction of each node's memory kept free, in `[0, 0.9]`.
    pub memory_headroom: f64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            context_tokens: 4096,
            concurrent_sequences: 1,
            prompt_tokens: 512,
            memory_headroom: DEFAULT_MEMORY_HEADROOM,
        }
    }
}

impl PlanOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PlanError::InvalidOptions(m));
        if self.context_tokens == 0 || self.concurrent_sequences == 0 || self.prompt_tokens == 0 {
            return bad("context, sequences and prompt length must each be at least 1".into());
        }
        if self.prompt_tokens > self.context_tokens {
            return bad(format!(
                "a {}-token prompt does not fit a {}-token context",
                self.prompt_tokens, self.context_tokens
            ));
        }
        if !(0.0..=0.9).contains(&self.memory_headroom) {
            return bad(format!(
                "memory headroom {} is outside [0, 0.9]",
                self.memory_headroom
            ));
        }
        Ok(())
    }
}

/// The formulas above over one (model, cluster, options), with prefix sums over layers.
pub(crate) struct CostModel<'a> {
    pub model: &'a ModelShape,
    pub cluster: &'a Cluster,
    pub options: &'a PlanOptions,
    /// `prefix_bytes[i]` = bytes of layers `0..i`.
    prefix_bytes: Vec<u128>,
    prefix_params: Vec<u128>,
}

fn clamp_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

impl<'a> CostModel<'a> {
    /// Validates all three inputs.
    pub fn new(
        model: &'a ModelShape,
        cluster: &'a Cluster,
        options: &'a PlanOptions,
    ) -> Result<Self> {
        model.validate()?;
        cluster.validate()?;
        options.validate()?;
        let prefix = |field: fn(&crate::model::WeightBlock) -> u64| {
            let mut sums = vec![0u128; model.layers.len() + 1];
            for (idx, layer) in model.layers.iter().enumerate() {
                sums[idx + 1] = sums[idx] + field(layer) as u128;
            }
            sums
        };
        let prefix_bytes = prefix(|l| l.num_bytes);
        let prefix_params = prefix(|l| l.num_params);
        Ok(Self {
            model,
            cluster,
            options,
            prefix_bytes,
            prefix_params,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// Memory a node may fill: its memory less the headroom.
    pub fn usable_bytes(&self, node: NodeId) -> u64 {
        (self.cluster.node(node).memory_bytes as f64 * (1.0 - self.options.memory_headroom)).floor()
            as u64
    }

    fn layer_bytes(&self, layers: &Range<usize>) -> u128 {
        self.prefix_bytes[layers.end] - self.prefix_bytes[layers.start]
    }

    fn layer_params(&self, layers: &Range<usize>) -> u128 {
        self.prefix_params[layers.end] - self.prefix_params[layers.start]
    }

    fn kv_bytes(&self, num_layers: usize, num_tokens: usize) -> u128 {
        self.model.kv_bytes_per_token_per_layer as u128 * num_layers as u128 * num_tokens as u128
    }

    /// Memory held by a stage of `layers` (first stage iff it starts at 0, last iff it ends at
    /// the last layer).
    pub fn stage_memory_bytes(&self, layers: &Range<usize>) -> u64 {
        let model = self.model;
        let (holds_embedding, holds_head) = (layers.start == 0, layers.end == self.num_layers());
        let mut bytes = self.layer_bytes(layers) + model.other.num_bytes as u128;
        if holds_embedding {
            bytes += model.embedding.num_bytes as u128;
        }
        if holds_head {
            bytes += match model.head {
                Some(head) => head.num_bytes as u128,
                None if holds_embedding => 0,
                None => model.embedding.num_bytes as u128,
            };
        }
        let kv_tokens = self
            .options
            .context_tokens
            .saturating_mul(self.options.concurrent_sequences);
        clamp_u64(bytes + self.kv_bytes(layers.len(), kv_tokens))
    }

    pub fn fits(&self, node: NodeId, layers: &Range<usize>) -> bool {
        self.stage_memory_bytes(layers) <= self.usable_bytes(node)
    }

    /// Bytes a stage reads per generated token.
    pub fn stage_decode_bytes(&self, layers: &Range<usize>) -> f64 {
        let mut bytes =
            self.layer_bytes(layers) + self.kv_bytes(layers.len(), self.options.prompt_tokens);
        if layers.end == self.num_layers() {
            bytes += self.model.head_as_read().num_bytes as u128;
        }
        bytes as f64
    }

    /// Seconds a stage takes per generated token.
    pub fn stage_decode_seconds(&self, node: NodeId, layers: &Range<usize>) -> f64 {
        self.stage_decode_bytes(layers) / self.cluster.node(node).bandwidth_bytes_per_s
    }

    /// Seconds a stage takes to compute a `prompt_tokens` prompt on `node`.
    pub fn stage_prefill_seconds(
        &self,
        node: NodeId,
        layers: &Range<usize>,
        prompt_tokens: usize,
    ) -> f64 {
        let spec = self.cluster.node(node);
        let (flops, bytes) = self.prefill_flops_and_bytes(layers, prompt_tokens);
        (flops / spec.flops_per_s).max(bytes / spec.bandwidth_bytes_per_s)
    }

    /// FLOPs and bytes read of a `prompt_tokens` prompt through `layers` (and the head when
    /// they end at the last layer).
    fn prefill_flops_and_bytes(&self, layers: &Range<usize>, prompt_tokens: usize) -> (f64, f64) {
        let tokens = prompt_tokens as f64;
        let mut flops = 2.0 * self.layer_params(layers) as f64 * tokens
            + 2.0
                * tokens
                * (tokens + 1.0)
                * self.model.attention_width as f64
                * layers.len() as f64;
        let mut bytes =
            self.layer_bytes(layers) as f64 + self.kv_bytes(layers.len(), prompt_tokens) as f64;
        if layers.end == self.num_layers() {
            let head = self.model.head_as_read();
            flops += 2.0 * head.num_params as f64;
            bytes += head.num_bytes as f64;
        }
        (flops, bytes)
    }

    /// Memory one rank of `num_ranks`-way tensor parallelism holds (module comment).
    pub fn tensor_parallel_rank_memory_bytes(&self, num_ranks: usize) -> u64 {
        let ranks = num_ranks.max(1) as u128;
        let model = self.model;
        let all = 0..self.num_layers();
        let kv_tokens = self
            .options
            .context_tokens
            .saturating_mul(self.options.concurrent_sequences);
        let head_share = model
            .head
            .map_or(0, |h| (h.num_bytes as u128).div_ceil(ranks));
        clamp_u64(
            self.layer_bytes(&all).div_ceil(ranks)
                + model.embedding.num_bytes as u128
                + head_share
                + model.other.num_bytes as u128
                + self.kv_bytes(all.len(), kv_tokens).div_ceil(ranks),
        )
    }

    /// Seconds one rank on `node` spends reading its share per generated token (collectives
    /// not included).
    pub fn tensor_parallel_rank_decode_seconds(&self, node: NodeId, num_ranks: usize) -> f64 {
        let all = 0..self.num_layers();
        self.stage_decode_bytes(&all)
            / num_ranks.max(1) as f64
            / self.cluster.node(node).bandwidth_bytes_per_s
    }

    /// Seconds one rank on `node` spends computing its share of a `prompt_tokens` prompt
    /// (collectives not included).
    pub fn tensor_parallel_rank_prefill_seconds(
        &self,
        node: NodeId,
        num_ranks: usize,
        prompt_tokens: usize,
    ) -> f64 {
        let spec = self.cluster.node(node);
        let ranks = num_ranks.max(1) as f64;
        let (flops, bytes) = self.prefill_flops_and_bytes(&(0..self.num_layers()), prompt_tokens);
        (flops / ranks / spec.flops_per_s).max(bytes / ranks / spec.bandwidth_bytes_per_s)
    }

    /// All-reduces per generated token: [`ALL_REDUCES_PER_LAYER`] × layers.
    pub fn all_reduces_per_token(&self) -> usize {
        ALL_REDUCES_PER_LAYER * self.num_layers()
    }

    /// Seconds per generated token spent in collectives: [`Self::all_reduces_per_token`]
    /// all-reduces of one BF16 hidden-state row over `interconnect`.
    pub fn tensor_parallel_link_seconds_per_token(
        &self,
        interconnect: Link,
        num_ranks: usize,
    ) -> f64 {
        let row_bytes = (self.model.hidden_size * ACTIVATION_BYTES_PER_ELEMENT) as f64;
        self.all_reduces_per_token() as f64 * all_reduce_seconds(interconnect, num_ranks, row_bytes)
    }

    /// Seconds per generated token of tensor parallelism over `ranks`: the slowest rank's read
    /// plus the collectives.
    pub fn tensor_parallel_decode_seconds(&self, ranks: &[NodeId], interconnect: Link) -> f64 {
        let slowest = ranks
            .iter()
            .map(|&node| self.tensor_parallel_rank_decode_seconds(node, ranks.len()))
            .fold(0.0, f64::max);
        slowest + self.tensor_parallel_link_seconds_per_token(interconnect, ranks.len())
    }

    /// Time to first token of tensor parallelism over `ranks`: the slowest rank's share of the
    /// prompt plus the collectives over the prompt's hidden states.
    pub fn tensor_parallel_ttft_seconds(&self, ranks: &[NodeId], interconnect: Link) -> f64 {
        let prompt = self.options.prompt_tokens;
        let slowest = ranks
            .iter()
            .map(|&node| self.tensor_parallel_rank_prefill_seconds(node, ranks.len(), prompt))
            .fold(0.0, f64::max);
        let rows_bytes =
            (self.model.hidden_size * ACTIVATION_BYTES_PER_ELEMENT) as f64 * prompt as f64;
        slowest
            + self.all_reduces_per_token() as f64
                * all_reduce_seconds(interconnect, ranks.len(), rows_bytes)
    }

    /// One token's hidden state from `from` to `to`.
    pub fn decode_hop_seconds(&self, from: NodeId, to: NodeId) -> f64 {
        let bytes = self.model.hidden_size * ACTIVATION_BYTES_PER_ELEMENT;
        self.cluster.link(from, to).transfer_seconds(bytes as f64)
    }

    /// A whole prompt's hidden states from `from` to `to`.
    pub fn prefill_hop_seconds(&self, from: NodeId, to: NodeId, prompt_tokens: usize) -> f64 {
        let bytes = self.model.hidden_size as f64
            * ACTIVATION_BYTES_PER_ELEMENT as f64
            * prompt_tokens as f64;
        self.cluster.link(from, to).transfer_seconds(bytes)
    }

    /// The last stage's row of logits back to the first stage, which samples.
    pub fn return_hop_seconds(&self, last: NodeId, first: NodeId) -> f64 {
        let bytes = self.model.vocab_size() * LOGIT_BYTES;
        self.cluster.link(last, first).transfer_seconds(bytes as f64)
    }

    /// Seconds per generated token of a whole placement: stages, hops between them and the
    /// token's return to the first stage.
    pub fn placement_decode_seconds(&self, stages: &[(NodeId, Range<usize>)]) -> f64 {
        let stage_seconds: f64 = stages
            .iter()
            .map(|(node, layers)| self.stage_decode_seconds(*node, layers))
            .sum();
        stage_seconds + self.placement_link_seconds(stages)
    }

    /// The link part of [`Self::placement_decode_seconds`].
    pub fn placement_link_seconds(&self, stages: &[(NodeId, Range<usize>)]) -> f64 {
        if stages.len() < 2 {
            return 0.0;
        }
        let hops: f64 = stages
            .windows(2)
            .map(|pair| self.decode_hop_seconds(pair[0].0, pair[1].0))
            .sum();
        hops + self.return_hop_seconds(stages[stages.len() - 1].0, stages[0].0)
    }

    /// Time to first token of a placement: each stage computes the whole prompt in turn, the
    /// hidden states cross each hop, and the first token returns to the first stage.
    pub fn placement_ttft_seconds(&self, stages: &[(NodeId, Range<usize>)]) -> f64 {
        let prompt = self.options.prompt_tokens;
        let compute: f64 = stages
            .iter()
            .map(|(node, layers)| self.stage_prefill_seconds(*node, layers, prompt))
            .sum();
        let hops: f64 = stages
            .windows(2)
            .map(|pair| self.prefill_hop_seconds(pair[0].0, pair[1].0, prompt))
            .sum();
        let back = if stages.len() > 1 {
            self.return_hop_seconds(stages[stages.len() - 1].0, stages[0].0)
        } else {
            0.0
        };
        compute + hops + back
    }
}

/// One ring all-reduce of `num_bytes` over `num_ranks` ranks joined by `interconnect`:
/// 2 × (N − 1) ÷ N × bytes ÷ bandwidth, plus the interconnect's latency per collective.
/// Zero for one rank (nothing to reduce).
pub fn all_reduce_seconds(interconnect: Link, num_ranks: usize, num_bytes: f64) -> f64 {
    if num_ranks < 2 {
        return 0.0;
    }
    let ranks = num_ranks as f64;
    2.0 * (ranks - 1.0) / ranks * num_bytes / interconnect.bandwidth_bytes_per_s
        + interconnect.latency_s
}
