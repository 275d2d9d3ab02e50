//! An authenticated connection: a `TcpStream` that passed the handshake, sending and receiving
//! length-checked frames with bounded waits. The control plane uses it for joins, queries and
//! link probes; the data plane reuses it for activation and KV frames (`Purpose::Data`).
//!
//! Owns: socket options (`TCP_NODELAY`, read/write timeouts), connecting and accepting with the
//! handshake, polling for frames without losing stream alignment, splitting into a reader and a
//! writer half for full-duplex use, address parsing (`host:port`). Does not own: what the frames
//! mean.
//!
//! Invariants: every wait is bounded (connect, handshake, each poll, writes by the write
//! timeout, a started frame by the stall timeout); a timeout between frames is harmless (the
//! decoder keeps partial frames), any other error shuts the socket down (both halves) and later
//! calls return `ConnectionBroken`; nothing here panics on peer input.

use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{ClusterError, Result};
use crate::frame::{
    decode_message, encode_message, write_frame, Frame, FrameDecoder, FrameKind, FrameLimits,
};
use crate::handshake::{initiate, respond, HandshakeConfig, HandshakeFailure, PeerIdentity};
use crate::message::{ControlMessage, Purpose, RefusalReason};

/// How long the pieces of a connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTiming {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Write timeout, and how long a started frame may go without progress.
    pub io_timeout: Duration,
}

impl Default for ConnectionTiming {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
        }
    }
}

/// The read timeout while handshaking: how often the handshake checks its deadline.
const HANDSHAKE_POLL: Duration = Duration::from_millis(100);
/// The longest single blocking read inside `recv_*`; deadlines are checked between reads.
const RECV_SLICE: Duration = Duration::from_millis(250);

/// Parses `host:port` (or `host`, meaning `default_port`) and resolves it. Hostnames go through
/// the system resolver, so Kubernetes service names work.
pub fn resolve_address(text: &str, default_port: u16) -> Result<Vec<SocketAddr>> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ClusterError::Config("empty peer address".into()));
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    if let Ok(ip) = text
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, default_port)]);
    }
    let resolved = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port.parse().map_err(|_| {
                ClusterError::Config(format!(
                    "`{text}`: the port `{port}` is not a number from 0 to 65535"
                ))
            })?;
            (host, port).to_socket_addrs()
        }
        None => (text, default_port).to_socket_addrs(),
    };
    let addresses: Vec<SocketAddr> = resolved
        .map_err(|err| ClusterError::io(format!("resolving `{text}`"), err))?
        .collect();
    if addresses.is_empty() {
        return Err(ClusterError::Config(format!(
            "`{text}` resolved to no address"
        )));
    }
    Ok(addresses)
}

/// How a node opens authenticated connections: who it is (the handshake identity), how long
/// each step may take, and the port its own listener accepts on (announced to the peer).
#[derive(Debug, Clone)]
pub struct Dialer {
    pub identity: HandshakeConfig,
    pub timing: ConnectionTiming,
    pub listen_port: Option<u16>,
}

impl Dialer {
    /// Connects to `address` and runs the initiator's handshake for `purpose`. A refused
    /// handshake is `Err(Refused(reason))`; a peer that cannot prove our key is
    /// `Err(PeerHasWrongKey)`.
    pub fn connect(&self, address: SocketAddr, purpose: Purpose) -> Result<Connection> {
        Connection::connect(address, self, purpose)
    }
}

/// The receiving half.
#[derive(Debug)]
pub struct ConnectionReader {
    stream: TcpStream,
    decoder: FrameDecoder,
    stall_timeout: Duration,
    last_progress: Instant,
    read_timeout: Option<Duration>,
    broken: bool,
}

/// The sending half.
#[derive(Debug)]
pub struct ConnectionWriter {
    stream: TcpStream,
    limits: FrameLimits,
    broken: bool,
}

/// An authenticated, full-duplex frame connection.
#[derive(Debug)]
pub struct Connection {
    peer: PeerIdentity,
    peer_address: SocketAddr,
    reader: ConnectionReader,
    writer: ConnectionWriter,
}

impl Connection {
    fn connect(address: SocketAddr, dialer: &Dialer, purpose: Purpose) -> Result<Self> {
        let timing = &dialer.timing;
        let mut stream = TcpStream::connect_timeout(&address, timing.connect_timeout)
            .map_err(|err| ClusterError::io(format!("connecting to {address}"), err))?;
        prepare_socket(&stream, HANDSHAKE_POLL, timing.io_timeout)?;
        let handshake_config = HandshakeConfig {
            timeout: timing.handshake_timeout,
            ..dialer.identity.clone()
        };
        let peer = initiate(&mut stream, &handshake_config, purpose, dialer.listen_port);
        let peer = peer.inspect_err(|_| {
            let _ = stream.shutdown(Shutdown::Both);
        })?;
        Self::from_stream(stream, peer, address, timing)
    }

    /// Runs the responder's handshake on an accepted stream; `admit` is the caller's admission
    /// rule. On failure the socket is shut down.
    pub fn accept(
        mut stream: TcpStream,
        config: &HandshakeConfig,
        timing: &ConnectionTiming,
        admit: impl FnOnce(&PeerIdentity) -> std::result::Result<(), RefusalReason>,
    ) -> std::result::Result<Self, HandshakeFailure> {
        let peer_address = stream.peer_addr().map_err(|err| {
            HandshakeFailure::Failed(ClusterError::io("reading the peer address", err))
        })?;
        prepare_socket(&stream, HANDSHAKE_POLL, timing.io_timeout)
            .map_err(HandshakeFailure::Failed)?;
        let handshake_config = HandshakeConfig {
            timeout: timing.handshake_timeout,
            ..config.clone()
        };
        let outcome = respond(&mut stream, &handshake_config, admit);
        let peer = outcome.inspect_err(|_| {
            let _ = stream.shutdown(Shutdown::Both);
        })?;
        Self::from_stream(stream, peer, peer_address, timing).map_err(HandshakeFailure::Failed)
    }

    fn from_stream(
        stream: TcpStream,
        peer: PeerIdentity,
        peer_address: SocketAddr,
        timing: &ConnectionTiming,
    ) -> Result<Self> {
        let read_stream = stream
            .try_clone()
            .map_err(|err| ClusterError::io("cloning the socket", err))?;
        Ok(Self {
            peer,
            peer_address,
            reader: ConnectionReader {
                stream: read_stream,
                decoder: FrameDecoder::new(FrameLimits::default()),
                stall_timeout: timing.io_timeout,
                last_progress: Instant::now(),
                read_timeout: Some(HANDSHAKE_POLL),
                broken: false,
            },
            writer: ConnectionWriter {
                stream,
                limits: FrameLimits::default(),
                broken: false,
            },
        })
    }

    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The peer's address as this side sees it (its source port for an accepted connection).
    pub fn peer_address(&self) -> SocketAddr {
        self.peer_address
    }

    /// Where the peer's own listener is: its IP as seen here and the port it announced.
    pub fn peer_listen_address(&self) -> Option<SocketAddr> {
        self.peer
            .listen_port
            .map(|port| SocketAddr::new(self.peer_address.ip(), port))
    }

    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.reader.decoder.set_limits(limits);
        self.writer.limits = limits;
    }

    pub fn send_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        self.writer.send_frame(kind, payload)
    }

    pub fn send_message(&mut self, message: &ControlMessage) -> Result<()> {
        self.writer.send_message(message)
    }

    pub fn poll_frame(&mut self, wait: Duration) -> Result<Option<Frame>> {
        self.reader.poll_frame(wait)
    }

    pub fn recv_frame(&mut self, timeout: Duration) -> Result<Frame> {
        self.reader.recv_frame(timeout)
    }

    pub fn poll_message(&mut self, wait: Duration) -> Result<Option<ControlMessage>> {
        self.reader.poll_message(wait)
    }

    pub fn recv_message(&mut self, timeout: Duration) -> Result<ControlMessage> {
        self.reader.recv_message(timeout)
    }

    /// Closes both directions now.
    pub fn shutdown(&self) {
        let _ = self.writer.stream.shutdown(Shutdown::Both);
    }

    /// Separate halves, so one thread can send while another receives.
    pub fn split(self) -> (ConnectionReader, ConnectionWriter) {
        (self.reader, self.writer)
    }
}

impl ConnectionReader {
    /// Waits up to `wait` for a frame. `Ok(None)`: no complete frame yet (the stream stays in
    /// step; call again). A frame that started but made no progress for the stall timeout, or
    /// any decode error, closes the connection.
    pub fn poll_frame(&mut self, wait: Duration) -> Result<Option<Frame>> {
        if self.broken {
            return Err(ClusterError::ConnectionBroken);
        }
        let wait = wait.max(Duration::from_millis(1));
        if self.read_timeout != Some(wait) {
            if let Err(err) = self.stream.set_read_timeout(Some(wait)) {
                return Err(self.fail(ClusterError::io("setting the read timeout", err)));
            }
            self.read_timeout = Some(wait);
        }
        let buffered_before = self.decoder.buffered();
        match self.decoder.read_from(&mut self.stream) {
            Ok(Some(frame)) => {
                self.last_progress = Instant::now();
                Ok(Some(frame))
            }
            Ok(None) => {
                let buffered = self.decoder.buffered();
                if buffered != buffered_before {
                    self.last_progress = Instant::now();
                } else if buffered > 0 && self.last_progress.elapsed() > self.stall_timeout {
                    return Err(self.fail(ClusterError::Stalled(self.stall_timeout)));
                }
                Ok(None)
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    /// The next frame within `timeout`. A `Timeout` error leaves the connection usable.
    pub fn recv_frame(&mut self, timeout: Duration) -> Result<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClusterError::Timeout {
                    what: "waiting for a frame",
                    after: timeout,
                });
            }
            if let Some(frame) = self.poll_frame(remaining.min(RECV_SLICE))? {
                return Ok(frame);
            }
        }
    }

    /// Like `poll_frame`, for control messages only: any other kind of frame is a protocol
    /// violation and closes the connection.
    pub fn poll_message(&mut self, wait: Duration) -> Result<Option<ControlMessage>> {
        match self.poll_frame(wait)? {
            Some(frame) => self.frame_to_message(frame).map(Some),
            None => Ok(None),
        }
    }

    pub fn recv_message(&mut self, timeout: Duration) -> Result<ControlMessage> {
        let frame = self.recv_frame(timeout)?;
        self.frame_to_message(frame)
    }

    fn frame_to_message(&mut self, frame: Frame) -> Result<ControlMessage> {
        if frame.kind != FrameKind::Control {
            return Err(self.fail(ClusterError::Unexpected {
                expected: "a control frame",
                got: format!("a {} frame", frame.kind.name()),
            }));
        }
        decode_message(&frame.payload, "control message").map_err(|err| self.fail(err))
    }

    fn fail(&mut self, err: ClusterError) -> ClusterError {
        self.broken = true;
        let _ = self.stream.shutdown(Shutdown::Both);
        err
    }
}

impl ConnectionWriter {
    pub fn send_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        if self.broken {
            return Err(ClusterError::ConnectionBroken);
        }
        write_frame(&mut self.stream, kind, payload, &self.limits).map_err(|err| {
            // An oversized payload wrote nothing: the connection is still in step.
            if !matches!(err, ClusterError::Oversized { .. }) {
                self.broken = true;
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            err
        })
    }

    pub fn send_message(&mut self, message: &ControlMessage) -> Result<()> {
        let payload = encode_message(message)?;
        self.send_frame(FrameKind::Control, &payload)
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn prepare_socket(
    stream: &TcpStream,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<()> {
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(read_timeout)))
        .and_then(|()| stream.set_write_timeout(Some(write_timeout)))
        .map_err(|err| ClusterError::io("setting socket options", err))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::thread;

    use super::*;
    use crate::identity::NodeId;
    use crate::key::ClusterKey;
    use crate::message::VersionInfo;

    fn config() -> HandshakeConfig {
        HandshakeConfig {
            key: ClusterKey::from_text("connection-test-key-0123").unwrap(),
            node_id: NodeId::random(),
            version: VersionInfo::current(),
            timeout: Duration::from_secs(5),
        }
    }

    fn timing() -> ConnectionTiming {
        ConnectionTiming {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_millis(400),
        }
    }

    /// A connected pair over loopback: (initiator side, responder side).
    fn pair() -> (Connection, Connection) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            Connection::accept(stream, &config(), &timing(), |_| Ok(())).unwrap()
        });
        let dialer = Dialer {
            identity: config(),
            timing: timing(),
            listen_port: Some(9),
        };
        let client = dialer.connect(address, Purpose::Data).unwrap();
        (client, server.join().unwrap())
    }

    #[test]
    fn frames_flow_both_ways_and_idle_polls_keep_the_stream_usable() {
        let (mut client, mut server) = pair();
        assert_eq!(server.peer().purpose, Purpose::Data);
        assert_eq!(server.peer_listen_address().unwrap().port(), 9);
        assert!(server
            .poll_frame(Duration::from_millis(20))
            .unwrap()
            .is_none());
        client
            .send_frame(FrameKind::Activation, &[1, 2, 3])
            .unwrap();
        client
            .send_message(&ControlMessage::Ping { seq: 4 })
            .unwrap();
        let frame = server.recv_frame(Duration::from_secs(2)).unwrap();
        assert_eq!(
            (frame.kind, frame.payload),
            (FrameKind::Activation, vec![1, 2, 3])
        );
        assert_eq!(
            server.recv_message(Duration::from_secs(2)).unwrap(),
            ControlMessage::Ping { seq: 4 }
        );
        server
            .send_message(&ControlMessage::Pong { seq: 4 })
            .unwrap();
        assert_eq!(
            client.recv_message(Duration::from_secs(2)).unwrap(),
            ControlMessage::Pong { seq: 4 }
        );
    }

    #[test]
    fn oversized_frame_from_the_peer_closes_the_connection() {
        let (client, mut server) = pair();
        server.set_limits(FrameLimits {
            max_control_bytes: 1024,
            max_data_bytes: 16,
        });
        let (_reader, mut writer) = client.split();
        writer.send_frame(FrameKind::Kv, &[0; 17]).unwrap();
        let err = server.recv_frame(Duration::from_secs(2)).unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::Oversized {
                    kind: "kv",
                    len: 17,
                    max: 16
                }
            ),
            "{err}"
        );
        assert!(matches!(
            server.poll_frame(Duration::from_millis(5)),
            Err(ClusterError::ConnectionBroken)
        ));
    }

    #[test]
    fn a_stalled_half_frame_closes_the_connection_after_the_stall_timeout() {
        let (client, mut server) = pair();
        let (_reader, writer) = client.split();
        let mut raw = writer.stream.try_clone().unwrap();
        raw.write_all(&[0, 0, 0, 100, FrameKind::Bulk as u8, 1, 2])
            .unwrap();
        let started = Instant::now();
        let err = server.recv_frame(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ClusterError::Stalled(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn recv_timeout_between_frames_is_not_fatal() {
        let (mut client, mut server) = pair();
        let err = server.recv_frame(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ClusterError::Timeout { .. }), "{err}");
        client.send_message(&ControlMessage::StatusRequest).unwrap();
        assert_eq!(
            server.recv_message(Duration::from_secs(2)).unwrap(),
            ControlMessage::StatusRequest
        );
    }

    #[test]
    fn garbage_after_the_handshake_closes_only_that_connection() {
        let (client, mut server) = pair();
        let (_reader, writer) = client.split();
        let mut raw = writer.stream.try_clone().unwrap();
        raw.write_all(&[0, 0, 0, 5, 0x99, 0, 0, 0, 0]).unwrap();
        let err = server.recv_frame(Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, ClusterError::UnknownFrameKind(0x99)), "{err}");
        // A data frame where a control message is due is a violation too.
        let (mut client, mut server) = pair();
        client.send_frame(FrameKind::Bulk, &[1]).unwrap();
        let err = server.recv_message(Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, ClusterError::Unexpected { .. }), "{err}");
    }

    #[test]
    fn addresses_parse_with_and_without_ports() {
        assert_eq!(resolve_address("127.0.0.1:80", 1).unwrap()[0].port(), 80);
        assert_eq!(resolve_address("127.0.0.1", 7640).unwrap()[0].port(), 7640);
        assert_eq!(resolve_address("[::1]:81", 1).unwrap()[0].port(), 81);
        assert!(resolve_address("localhost:notaport", 1)
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!(resolve_address("  ", 1).is_err());
    }
}
