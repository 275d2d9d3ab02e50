//! The coordinator's side of membership: admitting joins, one session thread per member
//! (heartbeats in, acks and member lists out), the reaper that marks silent members gone,
//! membership events for the serving side, and the link table.
//!
//! Owns: the threads and locks around the pure `Membership` table, event publication, the
//! coordinator's own link probes to each member. Does not own: the membership rules
//! (`membership.rs`), the handshake (`node.rs` runs it and calls `admit_join`).
//!
//! Invariants: a `Joined` event is published once a member's first heartbeat brought its
//! resources, and a `Gone` event only for a member whose `Joined` was published (so
//! subscribers see matched pairs); no two of this file's locks are ever held at once; a
//! session whose member was expired by the reaper closes its connection (the worker rejoins).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::connection::Connection;
use crate::error::ClusterError;
use crate::handshake::PeerIdentity;
use crate::identity::NodeId;
use crate::measure::probe_link;
use crate::membership::{millis, MemberInfo, Membership, MembershipEvent, SessionId};
use crate::message::{
    ClusterStatus, ControlMessage, GoneReason, LinkMeasurement, LinkStatus, NodeResources, Purpose,
    RefusalReason, Role,
};
use crate::node::{NodeConfig, Shared, STOP_POLL};

type LinkOutcome = Result<LinkMeasurement, String>;

/// An admitted join, waiting for its connection's handshake to finish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JoinSession {
    node_id: NodeId,
    session: SessionId,
    rejoined: bool,
}

pub(crate) struct CoordinatorState {
    membership: Mutex<Membership>,
    links: Mutex<BTreeMap<(NodeId, NodeId), (LinkOutcome, Instant)>>,
    subscribers: Mutex<Vec<Sender<MembershipEvent>>>,
    announced: Mutex<BTreeSet<NodeId>>,
    own_address: String,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CoordinatorState {
    pub fn new(config: &NodeConfig, local_addr: SocketAddr) -> Self {
        let own = MemberInfo {
            address: local_addr.to_string(),
            role: Role::Coordinator,
            version: config.version.clone(),
            resources: config.resources.clone(),
        };
        Self {
            membership: Mutex::new(Membership::new(
                config.node_id,
                own,
                config.timing.heartbeat_timeout,
                Instant::now(),
            )),
            links: Mutex::new(BTreeMap::new()),
            subscribers: Mutex::new(Vec::new()),
            announced: Mutex::new(BTreeSet::new()),
            own_address: local_addr.to_string(),
        }
    }

    pub fn subscribe(&self) -> Receiver<MembershipEvent> {
        let (sender, receiver) = mpsc::channel();
        lock(&self.subscribers).push(sender);
        receiver
    }

    /// Admission for `Purpose::Join`: refuses a live duplicate, else adds the member.
    pub fn admit_join(
        &self,
        peer: &PeerIdentity,
        peer_address: SocketAddr,
    ) -> Result<JoinSession, RefusalReason> {
        let address = match peer.listen_port {
            Some(port) => SocketAddr::new(peer_address.ip(), port),
            None => peer_address,
        };
        let info = MemberInfo {
            address: address.to_string(),
            role: Role::Worker,
            version: peer.version.clone(),
            resources: NodeResources {
                backend: "unknown".into(),
                free_memory_bytes: None,
                memory_bandwidth_bytes_per_s: None,
                compute: String::new(),
            },
        };
        let (session, event) = lock(&self.membership).join(peer.node_id, info, Instant::now())?;
        let rejoined = matches!(event, MembershipEvent::Joined { rejoined: true, .. });
        Ok(JoinSession {
            node_id: peer.node_id,
            session,
            rejoined,
        })
    }

    /// The handshake failed after `admit_join`: the member never really joined.
    pub fn abandon_join(&self, join: JoinSession) {
        self.end(
            join,
            GoneReason::ConnectionClosed {
                detail: "handshake did not complete".into(),
            },
        );
    }

    fn end(&self, join: JoinSession, reason: GoneReason) {
        let event =
            lock(&self.membership).end_session(join.node_id, join.session, reason, Instant::now());
        if let Some(event) = event {
            self.publish(event);
        }
    }

    /// Sends `event` to every live subscriber, keeping `Joined`/`Gone` matched.
    fn publish(&self, event: MembershipEvent) {
        let deliver = match &event {
            MembershipEvent::Joined { node_id, .. } => lock(&self.announced).insert(*node_id),
            MembershipEvent::Gone { node_id, .. } => lock(&self.announced).remove(node_id),
        };
        if !deliver {
            return;
        }
        match &event {
            MembershipEvent::Joined {
                node_id,
                info,
                rejoined,
            } => tracing::info!(
                "node {node_id} {} at {} ({}, {})",
                if *rejoined { "rejoined" } else { "joined" },
                info.address,
                info.resources.backend,
                info.resources.compute
            ),
            MembershipEvent::Gone { node_id, reason } => {
                tracing::warn!("node {node_id} is gone: {reason}")
            }
        }
        lock(&self.subscribers).retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }

    /// Records a link between two nodes the table knows (a report naming an unknown node is
    /// dropped, so a member cannot grow the table without bound).
    fn record_link(&self, from: NodeId, to: NodeId, outcome: LinkOutcome) {
        let known = {
            let membership = lock(&self.membership);
            membership.member_info(from).is_some() && membership.member_info(to).is_some()
        };
        if known {
            lock(&self.links).insert((from, to), (outcome, Instant::now()));
        }
    }

    /// One member's session: the `Joined` contract, then heartbeats until the connection ends,
    /// the member leaves or times out, or the node stops.
    pub fn run_member_session(
        &self,
        shared: &Arc<Shared>,
        mut connection: Connection,
        join: JoinSession,
    ) {
        let timing = shared.config.timing;
        let joined = ControlMessage::Joined {
            coordinator: shared.config.node_id,
            heartbeat_interval_ms: millis(timing.heartbeat_interval),
            heartbeat_timeout_ms: millis(timing.heartbeat_timeout),
        };
        if let Err(err) = connection.send_message(&joined) {
            return self.end(join, closed(&err));
        }
        let mut sent_generation = 0;
        let mut announced = false;
        loop {
            if shared.stopping() {
                let _ = connection.send_message(&ControlMessage::Goodbye {
                    reason: "coordinator shutting down".into(),
                });
                connection.shutdown();
                return;
            }
            let generation = lock(&self.membership).generation();
            if generation != sent_generation {
                let members = lock(&self.membership).live_addresses();
                if let Err(err) = connection.send_message(&ControlMessage::Members { members }) {
                    return self.end(join, closed(&err));
                }
                sent_generation = generation;
            }
            match connection.poll_message(STOP_POLL) {
                Ok(Some(ControlMessage::Heartbeat { seq, resources })) => {
                    if !lock(&self.membership).heartbeat(
                        join.node_id,
                        join.session,
                        resources,
                        Instant::now(),
                    ) {
                        // Expired by the reaper (or replaced): close; the worker will rejoin.
                        connection.shutdown();
                        return;
                    }
                    if !announced {
                        announced = true;
                        self.announce(shared, join, &connection);
                    }
                    if let Err(err) = connection.send_message(&ControlMessage::HeartbeatAck { seq })
                    {
                        return self.end(join, closed(&err));
                    }
                }
                Ok(Some(ControlMessage::LinkReport { to, outcome })) => {
                    self.record_link(join.node_id, to, outcome)
                }
                Ok(Some(ControlMessage::Goodbye { reason })) => {
                    connection.shutdown();
                    return self.end(join, GoneReason::Left { detail: reason });
                }
                Ok(Some(other)) => {
                    connection.shutdown();
                    let detail = format!("unexpected `{}` in a member session", other.name());
                    return self.end(join, GoneReason::ProtocolError { detail });
                }
                Ok(None) => {
                    if !lock(&self.membership).is_live(join.node_id, join.session) {
                        connection.shutdown();
                        return;
                    }
                }
                Err(err) if err.is_protocol_violation() => {
                    return self.end(
                        join,
                        GoneReason::ProtocolError {
                            detail: err.to_string(),
                        },
                    )
                }
                Err(err) => return self.end(join, closed(&err)),
            }
        }
    }

    /// Publishes `Joined` (the first heartbeat brought the member's resources) and starts the
    /// coordinator's probe of the link to it (a thread bounded by the probe's time limit).
    fn announce(&self, shared: &Arc<Shared>, join: JoinSession, connection: &Connection) {
        let info = lock(&self.membership).member_info(join.node_id).cloned();
        let Some(info) = info else { return };
        self.publish(MembershipEvent::Joined {
            node_id: join.node_id,
            info,
            rejoined: join.rejoined,
        });
        let (Some(params), Some(address)) =
            (shared.config.link_probe, connection.peer_listen_address())
        else {
            return;
        };
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("hearth-cluster-probe".into())
            .spawn(move || {
                let outcome = shared
                    .dialer
                    .connect(address, Purpose::Probe)
                    .and_then(|mut probe| {
                        let measured = probe_link(&mut probe, &params);
                        probe.shutdown();
                        measured
                    })
                    .map_err(|err| err.to_string());
                if let Some(coordinator) = shared.coordinator() {
                    coordinator.record_link(shared.config.node_id, join.node_id, outcome);
                }
            });
        if let Err(err) = spawned {
            tracing::warn!("could not start a link probe: {err}");
        }
    }

    pub fn status(&self, shared: &Shared) -> ClusterStatus {
        let now = Instant::now();
        let (nodes, timeout) = {
            let membership = lock(&self.membership);
            (membership.snapshot(now), membership.heartbeat_timeout())
        };
        let listed: BTreeSet<NodeId> = nodes.iter().map(|node| node.node_id).collect();
        let mut table = lock(&self.links);
        // Links of nodes the table has forgotten go too.
        table.retain(|(from, to), _| listed.contains(from) && listed.contains(to));
        let links: Vec<LinkStatus> = table
            .iter()
            .map(|((from, to), (outcome, at))| LinkStatus {
                from: *from,
                to: *to,
                outcome: outcome.clone(),
                measured_ms_ago: millis(now.saturating_duration_since(*at)),
            })
            .collect();
        drop(table);
        ClusterStatus {
            reporter: shared.config.node_id,
            reporter_role: Role::Coordinator,
            version: shared.config.version.clone(),
            coordinator: Some(self.own_address.clone()),
            heartbeat_timeout_ms: millis(timeout),
            expected_nodes: shared.config.expected_nodes,
            nodes,
            links,
            refusals: shared.refusals.snapshot(),
            last_error: None,
        }
    }
}

fn closed(err: &ClusterError) -> GoneReason {
    GoneReason::ConnectionClosed {
        detail: err.to_string(),
    }
}

/// Marks silent members gone and refreshes the coordinator's own resources; every `heartbeat_timeout / 10` (at most 200 ms) until the node stops.
pub(crate) fn reaper_loop(shared: &Shared) {
    let Some(coordinator) = shared.coordinator() else {
        return;
    };
    let period = (shared.config.timing.heartbeat_timeout / 10).min(STOP_POLL);
    let mut last_refresh = Instant::now();
    while !shared.sleep_unless_stopped(period) {
        let events = lock(&coordinator.membership).expire(Instant::now());
        for event in events {
            coordinator.publish(event);
        }
        if last_refresh.elapsed() >= shared.config.timing.heartbeat_interval {
            last_refresh = Instant::now();
            let resources = shared.current_resources();
            lock(&coordinator.membership).update_local_resources(resources, last_refresh);
        }
    }
}
