//! `hearth cluster` / `hearth node` as processes on loopback: a coordinator and workers form a
//! cluster that `hearth cluster status --json` lists; a killed worker is gone at once, a frozen
//! one (SIGSTOP) after the heartbeat timeout, a SIGTERMed one has left; a worker with the wrong
//! key is refused and `hearth cluster doctor` says "wrong cluster key"; keys are required.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{
    alive_ids, eventually, hearth, node, node_args, run_bounded, status_json, text, Place, Process,
    HEARTBEAT_TIMEOUT, KEY, PATIENCE,
};

struct Cluster {
    dir: tempfile::TempDir,
    coordinator: Process,
    coordinator_id: String,
    address: String,
}

fn start_coordinator() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("coordinator").display().to_string();
    let args = node_args(&["cluster", "coordinator"], &state, "127.0.0.1:0", false);
    let mut coordinator = Process::spawn(
        "coordinator",
        hearth(&Place::Host, dir.path(), &args, Some(KEY)),
        dir.path(),
    );
    let (coordinator_id, address) = coordinator.identity();
    Cluster {
        dir,
        coordinator,
        coordinator_id,
        address: address.to_string(),
    }
}

impl Cluster {
    fn start_node(&self, name: &str, key: Option<&str>, extra: &[&str]) -> (Process, String) {
        let state = self.dir.path().join(name).display().to_string();
        let mut args = node_args(
            &["node", "--peers", &self.address],
            &state,
            "127.0.0.1:0",
            false,
        );
        args.extend_from_slice(extra);
        let mut process = Process::spawn(
            name,
            hearth(&Place::Host, self.dir.path(), &args, key),
            self.dir.path(),
        );
        let (node_id, _) = process.identity();
        (process, node_id)
    }

    fn status(&self) -> Option<serde_json::Value> {
        status_json(&Place::Host, self.dir.path(), &self.address, KEY)
    }

    /// Waits until exactly `expected` are alive; panics with the status and logs otherwise.
    fn wait_for_alive(&self, expected: &[&str], others: &[&Process]) -> serde_json::Value {
        let mut expected: Vec<String> = expected.iter().map(|id| id.to_string()).collect();
        expected.sort();
        let status = eventually(PATIENCE, || {
            self.status().filter(|status| alive_ids(status) == expected)
        });
        status.unwrap_or_else(|| {
            let logs: Vec<String> = others.iter().map(|process| process.output()).collect();
            panic!(
                "expected alive {expected:?}; status: {:#?}\n{}\n{}",
                self.status(),
                self.coordinator.output(),
                logs.join("\n")
            )
        })
    }

    /// Waits until `node_id` is gone with `cause`; returns how long that took from `since`.
    fn wait_for_gone(&self, node_id: &str, cause: &str, since: Instant) -> Duration {
        let gone = eventually(PATIENCE, || {
            let status = self.status()?;
            let entry = node(&status, node_id)?;
            (entry["state"] == "gone").then(|| entry.clone())
        });
        let elapsed = since.elapsed();
        let entry =
            gone.unwrap_or_else(|| panic!("{node_id} never gone; status {:#?}", self.status()));
        assert_eq!(entry["reason"]["cause"], cause, "{entry:#}");
        elapsed
    }
}

#[test]
fn three_processes_form_a_cluster_and_dead_or_frozen_nodes_are_marked_gone() {
    let cluster = start_coordinator();
    let key_file = cluster.dir.path().join("cluster.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let key_file = key_file.display().to_string();
    let (mut first, first_id) = cluster.start_node("first", Some(KEY), &[]);
    let (second, second_id) =
        cluster.start_node("second", None, &["--cluster-key-file", &key_file]);
    let status = cluster.wait_for_alive(
        &[&cluster.coordinator_id, &first_id, &second_id],
        &[&first, &second],
    );
    assert_eq!(status["reporter_role"], "coordinator");
    let entry = node(&status, &first_id).unwrap();
    assert_eq!(entry["role"], "worker");
    assert_eq!(entry["resources"]["backend"], "cpu");
    assert_eq!(entry["resources"]["memory_bandwidth_bytes_per_s"], 10e9);
    assert!(
        entry["resources"]["free_memory_bytes"].as_u64().unwrap() > 0,
        "{entry:#}"
    );

    // Every node measures its link to every other: 3 nodes, 6 links.
    let links = eventually(PATIENCE, || {
        let status = cluster.status()?;
        let measured = status["links"]
            .as_array()?
            .iter()
            .filter(|link| link["outcome"]["Ok"].is_object())
            .count();
        (measured == 6).then_some(status)
    });
    let links =
        links.unwrap_or_else(|| panic!("links never all measured: {:#?}", cluster.status()));
    for link in links["links"].as_array().unwrap() {
        assert!(
            link["outcome"]["Ok"]["rtt_median_us"].as_f64().unwrap() > 0.0,
            "{link:#}"
        );
    }

    // A killed process closes its connection: gone at once, well before the heartbeat timeout.
    first.kill();
    let took = cluster.wait_for_gone(&first_id, "connection_closed", Instant::now());
    assert!(
        took < HEARTBEAT_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );

    // A frozen process keeps its connection open: gone after the heartbeat timeout.
    second.signal("STOP");
    let frozen_at = Instant::now();
    let took = cluster.wait_for_gone(&second_id, "heartbeat_timeout", frozen_at);
    assert!(took >= HEARTBEAT_TIMEOUT / 2, "gone too early: {took:?}");
    assert!(
        took < HEARTBEAT_TIMEOUT + Duration::from_secs(5),
        "gone too late: {took:?}"
    );
    second.signal("CONT");
    drop(second);
}

#[test]
fn a_node_with_the_wrong_key_is_refused_and_doctor_says_wrong_cluster_key() {
    let cluster = start_coordinator();
    let (mut good, good_id) = cluster.start_node("good", Some(KEY), &[]);
    let (mut intruder, _) = cluster.start_node("intruder", Some("a-different-cluster-key-42"), &[]);
    cluster.wait_for_alive(&[&cluster.coordinator_id, &good_id], &[&good, &intruder]);
    let refused = intruder.wait_for_line("wrong cluster key", PATIENCE);
    assert!(
        refused.is_some(),
        "the refused node should say why:\n{}",
        intruder.output()
    );
    let remembered = eventually(PATIENCE, || {
        let status = cluster.status()?;
        let refusals = status["refusals"].as_array()?;
        refusals
            .iter()
            .any(|refusal| refusal["reason"]["reason"] == "wrong_key")
            .then_some(())
    });
    assert!(remembered.is_some(), "{:#?}", cluster.status());
    assert_eq!(
        alive_ids(&cluster.status().unwrap()).len(),
        2,
        "the intruder never becomes a member"
    );

    // Doctor on the intruder's side (its key): the coordinator holds a different key.
    let doctor = |key: &str| {
        let command = hearth(
            &Place::Host,
            cluster.dir.path(),
            &[
                "cluster",
                "doctor",
                "--coordinator",
                &cluster.address,
                "--no-mdns",
                "--timeout-ms",
                "2000",
            ],
            Some(key),
        );
        run_bounded(command, Duration::from_secs(30))
    };
    let from_intruder = doctor("a-different-cluster-key-42");
    assert!(
        !from_intruder.status.success(),
        "doctor exits non-zero on problems"
    );
    assert!(
        text(&from_intruder).contains("wrong cluster key"),
        "{}",
        text(&from_intruder)
    );
    // Doctor with the cluster's key: the coordinator remembers refusing the intruder.
    let from_member = text(&doctor(KEY));
    assert!(from_member.contains("authenticated"), "{from_member}");
    assert!(
        from_member.contains("refused node") && from_member.contains("wrong cluster key"),
        "{from_member}"
    );

    // SIGTERM: the worker says goodbye and is marked as having left.
    good.signal("TERM");
    assert!(good
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|status| status.success()));
    cluster.wait_for_gone(&good_id, "left", Instant::now());
}

#[test]
fn cluster_commands_refuse_missing_and_short_keys() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], key: Option<&str>| {
        text(&run_bounded(
            hearth(&Place::Host, dir.path(), args, key),
            Duration::from_secs(30),
        ))
    };
    let base = [
        "node",
        "--no-mdns",
        "--peers",
        "127.0.0.1:9",
        "--memory-bandwidth-gbps",
        "1",
    ];
    let missing = run(&base, None);
    assert!(
        missing.contains("needs the cluster's shared key"),
        "{missing}"
    );
    let short = run(&base, Some("short"));
    assert!(short.contains("at least 16"), "{short}");
    let status = run(
        &[
            "cluster",
            "status",
            "--coordinator",
            "127.0.0.1:9",
            "--no-mdns",
        ],
        None,
    );
    assert!(
        status.contains("needs the cluster's shared key"),
        "{status}"
    );
    let bad_id = run(&[&base[..], &["--node-id", "xyz"]].concat(), Some(KEY));
    assert!(bad_id.contains("invalid node id"), "{bad_id}");
}

#[test]
fn leaderworkerset_variables_point_a_worker_at_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("leader").display().to_string();
    let args = node_args(&["cluster", "coordinator"], &state, "127.0.0.1:0", false);
    let mut leader_command = hearth(&Place::Host, dir.path(), &args, Some(KEY));
    leader_command
        .env("LWS_LEADER_ADDRESS", "127.0.0.1")
        .env("LWS_WORKER_INDEX", "0")
        .env("LWS_GROUP_SIZE", "3");
    let mut leader = Process::spawn("leader", leader_command, dir.path());
    let (leader_id, address) = leader.identity();

    // No --peers: the worker's only lead is LWS_LEADER_ADDRESS (here with the test's port).
    let state = dir.path().join("worker").display().to_string();
    let args = node_args(&["node"], &state, "127.0.0.1:0", false);
    let mut worker_command = hearth(&Place::Host, dir.path(), &args, Some(KEY));
    worker_command
        .env("LWS_LEADER_ADDRESS", address.to_string())
        .env("LWS_WORKER_INDEX", "1")
        .env("LWS_GROUP_SIZE", "3");
    let mut worker = Process::spawn("worker", worker_command, dir.path());
    let (worker_id, _) = worker.identity();
    let mut expected = vec![leader_id, worker_id];
    expected.sort();
    let status = eventually(PATIENCE, || {
        status_json(&Place::Host, dir.path(), &address.to_string(), KEY)
            .filter(|status| alive_ids(status) == expected)
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "no join through LWS\n{}\n{}",
            leader.output(),
            worker.output()
        )
    });
    assert_eq!(status["expected_nodes"], 3);

    // The doctor notices the group is short of a node.
    let doctor = hearth(
        &Place::Host,
        dir.path(),
        &[
            "cluster",
            "doctor",
            "--coordinator",
            &address.to_string(),
            "--no-mdns",
            "--timeout-ms",
            "2000",
        ],
        Some(KEY),
    );
    let report = text(&run_bounded(doctor, Duration::from_secs(30)));
    assert!(
        report.contains("2 of 3 expected nodes are alive"),
        "{report}"
    );

    // `hearth node` on the leader pod (index 0) is a mistake, explained.
    let mut on_leader = hearth(&Place::Host, dir.path(), &args, Some(KEY));
    on_leader
        .env("LWS_LEADER_ADDRESS", "127.0.0.1")
        .env("LWS_WORKER_INDEX", "0");
    let refused = text(&run_bounded(on_leader, Duration::from_secs(30)));
    assert!(refused.contains("LeaderWorkerSet leader"), "{refused}");
}
