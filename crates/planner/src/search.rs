//! The search: the fastest single node, the fastest pipeline of two or more stages, and the
//! fastest tensor-parallel placement on one host, by the cost model's predicted seconds per
//! generated token.
//!
//! Owns: node orders, the dynamic program over contiguous layer splits, and the choice of GPUs
//! and degree for tensor parallelism. Does not own the formulas (`cost`) or the choice between
//! the kinds (`plan`).
//!
//! The pipeline search, for one order of nodes `o[0], o[1], …`: the first stage runs on `o[0]`
//! and holds layers `0..e`; each later node either holds the next contiguous range or is
//! skipped. `best[i][e]` is the least cost of placing layers `0..e` with the last stage on
//! `o[i]`; a stage on `o[i]` after one on `o[k]` (k < i) adds the hop `o[k] → o[i]`. The answer
//! adds the token's return from the last node to `o[0]`. Every ordered subset of nodes with its
//! first element first is a path through some order, so trying all orders (≤ [`EXACT_ORDERS_MAX_NODES`]
//! nodes) is exact over every contiguous split on every ordered subset; with more nodes each
//! node in turn goes first and the rest follow by memory bandwidth (fastest first).
//!
//! The tensor-parallel search, for each host that allows it
//! ([`crate::Host::allows_tensor_parallel`]) and each degree `N` in 2..=its GPUs dividing both the attention and the KV heads: every rank
//! holds the same share, so the GPUs that can hold it are kept and the `N` with the most
//! bandwidth (ties: host order) are taken — exact, since the per-token time is the slowest
//! rank's plus collectives that do not depend on which GPUs are taken.
//!
//! Invariants: results are deterministic (fixed iteration order, ties keep the first found);
//! every returned stage is non-empty, fits its node, and the stages cover every layer in order.

use std::ops::Range;

use crate::cluster::NodeId;
use crate::cost::CostModel;

/// Up to this many nodes, every order is tried (6! = 720 orders).
pub const EXACT_ORDERS_MAX_NODES: usize = 6;

/// A placement found by the search: stages in pipeline order and its predicted cost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub seconds_per_token: f64,
    pub stages: Vec<(NodeId, Range<usize>)>,
}

/// A tensor-parallel placement found by the search: ranks in rank order on one host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorParallelCandidate {
    pub seconds_per_token: f64,
    /// Index into [`crate::Cluster::hosts`].
    pub host: usize,
    pub ranks: Vec<NodeId>,
}

/// Whether `num_ranks` ranks each get a whole number of attention and KV heads.
pub(crate) fn heads_divide(cost: &CostModel, num_ranks: usize) -> bool {
    let ranks = num_ranks as u64;
    ranks > 0 && cost.model.num_attention_heads % ranks == 0 && cost.model.num_kv_heads % ranks == 0
}

/// The fastest tensor-parallel placement on any host that allows it, if one fits (ties: the
/// first host, then the fewest ranks).
pub(crate) fn best_tensor_parallel(cost: &CostModel) -> Option<TensorParallelCandidate> {
    let mut best: Option<TensorParallelCandidate> = None;
    for (host_idx, host) in cost.cluster.hosts.iter().enumerate() {
        if !host.allows_tensor_parallel() {
            continue;
        }
        for num_ranks in 2..=host.nodes.len() {
            if !heads_divide(cost, num_ranks) {
                continue;
            }
            let needed = cost.tensor_parallel_rank_memory_bytes(num_ranks);
            let mut able: Vec<NodeId> = host
                .nodes
                .iter()
                .copied()
                .filter(|&node| cost.usable_bytes(node) >= needed)
                .collect();
            if able.len() < num_ranks {
                continue;
            }
            // Stable: equal bandwidths keep host order.
            able.sort_by(|a, b| {
                let bandwidth = |n: &NodeId| cost.cluster.node(*n).bandwidth_bytes_per_s;
                bandwidth(b).total_cmp(&bandwidth(a))
            });
            able.truncate(num_ranks);
            let ranks: Vec<NodeId> = host
                .nodes
                .iter()
                .copied()
                .filter(|n| able.contains(n))
                .collect();
            let seconds = cost.tensor_parallel_decode_seconds(&ranks, host.interconnect);
            if best.as_ref().is_none_or(|b| seconds < b.seconds_per_token) {
                best = Some(TensorParallelCandidate {
                    seconds_per_token: seconds,
                    host: host_idx,
                    ranks,
                });
            }
        }
    }
    best
}

/// The fastest node that holds the whole model alone (ties: the lowest id).
pub(crate) fn best_single_node(cost: &CostModel) -> Option<Candidate> {
    let all = 0..cost.num_layers();
    let mut best: Option<Candidate> = None;
    for node in cost.cluster.node_ids() {
        if !cost.fits(node, &all) {
            continue;
        }
        let seconds = cost.stage_decode_seconds(node, &all);
        if best.as_ref().is_none_or(|b| seconds < b.seconds_per_token) {
            best = Some(Candidate {
                seconds_per_token: seconds,
                stages: vec![(node, all.clone())],
            });
        }
    }
    best
}

/// The fastest pipeline of at least two stages, if any fits.
pub(crate) fn best_pipeline(cost: &CostModel) -> Option<Candidate> {
    if cost.cluster.nodes.len() < 2 || cost.num_layers() < 2 {
        return None;
    }
    let mut best: Option<Candidate> = None;
    for order in node_orders(cost) {
        if let Some(found) = best_pipeline_in_order(cost, &order) {
            if best
                .as_ref()
                .is_none_or(|b| found.seconds_per_token < b.seconds_per_token)
            {
                best = Some(found);
            }
        }
    }
    best
}

/// Every permutation (lexicographic) for few nodes, less those that only swap interchangeable
/// nodes (same memory, bandwidth and compute, default links, same host); otherwise each node
/// first, the rest by bandwidth.
fn node_orders(cost: &CostModel) -> Vec<Vec<NodeId>> {
    let num_nodes = cost.cluster.nodes.len();
    if num_nodes <= EXACT_ORDERS_MAX_NODES {
        let interchangeable = |a: usize, b: usize| {
            let cluster = cost.cluster;
            let (spec_a, spec_b) = (&cluster.nodes[a], &cluster.nodes[b]);
            let same_spec = spec_a.memory_bytes == spec_b.memory_bytes
                && spec_a.bandwidth_bytes_per_s == spec_b.bandwidth_bytes_per_s
                && spec_a.flops_per_s == spec_b.flops_per_s;
            let default_links = cluster
                .links
                .iter()
                .all(|l| ![l.a.0, l.b.0].iter().any(|n| *n == a || *n == b));
            // GPUs of one host reach each other over its interconnect: only nodes of the same
            // host (or both of none) are interchangeable.
            let host_index = |n: usize| {
                cluster
                    .hosts
                    .iter()
                    .position(|h| h.nodes.contains(&NodeId(n)))
            };
            same_spec && default_links && host_index(a) == host_index(b)
        };
        // Swapping two interchangeable nodes changes no cost: keep only orders where they
        // appear by index.
        let canonical = |order: &[usize]| {
            order.iter().enumerate().all(|(pos, &a)| {
                order[pos + 1..]
                    .iter()
                    .all(|&b| b > a || !interchangeable(a, b))
            })
        };
        let mut order: Vec<usize> = (0..num_nodes).collect();
        let mut orders = vec![order.iter().copied().map(NodeId).collect()];
        while next_permutation(&mut order) {
            if canonical(&order) {
                orders.push(order.iter().copied().map(NodeId).collect());
            }
        }
        return orders;
    }
    let mut by_bandwidth: Vec<NodeId> = cost.cluster.node_ids().collect();
    by_bandwidth.sort_by(|a, b| {
        let (bw_a, bw_b) = (
            cost.cluster.node(*a).bandwidth_bytes_per_s,
            cost.cluster.node(*b).bandwidth_bytes_per_s,
        );
        bw_b.total_cmp(&bw_a).then(a.cmp(b))
    });
    cost.cluster
        .node_ids()
        .map(|first| {
            std::iter::once(first)
                .chain(by_bandwidth.iter().copied().filter(|n| *n != first))
                .collect()
        })
        .collect()
}

/// Rearranges into the next lexicographic permutation; false after the last one.
fn next_permutation(items: &mut [usize]) -> bool {
    let Some(pivot) = items.windows(2).rposition(|w| w[0] < w[1]) else {
        return false;
    };
    let Some(successor) = items.iter().rposition(|&x| x > items[pivot]) else {
        return false;
    };
    items.swap(pivot, successor);
    items[pivot + 1..].reverse();
    true
}

/// The DP of the module comment over one order; at least two stages.
fn best_pipeline_in_order(cost: &CostModel, order: &[NodeId]) -> Option<Candidate> {
    let num_layers = cost.num_layers();
    let num_positions = order.len();
    // best[i][e], and the (position, end) of the stage before it (`None` for the first stage).
    let mut best = vec![vec![f64::INFINITY; num_layers + 1]; num_positions];
    let mut previous: Vec<Vec<Option<(usize, usize)>>> =
        vec![vec![None; num_layers + 1]; num_positions];
    for (end, seconds) in best[0].iter_mut().enumerate().take(num_layers).skip(1) {
        if !cost.fits(order[0], &(0..end)) {
            break;
        }
        *seconds = cost.stage_decode_seconds(order[0], &(0..end));
    }
    for pos in 1..num_positions {
        let node = order[pos];
        for start in 1..num_layers {
            // The cheapest way to have placed 0..start and hop to `node`.
            let mut incoming: Option<(f64, usize)> = None;
            for (prev_pos, row) in best.iter().enumerate().take(pos) {
                if row[start].is_finite() {
                    let seconds = row[start] + cost.decode_hop_seconds(order[prev_pos], node);
                    if incoming.is_none_or(|(s, _)| seconds < s) {
                        incoming = Some((seconds, prev_pos));
                    }
                }
            }
            let Some((incoming_seconds, prev_pos)) = incoming else {
                continue;
            };
            for end in start + 1..=num_layers {
                // Memory grows with `end`: once a range does not fit, longer ones do not either.
                if !cost.fits(node, &(start..end)) {
                    break;
                }
                let seconds = incoming_seconds + cost.stage_decode_seconds(node, &(start..end));
                if seconds < best[pos][end] {
                    best[pos][end] = seconds;
                    previous[pos][end] = Some((prev_pos, start));
                }
            }
        }
    }
    let mut finish: Option<(f64, usize)> = None;
    for (pos, row) in best.iter().enumerate().skip(1) {
        if row[num_layers].is_finite() {
            let seconds = row[num_layers] + cost.return_hop_seconds(order[pos], order[0]);
            if finish.is_none_or(|(s, _)| seconds < s) {
                finish = Some((seconds, pos));
            }
        }
    }
    let (seconds_per_token, last_pos) = finish?;
    let mut stages = Vec::new();
    let (mut pos, mut end) = (last_pos, num_layers);
    loop {
        match previous[pos][end] {
            Some((prev_pos, start)) => {
                stages.push((order[pos], start..end));
                (pos, end) = (prev_pos, start);
            }
            None => {
                stages.push((order[pos], 0..end));
                break;
            }
        }
    }
    stages.reverse();
    Some(Candidate {
        seconds_per_token,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_all_visited_in_order() {
        let mut items = vec![0, 1, 2, 3];
        let mut seen = vec![items.clone()];
        while next_permutation(&mut items) {
            seen.push(items.clone());
        }
        assert_eq!(seen.len(), 24);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "lexicographic and without repeats");
        assert!(!next_permutation(&mut []));
    }
}
