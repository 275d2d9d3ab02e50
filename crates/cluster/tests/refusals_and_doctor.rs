//! Refused peers and hostile bytes against in-process nodes: wrong key, version mismatch,
//! duplicate node id, malformed and oversized frames; and `doctor`'s explanations of them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{config, coordinator, eventually, wait_for_alive, worker, PATIENCE};
use hearth_cluster::{
    initiate, query_dialer, query_status, run_doctor, ClusterKey, DoctorParams, Node, Purpose,
    RefusalDirection, RefusalReason, Role, Severity, VersionInfo,
};

fn refusals_matching(node: &Node, want: impl Fn(&RefusalReason) -> bool) -> usize {
    node.status()
        .refusals
        .iter()
        .filter(|refusal| refusal.direction == RefusalDirection::WeRefused && want(&refusal.reason))
        .count()
}

#[test]
fn a_node_with_the_wrong_key_is_refused_and_both_sides_say_why() {
    let coordinator = coordinator();
    let mut intruder_config = config(Role::Worker, vec![coordinator.local_addr().to_string()]);
    intruder_config.key = ClusterKey::from_text("not the cluster key at all").unwrap();
    let intruder = Node::start(intruder_config).unwrap();
    let intruder_id = intruder.node_id();

    let refused = eventually(PATIENCE, || {
        refusals_matching(&coordinator, |reason| *reason == RefusalReason::WrongKey) > 0
    });
    assert!(
        refused,
        "coordinator refusals: {:#?}",
        coordinator.status().refusals
    );
    let status = coordinator.status();
    let refusal = status
        .refusals
        .iter()
        .find(|refusal| refusal.reason == RefusalReason::WrongKey)
        .unwrap();
    assert_eq!(
        refusal.peer_node_id,
        Some(intruder_id),
        "the claimed id is remembered"
    );
    assert!(
        status.node(intruder_id).is_none(),
        "a refused node never becomes a member"
    );

    let intruder_view = intruder.status();
    let error = intruder_view.last_error.unwrap_or_default();
    assert!(
        error.contains("wrong cluster key"),
        "the refused side says why: {error}"
    );
    assert!(intruder_view
        .refusals
        .iter()
        .any(|refusal| refusal.direction == RefusalDirection::RefusedUs
            && refusal.reason == RefusalReason::WrongKey));

    // A query with the wrong key gets nothing but the reason.
    let timing = common::connection_timing();
    let wrong = query_dialer(
        ClusterKey::from_text("not the cluster key at all").unwrap(),
        timing,
    );
    let err = query_status(coordinator.local_addr(), &wrong).unwrap_err();
    assert!(err.to_string().contains("wrong cluster key"), "{err}");
}

#[test]
fn version_mismatch_and_duplicate_ids_are_refused_with_distinct_reasons() {
    let coordinator = coordinator();
    let mut old_config = config(Role::Worker, vec![coordinator.local_addr().to_string()]);
    old_config.version = VersionInfo {
        protocol: hearth_cluster::PROTOCOL_VERSION,
        software: "0.0.0-old".into(),
    };
    let old = Node::start(old_config).unwrap();
    let mismatch = eventually(PATIENCE, || {
        refusals_matching(&coordinator, |reason| {
            matches!(reason, RefusalReason::VersionMismatch { .. })
        }) > 0
    });
    assert!(mismatch, "{:#?}", coordinator.status().refusals);
    assert!(eventually(PATIENCE, || old
        .status()
        .last_error
        .is_some_and(|error| error.contains("version mismatch"))));

    let original = worker(&[coordinator.local_addr()]);
    wait_for_alive(&coordinator, &[coordinator.node_id(), original.node_id()]);
    let mut twin_config = config(Role::Worker, vec![coordinator.local_addr().to_string()]);
    twin_config.node_id = original.node_id();
    let twin = Node::start(twin_config).unwrap();
    let duplicate = eventually(PATIENCE, || {
        refusals_matching(&coordinator, |reason| {
            matches!(reason, RefusalReason::DuplicateNodeId { .. })
        }) > 0
    });
    assert!(duplicate, "{:#?}", coordinator.status().refusals);
    // The twin learns of its refusal a moment after the coordinator records it.
    let twin_refused = eventually(PATIENCE, || {
        twin.status().last_error.is_some_and(|error| error.contains("duplicate node id"))
    });
    assert!(twin_refused, "{:?}", twin.status().last_error);
    // The original keeps its place.
    assert_eq!(
        coordinator
            .status()
            .node(original.node_id())
            .unwrap()
            .address,
        original.local_addr().to_string()
    );
}

fn send_raw(address: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    // The node answers (a refusal frame at most) and closes; read until then.
    let _ = stream.read_to_end(&mut reply);
    reply
}

#[test]
fn malformed_and_oversized_frames_close_only_their_connection() {
    let coordinator = coordinator();
    let member = worker(&[coordinator.local_addr()]);
    wait_for_alive(&coordinator, &[coordinator.node_id(), member.node_id()]);
    let address = coordinator.local_addr();

    let garbage = send_raw(address, b"GET / HTTP/1.1\r\nHost: hearth\r\n\r\n");
    assert!(
        String::from_utf8_lossy(&garbage).contains("protocol_error"),
        "{garbage:?}"
    );
    let oversized = send_raw(address, &[0xff, 0xff, 0xff, 0xff, 1]);
    assert!(
        String::from_utf8_lossy(&oversized).contains("oversized"),
        "{oversized:?}"
    );
    let truncated = send_raw(address, &[0, 0, 0, 50, 1, b'{']);
    assert!(
        String::from_utf8_lossy(&truncated).contains("truncated"),
        "{truncated:?}"
    );
    let bad_json = send_raw(address, &[0, 0, 0, 3, 1, b'{', b'}']);
    assert!(
        String::from_utf8_lossy(&bad_json).contains("protocol_error"),
        "{bad_json:?}"
    );

    // Garbage after a successful handshake: the node closes that connection, nothing else.
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let dialer = query_dialer(common::key(), common::connection_timing());
    initiate(&mut stream, &dialer.identity, Purpose::Query, None).unwrap();
    stream
        .write_all(&[0, 0, 0, 9, 0x42, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(
        closed,
        "the node should close a connection that sent an unknown frame kind"
    );

    // The node and its member are unharmed.
    let timing = common::connection_timing();
    let status = query_status(address, &query_dialer(common::key(), timing)).unwrap();
    assert_eq!(status.alive_nodes().count(), 2);
    let protocol_errors = refusals_matching(&coordinator, |reason| {
        matches!(reason, RefusalReason::ProtocolError { .. })
    });
    assert!(protocol_errors >= 1, "{:#?}", coordinator.status().refusals);
}

fn closed_port() -> SocketAddr {
    // Bind and release: nothing listens there afterwards.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn doctor_explains_a_wrong_key_an_unreachable_port_and_remembered_refusals() {
    let coordinator = coordinator();
    let mut intruder_config = config(Role::Worker, vec![coordinator.local_addr().to_string()]);
    intruder_config.key = ClusterKey::from_text("some other cluster's key").unwrap();
    let _intruder = Node::start(intruder_config).unwrap();
    assert!(eventually(PATIENCE, || refusals_matching(
        &coordinator,
        |reason| *reason == RefusalReason::WrongKey
    ) > 0));
    let timing = common::connection_timing();
    let dead = closed_port();

    // Run from the refused node's side (its key): the coordinator says "wrong cluster key".
    let from_intruder = run_doctor(&DoctorParams {
        dialer: Some(query_dialer(
            ClusterKey::from_text("some other cluster's key").unwrap(),
            timing,
        )),
        machine_node_id: None,
        targets: vec![coordinator.local_addr().to_string(), dead.to_string()],
        mdns: None,
        timing,
    });
    let text = from_intruder.to_string();
    assert!(text.contains("wrong cluster key"), "{text}");
    assert!(
        text.contains(&format!("{dead}: port unreachable: connection refused")),
        "{text}"
    );

    // Run with the cluster's key: the coordinator's memory of the refusal is reported.
    let from_member = run_doctor(&DoctorParams {
        dialer: Some(query_dialer(common::key(), timing)),
        machine_node_id: None,
        targets: vec![coordinator.local_addr().to_string()],
        mdns: None,
        timing,
    });
    let text = from_member.to_string();
    assert!(text.contains("authenticated"), "{text}");
    assert!(
        from_member
            .findings
            .iter()
            .any(|finding| finding.severity == Severity::Problem
                && finding.message.contains("refused node")
                && finding.message.contains("wrong cluster key")),
        "{text}"
    );
    assert_eq!(from_member.statuses.len(), 1);
}
