//! `hearth cluster doctor`: explains why a peer is missing or refused, instead of failing
//! silently.
//!
//! Checks, in order: (1) interfaces: is any interface up with multicast (else mDNS cannot
//! work); (2) mDNS: which hearth nodes advertise within the wait, with their versions and ids
//! (version mismatch, duplicate node id); (3) every target (`--coordinator`, `--peers`, the LWS
//! leader, every node seen on mDNS): name resolution, TCP connect (port unreachable: refused,
//! timed out, no route), the authenticated handshake (wrong cluster key, version mismatch), and
//! its status; (4) each status: refusals the node remembers (so a refused peer's reason shows
//! up from the refusing side too), gone members and why, a worker's last error, fewer nodes
//! than the deployment expects, nodes seen on mDNS that are not members.
//!
//! Owns: the checks and the wording of findings. Does not own: fixing anything. Invariants:
//! every check is bounded (mDNS by the wait, each target by the connection timing); the report
//! is data (`DoctorReport`, serializable) with a text rendering.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

use crate::client::query_status;
use crate::connection::{resolve_address, ConnectionTiming, Dialer};
use crate::discovery::{browse_for, MdnsOptions, SeenNode, DEFAULT_COORDINATOR_PORT};
use crate::error::ClusterError;
use crate::identity::NodeId;
use crate::interfaces::{list_interfaces, InterfaceInfo};
use crate::message::{ClusterStatus, NodeState, RefusalDirection, Role, VersionInfo};
use crate::refusals::unix_millis_now;

/// Refusals older than this are history, not a diagnosis.
const RECENT_REFUSAL_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct DoctorParams {
    /// How to authenticate (the cluster key); without it, only reachability is checked.
    pub dialer: Option<Dialer>,
    /// This machine's stable node id (duplicate checks).
    pub machine_node_id: Option<NodeId>,
    /// `host:port` of the coordinator and peers to check.
    pub targets: Vec<String>,
    /// Browse mDNS for this long; `None` skips mDNS.
    pub mdns: Option<(MdnsOptions, Duration)>,
    pub timing: ConnectionTiming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// A node seen on mDNS, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeenSummary {
    pub node_id: NodeId,
    pub role: Option<Role>,
    pub version: Option<VersionInfo>,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub interfaces: Vec<InterfaceInfo>,
    pub mdns_seen: Vec<SeenSummary>,
    /// The status of every node that answered, by the address asked.
    pub statuses: BTreeMap<String, ClusterStatus>,
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|finding| finding.severity == Severity::Problem)
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let label = match finding.severity {
                Severity::Ok => "ok",
                Severity::Info => "info",
                Severity::Warning => "warning",
                Severity::Problem => "PROBLEM",
            };
            writeln!(f, "[{label}] {}", finding.message)?;
        }
        let num_problems = self.problems().count();
        if num_problems == 0 {
            write!(f, "no problems found")
        } else {
            write!(f, "{num_problems} problem(s) found")
        }
    }
}

struct Doctor {
    findings: Vec<Finding>,
}

impl Doctor {
    fn say(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }
}

pub fn run_doctor(params: &DoctorParams) -> DoctorReport {
    let mut doctor = Doctor {
        findings: Vec::new(),
    };
    let interfaces = check_interfaces(&mut doctor, params);
    let seen = match &params.mdns {
        Some((options, wait)) => check_mdns(
            &mut doctor,
            options,
            *wait,
            params.machine_node_id,
            &interfaces,
        ),
        None => Vec::new(),
    };
    let mut targets: Vec<String> = params.targets.clone();
    for node in &seen {
        targets.extend(node.socket_addresses().iter().map(ToString::to_string));
    }
    if targets.is_empty() {
        doctor.say(
            Severity::Problem,
            "no peer to check: give --coordinator or --peers (host:port), or let mDNS find a coordinator",
        );
    }
    let mut statuses = BTreeMap::new();
    let mut checked = BTreeSet::new();
    for target in &targets {
        for address in resolve_target(&mut doctor, target) {
            if checked.insert(address) {
                if let Some(status) = check_target(&mut doctor, params, address) {
                    statuses.insert(address.to_string(), status);
                }
            }
        }
    }
    for (address, status) in &statuses {
        explain_status(&mut doctor, address, status, &seen);
    }
    let mdns_seen = seen
        .iter()
        .map(|node| SeenSummary {
            node_id: node.node_id,
            role: node.role,
            version: node.version.clone(),
            addresses: node
                .socket_addresses()
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect();
    DoctorReport {
        interfaces,
        mdns_seen,
        statuses,
        findings: doctor.findings,
    }
}

fn check_interfaces(doctor: &mut Doctor, params: &DoctorParams) -> Vec<InterfaceInfo> {
    let interfaces = match list_interfaces() {
        Ok(interfaces) => interfaces,
        Err(err) => {
            doctor.say(
                Severity::Warning,
                format!("could not list network interfaces: {err}"),
            );
            return Vec::new();
        }
    };
    let usable: Vec<&InterfaceInfo> = interfaces
        .iter()
        .filter(|interface| interface.can_multicast())
        .collect();
    let described: Vec<String> = interfaces
        .iter()
        .map(|interface| match interface.multicast_problem() {
            None => format!("{} (multicast ok)", interface.name),
            Some(problem) => format!("{} ({problem})", interface.name),
        })
        .collect();
    let wanted = params
        .mdns
        .as_ref()
        .and_then(|(options, _)| options.interface.clone());
    match wanted {
        Some(name) => match interfaces.iter().find(|interface| interface.name == name) {
            None => doctor.say(Severity::Problem, format!("mDNS interface `{name}` does not exist (interfaces: {})", described.join(", "))),
            Some(interface) => match interface.multicast_problem() {
                Some(problem) => doctor.say(
                    Severity::Problem,
                    format!("no multicast on the mDNS interface `{name}` ({problem}): mDNS cannot work there; use --peers host:port"),
                ),
                None => doctor.say(Severity::Ok, format!("interface `{name}` can carry mDNS multicast")),
            },
        },
        None if usable.is_empty() => doctor.say(
            // Only a problem when mDNS is wanted; with static peers it is a remark.
            if params.mdns.is_some() { Severity::Problem } else { Severity::Info },
            format!(
                "no multicast-capable interface is up ({}): mDNS discovery cannot work here; use --peers host:port",
                described.join(", ")
            ),
        ),
        None => {
            let names: Vec<&str> = usable.iter().map(|interface| interface.name.as_str()).collect();
            doctor.say(Severity::Ok, format!("multicast-capable interfaces: {}", names.join(", ")));
        }
    }
    interfaces
}

fn check_mdns(
    doctor: &mut Doctor,
    options: &MdnsOptions,
    wait: Duration,
    machine_node_id: Option<NodeId>,
    interfaces: &[InterfaceInfo],
) -> Vec<SeenNode> {
    let seen = match browse_for(options, wait) {
        Ok(seen) => seen,
        Err(err) => {
            doctor.say(Severity::Problem, format!("mDNS could not start: {err}"));
            return Vec::new();
        }
    };
    if seen.is_empty() {
        doctor.say(
            Severity::Problem,
            format!(
                "mDNS saw no hearth node within {wait:?}: multicast may be blocked on this network (or no node runs \
                 with mDNS on); use --peers host:port"
            ),
        );
        return seen;
    }
    let ours = VersionInfo::current();
    let local_ips: BTreeSet<IpAddr> = interfaces
        .iter()
        .flat_map(|interface| interface.ipv4.iter().map(|ip| IpAddr::V4(*ip)))
        .collect();
    let mut by_id: BTreeMap<NodeId, Vec<&SeenNode>> = BTreeMap::new();
    for node in &seen {
        by_id.entry(node.node_id).or_default().push(node);
        let addresses: Vec<String> = node
            .socket_addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        let role = node
            .role
            .map_or_else(|| "unknown role".to_string(), |role| role.to_string());
        doctor.say(
            Severity::Info,
            format!(
                "mDNS: node {} ({role}) at {}",
                node.node_id,
                addresses.join(", ")
            ),
        );
        match &node.version {
            Some(version) if *version != ours => doctor.say(
                Severity::Problem,
                format!("version mismatch: node {} advertises {version}, this machine runs {ours}; it cannot join", node.node_id),
            ),
            None => doctor.say(Severity::Warning, format!("node {} advertises no version", node.node_id)),
            Some(_) => {}
        }
        let on_other_host = node.addresses.iter().all(|ip| !local_ips.contains(ip));
        if Some(node.node_id) == machine_node_id && on_other_host {
            doctor.say(
                Severity::Problem,
                format!(
                    "duplicate node id: {} is this machine's id, but a node at {} advertises it too (copied state \
                     directory?); give one of them another --node-id or --state-dir",
                    node.node_id,
                    addresses.join(", ")
                ),
            );
        }
    }
    for (node_id, nodes) in by_id {
        let hosts: BTreeSet<Vec<IpAddr>> =
            nodes.iter().map(|node| node.addresses.clone()).collect();
        if hosts.len() > 1 {
            let places: Vec<String> = hosts.iter().map(|ips| format!("{ips:?}")).collect();
            doctor.say(
                Severity::Problem,
                format!(
                    "duplicate node id: {node_id} is advertised from different hosts {}",
                    places.join(" and ")
                ),
            );
        }
    }
    seen
}

fn resolve_target(doctor: &mut Doctor, target: &str) -> Vec<SocketAddr> {
    match resolve_address(target, DEFAULT_COORDINATOR_PORT) {
        Ok(addresses) => addresses,
        Err(err) => {
            doctor.say(
                Severity::Problem,
                format!("{target}: cannot resolve: {err}"),
            );
            Vec::new()
        }
    }
}

/// Reachability, then the handshake and the status; the status when the node answered.
fn check_target(
    doctor: &mut Doctor,
    params: &DoctorParams,
    address: SocketAddr,
) -> Option<ClusterStatus> {
    let timeout = params.timing.connect_timeout;
    match TcpStream::connect_timeout(&address, timeout) {
        Ok(stream) => drop(stream),
        Err(err) => {
            let why = match err.kind() {
                ErrorKind::ConnectionRefused => {
                    "connection refused (nothing listens on that port, or a firewall rejects it)"
                        .to_string()
                }
                ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                    format!("no answer within {timeout:?} (host down, wrong address, or a firewall drops packets)")
                }
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    format!("no route to the host ({err})")
                }
                _ => err.to_string(),
            };
            doctor.say(
                Severity::Problem,
                format!("{address}: port unreachable: {why}"),
            );
            return None;
        }
    }
    let Some(dialer) = &params.dialer else {
        doctor.say(
            Severity::Info,
            format!("{address}: port open (no cluster key given: authentication not checked)"),
        );
        return None;
    };
    match query_status(address, dialer) {
        Ok(status) => {
            let alive = status.alive_nodes().count();
            let what = match status.reporter_role {
                Role::Coordinator => format!("the coordinator, {alive} node(s) alive"),
                Role::Worker => match &status.coordinator {
                    Some(coordinator) => format!("a worker joined to {coordinator}"),
                    None => "a worker, not joined to any coordinator".to_string(),
                },
            };
            doctor.say(
                Severity::Ok,
                format!(
                    "{address}: authenticated; node {} is {what}",
                    status.reporter
                ),
            );
            Some(status)
        }
        Err(ClusterError::PeerHasWrongKey) => {
            doctor.say(
                Severity::Problem,
                format!("{address}: wrong cluster key: the node there holds a different cluster key than this one"),
            );
            None
        }
        Err(ClusterError::Refused(reason)) => {
            doctor.say(Severity::Problem, format!("{address}: refused: {reason}"));
            None
        }
        Err(err) => {
            doctor.say(
                Severity::Problem,
                format!("{address}: the port answers but the hearth handshake failed: {err}"),
            );
            None
        }
    }
}

fn explain_status(doctor: &mut Doctor, address: &str, status: &ClusterStatus, seen: &[SeenNode]) {
    let now_ms = unix_millis_now();
    for refusal in &status.refusals {
        let age_ms = now_ms.saturating_sub(refusal.at_unix_ms);
        if age_ms > RECENT_REFUSAL_MS {
            continue;
        }
        let who = refusal
            .peer_node_id
            .map_or_else(|| "a peer".to_string(), |node_id| format!("node {node_id}"));
        let message = match refusal.direction {
            RefusalDirection::WeRefused => format!(
                "{address} refused {who} from {} {}s ago: {}",
                refusal.peer_address,
                age_ms / 1000,
                refusal.reason
            ),
            RefusalDirection::RefusedUs => format!(
                "{address} was refused by {} {}s ago: {}",
                refusal.peer_address,
                age_ms / 1000,
                refusal.reason
            ),
        };
        doctor.say(Severity::Problem, message);
    }
    for node in &status.nodes {
        if let NodeState::Gone {
            reason,
            gone_for_ms,
        } = &node.state
        {
            doctor.say(
                Severity::Warning,
                format!(
                    "node {} at {} is gone: {reason} ({}s ago)",
                    node.node_id,
                    node.address,
                    gone_for_ms / 1000
                ),
            );
        }
    }
    if let Some(error) = &status.last_error {
        doctor.say(
            Severity::Problem,
            format!("{address} (worker) cannot stay joined: {error}"),
        );
    }
    let alive = status.alive_nodes().count();
    if let Some(expected) = status.expected_nodes {
        if alive < expected {
            doctor.say(
                Severity::Warning,
                format!("{address}: {alive} of {expected} expected nodes are alive (--expect / LWS_GROUP_SIZE)"),
            );
        }
    }
    if status.reporter_role == Role::Coordinator {
        for node in seen {
            if status.node(node.node_id).is_none() {
                doctor.say(
                    Severity::Warning,
                    format!("node {} advertises on mDNS but is not a member of the coordinator at {address}", node.node_id),
                );
            }
        }
    }
}
