//! What the planner places a model on: nodes (memory, memory bandwidth, compute), the links
//! between them, and hosts (GPUs of one machine joined by an interconnect).
//!
//! Owns: [`NodeId`], [`NodeSpec`], [`Link`], [`Host`], [`Cluster`] and their validation, and
//! the rule for when tensor parallelism is considered ([`Host::allows_tensor_parallel`]).
//! Does not own where the numbers come from (the hardware table, a measurement, discovery: the
//! caller).
//!
//! Invariants (checked by [`Cluster::validate`]): 1..=[`MAX_NODES`] nodes with unique names;
//! every memory size positive, every bandwidth, compute rate and latency finite, bandwidths and
//! compute positive; per-pair links name two different existing nodes, at most once per pair;
//! a host names existing nodes, each at most once, and no node belongs to two hosts.

use serde::Serialize;

use crate::error::{PlanError, Result};

/// Least interconnect bandwidth over which tensor parallelism is considered: 25 GB/s, what
/// PCIe 4.0 x16 with peer-to-peer access delivers. Below it (GeForce cards, whose collectives
/// bounce through host memory; any network) only pipeline stages are planned.
pub const TENSOR_PARALLEL_MIN_LINK_BANDWIDTH: f64 = 25e9;

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

    /// NVLink 4 (H100/H200 SXM, NVSwitch): 450 GB/s per direction per GPU, and 60 µs per
    /// collective of a tensor-parallel step, as hearth runs it (eager NCCL calls, one per
    /// all-reduce). Measured on 2× H200: 8B decode steps at TP=2 took 6.80 ms (BF16) and 5.96 ms
    /// (Q4_K_M) against 5.53 and 3.29 ms on one GPU, ~63 and ~67 µs per all-reduce beyond half
    /// the single-GPU step; NCCL alone all-reduces one 4096-wide BF16 row in 43 µs there.
    pub const NVLINK_4: Link = Link {
        latency_s: 60e-6,
        bandwidth_bytes_per_s: 450e9,
    };

    /// NVLink 3 (A100 SXM, NVSwitch): 300 GB/s per direction per GPU, 60 µs per collective (as
    /// [`Link::NVLINK_4`]: the cost is NCCL's and hearth's, not the wire's).
    pub const NVLINK_3: Link = Link {
        latency_s: 60e-6,
        bandwidth_bytes_per_s: 300e9,
    };

    /// PCIe 5.0 x16 with peer-to-peer access (H100 PCIe): ~50 GB/s achieved of 64 GB/s, and
    /// 65 µs per collective (NVLink's, plus 5 µs for the slower link; not measured).
    pub const PCIE_5_X16: Link = Link {
        latency_s: 65e-6,
        bandwidth_bytes_per_s: 50e9,
    };

    /// PCIe 4.0 x16 with peer-to-peer access (L4, L40S): ~25 GB/s achieved of 32 GB/s, and
    /// 65 µs per collective (as PCIe 5.0; not measured).
    pub const PCIE_4_X16: Link = Link {
        latency_s: 65e-6,
        bandwidth_bytes_per_s: 25e9,
    };

    /// GeForce cards in one machine: peer-to-peer access is disabled, so collectives copy
    /// through host memory: ~12 GB/s and 75 µs per collective (below
    /// [`TENSOR_PARALLEL_MIN_LINK_BANDWIDTH`]; not measured).
    pub const PCIE_THROUGH_HOST_MEMORY: Link = Link {
        latency_s: 75e-6,
        bandwidth_bytes_per_s: 12e9,
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

/// GPUs of one machine, joined by an interconnect (NVLink, PCIe): the only place tensor
/// parallelism is considered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    pub name: String,
    /// The host's GPUs, in rank order.
    pub nodes: Vec<NodeId>,
    /// Between any two of `nodes`, unless a [`PairLink`] names the pair; also the link
    /// tensor parallelism's collectives run over.
    pub interconnect: Link,
}

impl Host {
    /// The rule for tensor parallelism: at least two GPUs of this one host, and an interconnect
    /// of at least [`TENSOR_PARALLEL_MIN_LINK_BANDWIDTH`]. Nodes not declared as one host (two
    /// machines, whatever the network) are only ever pipeline stages.
    pub fn allows_tensor_parallel(&self) -> bool {
        self.nodes.len() >= 2
            && self.interconnect.bandwidth_bytes_per_s >= TENSOR_PARALLEL_MIN_LINK_BANDWIDTH
    }
}

/// The nodes and the network between them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    /// Link between any two nodes without a [`PairLink`] and not of one [`Host`].
    pub default_link: Link,
    pub links: Vec<PairLink>,
    /// Groups of nodes that are GPUs of one machine (empty: every node is its own machine).
    pub hosts: Vec<Host>,
}

impl Cluster {
    /// Nodes joined pairwise by `default_link`.
    pub fn new(nodes: Vec<NodeSpec>, default_link: Link) -> Self {
        Self {
            nodes,
            default_link,
            links: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// The host `node` belongs to, if any.
    pub fn host_of(&self, node: NodeId) -> Option<&Host> {
        self.hosts.iter().find(|h| h.nodes.contains(&node))
    }

    /// The node `id` (an id from [`Cluster::node_ids`]; panics on an id past the last node).
    pub fn node(&self, id: NodeId) -> &NodeSpec {
        &self.nodes[id.0]
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The link between `a` and `b` (symmetric): a [`PairLink`] naming them, else their host's
    /// interconnect when both are GPUs of one host, else the default.
    pub fn link(&self, a: NodeId, b: NodeId) -> Link {
        if let Some(pair) = self
            .links
            .iter()
            .find(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
        {
            return pair.link;
        }
        match self.host_of(a) {
            Some(host) if host.nodes.contains(&b) => host.interconnect,
            _ => self.default_link,
        }
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
        for (idx, host) in self.hosts.iter().enumerate() {
            let bad = |reason: String| {
                Err(PlanError::InvalidHost {
                    host: host.name.clone(),
                    reason,
                })
            };
            for (pos, node) in host.nodes.iter().enumerate() {
                if node.0 >= self.nodes.len() {
                    return bad(format!("names node {} of {}", node.0, self.nodes.len()));
                }
                if host.nodes[..pos].contains(node) {
                    return bad(format!("names `{}` twice", self.nodes[node.0].name));
                }
                if self.hosts[..idx].iter().any(|h| h.nodes.contains(node)) {
                    return bad(format!(
                        "`{}` is in another host too",
                        self.nodes[node.0].name
                    ));
                }
            }
            host.interconnect
                .validate(&format!("of host {}", host.name))?;
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
