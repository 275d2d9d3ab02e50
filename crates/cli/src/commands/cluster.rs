//! `hearth cluster coordinator | status | doctor`, and the flags every cluster command shares
//! (key, identity, discovery, timing). `hearth node` (a worker) is in `node.rs`.
//!
//! Owns: turning flags and the environment (`HEARTH_CLUSTER_KEY`, LeaderWorkerSet variables)
//! into `hearth_cluster` configuration, running a node in the foreground until SIGTERM/Ctrl-C,
//! and printing status and diagnoses (text or `--json`). Does not own: any protocol logic
//! (`hearth-cluster`). `hearth serve --cluster` can start the coordinator with
//! [`start_coordinator`].
//!
//! Invariants: no cluster node starts without a key of at least 16 bytes; the key never
//! appears in output; every command that talks to the network is bounded by timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hearth_cluster::{
    browse_for, cpu_resources, default_state_dir, load_or_create, measure_memory_bandwidth,
    query_dialer, query_status, resolve_address, run_doctor, ClusterKey, ClusterStatus,
    ClusterTiming, ConnectionTiming, DoctorParams, FreeMemorySource, LinkMeasurement,
    LwsEnvironment, MdnsOptions, MemoryBandwidthParams, Node, NodeConfig, NodeId, NodeResources,
    NodeState, RefusalDirection, Role, DEFAULT_COORDINATOR_PORT, NODE_ID_FILE,
};

use crate::stop_signal::StopSignal;
use crate::device::{ComputeDevice, DeviceChoice};

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Run the cluster's coordinator in the foreground (membership, heartbeats, link table).
    Coordinator(CoordinatorArgs),
    /// Show the cluster's nodes, their resources and the measured links.
    Status(StatusArgs),
    /// Explain why a peer is missing or refused.
    Doctor(DoctorArgs),
}

pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Coordinator(args) => run_coordinator(args),
        ClusterCommand::Status(args) => run_status(args),
        ClusterCommand::Doctor(args) => run_doctor_command(args),
    }
}

/// Where the cluster key comes from: `--cluster-key-file`, else `--cluster-key` or
/// `HEARTH_CLUSTER_KEY`.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// The cluster's shared key, at least 16 bytes (a command line is visible to other users of
    /// the machine: prefer --cluster-key-file or HEARTH_CLUSTER_KEY).
    #[arg(long, env = "HEARTH_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// A file holding the cluster key (trailing whitespace ignored).
    #[arg(long)]
    pub cluster_key_file: Option<PathBuf>,
}

impl KeyArgs {
    pub fn key(&self) -> Result<Option<ClusterKey>> {
        let key = match (&self.cluster_key_file, &self.cluster_key) {
            (Some(path), _) => ClusterKey::from_file(path)?,
            (None, Some(text)) => {
                ClusterKey::from_text(text).context("--cluster-key / HEARTH_CLUSTER_KEY")?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(key))
    }

    pub fn required_key(&self) -> Result<ClusterKey> {
        match self.key()? {
            Some(key) => Ok(key),
            None => bail!(
                "a cluster node needs the cluster's shared key: pass --cluster-key-file FILE, --cluster-key KEY or set \
                 HEARTH_CLUSTER_KEY (at least 16 bytes, e.g. from `openssl rand -hex 32`)"
            ),
        }
    }
}

/// Flags shared by the coordinator and `hearth node`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Address to accept cluster connections on [default: 0.0.0.0:7640 for the coordinator,
    /// 0.0.0.0:7641 for a worker].
    #[arg(long)]
    pub listen: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Comma-separated host:port of the coordinator (or any node, which redirects), for networks
    /// without multicast.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// This node's id, 32 hex digits [default: persisted in the state directory].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Directory holding the persisted node id [default: $HEARTH_HOME or ~/.cache/hearth].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Do not advertise or browse with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Use only this network interface for mDNS (e.g. the fast link).
    #[arg(long)]
    pub mdns_interface: Option<String>,
    /// Do not probe the links to peers.
    #[arg(long)]
    pub no_link_probes: bool,
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// A node silent this long is marked gone.
    #[arg(long, default_value_t = 3000)]
    pub heartbeat_timeout_ms: u64,
}

/// What a standalone node offers (`hearth node`, `hearth cluster coordinator`). `hearth serve`
/// knows its device from the model flags and passes resources itself.
#[derive(clap::Args, Debug, Clone)]
pub struct ResourceArgs {
    /// The device this node offers: cpu, cuda or cuda:N (sets backend and free memory).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Memory bandwidth to advertise, GB/s; measured (host memcpy) on the CPU when not given.
    #[arg(long)]
    pub memory_bandwidth_gbps: Option<f64>,
}

impl ResourceArgs {
    /// The resources to advertise and where free memory comes from.
    pub fn resources(&self) -> Result<(NodeResources, FreeMemorySource)> {
        let given = self.memory_bandwidth_gbps.map(|gbps| gbps * 1e9);
        if let Some(gbps) = self.memory_bandwidth_gbps {
            if !(gbps.is_finite() && gbps > 0.0) {
                bail!("--memory-bandwidth-gbps must be a positive number, got {gbps}");
            }
        }
        match self.device {
            DeviceChoice::Cpu => {
                let bandwidth = match given {
                    Some(bandwidth) => bandwidth,
                    None => {
                        measure_memory_bandwidth(&MemoryBandwidthParams::default())?.bytes_per_s
                    }
                };
                Ok((
                    cpu_resources(Some(bandwidth)),
                    FreeMemorySource::SystemAvailable,
                ))
            }
            DeviceChoice::Cuda { .. } => {
                let device = ComputeDevice::open(self.device)?;
                let resources = NodeResources {
                    backend: "cuda".into(),
                    free_memory_bytes: device.free_memory_bytes()?,
                    // A host memcpy says nothing about GPU memory: only a given figure is advertised.
                    memory_bandwidth_bytes_per_s: given,
                    compute: self.device.to_string(),
                };
                Ok((resources, FreeMemorySource::Static))
            }
        }
    }
}

impl NodeArgs {
    /// The node's configuration for `role`, from flags and the environment.
    pub fn to_config(
        &self,
        role: Role,
        resources: NodeResources,
        free_memory: FreeMemorySource,
    ) -> Result<NodeConfig> {
        let key = self.key.required_key()?;
        let node_id = self.node_id()?;
        let default_port = match role {
            Role::Coordinator => DEFAULT_COORDINATOR_PORT,
            Role::Worker => hearth_cluster::DEFAULT_WORKER_PORT,
        };
        let listen_text = self
            .listen
            .clone()
            .unwrap_or_else(|| format!("0.0.0.0:{default_port}"));
        let listen = parse_listen(&listen_text, default_port)?;
        let mut config = NodeConfig::new(node_id, key, role, listen, resources);
        config.free_memory = free_memory;
        config.peers = self
            .peers
            .iter()
            .map(|peer| peer.trim().to_string())
            .filter(|peer| !peer.is_empty())
            .collect();
        if !self.no_mdns {
            config.mdns = Some(MdnsOptions {
                interface: self.mdns_interface.clone(),
            });
        }
        if self.no_link_probes {
            config.link_probe = None;
        }
        config.timing = ClusterTiming {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            ..ClusterTiming::default()
        };
        Ok(config)
    }

    fn node_id(&self) -> Result<NodeId> {
        match &self.node_id {
            Some(text) => Ok(text.parse()?),
            None => {
                let dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
                load_or_create(&dir).with_context(|| format!("the node id in {}", dir.display()))
            }
        }
    }
}

fn parse_listen(text: &str, default_port: u16) -> Result<SocketAddr> {
    let addresses =
        resolve_address(text, default_port).with_context(|| format!("--listen {text}"))?;
    addresses
        .into_iter()
        .next()
        .with_context(|| format!("--listen {text} resolved to no address"))
}

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub resources: ResourceArgs,
    /// How many nodes the cluster should have (status and doctor warn when fewer are alive)
    /// [default: LWS_GROUP_SIZE when set].
    #[arg(long)]
    pub expect: Option<usize>,
}

/// Starts a coordinator with `node`'s flags offering `resources`; `expect` (else
/// `LWS_GROUP_SIZE`) is the cluster's intended size. `hearth serve --cluster` can call this with
/// its own `NodeArgs` (flattened into its flags) and the resources of the device it serves on.
pub fn start_coordinator(
    node: &NodeArgs,
    expect: Option<usize>,
    resources: NodeResources,
    free_memory: FreeMemorySource,
) -> Result<Node> {
    let mut config = node.to_config(Role::Coordinator, resources, free_memory)?;
    let lws = LwsEnvironment::from_env()?;
    config.expected_nodes = expect.or(lws.and_then(|lws| lws.group_size));
    Ok(Node::start(config)?)
}

fn run_coordinator(args: CoordinatorArgs) -> Result<()> {
    let (resources, free_memory) = args.resources.resources()?;
    let node = start_coordinator(&args.node, args.expect, resources, free_memory)?;
    run_until_signal(node)
}

/// Prints the node's address, then its membership events and new refusals, until SIGTERM or
/// Ctrl-C; then stops it (workers say goodbye).
pub fn run_until_signal(node: Node) -> Result<()> {
    println!(
        "hearth {} {} listening on {}",
        node.role(),
        node.node_id(),
        node.local_addr()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let stop = StopSignal::install()?;
    let events = node.subscribe();
    // Each (peer host, reason) is printed once: a peer retrying in a loop is one line.
    let mut reported_refusals = std::collections::BTreeSet::new();
    let mut reported_worker_state: (Option<String>, Option<String>) = (None, None);
    while !stop.stopped() {
        std::thread::sleep(Duration::from_millis(200));
        while let Some(event) = events.as_ref().and_then(|events| events.try_recv().ok()) {
            match event {
                hearth_cluster::MembershipEvent::Joined {
                    node_id,
                    info,
                    rejoined,
                } => println!(
                    "{} {node_id} at {} ({}, {})",
                    if rejoined { "rejoined" } else { "joined" },
                    info.address,
                    info.resources.backend,
                    info.resources.compute
                ),
                hearth_cluster::MembershipEvent::Gone { node_id, reason } => {
                    println!("gone {node_id}: {reason}")
                }
            }
        }
        let status = node.status();
        for refusal in &status.refusals {
            let host = refusal
                .peer_address
                .rsplit_once(':')
                .map_or(refusal.peer_address.as_str(), |(host, _)| host);
            if !reported_refusals.insert((host.to_string(), refusal.reason.to_string())) {
                continue;
            }
            match refusal.direction {
                RefusalDirection::WeRefused => {
                    println!("refused {}: {}", refusal.peer_address, refusal.reason)
                }
                RefusalDirection::RefusedUs => {
                    println!("refused by {}: {}", refusal.peer_address, refusal.reason)
                }
            }
        }
        if node.role() == Role::Worker {
            let now = (status.coordinator.clone(), status.last_error.clone());
            if now != reported_worker_state {
                match &now {
                    (Some(coordinator), _) => println!("joined the coordinator at {coordinator}"),
                    (None, Some(error)) => println!("not joined: {error}"),
                    (None, None) => {}
                }
                reported_worker_state = now;
            }
        }
        std::io::stdout().flush()?;
    }
    println!("shutting down");
    node.shutdown();
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The coordinator's host:port [default: LWS_LEADER_ADDRESS, else a coordinator found on
    /// mDNS, else 127.0.0.1:7640].
    #[arg(long)]
    pub coordinator: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not look for the coordinator with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Give up on an unresponsive coordinator after this long.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

fn connection_timing(timeout_ms: u64) -> ConnectionTiming {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    ConnectionTiming {
        connect_timeout: timeout,
        handshake_timeout: timeout,
        io_timeout: timeout,
    }
}

/// `--coordinator`, else the LWS leader, else a coordinator seen on mDNS, else localhost.
fn find_coordinator(explicit: Option<&str>, use_mdns: bool) -> Result<String> {
    if let Some(address) = explicit {
        return Ok(address.to_string());
    }
    if let Some(lws) = LwsEnvironment::from_env()? {
        return Ok(lws.leader_address);
    }
    if use_mdns {
        let seen = browse_for(&MdnsOptions::default(), Duration::from_millis(1500))?;
        let coordinator = seen
            .iter()
            .filter(|node| node.role == Some(Role::Coordinator))
            .find_map(|node| node.socket_addresses().first().copied());
        if let Some(address) = coordinator {
            return Ok(address.to_string());
        }
    }
    Ok(format!("127.0.0.1:{DEFAULT_COORDINATOR_PORT}"))
}

fn run_status(args: StatusArgs) -> Result<()> {
    let key = args.key.required_key()?;
    let target = find_coordinator(args.coordinator.as_deref(), !args.no_mdns)?;
    let timing = connection_timing(args.timeout_ms);
    let addresses = resolve_address(&target, DEFAULT_COORDINATOR_PORT)?;
    let dialer = query_dialer(key, timing);
    let mut failures = Vec::new();
    for address in addresses {
        match query_status(address, &dialer) {
            Ok(status) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", render_status(&status));
                }
                return Ok(());
            }
            Err(err) => failures.push(format!("{address}: {err}")),
        }
    }
    bail!(
        "could not get the status from {target}: {} (`hearth cluster doctor` explains why)",
        failures.join("; ")
    )
}

fn render_status(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let reporter = match status.reporter_role {
        Role::Coordinator => "coordinator",
        Role::Worker => "worker (not the coordinator: this is its own view)",
    };
    out += &format!(
        "{reporter} {} at {}, {}; heartbeat timeout {:.1} s\n",
        status.reporter.short(),
        status.coordinator.as_deref().unwrap_or("?"),
        status.version,
        status.heartbeat_timeout_ms as f64 / 1000.0
    );
    let alive = status.alive_nodes().count();
    match status.expected_nodes {
        Some(expected) => out += &format!("{alive} of {expected} expected nodes alive\n"),
        None => out += &format!("{alive} node(s) alive\n"),
    }
    out += &format!(
        "\n{:<10} {:<12} {:<22} {:<10} {:<8} {:>10} {:>11} {:<14} {:>10}\n",
        "NODE", "ROLE", "ADDRESS", "STATE", "BACKEND", "FREE MEM", "MEM BW", "COMPUTE", "HEARTBEAT"
    );
    for node in &status.nodes {
        let state = match &node.state {
            NodeState::Alive => "alive".to_string(),
            NodeState::Gone { gone_for_ms, .. } => {
                format!("gone {:.1}s", *gone_for_ms as f64 / 1000.0)
            }
        };
        out += &format!(
            "{:<10} {:<12} {:<22} {:<10} {:<8} {:>10} {:>11} {:<14} {:>10}\n",
            node.node_id.short(),
            node.role.to_string(),
            node.address,
            state,
            node.resources.backend,
            node.resources
                .free_memory_bytes
                .map_or("?".to_string(), format_bytes),
            node.resources
                .memory_bandwidth_bytes_per_s
                .map_or("?".to_string(), |bw| format!("{:.1} GB/s", bw / 1e9)),
            node.resources.compute,
            format!("{:.1} s ago", node.heartbeat_age_ms as f64 / 1000.0),
        );
    }
    for node in &status.nodes {
        if let NodeState::Gone { reason, .. } = &node.state {
            out += &format!("  {} is gone: {reason}\n", node.node_id.short());
        }
    }
    if !status.links.is_empty() {
        out += "\nLINKS (from -> to: round trip median / min, bandwidth)\n";
        for link in &status.links {
            let measured = match &link.outcome {
                Ok(LinkMeasurement {
                    rtt_median_us,
                    rtt_min_us,
                    bandwidth_bytes_per_s,
                    ..
                }) => format!(
                    "{:.3} ms / {:.3} ms, {:.2} GB/s",
                    rtt_median_us / 1000.0,
                    rtt_min_us / 1000.0,
                    bandwidth_bytes_per_s / 1e9
                ),
                Err(error) => format!("failed: {error}"),
            };
            out += &format!(
                "{} -> {}  {measured}  (measured {}s ago)\n",
                link.from.short(),
                link.to.short(),
                link.measured_ms_ago / 1000
            );
        }
    }
    if !status.refusals.is_empty() {
        out += "\nRECENT REFUSALS\n";
        for refusal in &status.refusals {
            let who = refusal
                .peer_node_id
                .map_or_else(|| "?".to_string(), |id| id.short());
            let direction = match refusal.direction {
                RefusalDirection::WeRefused => "refused",
                RefusalDirection::RefusedUs => "refused by",
            };
            out += &format!(
                "{direction} {} ({who}): {}\n",
                refusal.peer_address, refusal.reason
            );
        }
    }
    if let Some(error) = &status.last_error {
        out += &format!("\nlast error: {error}\n");
    }
    out
}

fn format_bytes(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The coordinator's host:port to check [default: LWS_LEADER_ADDRESS when set].
    #[arg(long)]
    pub coordinator: Option<String>,
    /// More host:port to check, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Without a key only reachability is checked, not authentication.
    #[command(flatten)]
    pub key: KeyArgs,
    /// This machine's node id, for duplicate checks [default: the one in the state directory].
    #[arg(long)]
    pub node_id: Option<String>,
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Skip the mDNS checks.
    #[arg(long)]
    pub no_mdns: bool,
    #[arg(long)]
    pub mdns_interface: Option<String>,
    /// How long to listen for mDNS advertisements.
    #[arg(long, default_value_t = 3000)]
    pub mdns_wait_ms: u64,
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn run_doctor_command(args: DoctorArgs) -> Result<()> {
    let timing = connection_timing(args.timeout_ms);
    let mut targets: Vec<String> = args.coordinator.iter().cloned().collect();
    targets.extend(
        args.peers
            .iter()
            .map(|peer| peer.trim().to_string())
            .filter(|peer| !peer.is_empty()),
    );
    if let Some(lws) = LwsEnvironment::from_env()? {
        targets.push(lws.leader_address);
    }
    let machine_node_id = match &args.node_id {
        Some(text) => Some(text.parse::<NodeId>()?),
        None => {
            // Read the persisted id if there is one; the doctor never creates it.
            let dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
            if dir.join(NODE_ID_FILE).exists() {
                Some(load_or_create(&dir)?)
            } else {
                None
            }
        }
    };
    let params = DoctorParams {
        dialer: args.key.key()?.map(|key| query_dialer(key, timing)),
        machine_node_id,
        targets,
        mdns: (!args.no_mdns).then(|| {
            (
                MdnsOptions {
                    interface: args.mdns_interface.clone(),
                },
                Duration::from_millis(args.mdns_wait_ms),
            )
        }),
        timing,
    };
    if params.dialer.is_none() {
        eprintln!("note: no cluster key given: checking reachability only, not authentication");
    }
    let report = run_doctor(&params);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    let num_problems = report.problems().count();
    if num_problems > 0 {
        bail!("cluster doctor found {num_problems} problem(s)");
    }
    Ok(())
}
