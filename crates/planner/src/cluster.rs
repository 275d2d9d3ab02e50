//! What the planner places a model on: nodes (memory, memory bandwidth, compute) and the links
//! between them.
//!
//! Owns: [`NodeId`], [`NodeSpec`], [`Link`], [`Cluster`] and their validation. Does not own
//! where the numbers come from (the hardware table, a measurement, discovery: the caller).
//!
//! Invariants (checked by [`Cluster::validate`]): 1..=[`MAX_NODES`] nodes with unique names;
//! every memory size positive, every bandwidth, compute rate and latency finite, bandwidths and
//! compute positive; per-pair links name two different existing nodes, at most once per pair.

use serde::Serialize;

use crate::error::{PlanError, Result};

/// Most nodes one plan considers (the search is `O(orders × nodes² × layers²)`).
pub const MAX_NODES: usize = 64;

/// A node's index in [`Cluster::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NodeId(pub usize);

/// One machine (or one GPU) as the planner sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSpec {
    pub name: String,
    /// Memory the model may use: free GPU memory, or on Apple Silicon the GPU's working-set
    /// limit. The planner keeps [`crate::PlanOptions::memory_headroom`] of it free.
    pub memory_bytes: u64,
    /// Memory bandwidth: what decode is bound by.
    pub bandwidth_bytes_per_s: f64,
    /// Dense 16-bit compute: what prompt processing is bound by.
    pub flops_per_s: f64,
    /// Power under load, where known (for energy per token).
    pub power_watts: Option<f64>,
}

/// A network path between two nodes, one direction (links are symmetric).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Link {
    /// One-way latency of a small message, including the software stack.
    pub latency_s: f64,
    pub bandwidth_bytes_per_s: f64,
}

impl Link {
    /// 10 GbE: 9.4 Gbit/s of TCP goodput (10 Gbit/s less Ethernet/IP/TCP framing) and 0.2 ms
    /// one-way per message through two user-space TCP stacks.
    pub const TEN_GIGABIT_ETHERNET: Link = Link {
        latency_s: 0.2e-3,
        bandwidth_bytes_per_s: 9.4e9 / 8.0,
    };

    /// Seconds to move `num_bytes` over this link.
    pub fn transfer_seconds(&self, num_bytes: f64) -> f64 {
        self.latency_s + num_bytes / self.bandwidth_bytes_per_s
    }

    fn validate(&self, what: &str) -> Result<()> {
        let bad = |reason: &str| {
            Err(PlanError::InvalidLink {
                link: what.to_string(),
                reason: reason.to_string(),
            })
        };
        if !(self.latency_s.is_finite() && self.latency_s >= 0.0) {
            return bad("latency must be finite and non-negative");
        }
        if !(self.bandwidth_bytes_per_s.is_finite() && self.bandwidth_bytes_per_s > 0.0) {
            return bad("bandwidth must be finite and positive");
        }
        Ok(())
    }
}

/// A link that differs from the default, between two nodes (either direction).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairLink {
    pub a: NodeId,
    pub b: NodeId,
    pub link: Link,
}

/// The nodes and the network between them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    /// Link between any two nodes without a [`PairLink`].
    pub default_link: Link,
    pub links: Vec<PairLink>,
}

impl Cluster {
    /// Nodes joined pairwise by `default_link`.
    pub fn new(nodes: Vec<NodeSpec>, default_link: Link) -> Self {
        Self {
            nodes,
            default_link,
            links: Vec::new(),
        }
    }

    /// The node `id` (an id from [`Cluster::node_ids`]; panics on an id past the last node).
    pub fn node(&self, id: NodeId) -> &NodeSpec {
        &self.nodes[id.0]
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The link between `a` and `b` (symmetric).
    pub fn link(&self, a: NodeId, b: NodeId) -> Link {
        self.links
            .iter()
            .find(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
            .map_or(self.default_link, |l| l.link)
    }

    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        if self.nodes.len() > MAX_NODES {
            return Err(PlanError::TooManyNodes {
                num_nodes: self.nodes.len(),
                max_nodes: MAX_NODES,
            });
        }
        for (idx, node) in self.nodes.iter().enumerate() {
            let bad = |reason: &str| {
                Err(PlanError::InvalidNode {
                    node: node.name.clone(),
                    reason: reason.to_string(),
                })
            };
            if node.name.trim().is_empty() {
                return Err(PlanError::InvalidNode {
                    node: format!("#{idx}"),
                    reason: "has no name".into(),
                });
            }
            if self.nodes[..idx]
                .iter()
                .any(|other| other.name == node.name)
            {
                return bad("two nodes have this name");
            }
            if node.memory_bytes == 0 {
                return bad("memory must be positive");
            }
            if !(node.bandwidth_bytes_per_s.is_finite() && node.bandwidth_bytes_per_s > 0.0) {
                return bad("memory bandwidth must be finite and positive");
            }
            if !(node.flops_per_s.is_finite() && node.flops_per_s > 0.0) {
                return bad("compute (TFLOP/s) must be finite and positive");
            }
            if node
                .power_watts
                .is_some_and(|w| !(w.is_finite() && w >= 0.0))
            {
                return bad("power must be finite and non-negative");
            }
        }
        self.default_link.validate("default")?;
        for (idx, pair) in self.links.iter().enumerate() {
            let what = format!("{:?}-{:?}", pair.a, pair.b);
            if pair.a.0 >= self.nodes.len() || pair.b.0 >= self.nodes.len() {
                return Err(PlanError::InvalidLink {
                    link: what,
                    reason: "names a node that does not exist".into(),
                });
            }
            if pair.a == pair.b {
                return Err(PlanError::InvalidLink {
                    link: what,
                    reason: "joins a node to itself".into(),
                });
            }
            let same_pair = |other: &PairLink| {
                (other.a == pair.a && other.b == pair.b) || (other.a == pair.b && other.b == pair.a)
            };
            if self.links[..idx].iter().any(same_pair) {
                return Err(PlanError::InvalidLink {
                    link: what,
                    reason: "is given twice".into(),
                });
            }
            pair.link.validate(&what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            memory_bytes: 1 << 30,
            bandwidth_bytes_per_s: 1e11,
            flops_per_s: 1e13,
            power_watts: None,
        }
    }

    #[test]
    fn links_are_symmetric_and_default_elsewhere() {
        let fast = Link {
            latency_s: 1e-6,
            bandwidth_bytes_per_s: 1e11,
        };
        let mut cluster = Cluster::new(
            vec![node("a"), node("b"), node("c")],
            Link::TEN_GIGABIT_ETHERNET,
        );
        cluster.links.push(PairLink {
            a: NodeId(0),
            b: NodeId(2),
            link: fast,
        });
        cluster.validate().unwrap();
        assert_eq!(cluster.link(NodeId(2), NodeId(0)), fast);
        assert_eq!(
            cluster.link(NodeId(0), NodeId(1)),
            Link::TEN_GIGABIT_ETHERNET
        );
    }

    #[test]
    fn invalid_clusters_name_the_problem() {
        let err = |cluster: Cluster| cluster.validate().unwrap_err().to_string();
        assert_eq!(
            err(Cluster::new(vec![], Link::TEN_GIGABIT_ETHERNET)),
            "no nodes to plan on"
        );
        assert!(err(Cluster::new(
            vec![node("a"), node("a")],
            Link::TEN_GIGABIT_ETHERNET
        ))
        .contains("two nodes"));
        let mut zero = node("z");
        zero.bandwidth_bytes_per_s = 0.0;
        assert!(err(Cluster::new(vec![zero], Link::TEN_GIGABIT_ETHERNET))
            .contains("node `z`: memory bandwidth"));
        let mut nan = node("n");
        nan.flops_per_s = f64::NAN;
        assert!(err(Cluster::new(vec![nan], Link::TEN_GIGABIT_ETHERNET)).contains("compute"));
        let bad_link = Link {
            latency_s: -1.0,
            bandwidth_bytes_per_s: 1.0,
        };
        assert!(err(Cluster::new(vec![node("a")], bad_link)).contains("latency"));
        let mut cluster = Cluster::new(vec![node("a"), node("b")], Link::TEN_GIGABIT_ETHERNET);
        cluster.links.push(PairLink {
            a: NodeId(0),
            b: NodeId(5),
            link: Link::TEN_GIGABIT_ETHERNET,
        });
        assert!(err(cluster).contains("does not exist"));
        let many: Vec<NodeSpec> = (0..MAX_NODES + 1).map(|i| node(&format!("n{i}"))).collect();
        assert!(err(Cluster::new(many, Link::TEN_GIGABIT_ETHERNET)).contains("at most 64"));
    }
}
