//! A running cluster node: its listener, the per-connection threads, and its role (coordinator
//! or worker), started by [`Node::start`] and stopped by [`Node::shutdown`].
//!
//! Owns: configuration ([`NodeConfig`]), the accept loop, the handshake and admission of every
//! incoming connection, dispatch by purpose (join → `coordinator.rs`; query → status replies;
//! probe → `measure::serve_probe`; data → handed to the data plane through a channel), the
//! refusal log, mDNS advertising. Does not own: membership rules (`membership.rs`), the
//! worker's join loop (`worker.rs`).
//!
//! Threads: `hearth-cluster-listen` (accept loop), one thread per connection, the
//! coordinator's reaper or the worker's join loop, the mDNS browse thread. Every thread polls
//! the shared stop flag at least every 200 ms between bounded waits, so `shutdown` returns
//! within a few seconds at worst (a connect or handshake in flight).
//!
//! Invariants: a connection's bytes reach a handler only after the handshake admitted it;
//! a malformed frame ends that connection only; at most `max_connections` connections are
//! served at once (more are refused with a reason).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::connection::{Connection, ConnectionTiming, Dialer};
use crate::coordinator::CoordinatorState;
use crate::discovery::{Advertisement, Discovery, MdnsOptions};
use crate::error::{ClusterError, Result};
use crate::frame::{encode_message, write_frame, FrameKind, FrameLimits};
use crate::handshake::{HandshakeConfig, HandshakeFailure, PeerIdentity};
use crate::identity::NodeId;
use crate::key::ClusterKey;
use crate::measure::{self, LinkProbeParams};
use crate::membership::MembershipEvent;
use crate::message::{
    ClusterStatus, ControlMessage, HandshakeMessage, NodeResources, Purpose, Refusal,
    RefusalDirection, RefusalReason, Role, VersionInfo,
};
use crate::refusals::{unix_millis_now, RefusalLog};
use crate::worker::WorkerState;

/// How often threads look at the stop flag.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(200);
/// The largest bulk transfer a probe responder accepts.
const MAX_PROBE_BULK_BYTES: u64 = 64 << 20;

/// Heartbeats, timeouts and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTiming {
    /// How often workers heartbeat (the coordinator tells them).
    pub heartbeat_interval: Duration,
    /// A member silent this long is gone; a worker whose coordinator is silent this long
    /// reconnects.
    pub heartbeat_timeout: Duration,
    pub connection: ConnectionTiming,
    /// Query and probe connections idle this long are closed.
    pub idle_timeout: Duration,
    /// A worker waits this long between rounds of trying to reach a coordinator.
    pub retry_interval: Duration,
}

impl Default for ClusterTiming {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            connection: ConnectionTiming::default(),
            idle_timeout: Duration::from_secs(10),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// Where a node's advertised free memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeMemorySource {
    /// The value in `NodeConfig::resources`, fixed at start (e.g. free GPU memory).
    Static,
    /// `MemAvailable`, re-read at every heartbeat (CPU nodes).
    SystemAvailable,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub key: ClusterKey,
    pub role: Role,
    pub listen: SocketAddr,
    /// `host:port` addresses to try as the coordinator (a worker's `--peers` and the LWS
    /// leader); a coordinator ignores them.
    pub peers: Vec<String>,
    /// mDNS advertising and browsing; `None` turns it off.
    pub mdns: Option<MdnsOptions>,
    pub resources: NodeResources,
    pub free_memory: FreeMemorySource,
    pub timing: ClusterTiming,
    pub version: VersionInfo,
    /// Link measurements to each peer; `None` skips them.
    pub link_probe: Option<LinkProbeParams>,
    /// How many nodes the deployment expects (`LWS_GROUP_SIZE`).
    pub expected_nodes: Option<usize>,
    pub max_connections: usize,
}

impl NodeConfig {
    /// A configuration with the defaults: current version, default timing, link probes on,
    /// mDNS off, no static peers.
    pub fn new(
        node_id: NodeId,
        key: ClusterKey,
        role: Role,
        listen: SocketAddr,
        resources: NodeResources,
    ) -> Self {
        Self {
            node_id,
            key,
            role,
            listen,
            peers: Vec::new(),
            mdns: None,
            resources,
            free_memory: FreeMemorySource::Static,
            timing: ClusterTiming::default(),
            version: VersionInfo::current(),
            link_probe: Some(LinkProbeParams::default()),
            expected_nodes: None,
            max_connections: 256,
        }
    }

    fn validate(&self) -> Result<()> {
        let timing = &self.timing;
        if timing.heartbeat_interval.is_zero()
            || timing.heartbeat_interval >= timing.heartbeat_timeout
        {
            return Err(ClusterError::Config(format!(
                "the heartbeat interval ({:?}) must be positive and shorter than the heartbeat timeout ({:?})",
                timing.heartbeat_interval, timing.heartbeat_timeout
            )));
        }
        if self.max_connections == 0 {
            return Err(ClusterError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The role-specific half of a node's state.
pub(crate) enum RoleState {
    Coordinator(CoordinatorState),
    Worker(WorkerState),
}

/// State shared by the node's threads.
pub(crate) struct Shared {
    pub config: NodeConfig,
    pub local_addr: SocketAddr,
    pub handshake: HandshakeConfig,
    pub dialer: Dialer,
    pub stop: AtomicBool,
    pub refusals: RefusalLog,
    pub num_connections: AtomicUsize,
    pub role_state: RoleState,
    pub discovery: Mutex<Option<Discovery>>,
    data_connections: Mutex<Option<Sender<Connection>>>,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `duration`, waking early when the node stops. Returns whether it stopped.
    pub fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        loop {
            if self.stopping() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// This node's resources now (free memory re-read when configured so).
    pub fn current_resources(&self) -> NodeResources {
        let mut resources = self.config.resources.clone();
        if self.config.free_memory == FreeMemorySource::SystemAvailable {
            resources.free_memory_bytes =
                measure::available_memory_bytes().or(resources.free_memory_bytes);
        }
        resources
    }

    pub fn record_refusal(
        &self,
        direction: RefusalDirection,
        peer_address: String,
        claimed: Option<&PeerIdentity>,
        reason: RefusalReason,
    ) {
        self.refusals.record(Refusal {
            at_unix_ms: unix_millis_now(),
            direction,
            peer_address,
            peer_node_id: claimed.map(|peer| peer.node_id),
            peer_version: claimed.map(|peer| peer.version.clone()),
            purpose: claimed.map(|peer| peer.purpose),
            reason,
        });
    }

    pub fn coordinator(&self) -> Option<&CoordinatorState> {
        match &self.role_state {
            RoleState::Coordinator(coordinator) => Some(coordinator),
            RoleState::Worker(_) => None,
        }
    }

    pub fn worker(&self) -> Option<&WorkerState> {
        match &self.role_state {
            RoleState::Worker(worker) => Some(worker),
            RoleState::Coordinator(_) => None,
        }
    }

    pub fn status(&self) -> ClusterStatus {
        match &self.role_state {
            RoleState::Coordinator(coordinator) => coordinator.status(self),
            RoleState::Worker(worker) => worker.status(self),
        }
    }
}

/// A running node. Dropping it stops it (like `shutdown`).
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    data_taken: bool,
}

impl Node {
    /// Binds the listener, starts mDNS (when configured) and the role's threads.
    pub fn start(config: NodeConfig) -> Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|err| ClusterError::io(format!("listening on {}", config.listen), err))?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| ClusterError::io("reading the listener's address", err))?;
        listener
            .set_nonblocking(true)
            .map_err(|err| ClusterError::io("configuring the listener", err))?;
        let discovery = match &config.mdns {
            Some(options) => {
                let advertisement = Advertisement {
                    node_id: config.node_id,
                    role: config.role,
                    port: local_addr.port(),
                    version: config.version.clone(),
                    resources: config.resources.clone(),
                };
                Some(Discovery::start(options, Some(&advertisement))?)
            }
            None => None,
        };
        let handshake = HandshakeConfig {
            key: config.key.clone(),
            node_id: config.node_id,
            version: config.version.clone(),
            timeout: config.timing.connection.handshake_timeout,
        };
        let role_state = match config.role {
            Role::Coordinator => RoleState::Coordinator(CoordinatorState::new(&config, local_addr)),
            Role::Worker => RoleState::Worker(WorkerState::default()),
        };
        let dialer = Dialer {
            identity: handshake.clone(),
            timing: config.timing.connection,
            listen_port: Some(local_addr.port()),
        };
        let shared = Arc::new(Shared {
            config,
            local_addr,
            dialer,
            handshake,
            stop: AtomicBool::new(false),
            refusals: RefusalLog::new(),
            num_connections: AtomicUsize::new(0),
            role_state,
            discovery: Mutex::new(discovery),
            data_connections: Mutex::new(None),
        });
        let mut threads = vec![spawn("hearth-cluster-listen", {
            let shared = Arc::clone(&shared);
            move || accept_loop(&shared, &listener)
        })?];
        threads.push(match shared.config.role {
            Role::Coordinator => spawn("hearth-cluster-reaper", {
                let shared = Arc::clone(&shared);
                move || crate::coordinator::reaper_loop(&shared)
            })?,
            Role::Worker => spawn("hearth-cluster-join", {
                let shared = Arc::clone(&shared);
                move || crate::worker::join_loop(&shared)
            })?,
        });
        tracing::info!(
            "cluster node {} listening on {local_addr} as {}",
            shared.config.node_id,
            shared.config.role
        );
        Ok(Self {
            shared,
            threads,
            data_taken: false,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn role(&self) -> Role {
        self.shared.config.role
    }

    /// This node's view of the cluster (the whole table on the coordinator).
    pub fn status(&self) -> ClusterStatus {
        self.shared.status()
    }

    /// Membership events (joined, gone) from now on; `None` on a worker.
    pub fn subscribe(&self) -> Option<Receiver<MembershipEvent>> {
        self.shared.coordinator().map(CoordinatorState::subscribe)
    }

    /// Authenticated `Purpose::Data` connections peers open to this node, for the data plane.
    /// Until this is called, data connections are refused (no data plane runs); `None` after the
    /// first call.
    pub fn take_data_connections(&mut self) -> Option<Receiver<Connection>> {
        if self.data_taken {
            return None;
        }
        self.data_taken = true;
        let (sender, receiver) = mpsc::channel();
        let mut slot = self
            .shared
            .data_connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(sender);
        Some(receiver)
    }

    /// Opens an authenticated data-plane connection to a peer's listener.
    pub fn connect_data(&self, address: SocketAddr) -> Result<Connection> {
        self.shared.dialer.connect(address, Purpose::Data)
    }

    /// How this node opens authenticated connections (its identity, timing, listener port), for
    /// the data plane's own connections.
    pub fn dialer(&self) -> &Dialer {
        &self.shared.dialer
    }

    /// Stops every thread: workers say goodbye to their coordinator, the coordinator to its
    /// workers (waiting up to 1 s for those sessions), mDNS sends goodbyes.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.shared.num_connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(mut sender) = self.shared.data_connections.lock() {
            sender.take();
        }
        let discovery = self
            .shared
            .discovery
            .lock()
            .ok()
            .and_then(|mut discovery| discovery.take());
        if let Some(discovery) = discovery {
            discovery.shutdown();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_threads();
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map_err(|err| ClusterError::io(format!("starting thread {name}"), err))
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, peer_address)) => admit_connection(shared, stream, peer_address),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(err) => {
                tracing::warn!("cluster listener: accepting a connection failed: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn admit_connection(shared: &Arc<Shared>, stream: TcpStream, peer_address: SocketAddr) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let previous = shared.num_connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnectionSlot(Arc::clone(shared));
    if previous >= shared.config.max_connections {
        refuse_unheard(&stream, RefusalReason::TooManyConnections);
        shared.record_refusal(
            RefusalDirection::WeRefused,
            peer_address.to_string(),
            None,
            RefusalReason::TooManyConnections,
        );
        return;
    }
    let shared = Arc::clone(shared);
    let spawned = spawn("hearth-cluster-conn", move || {
        let _slot = guard;
        serve_connection(&shared, stream, peer_address);
    });
    if let Err(err) = spawned {
        tracing::warn!("cluster listener: {err}");
    }
}

/// Counts a served connection; released when the connection's thread ends.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.num_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refuses a connection before reading anything from it (best effort, short write timeout).
fn refuse_unheard(stream: &TcpStream, reason: RefusalReason) {
    let mut stream = stream;
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    if let Ok(payload) = encode_message(&HandshakeMessage::Refuse { reason }) {
        let _ = write_frame(
            &mut stream,
            FrameKind::Handshake,
            &payload,
            &FrameLimits::HANDSHAKE,
        );
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn serve_connection(shared: &Arc<Shared>, stream: TcpStream, peer_address: SocketAddr) {
    if shared.stopping() {
        refuse_unheard(&stream, RefusalReason::ShuttingDown);
        return;
    }
    let mut join_session = None;
    let accepted = Connection::accept(
        stream,
        &shared.handshake,
        &shared.config.timing.connection,
        |peer| admit(shared, peer, peer_address, &mut join_session),
    );
    let connection = match accepted {
        Ok(connection) => connection,
        Err(failure) => {
            if let (Some(coordinator), Some(session)) = (shared.coordinator(), join_session) {
                coordinator.abandon_join(session);
            }
            record_failure(shared, peer_address, failure);
            return;
        }
    };
    match connection.peer().purpose {
        Purpose::Join => match (shared.coordinator(), join_session) {
            (Some(coordinator), Some(session)) => {
                coordinator.run_member_session(shared, connection, session)
            }
            _ => connection.shutdown(),
        },
        Purpose::Query => serve_queries(shared, connection),
        Purpose::Probe => {
            let mut connection = connection;
            if let Err(err) = measure::serve_probe(
                &mut connection,
                &shared.stop,
                shared.config.timing.idle_timeout,
                MAX_PROBE_BULK_BYTES,
            ) {
                tracing::debug!("link probe from {peer_address} ended: {err}");
            }
        }
        Purpose::Data => {
            let sender = shared
                .data_connections
                .lock()
                .ok()
                .and_then(|sender| sender.clone());
            match sender {
                Some(sender) => {
                    if let Err(returned) = sender.send(connection) {
                        returned.0.shutdown();
                    }
                }
                None => connection.shutdown(),
            }
        }
    }
}

/// The admission rule run after a peer proved the key.
fn admit(
    shared: &Shared,
    peer: &PeerIdentity,
    peer_address: SocketAddr,
    join_session: &mut Option<crate::coordinator::JoinSession>,
) -> std::result::Result<(), RefusalReason> {
    match (peer.purpose, &shared.role_state) {
        (Purpose::Join, RoleState::Coordinator(coordinator)) => {
            *join_session = Some(coordinator.admit_join(peer, peer_address)?);
            Ok(())
        }
        (Purpose::Join, RoleState::Worker(worker)) => Err(RefusalReason::NotCoordinator {
            coordinator: worker.coordinator_address(),
        }),
        (Purpose::Data, _)
            if shared
                .data_connections
                .lock()
                .map(|sender| sender.is_none())
                .unwrap_or(true) =>
        {
            Err(RefusalReason::PurposeNotServed {
                purpose: Purpose::Data,
            })
        }
        _ => Ok(()),
    }
}

fn record_failure(shared: &Shared, peer_address: SocketAddr, failure: HandshakeFailure) {
    let (direction, claimed, reason) = match failure {
        HandshakeFailure::WeRefused { claimed, reason } => {
            (RefusalDirection::WeRefused, claimed, reason)
        }
        // The initiator could not verify our proof: the keys differ, and an incoming peer
        // holding another key than this node's is the one with the wrong key.
        HandshakeFailure::TheyRefused {
            claimed,
            reason: RefusalReason::WrongKey,
        } => (
            RefusalDirection::WeRefused,
            claimed,
            RefusalReason::WrongKey,
        ),
        HandshakeFailure::TheyRefused { claimed, reason } => {
            (RefusalDirection::RefusedUs, claimed, reason)
        }
        HandshakeFailure::Failed(err) => {
            tracing::debug!("handshake with {peer_address} failed: {err}");
            return;
        }
    };
    let who = claimed
        .as_ref()
        .map_or_else(|| "unknown id".to_string(), |peer| peer.node_id.short());
    match direction {
        RefusalDirection::WeRefused => tracing::warn!("refused {peer_address} ({who}): {reason}"),
        RefusalDirection::RefusedUs => {
            tracing::warn!("{peer_address} ({who}) refused us: {reason}")
        }
    }
    shared.record_refusal(
        direction,
        peer_address.to_string(),
        claimed.as_ref(),
        reason,
    );
}

/// Answers `StatusRequest`s until the client closes, goes idle, or the node stops.
fn serve_queries(shared: &Shared, mut connection: Connection) {
    let mut last_request = Instant::now();
    while !shared.stopping() && last_request.elapsed() < shared.config.timing.idle_timeout {
        match connection.poll_message(STOP_POLL) {
            Ok(Some(ControlMessage::StatusRequest)) => {
                last_request = Instant::now();
                let reply = ControlMessage::StatusReply {
                    status: Box::new(shared.status()),
                };
                if connection.send_message(&reply).is_err() {
                    return;
                }
            }
            Ok(Some(other)) => {
                tracing::debug!("query connection sent `{}`; closing it", other.name());
                connection.shutdown();
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    connection.shutdown();
}
