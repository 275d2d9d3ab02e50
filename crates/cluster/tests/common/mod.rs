//! Shared helpers for the cluster integration tests: in-process nodes on 127.0.0.1 with port 0,
//! short (but not flaky) timings, bounded waiting, and the fault-injection proxy.

#![allow(dead_code)]

pub mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::mpsc::Receiver;

use hearth_cluster::{
    ClusterKey, ClusterStatus, ClusterTiming, ConnectionTiming, LinkProbeParams, MembershipEvent,
    Node, NodeConfig, NodeId, NodeResources, Role,
};

pub const KEY: &str = "integration-test-cluster-key";
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long any "eventually" in these tests may take.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn key() -> ClusterKey {
    ClusterKey::from_text(KEY).unwrap()
}

pub fn timing() -> ClusterTiming {
    ClusterTiming {
        heartbeat_interval: HEARTBEAT_INTERVAL,
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
        connection: connection_timing(),
        idle_timeout: Duration::from_secs(3),
        retry_interval: Duration::from_millis(100),
    }
}

pub fn connection_timing() -> ConnectionTiming {
    ConnectionTiming {
        connect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(2),
    }
}

pub fn resources(label: &str) -> NodeResources {
    NodeResources {
        backend: "cpu".into(),
        free_memory_bytes: Some(4 << 30),
        memory_bandwidth_bytes_per_s: Some(10e9),
        compute: format!("cpu x2 ({label})"),
    }
}

pub fn config(role: Role, peers: Vec<String>) -> NodeConfig {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = NodeConfig::new(
        NodeId::random(),
        key(),
        role,
        listen,
        resources(&format!("{role}")),
    );
    config.peers = peers;
    config.timing = timing();
    config.link_probe = Some(LinkProbeParams {
        num_pings: 3,
        bulk_bytes: 256 << 10,
        chunk_bytes: 64 << 10,
        time_limit: Duration::from_secs(3),
    });
    config
}

pub fn coordinator() -> Node {
    Node::start(config(Role::Coordinator, Vec::new())).unwrap()
}

pub fn worker(peers: &[SocketAddr]) -> Node {
    Node::start(config(
        Role::Worker,
        peers.iter().map(ToString::to_string).collect(),
    ))
    .unwrap()
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn alive_ids(status: &ClusterStatus) -> Vec<NodeId> {
    status.alive_nodes().map(|node| node.node_id).collect()
}

/// Waits until the coordinator lists exactly `expected` as alive; panics with the status if not.
pub fn wait_for_alive(coordinator: &Node, expected: &[NodeId]) {
    let mut expected = expected.to_vec();
    expected.sort();
    let held = eventually(PATIENCE, || {
        let mut alive = alive_ids(&coordinator.status());
        alive.sort();
        alive == expected
    });
    assert!(
        held,
        "expected alive {expected:?}, status:\n{:#?}",
        coordinator.status()
    );
}

/// Waits (bounded) for the `Joined` event of `node_id`, skipping other events.
pub fn wait_for_joined(events: &Receiver<MembershipEvent>, node_id: NodeId) {
    let deadline = Instant::now() + PATIENCE;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(MembershipEvent::Joined {
                node_id: joined, ..
            }) if joined == node_id => return,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("no Joined event for {node_id} within {PATIENCE:?}");
}
