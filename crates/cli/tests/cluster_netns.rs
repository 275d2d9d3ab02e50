//! Nodes in network namespaces joined by a veth pair, as separate hosts on one link: mDNS
//! discovery across the namespaces, and the `--peers` fallback (plus `doctor`'s explanation)
//! when multicast is off on the link.
//!
//! The test creates and removes its own namespaces (`hearth-test-<pid>-<tag>-a/b`, deleting a
//! namespace deletes its veth end). Where the machine forbids namespaces (no root, no `ip`, a
//! locked-down container) each test prints why it is skipped and passes.

mod cluster_support;

use std::process::Command;
use std::time::Duration;

use cluster_support::{
    alive_ids, eventually, hearth, node_args, run_bounded, status_json, text, Place, Process, KEY,
    PATIENCE,
};

const ADDRESS_A: &str = "10.231.0.1";
const ADDRESS_B: &str = "10.231.0.2";

/// Two namespaces joined by a veth pair; removed on drop.
struct Link {
    a: String,
    b: String,
    veth_a: String,
    veth_b: String,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("running ip: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Link {
    /// `Err(reason)` when namespaces cannot be made here.
    fn create(tag: &str) -> Result<Self, String> {
        let pid = std::process::id();
        let mut link = Self {
            a: format!("hearth-test-{pid}-{tag}-a"),
            b: format!("hearth-test-{pid}-{tag}-b"),
            // Interface names have at most 15 bytes.
            veth_a: format!("h{}{}a", pid % 1_000_000, &tag[..1]),
            veth_b: format!("h{}{}b", pid % 1_000_000, &tag[..1]),
            created: Vec::new(),
        };
        for name in [link.a.clone(), link.b.clone()] {
            ip(&["netns", "add", &name])?;
            link.created.push(name);
        }
        let (a, b, veth_a, veth_b) = (
            link.a.clone(),
            link.b.clone(),
            link.veth_a.clone(),
            link.veth_b.clone(),
        );
        ip(&[
            "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
        ])?;
        ip(&["link", "set", &veth_a, "netns", &a])?;
        ip(&["link", "set", &veth_b, "netns", &b])?;
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("{ADDRESS_A}/24"),
            "dev",
            &veth_a,
        ])?;
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{ADDRESS_B}/24"),
            "dev",
            &veth_b,
        ])?;
        for (namespace, veth) in [(&a, &veth_a), (&b, &veth_b)] {
            ip(&["-n", namespace, "link", "set", "lo", "up"])?;
            ip(&["-n", namespace, "link", "set", veth, "up"])?;
        }
        Ok(link)
    }

    fn multicast_off(&self) -> Result<(), String> {
        ip(&[
            "-n",
            &self.a,
            "link",
            "set",
            &self.veth_a,
            "multicast",
            "off",
        ])?;
        ip(&[
            "-n",
            &self.b,
            "link",
            "set",
            &self.veth_b,
            "multicast",
            "off",
        ])
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // A veth end still in the host namespace (a failed move) goes too; errors mean it is not.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_a])
            .output();
        for name in &self.created {
            if let Err(err) = ip(&["netns", "del", name]) {
                eprintln!("cleanup: {err}");
            }
        }
    }
}

fn link_or_skip(tag: &str) -> Option<Link> {
    match Link::create(tag) {
        Ok(link) => Some(link),
        Err(reason) => {
            eprintln!("SKIPPED: network namespaces are not available here ({reason}); the namespace tests need root and `ip netns`");
            None
        }
    }
}

fn start(
    place: &Place,
    dir: &std::path::Path,
    name: &str,
    base: &[&str],
    listen: &str,
    mdns: bool,
) -> Process {
    let state = dir.join(name).display().to_string();
    let args = node_args(base, &state, listen, mdns);
    Process::spawn(name, hearth(place, dir, &args, Some(KEY)), dir)
}

#[test]
fn mdns_discovers_the_coordinator_across_namespaces() {
    let Some(link) = link_or_skip("mdns") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (in_a, in_b) = (
        Place::Namespace(link.a.clone()),
        Place::Namespace(link.b.clone()),
    );
    let mut coordinator = start(
        &in_a,
        dir.path(),
        "coordinator",
        &["cluster", "coordinator"],
        "0.0.0.0:7640",
        true,
    );
    let (coordinator_id, _) = coordinator.identity();
    // No --peers: the worker can only find the coordinator through mDNS.
    let mut worker = start(&in_b, dir.path(), "worker", &["node"], "0.0.0.0:7641", true);
    let (worker_id, _) = worker.identity();
    let mut expected = vec![coordinator_id.clone(), worker_id.clone()];
    expected.sort();
    let status = eventually(PATIENCE, || {
        status_json(&in_a, dir.path(), "127.0.0.1:7640", KEY)
            .filter(|status| alive_ids(status) == expected)
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "no join over mDNS\n{}\n{}",
            coordinator.output(),
            worker.output()
        )
    });
    let entry = cluster_support::node(&status, &worker_id).unwrap();
    assert_eq!(
        entry["address"],
        format!("{ADDRESS_B}:7641"),
        "the worker is reached over the veth link"
    );

    // Doctor in B sees both nodes on mDNS and authenticates with them.
    let doctor = hearth(
        &in_b,
        dir.path(),
        &[
            "cluster",
            "doctor",
            "--mdns-wait-ms",
            "2000",
            "--timeout-ms",
            "2000",
        ],
        Some(KEY),
    );
    let report = text(&run_bounded(doctor, Duration::from_secs(30)));
    assert!(
        report.contains(&format!("mDNS: node {coordinator_id} (coordinator)")),
        "{report}"
    );
    assert!(
        report.contains(&format!("{ADDRESS_A}:7640: authenticated")),
        "{report}"
    );
}

#[test]
fn static_peers_join_when_multicast_is_off_and_doctor_says_why_mdns_cannot_work() {
    let Some(link) = link_or_skip("peers") else {
        return;
    };
    if let Err(reason) = link.multicast_off() {
        panic!("turning multicast off on the test's own link failed: {reason}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (in_a, in_b) = (
        Place::Namespace(link.a.clone()),
        Place::Namespace(link.b.clone()),
    );
    let mut coordinator = start(
        &in_a,
        dir.path(),
        "coordinator",
        &["cluster", "coordinator"],
        "0.0.0.0:7640",
        true,
    );
    let (coordinator_id, _) = coordinator.identity();
    // mDNS only: it cannot find the coordinator, and says so.
    let mut lost = start(
        &in_b,
        dir.path(),
        "mdns-only",
        &["node"],
        "0.0.0.0:7641",
        true,
    );
    lost.identity();
    assert!(
        lost.wait_for_line("no coordinator known", PATIENCE)
            .is_some(),
        "{}",
        lost.output()
    );

    let doctor = hearth(
        &in_b,
        dir.path(),
        &[
            "cluster",
            "doctor",
            "--mdns-wait-ms",
            "1500",
            "--timeout-ms",
            "2000",
        ],
        Some(KEY),
    );
    let report = text(&run_bounded(doctor, Duration::from_secs(30)));
    assert!(
        report.contains("no multicast-capable interface is up"),
        "{report}"
    );
    assert!(report.contains("mDNS saw no hearth node"), "{report}");

    // The static-peer fallback joins over the same link.
    let peers = format!("{ADDRESS_A}:7640");
    let mut worker = start(
        &in_b,
        dir.path(),
        "static",
        &["node", "--peers", &peers],
        "0.0.0.0:7642",
        true,
    );
    let (worker_id, _) = worker.identity();
    let mut expected = vec![coordinator_id, worker_id];
    expected.sort();
    let joined = eventually(PATIENCE, || {
        status_json(&in_a, dir.path(), "127.0.0.1:7640", KEY)
            .filter(|status| alive_ids(status) == expected)
    });
    assert!(
        joined.is_some(),
        "static peer did not join\n{}\n{}",
        coordinator.output(),
        worker.output()
    );
    // The mDNS-only worker is still out.
    assert!(
        lost.wait_for_line("joined the coordinator", Duration::from_millis(100))
            .is_none(),
        "{}",
        lost.output()
    );
}
