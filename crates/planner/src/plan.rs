//! The planner's answer: where a model runs, how fast it is predicted to be, and why.
//!
//! Owns: [`plan`] (single node or pipeline, by predicted time per token), the output types
//! ([`Plan`], [`Placement`], [`Stage`], [`Prediction`]) and the reasons given ([`PlanNote`]).
//! Does not own the formulas (`cost`) or the search (`search`).
//!
//! Rules: the placement with the least predicted time per generated token wins; a pipeline is
//! refused (and the note says so, with both predictions) unless it is strictly faster than the
//! best single node the model fits on. So a plan is never predicted slower than any single node
//! that holds the model.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

use crate::cluster::NodeId;
use crate::cost::{CostModel, PlanOptions};
use crate::error::{PlanError, Result};
use crate::model::ModelShape;
use crate::search::{best_pipeline, best_single_node, Candidate};
use crate::units::{format_bandwidth, format_bytes};
use crate::Cluster;

/// Where the layers go. Tensor parallelism (one layer split across GPUs of one host over fast
/// links) will be a third kind.
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
}

impl Placement {
    pub fn stages(&self) -> &[Stage] {
        match self {
            Placement::SingleNode { stage } => std::slice::from_ref(stage),
            Placement::Pipeline { stages } => stages,
        }
    }

    /// `single node` or `N-stage pipeline`.
    pub fn describe(&self) -> String {
        match self {
            Placement::SingleNode { .. } => "single node".to_string(),
            Placement::Pipeline { stages } => format!("{}-stage pipeline", stages.len()),
        }
    }
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
/// pipeline slower than a single node that holds the model. Errors when nothing fits or an
/// input is invalid.
pub fn plan(model: &ModelShape, cluster: &Cluster, options: &PlanOptions) -> Result<Plan> {
    let cost = CostModel::new(model, cluster, options)?;
    let single = best_single_node(&cost).map(|c| rescore(&cost, c));
    let pipeline = best_pipeline(&cost).map(|c| rescore(&cost, c));
    let all_layers = 0..model.num_layers();
    let whole_model_bytes = cost.stage_memory_bytes(&all_layers);
    let mut notes = Vec::new();
    let single_wins = match (&single, &pipeline) {
        (Some(single), Some(pipeline)) => pipeline.seconds_per_token >= single.seconds_per_token,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let chosen = match (single, pipeline) {
        (Some(single), pipeline) if single_wins => {
            let node = single.stages[0].0;
            let name = cluster.node(node).name.clone();
            notes.push(PlanNote::SingleNodeChosen {
                node: name.clone(),
                tokens_per_second: 1.0 / single.seconds_per_token,
                only_node: cluster.nodes.len() == 1,
            });
            if let Some(pipeline) = pipeline {
                notes.push(PlanNote::SlowerPipelineRefused {
                    num_stages: pipeline.stages.len(),
                    pipeline_tokens_per_second: 1.0 / pipeline.seconds_per_token,
                    node: name,
                    single_tokens_per_second: 1.0 / single.seconds_per_token,
                });
            }
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
            single
        }
        (single, Some(pipeline)) => {
            let best_single = single.map(|s| SingleNodeOption {
                node: cluster.node(s.stages[0].0).name.clone(),
                tokens_per_second: 1.0 / s.seconds_per_token,
            });
            if best_single.is_none() {
                let (largest, largest_usable) = largest_node(&cost);
                notes.push(PlanNote::FitsNoSingleNode {
                    needed_bytes: whole_model_bytes,
                    largest_node: cluster.node(largest).name.clone(),
                    largest_usable_bytes: largest_usable,
                });
            }
            notes.push(PlanNote::PipelineChosen {
                num_stages: pipeline.stages.len(),
                tokens_per_second: 1.0 / pipeline.seconds_per_token,
                best_single,
            });
            for node in cluster
                .node_ids()
                .filter(|n| pipeline.stages.iter().all(|(used, _)| used != n))
            {
                notes.push(PlanNote::NodeUnused {
                    node: cluster.node(node).name.clone(),
                });
            }
            pipeline
        }
        // (Some, None) was taken above (`single_wins`): nothing fits.
        (_, None) => {
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
        }
    };
    Ok(build_plan(&cost, &chosen, notes))
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
