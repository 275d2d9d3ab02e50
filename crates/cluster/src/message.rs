//! The typed messages of the control protocol and the status they report, serialized as JSON
//! inside `Handshake` and `Control` frames (`frame.rs`).
//!
//! Owns: the message enums, refusal reasons (with the words `cluster doctor` prints), node
//! resources, and the `ClusterStatus` snapshot `hearth cluster status` shows. Does not own:
//! framing (`frame.rs`) or when each message may be sent (`handshake.rs`, `coordinator.rs`,
//! `worker.rs`, `measure.rs`).
//!
//! Invariants: every enum is internally tagged (`"type"`), so an unknown or malformed message is
//! a decode error, never a panic; adding a field with `#[serde(default)]` keeps old peers
//! readable, anything else is a protocol version bump ([`PROTOCOL_VERSION`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// The wire protocol's version; peers with a different one are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a node runs: the protocol and hearth's own version. Both must match to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub protocol: u32,
    pub software: String,
}

impl VersionInfo {
    pub fn current() -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            software: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hearth {} (protocol {})", self.software, self.protocol)
    }
}

/// Why a connection is opened; chosen by the initiator in its `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A worker joining the coordinator's membership (heartbeats follow).
    Join,
    /// A tool asking for status (`hearth cluster status`, `doctor`); never a member.
    Query,
    /// A peer measuring the link's latency and bandwidth (`measure.rs`).
    Probe,
    /// The data plane: activation and KV frames between pipeline stages.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Coordinator,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
        })
    }
}

/// The handshake (`handshake.rs`), in `Handshake` frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HandshakeMessage {
    /// Initiator → responder: who I am and a fresh nonce.
    Hello {
        version: VersionInfo,
        node_id: NodeId,
        nonce: String,
        purpose: Purpose,
        /// The port the initiator's own listener accepts on (peers probe it there).
        #[serde(default)]
        listen_port: Option<u16>,
    },
    /// Responder → initiator: who I am, my nonce, and my proof of the key.
    Challenge {
        version: VersionInfo,
        node_id: NodeId,
        nonce: String,
        proof: String,
    },
    /// Initiator → responder: my proof of the key.
    Proof { proof: String },
    /// Responder → initiator: admitted.
    Welcome,
    /// Either side: refused, and why; the sender closes the connection after it.
    Refuse { reason: RefusalReason },
}

/// Why a handshake was refused. `Display` gives the words `cluster doctor` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RefusalReason {
    WrongKey,
    VersionMismatch {
        /// The refusing node's version.
        expected: VersionInfo,
        /// The refused node's version.
        got: VersionInfo,
    },
    DuplicateNodeId {
        node_id: NodeId,
        /// Where the node already holding this id is, when known.
        existing_address: Option<String>,
    },
    /// A `Join` reached a worker; `coordinator` is where to go instead, when the worker knows.
    NotCoordinator {
        coordinator: Option<String>,
    },
    ProtocolError {
        detail: String,
    },
    TooManyConnections,
    ShuttingDown,
    /// The node does not serve connections for this purpose (e.g. no data plane runs there).
    PurposeNotServed {
        purpose: Purpose,
    },
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongKey => write!(f, "wrong cluster key"),
            Self::VersionMismatch { expected, got } => {
                write!(f, "version mismatch: {got} cannot join {expected}")
            }
            Self::DuplicateNodeId {
                node_id,
                existing_address,
            } => {
                write!(f, "duplicate node id {node_id}: a live node already has it")?;
                if let Some(address) = existing_address {
                    write!(f, " (at {address})")?;
                }
                write!(
                    f,
                    "; give one of them another --node-id or --state-dir, or delete its node-id \
                     file"
                )
            }
            Self::NotCoordinator {
                coordinator: Some(address),
            } => write!(f, "not the coordinator (the coordinator is {address})"),
            Self::NotCoordinator { coordinator: None } => write!(f, "not the coordinator"),
            Self::ProtocolError { detail } => write!(f, "protocol error: {detail}"),
            Self::TooManyConnections => write!(f, "too many connections"),
            Self::ShuttingDown => write!(f, "node is shutting down"),
            Self::PurposeNotServed { purpose } => {
                write!(f, "this node serves no {purpose:?} connections")
            }
        }
    }
}

/// Which side refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalDirection {
    /// This node refused a peer that connected to it.
    WeRefused,
    /// A peer this node connected to refused it.
    RefusedUs,
}

/// One remembered refusal (`refusals.rs` keeps the most recent ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub at_unix_ms: u64,
    pub direction: RefusalDirection,
    /// The other side's address as this node saw it.
    pub peer_address: String,
    /// The id the other side claimed (unauthenticated when the reason is `WrongKey`).
    pub peer_node_id: Option<NodeId>,
    pub peer_version: Option<VersionInfo>,
    pub purpose: Option<Purpose>,
    pub reason: RefusalReason,
}

/// What a node offers the cluster; advertised in mDNS TXT records and in heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    /// `cpu`, `cuda`, `metal`.
    pub backend: String,
    /// Memory free for weights and KV on the backend's device.
    pub free_memory_bytes: Option<u64>,
    /// Measured memory bandwidth (read + write bytes per second).
    pub memory_bandwidth_bytes_per_s: Option<f64>,
    /// The compute the node brings, e.g. `cpu x16` or `cuda sm90`.
    pub compute: String,
}

/// The control protocol after the handshake, in `Control` frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Coordinator → worker, first message of a `Join` session: the heartbeat contract.
    Joined {
        coordinator: NodeId,
        heartbeat_interval_ms: u64,
        heartbeat_timeout_ms: u64,
    },
    /// Worker → coordinator, every heartbeat interval.
    Heartbeat {
        seq: u64,
        resources: NodeResources,
    },
    /// Coordinator → worker, answering each heartbeat (the worker's proof the coordinator lives).
    HeartbeatAck {
        seq: u64,
    },
    /// Coordinator → worker: the live members and where their listeners are (to probe links).
    Members {
        members: Vec<MemberAddress>,
    },
    /// Worker → coordinator: a measured link from the worker to `to`.
    LinkReport {
        to: NodeId,
        outcome: Result<LinkMeasurement, String>,
    },
    /// Either side of a `Join` session: leaving on purpose.
    Goodbye {
        reason: String,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Prober → responder: `total_bytes` of `Bulk` frames follow.
    BulkStart {
        total_bytes: u64,
    },
    /// Responder → prober: all bulk bytes arrived.
    BulkDone {
        received_bytes: u64,
    },
    StatusRequest,
    StatusReply {
        status: Box<ClusterStatus>,
    },
}

impl ControlMessage {
    /// The message's tag, for "unexpected message" errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Joined { .. } => "joined",
            Self::Heartbeat { .. } => "heartbeat",
            Self::HeartbeatAck { .. } => "heartbeat_ack",
            Self::Members { .. } => "members",
            Self::LinkReport { .. } => "link_report",
            Self::Goodbye { .. } => "goodbye",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
            Self::BulkStart { .. } => "bulk_start",
            Self::BulkDone { .. } => "bulk_done",
            Self::StatusRequest => "status_request",
            Self::StatusReply { .. } => "status_reply",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddress {
    pub node_id: NodeId,
    /// `host:port` of the member's listener.
    pub address: String,
}

/// One link measurement (`measure.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkMeasurement {
    /// Median round trip of small control frames, microseconds.
    pub rtt_median_us: f64,
    pub rtt_min_us: f64,
    /// Payload bytes per second of a bulk transfer (one direction).
    pub bandwidth_bytes_per_s: f64,
    /// How many bulk bytes the bandwidth figure is based on.
    pub bulk_bytes: u64,
}

/// Why a member is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum GoneReason {
    /// Silent for longer than the heartbeat timeout.
    HeartbeatTimeout,
    /// Its connection closed without a goodbye.
    ConnectionClosed { detail: String },
    /// It said goodbye.
    Left { detail: String },
    /// It broke the protocol and was disconnected.
    ProtocolError { detail: String },
}

impl fmt::Display for GoneReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeartbeatTimeout => write!(f, "heartbeat timeout"),
            Self::ConnectionClosed { detail } => write!(f, "connection closed ({detail})"),
            Self::Left { detail } => write!(f, "left ({detail})"),
            Self::ProtocolError { detail } => write!(f, "protocol error ({detail})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeState {
    Alive,
    Gone {
        reason: GoneReason,
        gone_for_ms: u64,
    },
}

/// One node as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    /// `host:port` of the node's listener.
    pub address: String,
    pub role: Role,
    pub version: VersionInfo,
    pub resources: NodeResources,
    #[serde(flatten)]
    pub state: NodeState,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    pub member_for_ms: u64,
}

/// One measured (or failed) link, from `from`'s side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub from: NodeId,
    pub to: NodeId,
    pub outcome: Result<LinkMeasurement, String>,
    pub measured_ms_ago: u64,
}

/// A node's view of the cluster: the coordinator's is the whole table; a worker's is itself,
/// its coordinator and its refusals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub reporter: NodeId,
    pub reporter_role: Role,
    pub version: VersionInfo,
    /// The coordinator's listener address, when known.
    pub coordinator: Option<String>,
    pub heartbeat_timeout_ms: u64,
    /// How many nodes the deployment expects (`LWS_GROUP_SIZE`), when known.
    pub expected_nodes: Option<usize>,
    pub nodes: Vec<NodeStatus>,
    pub links: Vec<LinkStatus>,
    pub refusals: Vec<Refusal>,
    /// A worker's most recent failure to reach or join its coordinator.
    pub last_error: Option<String>,
}

impl ClusterStatus {
    pub fn alive_nodes(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes
            .iter()
            .filter(|node| node.state == NodeState::Alive)
    }

    pub fn node(&self, node_id: NodeId) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.node_id == node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json_and_unknown_tags_fail() {
        let message = ControlMessage::Heartbeat {
            seq: 7,
            resources: NodeResources {
                backend: "cpu".into(),
                free_memory_bytes: Some(1 << 30),
                memory_bandwidth_bytes_per_s: None,
                compute: "cpu x2".into(),
            },
        };
        let json = serde_json::to_string(&message).unwrap();
        assert!(json.contains("\"type\":\"heartbeat\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ControlMessage>(&json).unwrap(),
            message
        );
        assert!(serde_json::from_str::<ControlMessage>(r#"{"type":"launch_missiles"}"#).is_err());
        assert!(serde_json::from_str::<ControlMessage>(r#"{"seq":1}"#).is_err());
    }

    #[test]
    fn refusal_reasons_read_as_doctor_words() {
        assert_eq!(RefusalReason::WrongKey.to_string(), "wrong cluster key");
        let mismatch = RefusalReason::VersionMismatch {
            expected: VersionInfo::current(),
            got: VersionInfo {
                protocol: 99,
                software: "9.9.9".into(),
            },
        };
        let text = mismatch.to_string();
        assert!(
            text.starts_with("version mismatch") && text.contains("9.9.9"),
            "{text}"
        );
        let duplicate = RefusalReason::DuplicateNodeId {
            node_id: NodeId::from_bytes([1; 16]),
            existing_address: Some("10.0.0.2:7641".into()),
        };
        assert!(duplicate.to_string().starts_with("duplicate node id"));
    }
}
