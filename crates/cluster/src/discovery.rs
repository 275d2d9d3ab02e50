//! Finding peers: mDNS (`_hearth._tcp.local.`, via `mdns-sd`), static `--peers`, and the
//! Kubernetes LeaderWorkerSet environment.
//!
//! Owns: the TXT record layout (keys `id`, `version`, `proto`, `role`, `backend`, `free_memory`,
//! `memory_bandwidth`, `compute`), advertising this node, a background browse that keeps the
//! nodes seen on the LAN, and reading `LWS_LEADER_ADDRESS` / `LWS_WORKER_INDEX` /
//! `LWS_GROUP_SIZE`. Does not own: trusting what it finds (every peer still has to pass the
//! handshake) or deciding what is wrong (`doctor.rs`).
//!
//! Invariants: mDNS is IPv4 only and uses only interfaces that are up, not loopback, and
//! flagged `MULTICAST` (checked again whenever mdns-sd rescans interfaces); instance names carry a random suffix, so two nodes claiming
//! one id both stay visible (that is how a duplicate id shows up); the browse thread polls its
//! stop flag every 200 ms; malformed TXT records are skipped, never trusted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, IfPredicate, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::error::{ClusterError, Result};
use crate::identity::NodeId;
use crate::interfaces::carries_multicast;
use crate::message::{NodeResources, Role, VersionInfo};

pub const SERVICE_TYPE: &str = "_hearth._tcp.local.";
/// Where a coordinator listens unless told otherwise.
pub const DEFAULT_COORDINATOR_PORT: u16 = 7640;
/// Where a worker listens unless told otherwise.
pub const DEFAULT_WORKER_PORT: u16 = 7641;

const BROWSE_POLL: Duration = Duration::from_millis(200);

/// The Kubernetes LeaderWorkerSet variables of this pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwsEnvironment {
    /// The leader pod's address (a DNS name), from `LWS_LEADER_ADDRESS`.
    pub leader_address: String,
    /// 0 for the leader, from `LWS_WORKER_INDEX`.
    pub worker_index: u32,
    /// Pods in the group, from `LWS_GROUP_SIZE`.
    pub group_size: Option<usize>,
}

impl LwsEnvironment {
    /// `None` when `LWS_LEADER_ADDRESS` is not set (not running under LeaderWorkerSet).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(leader_address) =
            get("LWS_LEADER_ADDRESS").filter(|value| !value.trim().is_empty())
        else {
            return Ok(None);
        };
        let parse = |name: &str| -> Result<Option<u64>> {
            match get(name) {
                None => Ok(None),
                Some(value) => value.trim().parse::<u64>().map(Some).map_err(|_| {
                    ClusterError::Config(format!("{name}=`{value}` is not a non-negative integer"))
                }),
            }
        };
        let worker_index = parse("LWS_WORKER_INDEX")?.unwrap_or(0);
        let worker_index = u32::try_from(worker_index).map_err(|_| {
            ClusterError::Config(format!("LWS_WORKER_INDEX={worker_index} is out of range"))
        })?;
        let group_size = parse("LWS_GROUP_SIZE")?.map(|size| size as usize);
        Ok(Some(Self {
            leader_address: leader_address.trim().to_string(),
            worker_index,
            group_size,
        }))
    }

    pub fn is_leader(&self) -> bool {
        self.worker_index == 0
    }
}

/// What this node advertises.
#[derive(Debug, Clone)]
pub struct Advertisement {
    pub node_id: NodeId,
    pub role: Role,
    pub port: u16,
    pub version: VersionInfo,
    pub resources: NodeResources,
}

impl Advertisement {
    fn txt_properties(&self) -> Vec<(String, String)> {
        let mut properties = vec![
            ("id".to_string(), self.node_id.to_string()),
            ("version".to_string(), self.version.software.clone()),
            ("proto".to_string(), self.version.protocol.to_string()),
            ("role".to_string(), self.role.to_string()),
            ("backend".to_string(), self.resources.backend.clone()),
            (
                "compute".to_string(),
                truncate(&self.resources.compute, 200),
            ),
        ];
        if let Some(free) = self.resources.free_memory_bytes {
            properties.push(("free_memory".to_string(), free.to_string()));
        }
        if let Some(bandwidth) = self.resources.memory_bandwidth_bytes_per_s {
            properties.push(("memory_bandwidth".to_string(), format!("{bandwidth:.0}")));
        }
        properties
    }
}

fn truncate(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A hearth node seen on mDNS (its claims; unauthenticated).
#[derive(Debug, Clone, PartialEq)]
pub struct SeenNode {
    pub node_id: NodeId,
    /// The mDNS instance name.
    pub instance: String,
    pub role: Option<Role>,
    pub version: Option<VersionInfo>,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub resources: NodeResources,
    pub last_seen: Instant,
}

impl SeenNode {
    pub fn socket_addresses(&self) -> Vec<SocketAddr> {
        self.addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }

    fn from_resolved(service: &ResolvedService) -> std::result::Result<Self, String> {
        let text = |key: &str| service.get_property_val_str(key).map(str::to_string);
        let node_id: NodeId = text("id")
            .ok_or("no `id` in the TXT record")?
            .parse()
            .map_err(|err: ClusterError| err.to_string())?;
        let role = match text("role").as_deref() {
            Some("coordinator") => Some(Role::Coordinator),
            Some("worker") => Some(Role::Worker),
            _ => None,
        };
        let version = match (
            text("version"),
            text("proto").and_then(|value| value.parse().ok()),
        ) {
            (Some(software), Some(protocol)) => Some(VersionInfo { protocol, software }),
            _ => None,
        };
        let mut addresses: Vec<IpAddr> = service
            .get_addresses()
            .iter()
            .map(|scoped| scoped.to_ip_addr())
            .filter(IpAddr::is_ipv4)
            .collect();
        addresses.sort();
        Ok(Self {
            node_id,
            instance: service.get_fullname().to_string(),
            role,
            version,
            addresses,
            port: service.get_port(),
            resources: NodeResources {
                backend: text("backend").unwrap_or_default(),
                free_memory_bytes: text("free_memory").and_then(|value| value.parse().ok()),
                memory_bandwidth_bytes_per_s: text("memory_bandwidth")
                    .and_then(|value| value.parse().ok()),
                compute: text("compute").unwrap_or_default(),
            },
            last_seen: Instant::now(),
        })
    }
}

/// Which interfaces mDNS uses.
#[derive(Debug, Clone, Default)]
pub struct MdnsOptions {
    /// Only this interface (e.g. the fast link); all IPv4 interfaces when `None`.
    pub interface: Option<String>,
}

/// A running mDNS daemon: advertising this node (optionally) and browsing for others.
pub struct Discovery {
    daemon: ServiceDaemon,
    registered: Option<String>,
    seen: Arc<Mutex<BTreeMap<String, SeenNode>>>,
    stop: Arc<AtomicBool>,
    browse_thread: Option<JoinHandle<()>>,
}

impl Discovery {
    pub fn start(options: &MdnsOptions, advertisement: Option<&Advertisement>) -> Result<Self> {
        let mdns = |err: mdns_sd::Error| ClusterError::Mdns(err.to_string());
        let daemon = ServiceDaemon::new().map_err(mdns)?;
        daemon.disable_interface(IfKind::IPv6).map_err(mdns)?;
        if let Some(name) = &options.interface {
            daemon.disable_interface(IfKind::All).map_err(mdns)?;
            daemon
                .enable_interface(IfKind::Name(name.clone()))
                .map_err(mdns)?;
        }
        // Last, so it overrides the selections above; re-evaluated at each interface check.
        let without_multicast = IfPredicate::new(|interface| !carries_multicast(&interface.name));
        daemon
            .disable_interface(IfKind::Predicate(without_multicast))
            .map_err(mdns)?;
        let registered = match advertisement {
            Some(advertisement) => {
                let suffix: u16 = rand::random();
                let instance = format!("hearth-{}-{suffix:04x}", advertisement.node_id);
                let host = format!("hearth-{}.local.", advertisement.node_id);
                let info = ServiceInfo::new(
                    SERVICE_TYPE,
                    &instance,
                    &host,
                    (),
                    advertisement.port,
                    advertisement.txt_properties().as_slice(),
                )
                .map_err(mdns)?
                .enable_addr_auto();
                let fullname = info.get_fullname().to_string();
                daemon.register(info).map_err(mdns)?;
                Some(fullname)
            }
            None => None,
        };
        let receiver = daemon.browse(SERVICE_TYPE).map_err(mdns)?;
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let browse_thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("hearth-mdns-browse".into())
                .spawn(move || browse_loop(&receiver, &seen, &stop))
                .map_err(|err| ClusterError::io("starting the mDNS browse thread", err))?
        };
        Ok(Self {
            daemon,
            registered,
            seen,
            stop,
            browse_thread: Some(browse_thread),
        })
    }

    /// Every hearth node seen (this one included, when it advertises), by instance name.
    pub fn seen(&self) -> Vec<SeenNode> {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.values().cloned().collect()
    }

    /// Seen nodes that advertise the coordinator role.
    pub fn coordinators(&self) -> Vec<SeenNode> {
        self.seen()
            .into_iter()
            .filter(|node| node.role == Some(Role::Coordinator))
            .collect()
    }

    /// Unregisters (sending mDNS goodbyes) and stops the daemon; bounded by the daemon's
    /// acknowledgements (1 s each).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(fullname) = self.registered.take() {
            if let Ok(done) = self.daemon.unregister(&fullname) {
                let _ = done.recv_timeout(Duration::from_secs(1));
            }
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        if let Some(thread) = self.browse_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if self.browse_thread.is_some() {
            self.stop_all();
        }
    }
}

fn browse_loop(
    receiver: &mdns_sd::Receiver<ServiceEvent>,
    seen: &Mutex<BTreeMap<String, SeenNode>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let event = match receiver.recv_timeout(BROWSE_POLL) {
            Ok(event) => event,
            Err(mdns_sd::RecvTimeoutError::Timeout) => continue,
            Err(mdns_sd::RecvTimeoutError::Disconnected) => return,
        };
        let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            ServiceEvent::ServiceResolved(service) => match SeenNode::from_resolved(&service) {
                Ok(node) => {
                    seen.insert(node.instance.clone(), node);
                }
                Err(reason) => {
                    tracing::debug!("ignoring mDNS record {}: {reason}", service.get_fullname())
                }
            },
            ServiceEvent::ServiceRemoved(_, fullname) => {
                seen.remove(&fullname);
            }
            _ => {}
        }
    }
}

/// Browses for `wait` without advertising and returns what was seen (for `doctor` and for
/// finding a coordinator).
pub fn browse_for(options: &MdnsOptions, wait: Duration) -> Result<Vec<SeenNode>> {
    let discovery = Discovery::start(options, None)?;
    std::thread::sleep(wait);
    let seen = discovery.seen();
    discovery.shutdown();
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn lws_environment_is_read_and_validated() {
        assert_eq!(LwsEnvironment::from_vars(vars(&[])).unwrap(), None);
        let worker = LwsEnvironment::from_vars(vars(&[
            ("LWS_LEADER_ADDRESS", "hearth-0.hearth.default"),
            ("LWS_WORKER_INDEX", "2"),
            ("LWS_GROUP_SIZE", "4"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(worker.leader_address, "hearth-0.hearth.default");
        assert_eq!((worker.worker_index, worker.group_size), (2, Some(4)));
        assert!(!worker.is_leader());
        let err = LwsEnvironment::from_vars(vars(&[
            ("LWS_LEADER_ADDRESS", "x"),
            ("LWS_GROUP_SIZE", "four"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("LWS_GROUP_SIZE"), "{err}");
    }

    #[test]
    fn txt_record_carries_the_advertised_fields() {
        let advertisement = Advertisement {
            node_id: NodeId::random(),
            role: Role::Worker,
            port: 7641,
            version: VersionInfo::current(),
            resources: NodeResources {
                backend: "cuda".into(),
                free_memory_bytes: Some(80 << 30),
                memory_bandwidth_bytes_per_s: Some(3.0e12),
                compute: "cuda sm90".into(),
            },
        };
        let properties: BTreeMap<String, String> =
            advertisement.txt_properties().into_iter().collect();
        assert_eq!(properties["id"], advertisement.node_id.to_string());
        assert_eq!(properties["role"], "worker");
        assert_eq!(properties["backend"], "cuda");
        assert_eq!(properties["free_memory"], (80u64 << 30).to_string());
        assert_eq!(properties["memory_bandwidth"], "3000000000000");
        assert_eq!(
            properties["proto"],
            crate::message::PROTOCOL_VERSION.to_string()
        );
        for (key, value) in &properties {
            assert!(
                key.len() + value.len() < 255,
                "{key} is too long for a TXT string"
            );
        }
    }
}
