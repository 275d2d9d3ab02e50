//! The worker's side of membership: find a coordinator (redirect hint, static peers including the
//! LWS leader, mDNS), join it, heartbeat, follow the member list, probe the link to each peer and
//! report it, and rejoin whenever the session ends.
//!
//! Owns: the join loop (one thread), the worker's view for `status`, the worker's link probes.
//! Does not own: the handshake (`connection.rs`), what a coordinator does (`coordinator.rs`).
//!
//! Invariants: one session at a time; a coordinator silent for the heartbeat timeout it
//! announced ends the session (and the worker tries again); every wait is bounded (connect,
//! handshake, each poll, the retry pause) and checks the stop flag; a refusal is remembered in
//! the node's refusal log so `status`/`doctor` asked of this worker can report it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::{resolve_address, Connection};
use crate::discovery::DEFAULT_COORDINATOR_PORT;
use crate::error::ClusterError;
use crate::identity::NodeId;
use crate::measure::probe_link;
use crate::membership::millis;
use crate::message::{
    ClusterStatus, ControlMessage, LinkMeasurement, LinkStatus, MemberAddress, NodeState,
    NodeStatus, Purpose, RefusalDirection, RefusalReason, Role,
};
use crate::node::{Shared, STOP_POLL};

type LinkOutcome = Result<LinkMeasurement, String>;

#[derive(Debug, Clone)]
struct CoordinatorLink {
    address: SocketAddr,
    since: Instant,
    heartbeat_timeout: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct WorkerState {
    coordinator: Mutex<Option<CoordinatorLink>>,
    last_error: Mutex<Option<String>>,
    links: Mutex<BTreeMap<NodeId, (LinkOutcome, Instant)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WorkerState {
    /// The coordinator this worker is joined to, for redirecting misdirected joins.
    pub fn coordinator_address(&self) -> Option<String> {
        lock(&self.coordinator)
            .as_ref()
            .map(|link| link.address.to_string())
    }

    pub fn status(&self, shared: &Shared) -> ClusterStatus {
        let now = Instant::now();
        let coordinator = lock(&self.coordinator).clone();
        let links = lock(&self.links)
            .iter()
            .map(|(to, (outcome, at))| LinkStatus {
                from: shared.config.node_id,
                to: *to,
                outcome: outcome.clone(),
                measured_ms_ago: millis(now.saturating_duration_since(*at)),
            })
            .collect();
        let own = NodeStatus {
            node_id: shared.config.node_id,
            address: shared.local_addr.to_string(),
            role: Role::Worker,
            version: shared.config.version.clone(),
            resources: shared.current_resources(),
            state: NodeState::Alive,
            heartbeat_age_ms: 0,
            member_for_ms: coordinator
                .as_ref()
                .map_or(0, |link| millis(now.saturating_duration_since(link.since))),
        };
        ClusterStatus {
            reporter: shared.config.node_id,
            reporter_role: Role::Worker,
            version: shared.config.version.clone(),
            coordinator: coordinator.as_ref().map(|link| link.address.to_string()),
            heartbeat_timeout_ms: millis(
                coordinator.map_or(shared.config.timing.heartbeat_timeout, |link| {
                    link.heartbeat_timeout
                }),
            ),
            expected_nodes: shared.config.expected_nodes,
            nodes: vec![own],
            links,
            refusals: shared.refusals.snapshot(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    fn set_error(&self, error: String) {
        let mut last = lock(&self.last_error);
        if last.as_deref() != Some(error.as_str()) {
            tracing::warn!("{error}");
        }
        *last = Some(error);
    }
}

/// Tries to reach a coordinator until the node stops; each round tries every candidate once.
pub(crate) fn join_loop(shared: &Arc<Shared>) {
    let Some(worker) = shared.worker() else {
        return;
    };
    let mut redirect: Option<String> = None;
    while !shared.stopping() {
        let candidates = candidates(shared, worker, redirect.take());
        if candidates.is_empty() {
            worker.set_error(
                "no coordinator known yet: no --peers, no LWS_LEADER_ADDRESS, and no coordinator seen on mDNS"
                    .to_string(),
            );
        }
        for address in candidates {
            if shared.stopping() {
                return;
            }
            let connection = shared.dialer.connect(address, Purpose::Join);
            match connection {
                Ok(connection) => {
                    let ended = run_session(shared, worker, connection);
                    *lock(&worker.coordinator) = None;
                    if shared.stopping() {
                        return;
                    }
                    worker.set_error(format!(
                        "session with the coordinator at {address} ended: {ended}"
                    ));
                    break;
                }
                Err(ClusterError::Refused(RefusalReason::NotCoordinator { coordinator })) => {
                    redirect = coordinator;
                }
                Err(err) => {
                    let reason = match &err {
                        ClusterError::Refused(reason) => {
                            Some((RefusalDirection::RefusedUs, reason.clone()))
                        }
                        ClusterError::PeerHasWrongKey => {
                            Some((RefusalDirection::RefusedUs, RefusalReason::WrongKey))
                        }
                        _ => None,
                    };
                    if let Some((direction, reason)) = reason {
                        shared.record_refusal(direction, address.to_string(), None, reason);
                    }
                    worker.set_error(format!(
                        "joining the coordinator at {address} failed: {err}"
                    ));
                }
            }
        }
        // A redirect is followed after a short pause; a chain of redirects is rate-limited.
        let pause = match redirect {
            Some(_) => Duration::from_millis(50),
            None => shared.config.timing.retry_interval,
        };
        if shared.sleep_unless_stopped(pause) {
            return;
        }
    }
}

/// Where to look for the coordinator, in order: a redirect from a worker, static peers, mDNS.
fn candidates(shared: &Shared, worker: &WorkerState, redirect: Option<String>) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for text in redirect.iter().chain(shared.config.peers.iter()) {
        match resolve_address(text, DEFAULT_COORDINATOR_PORT) {
            Ok(resolved) => addresses.extend(resolved),
            Err(err) => worker.set_error(format!("peer `{text}`: {err}")),
        }
    }
    if let Ok(discovery) = shared.discovery.lock() {
        if let Some(discovery) = discovery.as_ref() {
            for node in discovery.coordinators() {
                addresses.extend(node.socket_addresses());
            }
        }
    }
    let own = shared.local_addr;
    let mut seen = BTreeSet::new();
    addresses.retain(|address| {
        let is_self = *address == own
            || (own.ip().is_unspecified()
                && address.ip().is_loopback()
                && address.port() == own.port());
        !is_self && seen.insert(*address)
    });
    addresses
}

/// One session with a coordinator; returns why it ended.
fn run_session(shared: &Arc<Shared>, worker: &WorkerState, mut connection: Connection) -> String {
    let contract = connection.recv_message(shared.config.timing.connection.handshake_timeout);
    let (coordinator_id, interval, timeout) = match contract {
        Ok(ControlMessage::Joined {
            coordinator,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
        }) if heartbeat_interval_ms > 0 && heartbeat_interval_ms < heartbeat_timeout_ms => (
            coordinator,
            Duration::from_millis(heartbeat_interval_ms),
            Duration::from_millis(heartbeat_timeout_ms),
        ),
        Ok(other) => {
            connection.shutdown();
            return format!(
                "protocol error: expected a valid `joined`, got `{}`",
                other.name()
            );
        }
        Err(err) => return format!("no `joined` from the coordinator: {err}"),
    };
    let coordinator_address = connection.peer_address();
    tracing::info!("joined the coordinator {coordinator_id} at {coordinator_address}");
    *lock(&worker.coordinator) = Some(CoordinatorLink {
        address: coordinator_address,
        since: Instant::now(),
        heartbeat_timeout: timeout,
    });
    *lock(&worker.last_error) = None;
    let (report_sender, reports) = mpsc::channel();
    let mut probed = BTreeSet::new();
    let mut next_heartbeat = Instant::now();
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    loop {
        if shared.stopping() {
            let _ = connection.send_message(&ControlMessage::Goodbye {
                reason: "node shutting down".into(),
            });
            connection.shutdown();
            return "node shutting down".into();
        }
        let now = Instant::now();
        if now >= next_heartbeat {
            let heartbeat = ControlMessage::Heartbeat {
                seq,
                resources: shared.current_resources(),
            };
            if let Err(err) = connection.send_message(&heartbeat) {
                return format!("sending a heartbeat failed: {err}");
            }
            seq += 1;
            next_heartbeat = now + interval;
        }
        if let Err(err) = forward_link_reports(worker, &reports, &mut connection) {
            return format!("sending a link report failed: {err}");
        }
        let wait = next_heartbeat
            .saturating_duration_since(Instant::now())
            .min(STOP_POLL);
        match connection.poll_message(wait) {
            Ok(Some(ControlMessage::HeartbeatAck { .. })) => last_heard = Instant::now(),
            Ok(Some(ControlMessage::Members { members })) => {
                last_heard = Instant::now();
                for member in members {
                    if member.node_id != shared.config.node_id && probed.insert(member.node_id) {
                        let address = if member.node_id == coordinator_id {
                            Ok(coordinator_address)
                        } else {
                            member_address(&member)
                        };
                        start_probe(shared, member.node_id, address, report_sender.clone());
                    }
                }
            }
            Ok(Some(ControlMessage::Goodbye { reason })) => {
                connection.shutdown();
                return format!("the coordinator said goodbye: {reason}");
            }
            Ok(Some(other)) => {
                connection.shutdown();
                return format!(
                    "protocol error: unexpected `{}` from the coordinator",
                    other.name()
                );
            }
            Ok(None) => {}
            Err(err) => return format!("connection lost: {err}"),
        }
        if last_heard.elapsed() > timeout {
            connection.shutdown();
            return format!("the coordinator was silent for more than {timeout:?}");
        }
    }
}

fn member_address(member: &MemberAddress) -> Result<SocketAddr, String> {
    member.address.parse().map_err(|_| {
        format!(
            "member {} has no usable address `{}`",
            member.node_id, member.address
        )
    })
}

fn forward_link_reports(
    worker: &WorkerState,
    reports: &Receiver<(NodeId, LinkOutcome)>,
    connection: &mut Connection,
) -> crate::error::Result<()> {
    while let Ok((to, outcome)) = reports.try_recv() {
        lock(&worker.links).insert(to, (outcome.clone(), Instant::now()));
        connection.send_message(&ControlMessage::LinkReport { to, outcome })?;
    }
    Ok(())
}

/// Probes the link to `to` on its own thread (bounded by the probe's time limit and the
/// connection timeouts); the result comes back through `reports`.
fn start_probe(
    shared: &Arc<Shared>,
    to: NodeId,
    address: Result<SocketAddr, String>,
    reports: Sender<(NodeId, LinkOutcome)>,
) {
    let Some(params) = shared.config.link_probe else {
        return;
    };
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("hearth-cluster-probe".into())
        .spawn(move || {
            let outcome = address.and_then(|address| {
                shared
                    .dialer
                    .connect(address, Purpose::Probe)
                    .and_then(|mut probe| {
                        let measured = probe_link(&mut probe, &params);
                        probe.shutdown();
                        measured
                    })
                    .map_err(|err| format!("probing {address}: {err}"))
            });
            let _ = reports.send((to, outcome));
        });
    if let Err(err) = spawned {
        tracing::warn!("could not start a link probe: {err}");
    }
}
