//! The planner's answer: where a model runs, how fast it is predicted to be, and why.
//!
//! Owns: [`plan`] (single node, pipeline or tensor parallel, by predicted time per token), the
//! output types ([`Plan`], [`Placement`], [`Stage`], [`TensorParallelRank`], [`Prediction`]) and
//! the reasons given ([`PlanNote`]). Does not own the formulas (`cost`) or the search (`search`).
//!
//! Rules: the placement with the least predicted time per generated token wins; a pipeline or a
//! tensor-parallel placement is refused (and the note says so, with both predictions) unless it
//! is strictly faster than the best single node the model fits on, and tensor parallelism is
//! chosen over a pipeline only when strictly faster. So a plan is never predicted slower than
//! any single node that holds the model. Tensor parallelism is considered only over the GPUs of
//! one [`crate::Host`] whose interconnect allows it ([`crate::Host::allows_tensor_parallel`]), at
//! degrees that divide both the attention and the KV heads.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

use crate::cluster::{Link, NodeId, TENSOR_PARALLEL_MIN_LINK_BANDWIDTH};
use crate::cost::{CostModel, PlanOptions};
use crate::error::{PlanError, Result};
use crate::model::ModelShape;
use crate::search::{
    best_pipeline, best_single_node, best_tensor_parallel, heads_divide, Candidate,
    TensorParallelCandidate,
};
use crate::units::{format_bandwidth, format_bytes};
use crate::Cluster;

/// Where the layers go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Placement {
    SingleNode {
        stage: Stage,
    },
    /// Stages in order: the first holds the embedding table, the last the head.
    Pipeline {
        stages: Vec<Stage>,
    },
    /// Every layer split across the GPUs of one host: each rank holds `1/N` of every layer's
    /// heads and MLP columns/rows, `1/N` of the KV cache and of the vocabulary projection, and a
    /// copy of the embedding table and norms; two all-reduces per layer join them.
    TensorParallel {
        host: String,
        /// In rank order; every rank holds the same share.
        ranks: Vec<TensorParallelRank>,
        /// The link the collectives run over.
        interconnect: Link,
        all_reduces_per_token: usize,
    },
}

impl Placement {
    /// The stages, in order: one for a single node, several for a pipeline, none for tensor
    /// parallelism (whose ranks each hold a share of every layer: [`Placement::TensorParallel`]).
    pub fn stages(&self) -> &[Stage] {
        match self {
            Placement::SingleNode { stage } => std::slice::from_ref(stage),
            Placement::Pipeline { stages } => stages,
            Placement::TensorParallel { .. } => &[],
        }
    }

    /// `single node`, `N-stage pipeline` or `tensor parallel x N`.
    pub fn describe(&self) -> String {
        match self {
            Placement::SingleNode { .. } => "single node".to_string(),
            Placement::Pipeline { stages } => format!("{}-stage pipeline", stages.len()),
            Placement::TensorParallel { ranks, .. } => format!("tensor parallel x{}", ranks.len()),
        }
    }
}

/// One GPU of a tensor-parallel placement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorParallelRank {
    pub rank: usize,
    pub node: NodeId,
    pub node_name: String,
    /// Attention heads (and KV heads) of every layer this rank computes.
    pub attention_heads: u64,
    pub kv_heads: u64,
    /// Its share of the weights and KV cache, plus the replicated embedding table and norms.
    pub memory_bytes: u64,
    /// The node's memory less the headroom.
    pub usable_memory_bytes: u64,
    /// Predicted seconds per generated token reading its share (collectives not included).
    pub predicted_seconds: f64,
    /// Predicted seconds computing its share of the prompt (collectives not included).
    pub prefill_seconds: f64,
}

/// Contiguous layers on one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub node: NodeId,
    pub node_name: String,
    pub layers: Range<usize>,
    pub holds_embedding: bool,
    pub holds_head: bool,
    /// Weights + KV cache (+ embedding/head) this stage holds.
    pub memory_bytes: u64,
    /// The node's memory less the headroom.
    pub usable_memory_bytes: u64,
    /// Predicted seconds per generated token spent in this stage (hops not included).
    pub predicted_seconds: f64,
    /// Predicted seconds this stage spends on the prompt.
    pub prefill_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Generation, one sequence at a context of `prompt_tokens`.
    pub seconds_per_token: f64,
    pub tokens_per_second: f64,
    /// Of `seconds_per_token`, the time on links.
    pub link_seconds_per_token: f64,
    /// Time to first token for a `prompt_tokens` prompt.
    pub ttft_seconds: f64,
    pub prompt_tokens: usize,
    /// Σ stage power × stage time, when every used node's power is known (idle power of the
    /// waiting stages not counted).
    pub joules_per_token: Option<f64>,
}

/// Why the plan is what it is: choices, refusals, unused nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanNote {
    /// The model fits on `node` and nothing predicted faster exists.
    SingleNodeChosen {
        node: String,
        tokens_per_second: f64,
        only_node: bool,
    },
    /// A pipeline that could run was predicted slower than the best single node.
    SlowerPipelineRefused {
        num_stages: usize,
        pipeline_tokens_per_second: f64,
        node: String,
        single_tokens_per_second: f64,
    },
    /// A node with more bandwidth than the chosen single node cannot hold the model alone.
    FasterNodeTooSmall {
        node: String,
        bandwidth_bytes_per_s: f64,
        needed_bytes: u64,
        usable_bytes: u64,
    },
    /// The pipeline was chosen over the best single node (if any fits).
    PipelineChosen {
        num_stages: usize,
        tokens_per_second: f64,
        best_single: Option<SingleNodeOption>,
    },
    /// No node holds the whole model alone.
    FitsNoSingleNode {
        needed_bytes: u64,
        largest_node: String,
        largest_usable_bytes: u64,
    },
    /// A node holds no layers in the chosen pipeline.
    NodeUnused { node: String },
    /// A node is not a rank of the chosen tensor-parallel placement.
    NodeNotARank { node: String },
    /// Tensor parallelism was chosen: faster than the best single node (if any fits) and the
    /// best pipeline (if any fits).
    TensorParallelChosen {
        host: String,
        num_ranks: usize,
        tokens_per_second: f64,
        interconnect_bandwidth_bytes_per_s: f64,
        all_reduces_per_token: usize,
        link_seconds_per_token: f64,
        best_single: Option<SingleNodeOption>,
        pipeline_tokens_per_second: Option<f64>,
    },
    /// A tensor-parallel placement that could run was predicted no faster than the one chosen.
    SlowerTensorParallelRefused {
        host: String,
        num_ranks: usize,
        tensor_parallel_tokens_per_second: f64,
        /// `h100-sxm alone` or `the 2-stage pipeline`.
        chosen: String,
        chosen_tokens_per_second: f64,
    },
    /// A host's GPUs do not split the heads evenly: tensor parallelism there uses fewer GPUs or
    /// none.
    TensorParallelHeadsDoNotDivide {
        host: String,
        num_gpus: usize,
        num_attention_heads: u64,
        num_kv_heads: u64,
    },
    /// A host's interconnect is too slow for tensor parallelism.
    TensorParallelLinkTooSlow {
        host: String,
        bandwidth_bytes_per_s: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SingleNodeOption {
    pub node: String,
    pub tokens_per_second: f64,
}

impl fmt::Display for PlanNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanNote::SingleNodeChosen { node, tokens_per_second, only_node: true } => {
                write!(f, "runs on {node} alone at a predicted {tokens_per_second:.1} tok/s")
            }
            PlanNote::SingleNodeChosen { node, tokens_per_second, only_node: false } => write!(
                f,
                "chose {node} alone: the fastest placement, predicted {tokens_per_second:.1} tok/s"
            ),
            PlanNote::SlowerPipelineRefused { num_stages, pipeline_tokens_per_second, node, single_tokens_per_second } => {
                write!(
                    f,
                    "refused {num_stages}-stage split: predicted {pipeline_tokens_per_second:.1} tok/s < \
                     {single_tokens_per_second:.1} tok/s on {node} alone, and the model fits there"
                )
            }
            PlanNote::FasterNodeTooSmall { node, bandwidth_bytes_per_s, needed_bytes, usable_bytes } => write!(
                f,
                "{node} has more bandwidth ({}) but cannot hold the model alone: needs {}, can use {}",
                format_bandwidth(*bandwidth_bytes_per_s),
                format_bytes(*needed_bytes),
                format_bytes(*usable_bytes)
            ),
            PlanNote::PipelineChosen { num_stages, tokens_per_second, best_single: Some(single) } => write!(
                f,
                "chose a {num_stages}-stage pipeline: predicted {tokens_per_second:.1} tok/s > {:.1} tok/s on {} alone",
                single.tokens_per_second, single.node
            ),
            PlanNote::PipelineChosen { num_stages, tokens_per_second, best_single: None } => write!(
                f,
                "chose a {num_stages}-stage pipeline: predicted {tokens_per_second:.1} tok/s (no single node holds the model)"
            ),
            PlanNote::FitsNoSingleNode { needed_bytes, largest_node, largest_usable_bytes } => write!(
                f,
                "no single node holds the model: it needs {}, the largest node ({largest_node}) can use {}",
                format_bytes(*needed_bytes),
                format_bytes(*largest_usable_bytes)
            ),
            PlanNote::NodeUnused { node } => {
                write!(f, "{node} holds no layers: the pipeline is predicted faster without it")
            }
            PlanNote::NodeNotARank { node } => write!(
                f,
                "{node} is not a rank: tensor parallelism is predicted faster without it (or \
                 the heads do not split over more GPUs, or it lacks the memory)"
            ),
            PlanNote::TensorParallelChosen {
                host,
                num_ranks,
                tokens_per_second,
                interconnect_bandwidth_bytes_per_s,
                all_reduces_per_token,
                link_seconds_per_token,
                best_single,
                pipeline_tokens_per_second,
            } => {
                write!(
                    f,
                    "tensor parallel over {num_ranks} GPUs of {host}: link {} makes the \
                     {all_reduces_per_token} all-reduces per token cost {:.2} ms; predicted \
                     {tokens_per_second:.1} tok/s",
                    format_bandwidth(*interconnect_bandwidth_bytes_per_s),
                    link_seconds_per_token * 1e3
                )?;
                match best_single {
                    Some(single) => write!(
                        f,
                        " > {:.1} tok/s on {} alone",
                        single.tokens_per_second, single.node
                    )?,
                    None => write!(f, " (no single GPU holds the model)")?,
                }
                match pipeline_tokens_per_second {
                    Some(pipeline) => {
                        write!(f, "; the best pipeline would be {pipeline:.1} tok/s")
                    }
                    None => Ok(()),
                }
            }
            PlanNote::SlowerTensorParallelRefused {
                host,
                num_ranks,
                tensor_parallel_tokens_per_second,
                chosen,
                chosen_tokens_per_second,
            } => write!(
                f,
                "refused tensor parallel over {num_ranks} GPUs of {host}: predicted \
                 {tensor_parallel_tokens_per_second:.1} tok/s, not faster than \
                 {chosen_tokens_per_second:.1} tok/s on {chosen}"
            ),
            PlanNote::TensorParallelHeadsDoNotDivide {
                host,
                num_gpus,
                num_attention_heads,
                num_kv_heads,
            } => write!(
                f,
                "{num_attention_heads} attention heads and {num_kv_heads} KV heads do not split \
                 evenly over the {num_gpus} GPUs of {host}: tensor parallelism there uses fewer \
                 GPUs or none"
            ),
            PlanNote::TensorParallelLinkTooSlow {
                host,
                bandwidth_bytes_per_s,
            } => write!(
                f,
                "no tensor parallelism on {host}: its GPUs are joined at {}, below the {} it \
                 needs; pipeline stages only",
                format_bandwidth(*bandwidth_bytes_per_s),
                format_bandwidth(TENSOR_PARALLEL_MIN_LINK_BANDWIDTH)
            ),
        }
    }
}

/// A placement with its predictions and reasons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub model: String,
    pub placement: Placement,
    pub prediction: Prediction,
    pub notes: Vec<PlanNote>,
    pub options: PlanOptions,
}

/// Places `model` on `cluster`: the placement with the least predicted time per token, never a
/// pipeline or tensor-parallel placement slower than a single node that holds the model. Errors
/// when nothing fits or an input is invalid.
pub fn plan(model: &ModelShape, cluster: &Cluster, options: &PlanOptions) -> Result<Plan> {
    let cost = CostModel::new(model, cluster, options)?;
    let single = best_single_node(&cost).map(|c| rescore(&cost, c));
    let pipeline = best_pipeline(&cost).map(|c| rescore(&cost, c));
    let tensor = best_tensor_parallel(&cost);
    let whole_model_bytes = cost.stage_memory_bytes(&(0..model.num_layers()));
    let tokens_per_second = |seconds: f64| 1.0 / seconds;
    // Single node first; a later kind replaces the current winner only when strictly faster.
    let mut winner: Option<(Chosen, f64)> = single
        .as_ref()
        .map(|s| (Chosen::SingleNode, s.seconds_per_token));
    for (kind, seconds) in [
        (
            Chosen::Pipeline,
            pipeline.as_ref().map(|p| p.seconds_per_token),
        ),
        (
            Chosen::TensorParallel,
            tensor.as_ref().map(|t| t.seconds_per_token),
        ),
    ] {
        if let Some(seconds) = seconds {
            if winner.is_none_or(|(_, best)| seconds < best) {
                winner = Some((kind, seconds));
            }
        }
    }
    let Some((winner, _)) = winner else {
        let (largest, largest_usable) = largest_node(&cost);
        return Err(PlanError::DoesNotFit {
            model: model.name.clone(),
            needed_bytes: whole_model_bytes,
            context_tokens: options.context_tokens,
            concurrent_sequences: options.concurrent_sequences,
            headroom_fraction: options.memory_headroom,
            largest_node: cluster.node(largest).name.clone(),
            largest_usable_bytes: largest_usable,
            total_usable_bytes: cluster
                .node_ids()
                .map(|n| cost.usable_bytes(n))
                .fold(0, u64::saturating_add),
        });
    };
    let best_single = single.as_ref().map(|s| SingleNodeOption {
        node: cluster.node(s.stages[0].0).name.clone(),
        tokens_per_second: tokens_per_second(s.seconds_per_token),
    });
    let refuse_tensor = |chosen: String, chosen_seconds: f64| {
        tensor
            .as_ref()
            .map(|t| PlanNote::SlowerTensorParallelRefused {
                host: cluster.hosts[t.host].name.clone(),
                num_ranks: t.ranks.len(),
                tensor_parallel_tokens_per_second: tokens_per_second(t.seconds_per_token),
                chosen,
                chosen_tokens_per_second: tokens_per_second(chosen_seconds),
            })
    };
    let mut notes = Vec::new();
    if best_single.is_none() {
        let (largest, largest_usable) = largest_node(&cost);
        notes.push(PlanNote::FitsNoSingleNode {
            needed_bytes: whole_model_bytes,
            largest_node: cluster.node(largest).name.clone(),
            largest_usable_bytes: largest_usable,
        });
    }
    let plan = match (winner, &single, &pipeline, &tensor) {
        (Chosen::SingleNode, Some(single), _, _) => {
            let node = single.stages[0].0;
            let name = cluster.node(node).name.clone();
            notes.push(PlanNote::SingleNodeChosen {
                node: name.clone(),
                tokens_per_second: tokens_per_second(single.seconds_per_token),
                only_node: cluster.nodes.len() == 1,
            });
            if let Some(pipeline) = &pipeline {
                notes.push(PlanNote::SlowerPipelineRefused {
                    num_stages: pipeline.stages.len(),
                    pipeline_tokens_per_second: tokens_per_second(pipeline.seconds_per_token),
                    node: name.clone(),
                    single_tokens_per_second: tokens_per_second(single.seconds_per_token),
                });
            }
            notes.extend(refuse_tensor(
                format!("{name} alone"),
                single.seconds_per_token,
            ));
            let bandwidth = cluster.node(node).bandwidth_bytes_per_s;
            for other in cluster
                .node_ids()
                .filter(|&n| cluster.node(n).bandwidth_bytes_per_s > bandwidth)
            {
                notes.push(PlanNote::FasterNodeTooSmall {
                    node: cluster.node(other).name.clone(),
                    bandwidth_bytes_per_s: cluster.node(other).bandwidth_bytes_per_s,
                    needed_bytes: whole_model_bytes,
                    usable_bytes: cost.usable_bytes(other),
                });
            }
            build_plan(&cost, single, Vec::new())
        }
        (Chosen::Pipeline, _, Some(pipeline), _) => {
            notes.push(PlanNote::PipelineChosen {
                num_stages: pipeline.stages.len(),
                tokens_per_second: tokens_per_second(pipeline.seconds_per_token),
                best_single: best_single.clone(),
            });
            notes.extend(refuse_tensor(
                format!("the {}-stage pipeline", pipeline.stages.len()),
                pipeline.seconds_per_token,
            ));
            for node in cluster
                .node_ids()
                .filter(|n| pipeline.stages.iter().all(|(used, _)| used != n))
            {
                notes.push(PlanNote::NodeUnused {
                    node: cluster.node(node).name.clone(),
                });
            }
            build_plan(&cost, pipeline, Vec::new())
        }
        (Chosen::TensorParallel, _, _, Some(tensor)) => {
            let interconnect = cluster.hosts[tensor.host].interconnect;
            notes.push(PlanNote::TensorParallelChosen {
                host: cluster.hosts[tensor.host].name.clone(),
                num_ranks: tensor.ranks.len(),
                tokens_per_second: tokens_per_second(tensor.seconds_per_token),
                interconnect_bandwidth_bytes_per_s: interconnect.bandwidth_bytes_per_s,
                all_reduces_per_token: cost.all_reduces_per_token(),
                link_seconds_per_token: cost
                    .tensor_parallel_link_seconds_per_token(interconnect, tensor.ranks.len()),
                best_single: best_single.clone(),
                pipeline_tokens_per_second: pipeline
                    .as_ref()
                    .map(|p| tokens_per_second(p.seconds_per_token)),
            });
            for node in cluster.node_ids().filter(|n| !tensor.ranks.contains(n)) {
                notes.push(PlanNote::NodeNotARank {
                    node: cluster.node(node).name.clone(),
                });
            }
            build_tensor_parallel_plan(&cost, tensor)
        }
        _ => unreachable!("the winner is one of the candidates found"),
    };
    notes.extend(tensor_parallel_host_notes(&cost));
    Ok(Plan { notes, ..plan })
}

/// Which kind of candidate [`plan`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chosen {
    SingleNode,
    Pipeline,
    TensorParallel,
}

/// Why hosts of several GPUs get no (or less) tensor parallelism: a slow interconnect, or head
/// counts their GPU count does not divide.
fn tensor_parallel_host_notes(cost: &CostModel) -> Vec<PlanNote> {
    let model = cost.model;
    let mut notes = Vec::new();
    for host in cost.cluster.hosts.iter().filter(|h| h.nodes.len() >= 2) {
        if !host.allows_tensor_parallel() {
            notes.push(PlanNote::TensorParallelLinkTooSlow {
                host: host.name.clone(),
                bandwidth_bytes_per_s: host.interconnect.bandwidth_bytes_per_s,
            });
        } else if !heads_divide(cost, host.nodes.len()) {
            notes.push(PlanNote::TensorParallelHeadsDoNotDivide {
                host: host.name.clone(),
                num_gpus: host.nodes.len(),
                num_attention_heads: model.num_attention_heads,
                num_kv_heads: model.num_kv_heads,
            });
        }
    }
    notes
}

/// The plan for a tensor-parallel candidate, with the same formulas the search used.
fn build_tensor_parallel_plan(cost: &CostModel, chosen: &TensorParallelCandidate) -> Plan {
    let host = &cost.cluster.hosts[chosen.host];
    let num_ranks = chosen.ranks.len();
    let prompt_tokens = cost.options.prompt_tokens;
    let ranks: Vec<TensorParallelRank> = chosen
        .ranks
        .iter()
        .enumerate()
        .map(|(rank, &node)| TensorParallelRank {
            rank,
            node,
            node_name: cost.cluster.node(node).name.clone(),
            attention_heads: cost.model.num_attention_heads / num_ranks as u64,
            kv_heads: cost.model.num_kv_heads / num_ranks as u64,
            memory_bytes: cost.tensor_parallel_rank_memory_bytes(num_ranks),
            usable_memory_bytes: cost.usable_bytes(node),
            predicted_seconds: cost.tensor_parallel_rank_decode_seconds(node, num_ranks),
            prefill_seconds: cost.tensor_parallel_rank_prefill_seconds(
                node,
                num_ranks,
                prompt_tokens,
            ),
        })
        .collect();
    let seconds_per_token = cost.tensor_parallel_decode_seconds(&chosen.ranks, host.interconnect);
    // Every rank is busy for the whole token (reading, then in collectives).
    let joules_per_token = chosen
        .ranks
        .iter()
        .map(|&n| {
            cost.cluster
                .node(n)
                .power_watts
                .map(|w| w * seconds_per_token)
        })
        .sum::<Option<f64>>();
    Plan {
        model: cost.model.name.clone(),
        placement: Placement::TensorParallel {
            host: host.name.clone(),
            ranks,
            interconnect: host.interconnect,
            all_reduces_per_token: cost.all_reduces_per_token(),
        },
        prediction: Prediction {
            seconds_per_token,
            tokens_per_second: 1.0 / seconds_per_token,
            link_seconds_per_token: cost
                .tensor_parallel_link_seconds_per_token(host.interconnect, num_ranks),
            ttft_seconds: cost.tensor_parallel_ttft_seconds(&chosen.ranks, host.interconnect),
            prompt_tokens,
            joules_per_token,
        },
        notes: Vec::new(),
        options: cost.options.clone(),
    }
}

/// The prediction for a placement chosen by hand (`hearth serve --stages`, `hearth bench
/// --stages`): the same formulas and report as [`plan`], without the search and without
/// refusing a placement slower than one node. Fails when the stages do not tile the model's
/// layers in order or name a node the cluster lacks; memory is not checked (the stages exist).
pub fn evaluate_placement(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
    stages: &[(NodeId, Range<usize>)],
) -> Result<Plan> {
    let cost = CostModel::new(model, cluster, options)?;
    let describe = || {
        stages
            .iter()
            .map(|(node, layers)| format!("node {} {}..{}", node.0, layers.start, layers.end))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut next_layer = 0;
    for (node, layers) in stages {
        if node.0 >= cluster.nodes.len() {
            return Err(PlanError::InvalidPlacement(format!(
                "[{}]: node {} does not exist ({} nodes)",
                describe(),
                node.0,
                cluster.nodes.len()
            )));
        }
        if layers.start != next_layer || layers.end < layers.start {
            return Err(PlanError::InvalidPlacement(format!(
                "[{}]: stages must cover layers 0..{} contiguously, in order",
                describe(),
                model.num_layers()
            )));
        }
        next_layer = layers.end;
    }
    if stages.is_empty() || next_layer != model.num_layers() {
        return Err(PlanError::InvalidPlacement(format!(
            "[{}]: stages must cover layers 0..{} contiguously, in order",
            describe(),
            model.num_layers()
        )));
    }
    let chosen = rescore(
        &cost,
        Candidate {
            seconds_per_token: 0.0,
            stages: stages.to_vec(),
        },
    );
    Ok(build_plan(&cost, &chosen, Vec::new()))
}

/// Recomputes a candidate's cost with the same formula for every candidate, so single nodes
/// and pipelines are compared on equal terms.
fn rescore(cost: &CostModel, candidate: Candidate) -> Candidate {
    Candidate {
        seconds_per_token: cost.placement_decode_seconds(&candidate.stages),
        stages: candidate.stages,
    }
}

/// The node with the most usable memory (ties: the lowest id).
fn largest_node(cost: &CostModel) -> (NodeId, u64) {
    cost.cluster
        .node_ids()
        .map(|n| (n, cost.usable_bytes(n)))
        .fold(
            (NodeId(0), 0),
            |best, next| if next.1 > best.1 { next } else { best },
        )
}

fn build_plan(cost: &CostModel, chosen: &Candidate, notes: Vec<PlanNote>) -> Plan {
    let num_layers = cost.num_layers();
    let prompt_tokens = cost.options.prompt_tokens;
    let stages: Vec<Stage> = chosen
        .stages
        .iter()
        .map(|(node, layers)| Stage {
            node: *node,
            node_name: cost.cluster.node(*node).name.clone(),
            layers: layers.clone(),
            holds_embedding: layers.start == 0,
            holds_head: layers.end == num_layers,
            memory_bytes: cost.stage_memory_bytes(layers),
            usable_memory_bytes: cost.usable_bytes(*node),
            predicted_seconds: cost.stage_decode_seconds(*node, layers),
            prefill_seconds: cost.stage_prefill_seconds(*node, layers, prompt_tokens),
        })
        .collect();
    let joules_per_token = stages
        .iter()
        .map(|s| {
            cost.cluster
                .node(s.node)
                .power_watts
                .map(|w| w * s.predicted_seconds)
        })
        .sum::<Option<f64>>();
    let prediction = Prediction {
        seconds_per_token: chosen.seconds_per_token,
        tokens_per_second: 1.0 / chosen.seconds_per_token,
        link_seconds_per_token: cost.placement_link_seconds(&chosen.stages),
        ttft_seconds: cost.placement_ttft_seconds(&chosen.stages),
        prompt_tokens,
        joules_per_token,
    };
    let placement = match <[Stage; 1]>::try_from(stages) {
        Ok([stage]) => Placement::SingleNode { stage },
        Err(stages) => Placement::Pipeline { stages },
    };
    Plan {
        model: cost.model.name.clone(),
        placement,
        prediction,
        notes,
        options: cost.options.clone(),
    }
}
