//! Property tests of the planner on random models, nodes and links:
//! - every layer is placed exactly once, in order, in non-empty stages on distinct nodes; the
//!   first stage holds the embedding table and the last the head;
//! - no stage exceeds its node's usable memory (memory recomputed here, independently);
//! - a plan is never predicted slower than the best single node that holds the model (single
//!   node times recomputed here), and "does not fit" only when nothing does;
//! - the dynamic program finds the same optimum as brute force over every ordered subset of
//!   nodes and every contiguous split (small cases);
//! - tensor-parallel placements: ranks on distinct GPUs of one host whose interconnect allows
//!   it, a degree dividing the attention and KV heads, each rank within memory (recomputed
//!   here), and the search's choice equal to brute force over every subset of the host;
//! - the same input gives the same plan.

use std::ops::Range;

use proptest::prelude::*;

use crate::cluster::{Cluster, Host, Link, NodeId, NodeSpec, PairLink};
use crate::cost::{all_reduce_seconds, CostModel, PlanOptions};
use crate::model::{ModelShape, WeightBlock};
use crate::plan::{plan, Placement, Plan};
use crate::search::{best_pipeline, best_tensor_parallel};
use crate::PlanError;

fn arb_block(max_bytes: u64) -> impl Strategy<Value = WeightBlock> {
    (0..=max_bytes, 1u64..=3).prop_map(|(num_bytes, params_per_byte)| WeightBlock {
        num_params: num_bytes * params_per_byte,
        num_bytes,
    })
}

fn arb_model(max_layers: usize) -> impl Strategy<Value = ModelShape> {
    (
        prop::collection::vec(
            (1_000u64..=100_000).prop_map(|b| WeightBlock {
                num_params: 2 * b,
                num_bytes: b,
            }),
            1..=max_layers,
        ),
        arb_block(200_000),
        prop::option::of(arb_block(200_000)),
        arb_block(1_000),
        (1u64..=64, 1u64..=64, 1u64..=10),
        // KV heads mostly even, so that two and four ranks often divide them.
        (prop::sample::select(vec![1u64, 2, 2, 3, 4, 4, 8]), 1u64..=4),
    )
        .prop_map(
            |(
                layers,
                embedding,
                head,
                other,
                (hidden_size, attention_width, kv),
                (num_kv_heads, group),
            )| ModelShape {
                name: "random".into(),
                layers,
                embedding,
                head,
                other,
                hidden_size,
                attention_width,
                kv_bytes_per_token_per_layer: kv,
                num_attention_heads: num_kv_heads * group,
                num_kv_heads,
            },
        )
}

fn arb_link() -> impl Strategy<Value = Link> {
    (0.0f64..0.5, 1e2f64..1e6).prop_map(|(latency_s, bandwidth_bytes_per_s)| Link {
        latency_s,
        bandwidth_bytes_per_s,
    })
}

fn arb_node(idx: usize) -> impl Strategy<Value = NodeSpec> {
    (
        10_000u64..=2_000_000,
        1e3f64..1e6,
        1e3f64..1e7,
        prop::option::of(1.0f64..500.0),
    )
        .prop_map(
            move |(memory_bytes, bandwidth_bytes_per_s, flops_per_s, power_watts)| NodeSpec {
                name: format!("n{idx}"),
                memory_bytes,
                bandwidth_bytes_per_s,
                flops_per_s,
                power_watts,
            },
        )
}

/// A GPU interconnect: often fast enough for tensor parallelism, sometimes not; latencies
/// small enough against the nodes' read times that tensor parallelism sometimes wins.
fn arb_interconnect() -> impl Strategy<Value = Link> {
    (
        prop_oneof![0.0f64..1e-5, 0.0f64..1e-3],
        prop_oneof![1 => 1e9f64..25e9, 3 => 25e9f64..1e12],
    )
        .prop_map(|(latency_s, bandwidth_bytes_per_s)| Link {
            latency_s,
            bandwidth_bytes_per_s,
        })
}

fn arb_cluster(num_nodes: Range<usize>) -> impl Strategy<Value = Cluster> {
    num_nodes
        .prop_flat_map(|n| {
            let nodes: Vec<_> = (0..n).map(arb_node).collect();
            (
                nodes,
                arb_link(),
                prop::option::of((0..n, 0..n, arb_link())),
                0..n,
                // A host: nodes start..start + len (clipped), joined by an interconnect.
                prop::option::weighted(
                    0.75,
                    (
                        0..n.saturating_sub(1).max(1),
                        2..=n.max(2),
                        arb_interconnect(),
                    ),
                ),
            )
        })
        .prop_map(|(mut nodes, default_link, pair, num_copies, host)| {
            // Some nodes identical to the first (the search skips orders that only swap them).
            for idx in 1..=num_copies.min(nodes.len() - 1) {
                nodes[idx] = NodeSpec {
                    name: format!("n{idx}"),
                    ..nodes[0].clone()
                };
            }
            let mut cluster = Cluster::new(nodes, default_link);
            if let Some((a, b, link)) = pair.filter(|(a, b, _)| a != b) {
                cluster.links.push(PairLink {
                    a: NodeId(a),
                    b: NodeId(b),
                    link,
                });
            }
            if let Some((start, len, interconnect)) = host {
                let end = (start + len).min(cluster.nodes.len());
                cluster.hosts.push(Host {
                    name: "host".into(),
                    nodes: (start..end).map(NodeId).collect(),
                    interconnect,
                });
            }
            cluster
        })
}

fn arb_options() -> impl Strategy<Value = PlanOptions> {
    (1usize..=64, 1usize..=3, 0.0f64..=0.3).prop_flat_map(
        |(context_tokens, concurrent_sequences, memory_headroom)| {
            (1..=context_tokens).prop_map(move |prompt_tokens| PlanOptions {
                context_tokens,
                concurrent_sequences,
                prompt_tokens,
                memory_headroom,
            })
        },
    )
}

/// Stage memory, written out again from the definition (not through `CostModel`).
fn expected_memory(model: &ModelShape, options: &PlanOptions, layers: &Range<usize>) -> u128 {
    let num_layers = model.layers.len();
    let mut bytes: u128 = model.layers[layers.clone()]
        .iter()
        .map(|l| l.num_bytes as u128)
        .sum();
    bytes += model.other.num_bytes as u128;
    if layers.start == 0 {
        bytes += model.embedding.num_bytes as u128;
    }
    if layers.end == num_layers {
        match (model.head, layers.start) {
            (Some(head), _) => bytes += head.num_bytes as u128,
            (None, 0) => {}
            (None, _) => bytes += model.embedding.num_bytes as u128,
        }
    }
    let kv_tokens = (options.context_tokens * options.concurrent_sequences) as u128;
    bytes + model.kv_bytes_per_token_per_layer as u128 * layers.len() as u128 * kv_tokens
}

fn usable(node: &NodeSpec, options: &PlanOptions) -> u128 {
    (node.memory_bytes as f64 * (1.0 - options.memory_headroom)).floor() as u128
}

/// Seconds per token of the whole model on one node, from the definition.
fn single_node_seconds(model: &ModelShape, options: &PlanOptions, node: &NodeSpec) -> f64 {
    let layers: u128 = model.layers.iter().map(|l| l.num_bytes as u128).sum();
    let kv = model.kv_bytes_per_token_per_layer as u128
        * model.layers.len() as u128
        * options.prompt_tokens as u128;
    (layers + kv + model.head_as_read().num_bytes as u128) as f64 / node.bandwidth_bytes_per_s
}

/// One tensor-parallel rank's memory of `num_ranks`, from the definition.
fn expected_rank_memory(model: &ModelShape, options: &PlanOptions, num_ranks: usize) -> u128 {
    let ranks = num_ranks as u128;
    let layers: u128 = model.layers.iter().map(|l| l.num_bytes as u128).sum();
    let kv_tokens = (options.context_tokens * options.concurrent_sequences) as u128;
    let kv = model.kv_bytes_per_token_per_layer as u128 * model.layers.len() as u128 * kv_tokens;
    layers.div_ceil(ranks)
        + model.embedding.num_bytes as u128
        + model
            .head
            .map_or(0, |h| (h.num_bytes as u128).div_ceil(ranks))
        + model.other.num_bytes as u128
        + kv.div_ceil(ranks)
}

/// Seconds per token of tensor parallelism over `ranks`, from the definition.
fn tensor_parallel_seconds(
    model: &ModelShape,
    options: &PlanOptions,
    cluster: &Cluster,
    ranks: &[NodeId],
    interconnect: Link,
) -> f64 {
    let read = single_node_seconds(
        model,
        options,
        &NodeSpec {
            bandwidth_bytes_per_s: 1.0,
            ..cluster.nodes[0].clone()
        },
    ) / ranks.len() as f64;
    let slowest = ranks
        .iter()
        .map(|n| read / cluster.node(*n).bandwidth_bytes_per_s)
        .fold(0.0, f64::max);
    let row = (model.hidden_size * 2) as f64;
    slowest + 2.0 * model.layers.len() as f64 * all_reduce_seconds(interconnect, ranks.len(), row)
}

/// The best tensor-parallel placement by brute force over every subset of every host.
fn brute_force_tensor_parallel(
    model: &ModelShape,
    options: &PlanOptions,
    cluster: &Cluster,
) -> Option<f64> {
    let mut best: Option<f64> = None;
    for host in cluster.hosts.iter().filter(|h| h.allows_tensor_parallel()) {
        for mask in 0u32..(1 << host.nodes.len()) {
            let ranks: Vec<NodeId> = host
                .nodes
                .iter()
                .enumerate()
                .filter(|(bit, _)| mask & (1 << bit) != 0)
                .map(|(_, n)| *n)
                .collect();
            let num_ranks = ranks.len() as u64;
            if num_ranks < 2
                || model.num_attention_heads % num_ranks != 0
                || model.num_kv_heads % num_ranks != 0
            {
                continue;
            }
            let memory = expected_rank_memory(model, options, ranks.len());
            if ranks
                .iter()
                .any(|n| memory > usable(cluster.node(*n), options))
            {
                continue;
            }
            let seconds =
                tensor_parallel_seconds(model, options, cluster, &ranks, host.interconnect);
            best = Some(best.map_or(seconds, |b: f64| b.min(seconds)));
        }
    }
    best
}

/// A tensor-parallel plan's ranks: distinct GPUs of one host that allows it, a degree dividing
/// the heads, each within memory, and the predicted time from the definition.
fn check_tensor_parallel(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let Placement::TensorParallel {
        host,
        ranks,
        interconnect,
        ..
    } = &plan.placement
    else {
        return Ok(());
    };
    let host = cluster
        .hosts
        .iter()
        .find(|h| &h.name == host)
        .expect("a host of the cluster");
    prop_assert!(host.allows_tensor_parallel());
    prop_assert_eq!(*interconnect, host.interconnect);
    let num_ranks = ranks.len();
    prop_assert!(num_ranks >= 2);
    prop_assert_eq!(model.num_attention_heads % num_ranks as u64, 0);
    prop_assert_eq!(model.num_kv_heads % num_ranks as u64, 0);
    let memory = expected_rank_memory(model, options, num_ranks);
    for (idx, rank) in ranks.iter().enumerate() {
        prop_assert_eq!(rank.rank, idx);
        prop_assert!(
            host.nodes.contains(&rank.node),
            "rank on a node outside the host"
        );
        prop_assert!(
            ranks[..idx].iter().all(|r| r.node != rank.node),
            "node used twice"
        );
        prop_assert_eq!(rank.memory_bytes as u128, memory);
        prop_assert!(
            memory <= usable(cluster.node(rank.node), options),
            "rank {} over memory",
            idx
        );
    }
    let nodes: Vec<NodeId> = ranks.iter().map(|r| r.node).collect();
    let expected = tensor_parallel_seconds(model, options, cluster, &nodes, host.interconnect);
    prop_assert!((plan.prediction.seconds_per_token - expected).abs() <= 1e-9 * expected);
    Ok(())
}

fn check_plan_invariants(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    if let Placement::TensorParallel { .. } = plan.placement {
        check_tensor_parallel(model, cluster, options, plan)?;
        return check_never_slower_than_one_node(model, cluster, options, plan);
    }
    let stages = plan.placement.stages();
    let num_layers = model.layers.len();
    prop_assert!(!stages.is_empty());
    let mut next_layer = 0;
    for (idx, stage) in stages.iter().enumerate() {
        prop_assert_eq!(
            stage.layers.start,
            next_layer,
            "stage {} does not continue where the last ended",
            idx
        );
        prop_assert!(
            stage.layers.end > stage.layers.start,
            "stage {} is empty",
            idx
        );
        next_layer = stage.layers.end;
        prop_assert_eq!(stage.holds_embedding, idx == 0);
        prop_assert_eq!(stage.holds_head, idx == stages.len() - 1);
        prop_assert!(
            stages[..idx].iter().all(|s| s.node != stage.node),
            "node used twice"
        );
        let node = cluster.node(stage.node);
        let memory = expected_memory(model, options, &stage.layers);
        prop_assert_eq!(stage.memory_bytes as u128, memory);
        prop_assert!(
            memory <= usable(node, options),
            "stage {} needs {} > {} usable on {}",
            idx,
            memory,
            usable(node, options),
            node.name
        );
    }
    prop_assert_eq!(next_layer, num_layers, "not every layer placed");
    check_never_slower_than_one_node(model, cluster, options, plan)
}

/// The plan's time per token is no more than any single node's that holds the model, and its
/// time to first token is positive and finite.
fn check_never_slower_than_one_node(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let num_layers = model.layers.len();
    for node in &cluster.nodes {
        if expected_memory(model, options, &(0..num_layers)) <= usable(node, options) {
            let single = single_node_seconds(model, options, node);
            prop_assert!(
                plan.prediction.seconds_per_token <= single * (1.0 + 1e-12),
                "plan {} s/token is slower than {} alone ({} s/token)",
                plan.prediction.seconds_per_token,
                node.name,
                single
            );
        }
    }
    prop_assert!(plan.prediction.ttft_seconds > 0.0 && plan.prediction.ttft_seconds.is_finite());
    Ok(())
}

/// Every composition of `num_layers` into `num_parts` positive parts, as stage ranges.
fn compositions(num_layers: usize, num_parts: usize) -> Vec<Vec<Range<usize>>> {
    if num_parts == 1 {
        return vec![vec![0..num_layers]];
    }
    let mut all = Vec::new();
    for first in 1..=num_layers.saturating_sub(num_parts - 1) {
        for rest in compositions(num_layers - first, num_parts - 1) {
            let shifted = rest.into_iter().map(|r| r.start + first..r.end + first);
            all.push(std::iter::once(0..first).chain(shifted).collect());
        }
    }
    all
}

/// Every ordered selection of `k` distinct nodes.
fn ordered_subsets(num_nodes: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![vec![]];
    }
    let mut all = Vec::new();
    for prefix in ordered_subsets(num_nodes, k - 1) {
        for node in (0..num_nodes).filter(|n| !prefix.contains(n)) {
            let mut next = prefix.clone();
            next.push(node);
            all.push(next);
        }
    }
    all
}

/// The best pipeline (≥ 2 stages) by brute force.
fn brute_force_pipeline(cost: &CostModel) -> Option<f64> {
    let (num_nodes, num_layers) = (cost.cluster.nodes.len(), cost.num_layers());
    let mut best: Option<f64> = None;
    for k in 2..=num_nodes.min(num_layers) {
        for nodes in ordered_subsets(num_nodes, k) {
            for split in compositions(num_layers, k) {
                let stages: Vec<(NodeId, Range<usize>)> =
                    nodes.iter().map(|&n| NodeId(n)).zip(split).collect();
                if stages.iter().all(|(n, l)| cost.fits(*n, l)) {
                    let seconds = cost.placement_decode_seconds(&stages);
                    best = Some(best.map_or(seconds, |b: f64| b.min(seconds)));
                }
            }
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn plans_place_every_layer_once_within_memory_and_never_lose_to_one_node(
        model in arb_model(24),
        cluster in arb_cluster(1..5),
        options in arb_options(),
    ) {
        match plan(&model, &cluster, &options) {
            Ok(found) => {
                check_plan_invariants(&model, &cluster, &options, &found)?;
                let again = plan(&model, &cluster, &options).expect("planned once, plans again");
                prop_assert_eq!(found, again, "not deterministic");
            }
            Err(PlanError::DoesNotFit { .. }) => {
                let whole = expected_memory(&model, &options, &(0..model.layers.len()));
                prop_assert!(cluster.nodes.iter().all(|n| whole > usable(n, &options)), "a single node fits");
                prop_assert!(brute_force_tensor_parallel(&model, &options, &cluster).is_none(), "tensor parallelism fits");
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn the_search_matches_brute_force(
        model in arb_model(6),
        cluster in arb_cluster(2..4),
        options in arb_options(),
    ) {
        let cost = CostModel::new(&model, &cluster, &options).unwrap();
        let searched = best_pipeline(&cost).map(|c| cost.placement_decode_seconds(&c.stages));
        let brute = brute_force_pipeline(&cost);
        match (searched, brute) {
            (None, None) => {}
            (Some(s), Some(b)) => prop_assert!((s - b).abs() <= 1e-9 * b, "search {} vs brute force {}", s, b),
            (s, b) => prop_assert!(false, "search {:?} vs brute force {:?}", s, b),
        }
        if let Ok(found) = plan(&model, &cluster, &options) {
            if let Some(b) = brute {
                prop_assert!(found.prediction.seconds_per_token <= b * (1.0 + 1e-9));
            }
        } else {
            prop_assert!(brute.is_none(), "a pipeline fits but plan failed");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_tensor_parallel_search_matches_brute_force(
        model in arb_model(8),
        cluster in arb_cluster(2..6),
        options in arb_options(),
    ) {
        let cost = CostModel::new(&model, &cluster, &options).unwrap();
        let searched = best_tensor_parallel(&cost).map(|c| c.seconds_per_token);
        let brute = brute_force_tensor_parallel(&model, &options, &cluster);
        match (searched, brute) {
            (None, None) => {}
            (Some(s), Some(b)) => prop_assert!((s - b).abs() <= 1e-9 * b, "search {} vs brute force {}", s, b),
            (s, b) => prop_assert!(false, "search {:?} vs brute force {:?}", s, b),
        }
        if let (Ok(found), Some(b)) = (plan(&model, &cluster, &options), brute) {
            prop_assert!(found.prediction.seconds_per_token <= b * (1.0 + 1e-9), "a faster tensor-parallel placement was not chosen");
        }
    }
}

proptest! {
    // More than six nodes: the bandwidth-order search (still valid, not necessarily optimal).
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn many_node_plans_keep_the_invariants(
        model in arb_model(32),
        cluster in arb_cluster(7..10),
        options in arb_options(),
    ) {
        if let Ok(found) = plan(&model, &cluster, &options) {
            check_plan_invariants(&model, &cluster, &options, &found)?;
        }
    }
}
