//! Fault injection through the user-space proxy (`common/proxy.rs`): a worker reaches the
//! coordinator only through the proxy, which then delays, cuts (swallows bytes without closing)
//! or drops the link.

mod common;

use std::time::{Duration, Instant};

use common::proxy::FaultProxy;
use common::{coordinator, eventually, wait_for_alive, worker, HEARTBEAT_TIMEOUT, PATIENCE};
use hearth_cluster::{GoneReason, MembershipEvent, NodeState};

#[test]
fn a_cut_link_is_detected_by_the_heartbeat_timeout_and_the_worker_rejoins_when_it_heals() {
    let coordinator = coordinator();
    let events = coordinator.subscribe().unwrap();
    let proxy = FaultProxy::start(coordinator.local_addr());
    let member = worker(&[proxy.address()]);
    let member_id = member.node_id();
    // Joined is published at the first heartbeat (with the member's resources).
    common::wait_for_joined(&events, member_id);

    proxy.set_blackhole(true);
    let cut_at = Instant::now();
    let gone = eventually(PATIENCE, || {
        !coordinator
            .status()
            .alive_nodes()
            .any(|node| node.node_id == member_id)
    });
    let detected_after = cut_at.elapsed();
    assert!(gone, "the cut worker was never marked gone");
    assert!(
        detected_after >= HEARTBEAT_TIMEOUT / 2,
        "marked gone too early: {detected_after:?}"
    );
    assert!(
        detected_after < HEARTBEAT_TIMEOUT + Duration::from_secs(2),
        "marked gone too late: {detected_after:?} (timeout {HEARTBEAT_TIMEOUT:?})"
    );
    let status = coordinator.status();
    let node = status.node(member_id).unwrap();
    assert!(
        matches!(
            &node.state,
            NodeState::Gone {
                reason: GoneReason::HeartbeatTimeout,
                ..
            }
        ),
        "{node:?}"
    );

    // Heal the link: drop the stuck connections so the worker reconnects, and it rejoins.
    proxy.set_blackhole(false);
    proxy.drop_connections();
    wait_for_alive(&coordinator, &[coordinator.node_id(), member_id]);
    let mut saw_gone = false;
    let mut saw_rejoin = false;
    while let Ok(event) = events.recv_timeout(Duration::from_millis(200)) {
        match event {
            MembershipEvent::Gone { node_id, reason } if node_id == member_id => {
                assert_eq!(reason, GoneReason::HeartbeatTimeout);
                saw_gone = true;
            }
            MembershipEvent::Joined {
                node_id,
                rejoined: true,
                ..
            } if node_id == member_id => saw_rejoin = true,
            _ => {}
        }
    }
    assert!(
        saw_gone && saw_rejoin,
        "events: gone {saw_gone}, rejoined {saw_rejoin}"
    );
}

#[test]
fn a_dropped_connection_marks_the_worker_gone_at_once_and_it_reconnects() {
    let coordinator = coordinator();
    let proxy = FaultProxy::start(coordinator.local_addr());
    let member = worker(&[proxy.address()]);
    let member_id = member.node_id();
    wait_for_alive(&coordinator, &[coordinator.node_id(), member_id]);

    proxy.set_refuse(true);
    let accepted_before = proxy.num_accepted();
    proxy.drop_connections();
    let dropped_at = Instant::now();
    let gone = eventually(PATIENCE, || {
        !coordinator
            .status()
            .alive_nodes()
            .any(|node| node.node_id == member_id)
    });
    assert!(gone);
    assert!(
        dropped_at.elapsed() < HEARTBEAT_TIMEOUT,
        "a closed connection should not wait for the heartbeat timeout: {:?}",
        dropped_at.elapsed()
    );
    let status = coordinator.status();
    let node = status.node(member_id).unwrap();
    assert!(
        matches!(
            &node.state,
            NodeState::Gone {
                reason: GoneReason::ConnectionClosed { .. },
                ..
            }
        ),
        "{node:?}"
    );
    // While the proxy refuses, the worker keeps trying (bounded retries) and reports why.
    assert!(eventually(PATIENCE, || proxy.num_accepted() >= accepted_before + 2));
    assert!(eventually(PATIENCE, || member
        .status()
        .last_error
        .is_some()));
    proxy.set_refuse(false);
    wait_for_alive(&coordinator, &[coordinator.node_id(), member_id]);
}

#[test]
fn added_link_delay_shows_in_the_measured_round_trip() {
    const ONE_WAY: Duration = Duration::from_millis(40);
    let coordinator = coordinator();
    let proxy = FaultProxy::start(coordinator.local_addr());
    proxy.set_delay(ONE_WAY);
    let member = worker(&[proxy.address()]);
    wait_for_alive(&coordinator, &[coordinator.node_id(), member.node_id()]);
    // The worker probes the coordinator at the address it joined through: the proxy.
    let measured = eventually(PATIENCE, || {
        coordinator
            .status()
            .links
            .iter()
            .any(|link| link.from == member.node_id() && link.to == coordinator.node_id())
    });
    assert!(
        measured,
        "no link report: {:#?}",
        coordinator.status().links
    );
    let status = coordinator.status();
    let through_proxy = status
        .links
        .iter()
        .find(|link| link.from == member.node_id() && link.to == coordinator.node_id())
        .unwrap();
    let rtt_us = through_proxy.outcome.as_ref().unwrap().rtt_min_us;
    assert!(
        rtt_us >= 2.0 * ONE_WAY.as_micros() as f64,
        "round trip {rtt_us} us through a {ONE_WAY:?} one-way delay"
    );
    // The coordinator's own probe goes straight to the worker's listener: fast.
    let direct = status
        .links
        .iter()
        .find(|link| link.from == coordinator.node_id() && link.to == member.node_id())
        .and_then(|link| {
            link.outcome
                .as_ref()
                .ok()
                .map(|measured| measured.rtt_min_us)
        });
    if let Some(direct_us) = direct {
        assert!(
            direct_us < rtt_us,
            "direct {direct_us} us vs proxied {rtt_us} us"
        );
    }
}
