//! The most recent handshake refusals a node took part in, in both directions, so
//! `hearth cluster status` and `doctor` (asking this node over the protocol) can say why a peer
//! is missing.
//!
//! Owns: a bounded, thread-safe log. Does not own: deciding to refuse (`handshake.rs`,
//! `node.rs`). Invariant: at most [`MAX_REFUSALS`] entries, oldest dropped first; repeated
//! refusals of the same peer for the same reason replace the older entry, so one peer retrying
//! in a loop cannot push every other record out.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::Refusal;

pub const MAX_REFUSALS: usize = 64;

#[derive(Debug, Default)]
pub struct RefusalLog {
    entries: Mutex<VecDeque<Refusal>>,
}

impl RefusalLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, refusal: Refusal) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|old| {
            !(old.direction == refusal.direction
                && old.peer_node_id == refusal.peer_node_id
                && peer_host(&old.peer_address) == peer_host(&refusal.peer_address)
                && old.reason == refusal.reason)
        });
        if entries.len() == MAX_REFUSALS {
            entries.pop_front();
        }
        entries.push_back(refusal);
    }

    /// Oldest first.
    pub fn snapshot(&self) -> Vec<Refusal> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.iter().cloned().collect()
    }
}

/// The host part of `host:port` (a reconnecting peer comes from a new port each time).
fn peer_host(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{RefusalDirection, RefusalReason};

    fn refusal(address: &str, reason: RefusalReason) -> Refusal {
        Refusal {
            at_unix_ms: unix_millis_now(),
            direction: RefusalDirection::WeRefused,
            peer_address: address.to_string(),
            peer_node_id: None,
            peer_version: None,
            purpose: None,
            reason,
        }
    }

    #[test]
    fn log_is_bounded_and_collapses_a_retrying_peer() {
        let log = RefusalLog::new();
        for port in 0..10 {
            log.record(refusal(
                &format!("10.0.0.9:{port}"),
                RefusalReason::WrongKey,
            ));
        }
        assert_eq!(log.snapshot().len(), 1, "one peer retrying is one entry");
        for host in 0..(MAX_REFUSALS + 5) {
            log.record(refusal(
                &format!("10.0.1.{host}:1"),
                RefusalReason::TooManyConnections,
            ));
        }
        let entries = log.snapshot();
        assert_eq!(entries.len(), MAX_REFUSALS);
        assert_eq!(
            entries.last().unwrap().peer_address,
            format!("10.0.1.{}:1", MAX_REFUSALS + 4)
        );
    }
}
