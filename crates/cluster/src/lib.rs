//! hearth's cluster control plane: node identity, authenticated connections with length-checked
//! frames, discovery, membership, link measurements and the diagnosis of missing peers.
//!
//! Map (one concern per file):
//! - `identity`: stable 128-bit node ids persisted in a state directory.
//! - `key`: the cluster's pre-shared key.
//! - `frame`: `[u32 len][u8 kind][payload]` frames, the incremental decoder, size limits.
//! - `message`: the typed JSON messages (handshake, control) and the status they report.
//! - `handshake`: mutual HMAC-SHA256 challenge-response over nonces, ids and versions.
//! - `connection`: an authenticated `TcpStream` sending/receiving frames with bounded waits;
//!   the data plane reuses it (`Purpose::Data`, `Activation`/`Kv` frames).
//! - `membership`: the coordinator's pure table (joins, heartbeats, timeouts, events).
//! - `node`, `coordinator`, `worker`: a running node: listener, sessions, join loop.
//! - `discovery`: mDNS (`_hearth._tcp.local.`), static peers, LeaderWorkerSet environment.
//! - `measure`: memory bandwidth, free memory, link latency and bandwidth.
//! - `refusals`: the recent refusals a node remembers; `client`: status queries;
//!   `interfaces` + `doctor`: explaining why a peer is missing.
//!
//! Not here: placement (`hearth-planner`), pipeline stages and tensors (the data plane).
//! Everything is synchronous threads with bounded waits; nothing blocks forever.

mod client;
mod connection;
mod coordinator;
mod discovery;
mod doctor;
mod error;
mod frame;
mod handshake;
mod hex;
mod identity;
mod interfaces;
mod key;
mod measure;
mod membership;
mod message;
mod node;
mod refusals;
mod worker;

pub use client::{query_dialer, query_status};
pub use connection::{
    resolve_address, Connection, ConnectionReader, ConnectionTiming, ConnectionWriter, Dialer,
};
pub use discovery::{
    browse_for, Advertisement, Discovery, LwsEnvironment, MdnsOptions, SeenNode,
    DEFAULT_COORDINATOR_PORT, DEFAULT_WORKER_PORT, SERVICE_TYPE,
};
pub use doctor::{run_doctor, DoctorParams, DoctorReport, Finding, SeenSummary, Severity};
pub use error::{ClusterError, Result};
pub use frame::{
    decode_message, encode_message, write_frame, Frame, FrameDecoder, FrameKind, FrameLimits,
    HEADER_BYTES, MAX_HANDSHAKE_BYTES,
};
pub use handshake::{initiate, respond, HandshakeConfig, HandshakeFailure, PeerIdentity};
pub use identity::{default_state_dir, load_or_create, NodeId, NODE_ID_FILE};
pub use interfaces::{list_interfaces, InterfaceInfo};
pub use key::{ClusterKey, MIN_KEY_BYTES};
pub use measure::{
    available_memory_bytes, cpu_resources, measure_memory_bandwidth, probe_link, serve_probe,
    LinkProbeParams, MemoryBandwidth, MemoryBandwidthParams,
};
pub use membership::{MemberInfo, Membership, MembershipEvent, SessionId};
pub use message::{
    ClusterStatus, ControlMessage, GoneReason, HandshakeMessage, LinkMeasurement, LinkStatus,
    MemberAddress, NodeResources, NodeState, NodeStatus, Purpose, Refusal, RefusalDirection,
    RefusalReason, Role, VersionInfo, PROTOCOL_VERSION,
};
pub use node::{ClusterTiming, FreeMemorySource, Node, NodeConfig};
pub use refusals::{RefusalLog, MAX_REFUSALS};
