//! Mutual authentication with the cluster's pre-shared key.
//!
//! Steps (all `Handshake` frames, JSON `HandshakeMessage`s):
//! 1. initiator → `Hello { version, node_id, nonce_i, purpose, listen_port }`
//! 2. responder checks the version (else `Refuse { version_mismatch }`), then →
//!    `Challenge { version, node_id, nonce_r, proof_r }`
//! 3. initiator verifies `proof_r` (else it sends `Refuse { wrong_key }`: the responder does not
//!    hold our key), then → `Proof { proof_i }`
//! 4. responder verifies `proof_i` (else `Refuse { wrong_key }`), refuses a duplicate of its own
//!    id, asks the caller's admission rule (duplicate member, not the coordinator, …), then →
//!    `Welcome`.
//!
//! A proof is HMAC-SHA256 under the key over a transcript: a domain label, the prover's role,
//! both versions' fields, the purpose, the initiator's listen port, and both node ids and nonces
//! (32 random bytes each). Roles are in the transcript, so one side's proof can never be replayed
//! as the other's; fresh nonces on both sides stop replays across connections. Proofs are
//! compared in constant time (`hmac`'s `verify_slice`).
//!
//! Owns: the message sequence, proofs, refusal reasons for version, key and self-duplicate.
//! Does not own: sockets and timeouts (`connection.rs` sets a read timeout on the stream so the
//! deadline here is honored), membership duplicates (the caller's `admit`). Not provided: the
//! frames after the handshake are neither encrypted nor authenticated (a TLS/Noise layer would
//! be needed against an active attacker on the network path).
//!
//! Invariants: every exit on the responder side either admits the peer or tells it why not (a
//! `Refuse` frame, best effort) before the caller closes the connection; nothing here panics on
//! peer input; every wait ends at the deadline.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{ClusterError, Result};
use crate::frame::{
    decode_message, encode_message, write_frame, FrameDecoder, FrameKind, FrameLimits,
};
use crate::identity::NodeId;
use crate::key::ClusterKey;
use crate::message::{HandshakeMessage, Purpose, RefusalReason, VersionInfo};

type HmacSha256 = Hmac<Sha256>;

const NONCE_BYTES: usize = 32;
const DOMAIN_LABEL: &[u8] = b"hearth-cluster-handshake-v1\0";

/// Who this node is, what it proves with, and how long a handshake may take.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    pub key: ClusterKey,
    pub node_id: NodeId,
    pub version: VersionInfo,
    pub timeout: Duration,
}

/// The other side of a completed (or attempted) handshake. For a refused peer these are its
/// claims, unauthenticated unless the refusal came after its proof verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: NodeId,
    pub version: VersionInfo,
    pub purpose: Purpose,
    pub listen_port: Option<u16>,
}

/// How a responder-side handshake failed.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// We refused the peer (and told it why).
    WeRefused {
        claimed: Option<PeerIdentity>,
        reason: RefusalReason,
    },
    /// The peer refused us (it could not verify our proof: we hold a different key).
    TheyRefused {
        claimed: Option<PeerIdentity>,
        reason: RefusalReason,
    },
    /// The connection failed or timed out; nothing was decided.
    Failed(ClusterError),
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WeRefused { reason, .. } => write!(f, "refused the peer: {reason}"),
            Self::TheyRefused { reason, .. } => write!(f, "the peer refused us: {reason}"),
            Self::Failed(err) => write!(f, "handshake failed: {err}"),
        }
    }
}

/// Runs the initiator's side. `Err(Refused(reason))` when the responder refused us,
/// `Err(PeerHasWrongKey)` when its proof did not verify.
pub fn initiate<S: Read + Write>(
    stream: &mut S,
    config: &HandshakeConfig,
    purpose: Purpose,
    listen_port: Option<u16>,
) -> Result<PeerIdentity> {
    let deadline = Instant::now() + config.timeout;
    let mut decoder = FrameDecoder::new(FrameLimits::HANDSHAKE);
    let nonce_i: [u8; NONCE_BYTES] = rand::random();
    send(
        stream,
        &HandshakeMessage::Hello {
            version: config.version.clone(),
            node_id: config.node_id,
            nonce: crate::hex::encode(&nonce_i),
            purpose,
            listen_port,
        },
    )?;
    let (version, responder_id, nonce_r, proof_r) =
        match receive(stream, &mut decoder, deadline, config.timeout)? {
            HandshakeMessage::Challenge {
                version,
                node_id,
                nonce,
                proof,
            } => (version, node_id, nonce, proof),
            HandshakeMessage::Refuse { reason } => return Err(ClusterError::Refused(reason)),
            other => return Err(unexpected("challenge or refuse", &other)),
        };
    if version != config.version {
        let reason = RefusalReason::VersionMismatch {
            expected: config.version.clone(),
            got: version,
        };
        let _ = send(
            stream,
            &HandshakeMessage::Refuse {
                reason: reason.clone(),
            },
        );
        return Err(ClusterError::Refused(reason));
    }
    let nonce_r = decode_nonce(&nonce_r)?;
    let transcript = Transcript {
        version: &config.version,
        purpose,
        listen_port,
        initiator: (config.node_id, &nonce_i),
        responder: (responder_id, &nonce_r),
    };
    if !transcript.verify(&config.key, Prover::Responder, &proof_r) {
        let _ = send(
            stream,
            &HandshakeMessage::Refuse {
                reason: RefusalReason::WrongKey,
            },
        );
        return Err(ClusterError::PeerHasWrongKey);
    }
    let proof_i = transcript.prove(&config.key, Prover::Initiator);
    send(stream, &HandshakeMessage::Proof { proof: proof_i })?;
    match receive(stream, &mut decoder, deadline, config.timeout)? {
        HandshakeMessage::Welcome => Ok(PeerIdentity {
            node_id: responder_id,
            version,
            purpose,
            listen_port: None,
        }),
        HandshakeMessage::Refuse { reason } => Err(ClusterError::Refused(reason)),
        other => Err(unexpected("welcome or refuse", &other)),
    }
}

/// Runs the responder's side; `admit` is the caller's admission rule for an authenticated peer
/// (membership duplicates, "not the coordinator").
pub fn respond<S: Read + Write>(
    stream: &mut S,
    config: &HandshakeConfig,
    admit: impl FnOnce(&PeerIdentity) -> std::result::Result<(), RefusalReason>,
) -> std::result::Result<PeerIdentity, HandshakeFailure> {
    let deadline = Instant::now() + config.timeout;
    let mut decoder = FrameDecoder::new(FrameLimits::HANDSHAKE);
    let hello = receive(stream, &mut decoder, deadline, config.timeout)
        .map_err(|err| refuse_violation(stream, None, err))?;
    let HandshakeMessage::Hello {
        version,
        node_id,
        nonce,
        purpose,
        listen_port,
    } = hello
    else {
        return Err(refuse_violation(stream, None, unexpected("hello", &hello)));
    };
    let claimed = PeerIdentity {
        node_id,
        version: version.clone(),
        purpose,
        listen_port,
    };
    if version != config.version {
        let reason = RefusalReason::VersionMismatch {
            expected: config.version.clone(),
            got: version,
        };
        return Err(refuse(stream, Some(claimed), reason));
    }
    let nonce_i = match decode_nonce(&nonce) {
        Ok(nonce_i) => nonce_i,
        Err(err) => return Err(refuse_violation(stream, Some(claimed), err)),
    };
    let nonce_r: [u8; NONCE_BYTES] = rand::random();
    let transcript = Transcript {
        version: &config.version,
        purpose,
        listen_port,
        initiator: (node_id, &nonce_i),
        responder: (config.node_id, &nonce_r),
    };
    let challenge = HandshakeMessage::Challenge {
        version: config.version.clone(),
        node_id: config.node_id,
        nonce: crate::hex::encode(&nonce_r),
        proof: transcript.prove(&config.key, Prover::Responder),
    };
    if let Err(err) = send(stream, &challenge) {
        return Err(HandshakeFailure::Failed(err));
    }
    let proof_i = match receive(stream, &mut decoder, deadline, config.timeout) {
        Ok(HandshakeMessage::Proof { proof }) => proof,
        Ok(HandshakeMessage::Refuse { reason }) => {
            return Err(HandshakeFailure::TheyRefused {
                claimed: Some(claimed),
                reason,
            })
        }
        Ok(other) => {
            return Err(refuse_violation(
                stream,
                Some(claimed),
                unexpected("proof", &other),
            ))
        }
        Err(err) => return Err(refuse_violation(stream, Some(claimed), err)),
    };
    if !transcript.verify(&config.key, Prover::Initiator, &proof_i) {
        return Err(refuse(stream, Some(claimed), RefusalReason::WrongKey));
    }
    if node_id == config.node_id && purpose != Purpose::Query {
        let reason = RefusalReason::DuplicateNodeId {
            node_id,
            existing_address: None,
        };
        return Err(refuse(stream, Some(claimed), reason));
    }
    if let Err(reason) = admit(&claimed) {
        return Err(refuse(stream, Some(claimed), reason));
    }
    send(stream, &HandshakeMessage::Welcome).map_err(HandshakeFailure::Failed)?;
    Ok(claimed)
}

#[derive(Clone, Copy)]
enum Prover {
    Initiator,
    Responder,
}

struct Transcript<'a> {
    version: &'a VersionInfo,
    purpose: Purpose,
    listen_port: Option<u16>,
    initiator: (NodeId, &'a [u8; NONCE_BYTES]),
    responder: (NodeId, &'a [u8; NONCE_BYTES]),
}

impl Transcript<'_> {
    fn mac(&self, key: &ClusterKey, prover: Prover) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match HmacSha256::new_from_slice(key.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(DOMAIN_LABEL);
        mac.update(match prover {
            Prover::Initiator => b"initiator\0",
            Prover::Responder => b"responder\0",
        });
        mac.update(&self.version.protocol.to_be_bytes());
        mac.update(&(self.version.software.len() as u64).to_be_bytes());
        mac.update(self.version.software.as_bytes());
        mac.update(&[self.purpose as u8]);
        mac.update(
            &self
                .listen_port
                .map_or(0u32, |port| 0x1_0000 | u32::from(port))
                .to_be_bytes(),
        );
        mac.update(self.initiator.0.as_bytes());
        mac.update(self.initiator.1);
        mac.update(self.responder.0.as_bytes());
        mac.update(self.responder.1);
        mac
    }

    fn prove(&self, key: &ClusterKey, prover: Prover) -> String {
        crate::hex::encode(&self.mac(key, prover).finalize().into_bytes())
    }

    /// Constant-time comparison of `proof` (hex) with the expected MAC.
    fn verify(&self, key: &ClusterKey, prover: Prover, proof: &str) -> bool {
        match crate::hex::decode(proof) {
            Some(bytes) => self.mac(key, prover).verify_slice(&bytes).is_ok(),
            None => false,
        }
    }
}

fn decode_nonce(text: &str) -> Result<[u8; NONCE_BYTES]> {
    crate::hex::decode(text)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| ClusterError::Malformed {
            what: "handshake nonce",
            detail: format!("expected {} hex digits", NONCE_BYTES * 2),
        })
}

fn send<S: Write>(stream: &mut S, message: &HandshakeMessage) -> Result<()> {
    let payload = encode_message(message)?;
    write_frame(
        stream,
        FrameKind::Handshake,
        &payload,
        &FrameLimits::HANDSHAKE,
    )
}

/// The next handshake message; the stream's read timeout bounds each wait, `deadline` the total.
fn receive<S: Read>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    deadline: Instant,
    timeout: Duration,
) -> Result<HandshakeMessage> {
    loop {
        if let Some(frame) = decoder.read_from(stream)? {
            if frame.kind != FrameKind::Handshake {
                return Err(ClusterError::Unexpected {
                    expected: "a handshake frame",
                    got: format!("a {} frame", frame.kind.name()),
                });
            }
            return decode_message(&frame.payload, "handshake message");
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: "waiting for the peer's handshake",
                after: timeout,
            });
        }
    }
}

fn unexpected(expected: &'static str, got: &HandshakeMessage) -> ClusterError {
    let name = match got {
        HandshakeMessage::Hello { .. } => "hello",
        HandshakeMessage::Challenge { .. } => "challenge",
        HandshakeMessage::Proof { .. } => "proof",
        HandshakeMessage::Welcome => "welcome",
        HandshakeMessage::Refuse { .. } => "refuse",
    };
    ClusterError::Unexpected {
        expected,
        got: format!("handshake message `{name}`"),
    }
}

/// Tells the peer why it is refused (best effort: it may be gone) and reports it.
fn refuse<S: Write>(
    stream: &mut S,
    claimed: Option<PeerIdentity>,
    reason: RefusalReason,
) -> HandshakeFailure {
    let _ = send(
        stream,
        &HandshakeMessage::Refuse {
            reason: reason.clone(),
        },
    );
    HandshakeFailure::WeRefused { claimed, reason }
}

/// A protocol violation is refused with its detail; I/O failures and timeouts are not refusals.
fn refuse_violation<S: Write>(
    stream: &mut S,
    claimed: Option<PeerIdentity>,
    err: ClusterError,
) -> HandshakeFailure {
    if err.is_protocol_violation() {
        let detail = err.to_string();
        refuse(stream, claimed, RefusalReason::ProtocolError { detail })
    } else {
        HandshakeFailure::Failed(err)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread;

    use super::*;

    const KEY: &str = "correct horse battery staple";

    fn config(key: &str, version: VersionInfo) -> HandshakeConfig {
        HandshakeConfig {
            key: ClusterKey::from_text(key).unwrap(),
            node_id: NodeId::random(),
            version,
            timeout: Duration::from_secs(5),
        }
    }

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        for stream in [&a, &b] {
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            stream
                .set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
        }
        (a, b)
    }

    /// Runs both sides; the responder admits everyone unless `admit_refusal` is given.
    fn run(
        initiator: HandshakeConfig,
        responder: HandshakeConfig,
        admit_refusal: Option<RefusalReason>,
    ) -> (
        Result<PeerIdentity>,
        std::result::Result<PeerIdentity, HandshakeFailure>,
    ) {
        let (mut a, mut b) = pair();
        let server = thread::spawn(move || {
            respond(&mut b, &responder, |_| match admit_refusal {
                Some(reason) => Err(reason),
                None => Ok(()),
            })
        });
        let client = initiate(&mut a, &initiator, Purpose::Join, Some(7641));
        (client, server.join().unwrap())
    }

    #[test]
    fn right_key_admits_both_ways() {
        let (initiator, responder) = (
            config(KEY, VersionInfo::current()),
            config(KEY, VersionInfo::current()),
        );
        let (initiator_id, responder_id) = (initiator.node_id, responder.node_id);
        let (client, server) = run(initiator, responder, None);
        assert_eq!(client.unwrap().node_id, responder_id);
        let peer = server.unwrap();
        assert_eq!(peer.node_id, initiator_id);
        assert_eq!(peer.listen_port, Some(7641));
        assert_eq!(peer.purpose, Purpose::Join);
    }

    #[test]
    fn wrong_key_is_refused_on_both_sides_with_the_reason() {
        let (client, server) = run(
            config("a different key, sixteen+ bytes", VersionInfo::current()),
            config(KEY, VersionInfo::current()),
            None,
        );
        // The initiator checks the responder's proof first and refuses it.
        assert!(
            matches!(client, Err(ClusterError::PeerHasWrongKey)),
            "{client:?}"
        );
        match server {
            Err(HandshakeFailure::TheyRefused { reason, claimed }) => {
                assert_eq!(reason, RefusalReason::WrongKey);
                assert!(claimed.is_some());
            }
            other => panic!("expected the initiator to refuse the responder, got {other:?}"),
        }
    }

    #[test]
    fn a_forged_proof_is_refused_as_wrong_key() {
        // An initiator that skips verification and sends a made-up proof.
        let responder = config(KEY, VersionInfo::current());
        let (mut a, mut b) = pair();
        let server = thread::spawn(move || respond(&mut b, &responder, |_| Ok(())));
        send(
            &mut a,
            &HandshakeMessage::Hello {
                version: VersionInfo::current(),
                node_id: NodeId::random(),
                nonce: crate::hex::encode(&[3; NONCE_BYTES]),
                purpose: Purpose::Join,
                listen_port: None,
            },
        )
        .unwrap();
        let mut decoder = FrameDecoder::new(FrameLimits::HANDSHAKE);
        let deadline = Instant::now() + Duration::from_secs(5);
        let challenge = receive(&mut a, &mut decoder, deadline, Duration::from_secs(5)).unwrap();
        assert!(matches!(challenge, HandshakeMessage::Challenge { .. }));
        send(
            &mut a,
            &HandshakeMessage::Proof {
                proof: "00".repeat(32),
            },
        )
        .unwrap();
        let refusal = receive(&mut a, &mut decoder, deadline, Duration::from_secs(5)).unwrap();
        assert_eq!(
            refusal,
            HandshakeMessage::Refuse {
                reason: RefusalReason::WrongKey
            }
        );
        assert!(matches!(
            server.join().unwrap(),
            Err(HandshakeFailure::WeRefused {
                reason: RefusalReason::WrongKey,
                ..
            })
        ));
    }

    #[test]
    fn version_mismatch_is_refused_before_any_proof() {
        let old = VersionInfo {
            protocol: crate::message::PROTOCOL_VERSION + 1,
            software: "0.0.1".into(),
        };
        let (client, server) = run(
            config(KEY, old.clone()),
            config(KEY, VersionInfo::current()),
            None,
        );
        match client {
            Err(ClusterError::Refused(RefusalReason::VersionMismatch { expected, got })) => {
                assert_eq!(expected, VersionInfo::current());
                assert_eq!(got, old);
            }
            other => panic!("expected a version mismatch, got {other:?}"),
        }
        assert!(matches!(
            server,
            Err(HandshakeFailure::WeRefused {
                reason: RefusalReason::VersionMismatch { .. },
                ..
            })
        ));
    }

    #[test]
    fn own_id_and_admission_refusals_are_distinct_reasons() {
        let responder = config(KEY, VersionInfo::current());
        let mut twin = config(KEY, VersionInfo::current());
        twin.node_id = responder.node_id;
        let (client, _) = run(twin, responder, None);
        assert!(
            matches!(
                client,
                Err(ClusterError::Refused(RefusalReason::DuplicateNodeId { .. }))
            ),
            "{client:?}"
        );
        let not_coordinator = RefusalReason::NotCoordinator {
            coordinator: Some("10.0.0.1:7640".into()),
        };
        let (client, _) = run(
            config(KEY, VersionInfo::current()),
            config(KEY, VersionInfo::current()),
            Some(not_coordinator.clone()),
        );
        assert_eq!(client.unwrap_err().refusal(), Some(&not_coordinator));
    }

    #[test]
    fn garbage_instead_of_hello_is_a_protocol_error_refusal() {
        let responder = config(KEY, VersionInfo::current());
        let (mut a, mut b) = pair();
        let server = thread::spawn(move || respond(&mut b, &responder, |_| Ok(())));
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        match server.join().unwrap() {
            Err(HandshakeFailure::WeRefused {
                reason: RefusalReason::ProtocolError { detail },
                ..
            }) => assert!(
                detail.contains("oversized") || detail.contains("unknown"),
                "{detail}"
            ),
            other => panic!("expected a protocol error refusal, got {other:?}"),
        }
    }

    #[test]
    fn silent_peer_times_out_at_the_deadline() {
        let mut responder = config(KEY, VersionInfo::current());
        responder.timeout = Duration::from_millis(300);
        let (_a, mut b) = pair();
        let started = Instant::now();
        let outcome = respond(&mut b, &responder, |_| Ok(()));
        assert!(matches!(
            outcome,
            Err(HandshakeFailure::Failed(ClusterError::Timeout { .. }))
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
