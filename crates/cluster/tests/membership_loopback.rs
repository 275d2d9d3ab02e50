//! In-process nodes on 127.0.0.1: joining, status over the protocol, membership events, link
//! measurements, redirects from a worker to the coordinator, leaving, and the data-plane hook.

mod common;

use std::time::Duration;

use common::{coordinator, eventually, wait_for_alive, worker, PATIENCE};
use hearth_cluster::{
    query_dialer, query_status, FrameKind, GoneReason, MembershipEvent, NodeState, Purpose,
    RefusalReason, Role,
};

#[test]
fn workers_join_and_status_lists_nodes_resources_and_measured_links() {
    let coordinator = coordinator();
    let events = coordinator.subscribe().unwrap();
    let first = worker(&[coordinator.local_addr()]);
    let second = worker(&[coordinator.local_addr()]);
    wait_for_alive(
        &coordinator,
        &[coordinator.node_id(), first.node_id(), second.node_id()],
    );

    // Each node probes every other: 3 nodes, 6 directed links.
    let all_links = eventually(PATIENCE, || {
        coordinator
            .status()
            .links
            .iter()
            .filter(|link| link.outcome.is_ok())
            .count()
            == 6
    });
    let status = coordinator.status();
    assert!(all_links, "links: {:#?}", status.links);
    for link in &status.links {
        let measured = link.outcome.as_ref().unwrap();
        assert!(
            measured.rtt_median_us > 0.0 && measured.rtt_min_us <= measured.rtt_median_us,
            "{link:?}"
        );
        assert!(
            measured.bandwidth_bytes_per_s > 1e6,
            "loopback should move > 1 MB/s: {link:?}"
        );
    }

    // The same table over the authenticated protocol, as `hearth cluster status` gets it.
    let timing = common::connection_timing();
    let remote = query_status(
        coordinator.local_addr(),
        &query_dialer(common::key(), timing),
    )
    .unwrap();
    assert_eq!(remote.reporter, coordinator.node_id());
    assert_eq!(remote.reporter_role, Role::Coordinator);
    assert_eq!(remote.alive_nodes().count(), 3);
    let node = remote.node(first.node_id()).unwrap();
    assert_eq!(node.resources.backend, "cpu");
    assert!(
        node.resources.compute.contains("worker"),
        "{:?}",
        node.resources
    );
    assert!(node.heartbeat_age_ms < 1_000, "{node:?}");
    assert_eq!(node.address, first.local_addr().to_string());

    // One `Joined` per worker, carrying the resources from its first heartbeat.
    let mut joined = Vec::new();
    while let Ok(event) = events.recv_timeout(Duration::from_millis(100)) {
        if let MembershipEvent::Joined {
            node_id,
            info,
            rejoined,
        } = event
        {
            assert!(!rejoined);
            assert_eq!(info.resources.backend, "cpu");
            joined.push(node_id);
        }
    }
    joined.sort();
    let mut expected = vec![first.node_id(), second.node_id()];
    expected.sort();
    assert_eq!(joined, expected);

    // A worker's own view names its coordinator.
    let view = first.status();
    assert_eq!(view.reporter_role, Role::Worker);
    assert!(view.coordinator.is_some(), "{view:#?}");
    assert!(view.last_error.is_none(), "{view:#?}");
}

#[test]
fn a_worker_that_leaves_is_gone_at_once_with_an_event() {
    let coordinator = coordinator();
    let events = coordinator.subscribe().unwrap();
    let leaving = worker(&[coordinator.local_addr()]);
    let leaving_id = leaving.node_id();
    common::wait_for_joined(&events, leaving_id);
    leaving.shutdown();
    wait_for_alive(&coordinator, &[coordinator.node_id()]);
    let status = coordinator.status();
    let gone = status.node(leaving_id).unwrap();
    assert!(
        matches!(
            &gone.state,
            NodeState::Gone {
                reason: GoneReason::Left { .. },
                ..
            }
        ),
        "a goodbye marks the node as left: {gone:?}"
    );
    let gone_event = eventually(
        PATIENCE,
        || matches!(events.try_recv(), Ok(MembershipEvent::Gone { node_id, .. }) if node_id == leaving_id),
    );
    assert!(gone_event, "no Gone event for {leaving_id}");
}

#[test]
fn a_join_sent_to_a_worker_is_redirected_to_the_coordinator() {
    let coordinator = coordinator();
    let first = worker(&[coordinator.local_addr()]);
    wait_for_alive(&coordinator, &[coordinator.node_id(), first.node_id()]);
    // The second worker only knows the first worker's address.
    let second = worker(&[first.local_addr()]);
    wait_for_alive(
        &coordinator,
        &[coordinator.node_id(), first.node_id(), second.node_id()],
    );
}

#[test]
fn a_worker_rejoins_after_the_coordinator_restarts_on_the_same_port() {
    let config = common::config(Role::Coordinator, Vec::new());
    let first_coordinator = hearth_cluster::Node::start(config.clone()).unwrap();
    let address = first_coordinator.local_addr();
    let member = worker(&[address]);
    wait_for_alive(
        &first_coordinator,
        &[first_coordinator.node_id(), member.node_id()],
    );
    first_coordinator.shutdown();
    let mut restarted_config = config;
    restarted_config.listen = address;
    let restarted = hearth_cluster::Node::start(restarted_config).unwrap();
    wait_for_alive(&restarted, &[restarted.node_id(), member.node_id()]);
}

#[test]
fn data_connections_reach_the_data_plane_with_their_frames() {
    let mut coordinator = coordinator();
    let member = worker(&[coordinator.local_addr()]);
    // No data plane runs until someone takes the connections: refused with the reason.
    let early = member.connect_data(coordinator.local_addr()).unwrap_err();
    assert_eq!(
        early.refusal(),
        Some(&RefusalReason::PurposeNotServed {
            purpose: Purpose::Data
        }),
        "{early}"
    );
    let incoming = coordinator.take_data_connections().unwrap();
    assert!(coordinator.take_data_connections().is_none());
    let mut outgoing = member.connect_data(coordinator.local_addr()).unwrap();
    let activations: Vec<u8> = (0..=255).collect();
    outgoing
        .send_frame(FrameKind::Activation, &activations)
        .unwrap();
    outgoing.send_frame(FrameKind::Kv, &[1, 2, 3]).unwrap();
    let mut accepted = incoming.recv_timeout(PATIENCE).unwrap();
    assert_eq!(accepted.peer().node_id, member.node_id());
    let frame = accepted.recv_frame(PATIENCE).unwrap();
    assert_eq!(
        (frame.kind, frame.payload),
        (FrameKind::Activation, activations)
    );
    assert_eq!(accepted.recv_frame(PATIENCE).unwrap().kind, FrameKind::Kv);
}
