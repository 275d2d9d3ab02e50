//! The coordinator's membership table: which nodes are in the cluster, what they offer, when each
//! was last heard from, and the events (joined, gone) the serving side re-plans on.
//!
//! Owns: the table and its rules, as pure bookkeeping: every method takes `now`, so tests drive
//! time by hand. Does not own: sockets, threads or timers (`coordinator.rs` calls `expire`
//! periodically and feeds heartbeats from its sessions).
//!
//! Rules and invariants:
//! - The coordinator itself is a member from the start and never expires.
//! - A node id has at most one live session. A join for an id that is alive elsewhere is
//!   refused as a duplicate (the live one keeps its place); from the same listener address it
//!   is the node reconnecting and replaces the old session; a join for a gone id is a rejoin.
//! - A live member silent for longer than the heartbeat timeout is marked gone
//!   (`HeartbeatTimeout`) by `expire`; a session's end marks it gone with its own reason.
//! - Calls carrying a stale `SessionId` (a session that was replaced or already ended) change
//!   nothing, so a slow old session thread can never remove its successor.
//! - Gone members are kept (for `status` and `doctor`) for `keep_gone_for`, then dropped.
//! - `generation` increases whenever the set of live members changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::identity::NodeId;
use crate::message::{
    GoneReason, MemberAddress, NodeResources, NodeState, NodeStatus, RefusalReason, Role,
    VersionInfo,
};

/// What a member told us about itself when it joined.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// `host:port` of its listener.
    pub address: String,
    pub role: Role,
    pub version: VersionInfo,
    pub resources: NodeResources,
}

/// One join of one node; heartbeats and the session's end carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(u64);

#[derive(Debug, Clone, PartialEq)]
pub enum MembershipEvent {
    Joined {
        node_id: NodeId,
        info: MemberInfo,
        /// It was a member before (gone since) and came back.
        rejoined: bool,
    },
    Gone {
        node_id: NodeId,
        reason: GoneReason,
    },
}

#[derive(Debug)]
enum MemberState {
    Alive,
    Gone { reason: GoneReason, since: Instant },
}

#[derive(Debug)]
struct Member {
    info: MemberInfo,
    session: SessionId,
    state: MemberState,
    last_heartbeat: Instant,
    joined_at: Instant,
    is_local: bool,
}

#[derive(Debug)]
pub struct Membership {
    heartbeat_timeout: Duration,
    keep_gone_for: Duration,
    members: BTreeMap<NodeId, Member>,
    next_session: u64,
    generation: u64,
}

impl Membership {
    /// A table holding the coordinator itself.
    pub fn new(
        local_id: NodeId,
        local: MemberInfo,
        heartbeat_timeout: Duration,
        now: Instant,
    ) -> Self {
        let mut members = BTreeMap::new();
        members.insert(
            local_id,
            Member {
                info: local,
                session: SessionId(0),
                state: MemberState::Alive,
                last_heartbeat: now,
                joined_at: now,
                is_local: true,
            },
        );
        Self {
            heartbeat_timeout,
            keep_gone_for: Duration::from_secs(600),
            members,
            next_session: 1,
            generation: 1,
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// Admits `node_id` with a new session, or refuses it as a duplicate of a live member.
    pub fn join(
        &mut self,
        node_id: NodeId,
        info: MemberInfo,
        now: Instant,
    ) -> Result<(SessionId, MembershipEvent), RefusalReason> {
        let rejoined = match self.members.get(&node_id) {
            // The same id from the same listener address is the same node reconnecting before
            // its old session was noticed dead: the new session replaces the old one.
            Some(existing)
                if !existing.is_local
                    && matches!(existing.state, MemberState::Alive)
                    && existing.info.address == info.address =>
            {
                true
            }
            Some(existing) if existing.is_local || matches!(existing.state, MemberState::Alive) => {
                return Err(RefusalReason::DuplicateNodeId {
                    node_id,
                    existing_address: Some(existing.info.address.clone()),
                });
            }
            Some(_) => true,
            None => false,
        };
        let session = SessionId(self.next_session);
        self.next_session += 1;
        self.members.insert(
            node_id,
            Member {
                info: info.clone(),
                session,
                state: MemberState::Alive,
                last_heartbeat: now,
                joined_at: now,
                is_local: false,
            },
        );
        self.generation += 1;
        Ok((
            session,
            MembershipEvent::Joined {
                node_id,
                info,
                rejoined,
            },
        ))
    }

    /// Records a heartbeat; `false` means the session is no longer the live one (it timed out
    /// or was replaced) and should end.
    pub fn heartbeat(
        &mut self,
        node_id: NodeId,
        session: SessionId,
        resources: NodeResources,
        now: Instant,
    ) -> bool {
        match self.live_member_mut(node_id, session) {
            Some(member) => {
                member.last_heartbeat = now;
                member.info.resources = resources;
                true
            }
            None => false,
        }
    }

    /// Whether `session` is still `node_id`'s live session.
    pub fn is_live(&self, node_id: NodeId, session: SessionId) -> bool {
        self.members.get(&node_id).is_some_and(|member| {
            member.session == session && matches!(member.state, MemberState::Alive)
        })
    }

    /// A session ended (connection closed, goodbye, protocol error).
    pub fn end_session(
        &mut self,
        node_id: NodeId,
        session: SessionId,
        reason: GoneReason,
        now: Instant,
    ) -> Option<MembershipEvent> {
        let member = self.live_member_mut(node_id, session)?;
        member.state = MemberState::Gone {
            reason: reason.clone(),
            since: now,
        };
        self.generation += 1;
        Some(MembershipEvent::Gone { node_id, reason })
    }

    /// Marks members silent for longer than the heartbeat timeout as gone, and forgets members
    /// gone for longer than `keep_gone_for`.
    pub fn expire(&mut self, now: Instant) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        for (node_id, member) in &mut self.members {
            let silent_for = now.saturating_duration_since(member.last_heartbeat);
            if !member.is_local
                && matches!(member.state, MemberState::Alive)
                && silent_for > self.heartbeat_timeout
            {
                member.state = MemberState::Gone {
                    reason: GoneReason::HeartbeatTimeout,
                    since: now,
                };
                events.push(MembershipEvent::Gone {
                    node_id: *node_id,
                    reason: GoneReason::HeartbeatTimeout,
                });
            }
        }
        if !events.is_empty() {
            self.generation += 1;
        }
        let keep_gone_for = self.keep_gone_for;
        self.members.retain(|_, member| match member.state {
            MemberState::Gone { since, .. } => {
                now.saturating_duration_since(since) <= keep_gone_for
            }
            MemberState::Alive => true,
        });
        events
    }

    /// Increases whenever the set of live members changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_alive(&self, node_id: NodeId) -> bool {
        self.members
            .get(&node_id)
            .is_some_and(|member| matches!(member.state, MemberState::Alive))
    }

    pub fn member_info(&self, node_id: NodeId) -> Option<&MemberInfo> {
        self.members.get(&node_id).map(|member| &member.info)
    }

    /// Live members and their listener addresses, the coordinator included.
    pub fn live_addresses(&self) -> Vec<MemberAddress> {
        self.members
            .iter()
            .filter(|(_, member)| matches!(member.state, MemberState::Alive))
            .map(|(node_id, member)| MemberAddress {
                node_id: *node_id,
                address: member.info.address.clone(),
            })
            .collect()
    }

    pub fn update_local_resources(&mut self, resources: NodeResources, now: Instant) {
        for member in self.members.values_mut().filter(|member| member.is_local) {
            member.info.resources = resources.clone();
            member.last_heartbeat = now;
        }
    }

    /// Every member, live or recently gone, ordered by node id.
    pub fn snapshot(&self, now: Instant) -> Vec<NodeStatus> {
        self.members
            .iter()
            .map(|(node_id, member)| {
                let heartbeat_age = if member.is_local {
                    Duration::ZERO
                } else {
                    now.saturating_duration_since(member.last_heartbeat)
                };
                let state = match &member.state {
                    MemberState::Alive => NodeState::Alive,
                    MemberState::Gone { reason, since } => NodeState::Gone {
                        reason: reason.clone(),
                        gone_for_ms: millis(now.saturating_duration_since(*since)),
                    },
                };
                NodeStatus {
                    node_id: *node_id,
                    address: member.info.address.clone(),
                    role: member.info.role,
                    version: member.info.version.clone(),
                    resources: member.info.resources.clone(),
                    state,
                    heartbeat_age_ms: millis(heartbeat_age),
                    member_for_ms: millis(now.saturating_duration_since(member.joined_at)),
                }
            })
            .collect()
    }

    fn live_member_mut(&mut self, node_id: NodeId, session: SessionId) -> Option<&mut Member> {
        self.members.get_mut(&node_id).filter(|member| {
            member.session == session
                && matches!(member.state, MemberState::Alive)
                && !member.is_local
        })
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn info(address: &str) -> MemberInfo {
        MemberInfo {
            address: address.to_string(),
            role: Role::Worker,
            version: VersionInfo::current(),
            resources: NodeResources {
                backend: "cpu".into(),
                free_memory_bytes: Some(8 << 30),
                memory_bandwidth_bytes_per_s: Some(20e9),
                compute: "cpu x4".into(),
            },
        }
    }

    fn table(start: Instant) -> (NodeId, Membership) {
        let coordinator = NodeId::random();
        let mut coordinator_info = info("10.0.0.1:7640");
        coordinator_info.role = Role::Coordinator;
        (
            coordinator,
            Membership::new(coordinator, coordinator_info, TIMEOUT, start),
        )
    }

    #[test]
    fn silent_member_is_marked_gone_after_the_timeout_and_not_before() {
        let start = Instant::now();
        let (coordinator, mut members) = table(start);
        let worker = NodeId::random();
        let (session, joined) = members.join(worker, info("10.0.0.2:7641"), start).unwrap();
        assert!(matches!(
            joined,
            MembershipEvent::Joined {
                rejoined: false,
                ..
            }
        ));
        assert!(members.heartbeat(
            worker,
            session,
            info("x").resources,
            start + Duration::from_secs(2)
        ));
        assert!(
            members.expire(start + Duration::from_secs(4)).is_empty(),
            "heard from 2 s ago"
        );
        let events = members.expire(start + Duration::from_millis(5_001));
        assert_eq!(
            events,
            vec![MembershipEvent::Gone {
                node_id: worker,
                reason: GoneReason::HeartbeatTimeout
            }]
        );
        assert!(!members.is_alive(worker));
        assert!(
            members.is_alive(coordinator),
            "the coordinator never expires"
        );
        assert!(
            members.expire(start + Duration::from_secs(60)).is_empty(),
            "gone is reported once"
        );
        assert!(!members.heartbeat(
            worker,
            session,
            info("x").resources,
            start + Duration::from_secs(6)
        ));
    }

    #[test]
    fn live_duplicate_is_refused_and_a_gone_node_can_rejoin() {
        let start = Instant::now();
        let (coordinator, mut members) = table(start);
        let worker = NodeId::random();
        let (first, _) = members.join(worker, info("10.0.0.2:7641"), start).unwrap();
        match members.join(worker, info("10.0.0.3:7641"), start) {
            Err(RefusalReason::DuplicateNodeId {
                existing_address, ..
            }) => {
                assert_eq!(existing_address.as_deref(), Some("10.0.0.2:7641"))
            }
            other => panic!("expected a duplicate refusal, got {other:?}"),
        }
        assert!(members
            .join(coordinator, info("10.0.0.9:1"), start)
            .is_err());
        let closed = GoneReason::ConnectionClosed {
            detail: "eof".into(),
        };
        assert!(members.end_session(worker, first, closed, start).is_some());
        let (second, rejoin) = members.join(worker, info("10.0.0.3:7641"), start).unwrap();
        assert!(matches!(
            rejoin,
            MembershipEvent::Joined { rejoined: true, .. }
        ));
        // The first session's late end must not remove the second.
        let late = GoneReason::ConnectionClosed {
            detail: "late".into(),
        };
        assert!(members.end_session(worker, first, late, start).is_none());
        assert!(members.is_live(worker, second));
    }

    #[test]
    fn a_reconnect_from_the_same_address_replaces_the_live_session() {
        let start = Instant::now();
        let (_, mut members) = table(start);
        let worker = NodeId::random();
        let (old, _) = members.join(worker, info("10.0.0.2:7641"), start).unwrap();
        let (new, event) = members.join(worker, info("10.0.0.2:7641"), start).unwrap();
        assert!(matches!(
            event,
            MembershipEvent::Joined { rejoined: true, .. }
        ));
        assert!(members.is_live(worker, new) && !members.is_live(worker, old));
        assert!(
            !members.heartbeat(worker, old, info("x").resources, start),
            "the old session must end"
        );
        let closed = GoneReason::ConnectionClosed {
            detail: "old socket".into(),
        };
        assert!(members.end_session(worker, old, closed, start).is_none());
        assert!(members.is_alive(worker));
    }

    #[test]
    fn generation_tracks_changes_to_the_live_set() {
        let start = Instant::now();
        let (_, mut members) = table(start);
        let before = members.generation();
        let worker = NodeId::random();
        let (session, _) = members.join(worker, info("10.0.0.2:7641"), start).unwrap();
        let joined = members.generation();
        assert!(joined > before);
        members.heartbeat(worker, session, info("x").resources, start);
        assert_eq!(
            members.generation(),
            joined,
            "heartbeats do not change the live set"
        );
        assert_eq!(members.live_addresses().len(), 2);
        members.expire(start + TIMEOUT * 2);
        assert!(members.generation() > joined);
        assert_eq!(members.live_addresses().len(), 1);
    }

    #[test]
    fn gone_members_are_reported_then_forgotten() {
        let start = Instant::now();
        let (_, mut members) = table(start);
        let worker = NodeId::random();
        members.join(worker, info("10.0.0.2:7641"), start).unwrap();
        members.expire(start + TIMEOUT * 2);
        let snapshot = members.snapshot(start + TIMEOUT * 3);
        let gone = snapshot.iter().find(|node| node.node_id == worker).unwrap();
        assert!(
            matches!(&gone.state, NodeState::Gone { reason: GoneReason::HeartbeatTimeout, gone_for_ms } if *gone_for_ms == 3_000)
        );
        members.expire(start + Duration::from_secs(3_600));
        assert_eq!(
            members.snapshot(start + Duration::from_secs(3_600)).len(),
            1
        );
    }
}
