//! The crate's one error type.
//!
//! Owns: every way the control plane can fail, with enough context to tell a user what to fix.
//! Frame-level errors (`Truncated`, `Oversized`, `UnknownFrameKind`, `Malformed`, `Stalled`)
//! always mean the connection they came from is closed; `Refused` carries the reason a peer
//! (or we) refused a handshake so callers and `cluster doctor` can explain it.

use std::io;

use crate::message::RefusalReason;

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The peer closed the connection at a frame boundary.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("truncated frame: the connection ended {received} bytes into a {expected}-byte frame")]
    Truncated { expected: usize, received: usize },
    /// A frame header announced a payload larger than this connection accepts.
    #[error("oversized {kind} frame: {len} bytes announced, at most {max} accepted")]
    Oversized {
        kind: &'static str,
        len: u64,
        max: u64,
    },
    /// A frame header announced length 0 (every frame has at least its kind byte).
    #[error("empty frame: length 0 has no room for the kind byte")]
    EmptyFrame,
    #[error("unknown frame kind {0:#04x}")]
    UnknownFrameKind(u8),
    /// A frame whose payload did not decode as the message its kind promises.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// A well-formed frame or message that the protocol does not allow at this point.
    #[error("unexpected {got} (expected {expected})")]
    Unexpected { expected: &'static str, got: String },
    /// A frame started but made no progress for the connection's stall timeout.
    #[error("frame stalled: no bytes for {0:?} in the middle of a frame")]
    Stalled(std::time::Duration),
    /// Nothing arrived (or nothing could be sent) within a deadline.
    #[error("timed out after {after:?} {what}")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    /// A handshake was refused, by the peer or by us, for this reason.
    #[error("refused: {0}")]
    Refused(RefusalReason),
    /// The peer's handshake proof did not verify: it does not hold our cluster key.
    #[error("wrong cluster key: the peer could not prove it holds this cluster's key")]
    PeerHasWrongKey,
    /// The connection was closed earlier after an error; it cannot be used again.
    #[error("connection already closed after an earlier error")]
    ConnectionBroken,
    #[error("invalid cluster key: {0}")]
    InvalidKey(String),
    #[error("invalid node id `{text}`: {reason}")]
    InvalidNodeId { text: String, reason: &'static str },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("mDNS: {0}")]
    Mdns(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ClusterError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The refusal reason, when this error is a refused handshake.
    pub fn refusal(&self) -> Option<&RefusalReason> {
        match self {
            Self::Refused(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether this error closed a connection because the peer sent bytes that break the
    /// protocol (as opposed to a network failure or a refusal).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::Truncated { .. }
                | Self::Oversized { .. }
                | Self::EmptyFrame
                | Self::UnknownFrameKind(_)
                | Self::Malformed { .. }
                | Self::Unexpected { .. }
        )
    }
}
