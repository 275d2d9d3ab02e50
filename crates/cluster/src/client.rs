//! Asking a node for its view of the cluster over the authenticated protocol: what
//! `hearth cluster status` and `doctor` use.
//!
//! Owns: the query identity (a fresh random id per tool run: a tool is never a member) and the
//! request/reply exchange. Invariant: bounded by the dialer's timing.

use std::net::SocketAddr;

use crate::connection::{ConnectionTiming, Dialer};
use crate::error::{ClusterError, Result};
use crate::handshake::HandshakeConfig;
use crate::identity::NodeId;
use crate::key::ClusterKey;
use crate::message::{ClusterStatus, ControlMessage, Purpose, VersionInfo};

/// A dialer for a query tool: a random id, this build's version, no listener.
pub fn query_dialer(key: ClusterKey, timing: ConnectionTiming) -> Dialer {
    Dialer {
        identity: HandshakeConfig {
            key,
            node_id: NodeId::random(),
            version: VersionInfo::current(),
            timeout: timing.handshake_timeout,
        },
        timing,
        listen_port: None,
    }
}

/// Connects as a query, asks for the status, and closes.
pub fn query_status(address: SocketAddr, dialer: &Dialer) -> Result<ClusterStatus> {
    let mut connection = dialer.connect(address, Purpose::Query)?;
    connection.send_message(&ControlMessage::StatusRequest)?;
    let reply = connection.recv_message(dialer.timing.io_timeout);
    connection.shutdown();
    match reply? {
        ControlMessage::StatusReply { status } => Ok(*status),
        other => Err(ClusterError::Unexpected {
            expected: "status_reply",
            got: format!("control message `{}`", other.name()),
        }),
    }
}
