//! Length-prefixed frames: the unit of everything on a hearth cluster connection.
//!
//! Layout: `[len: u32 big-endian][kind: u8][payload: len - 1 bytes]`; `len` counts the kind byte
//! and the payload. Kinds: `Handshake` and `Control` carry JSON messages (`message.rs`);
//! `Activation`, `Kv` and `Bulk` carry raw bytes whose layout their users own (the data plane,
//! `measure.rs`).
//!
//! Owns: encoding, the incremental [`FrameDecoder`] (resumable after a read timeout, so polling
//! never desynchronizes a stream), per-kind size limits. Does not own: sockets or timeouts
//! (`connection.rs`).
//!
//! Invariants: a header is validated (non-empty, known kind, within the kind's limit) before any
//! payload byte is read or any payload memory is allocated; every malformed input is a typed
//! [`ClusterError`], never a panic; after an error the decoder's stream is out of step and the
//! caller must close the connection.

use std::io::{ErrorKind, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ClusterError, Result};

/// Bytes before the payload: the length (4) and the kind (1).
pub const HEADER_BYTES: usize = 5;

/// Handshake messages are small; anything larger is refused before authentication.
pub const MAX_HANDSHAKE_BYTES: u32 = 4 << 10;

/// Payloads up to this size are written with the header in one `write` (one TCP segment with
/// `TCP_NODELAY`).
const COALESCE_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Handshake = 1,
    Control = 2,
    Activation = 3,
    Kv = 4,
    Bulk = 5,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Handshake),
            2 => Some(Self::Control),
            3 => Some(Self::Activation),
            4 => Some(Self::Kv),
            5 => Some(Self::Bulk),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Control => "control",
            Self::Activation => "activation",
            Self::Kv => "kv",
            Self::Bulk => "bulk",
        }
    }
}

/// The largest payload a connection accepts, per kind of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// `Control` frames (JSON).
    pub max_control_bytes: u32,
    /// `Activation`, `Kv` and `Bulk` frames (raw bytes).
    pub max_data_bytes: u32,
}

impl FrameLimits {
    /// Before authentication: only small handshake frames.
    pub const HANDSHAKE: Self = Self {
        max_control_bytes: 0,
        max_data_bytes: 0,
    };

    pub fn max_payload(&self, kind: FrameKind) -> u32 {
        match kind {
            FrameKind::Handshake => MAX_HANDSHAKE_BYTES,
            FrameKind::Control => self.max_control_bytes,
            FrameKind::Activation | FrameKind::Kv | FrameKind::Bulk => self.max_data_bytes,
        }
    }
}

impl Default for FrameLimits {
    /// 1 MiB of JSON, 64 MiB of raw bytes (a 512-token chunk of 8192-wide F32 activations is
    /// 16 MiB; larger transfers are the data plane's to split).
    fn default() -> Self {
        Self {
            max_control_bytes: 1 << 20,
            max_data_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// Writes one frame; refuses (writing nothing) a payload over the kind's limit.
pub fn write_frame<W: Write>(
    writer: &mut W,
    kind: FrameKind,
    payload: &[u8],
    limits: &FrameLimits,
) -> Result<()> {
    let max = limits.max_payload(kind);
    if payload.len() as u64 > u64::from(max) {
        return Err(ClusterError::Oversized {
            kind: kind.name(),
            len: payload.len() as u64,
            max: u64::from(max),
        });
    }
    // `len` counts the kind byte; the check above keeps it within u32.
    let len = (payload.len() + 1) as u32;
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4] = kind as u8;
    let result = if payload.len() <= COALESCE_BYTES {
        let mut buffer = Vec::with_capacity(HEADER_BYTES + payload.len());
        buffer.extend_from_slice(&header);
        buffer.extend_from_slice(payload);
        writer.write_all(&buffer)
    } else {
        writer
            .write_all(&header)
            .and_then(|()| writer.write_all(payload))
    };
    result
        .and_then(|()| writer.flush())
        .map_err(|err| match err.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClusterError::io(
                format!(
                    "writing a {} frame: the peer did not read within the write timeout",
                    kind.name()
                ),
                err,
            ),
            _ => ClusterError::io(format!("writing a {} frame", kind.name()), err),
        })
}

/// A message as a frame payload.
pub fn encode_message<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(message).map_err(|err| ClusterError::Malformed {
        what: "outgoing message",
        detail: err.to_string(),
    })
}

/// A frame's payload as a message of type `T`; `what` names it in the error.
pub fn decode_message<T: DeserializeOwned>(payload: &[u8], what: &'static str) -> Result<T> {
    serde_json::from_slice(payload).map_err(|err| ClusterError::Malformed {
        what,
        detail: err.to_string(),
    })
}

/// Reassembles frames from a byte stream, resuming where it stopped when a read times out.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    header: [u8; HEADER_BYTES],
    header_filled: usize,
    /// Set once the header is complete and valid.
    kind: Option<FrameKind>,
    payload: Vec<u8>,
    payload_filled: usize,
}

impl FrameDecoder {
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            limits,
            header: [0; HEADER_BYTES],
            header_filled: 0,
            kind: None,
            payload: Vec::new(),
            payload_filled: 0,
        }
    }

    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// Bytes of the current, unfinished frame received so far (0 at a frame boundary).
    pub fn buffered(&self) -> usize {
        self.header_filled + self.payload_filled
    }

    /// Reads until one frame is complete (`Some`), the reader has nothing more for now
    /// (`None`: a read timed out or would block; the partial frame is kept), or an error.
    /// Each loop iteration either consumes bytes or returns, so the loop is bounded by the
    /// frame's length.
    pub fn read_from<R: Read>(&mut self, reader: &mut R) -> Result<Option<Frame>> {
        loop {
            if let Some(kind) = self.kind {
                if self.payload_filled == self.payload.len() {
                    return Ok(Some(self.take_frame(kind)));
                }
                let received = match read_some(reader, &mut self.payload[self.payload_filled..])? {
                    ReadOutcome::Bytes(count) => count,
                    ReadOutcome::NothingYet => return Ok(None),
                    ReadOutcome::EndOfStream => {
                        return Err(ClusterError::Truncated {
                            expected: HEADER_BYTES + self.payload.len(),
                            received: HEADER_BYTES + self.payload_filled,
                        })
                    }
                };
                self.payload_filled += received;
            } else {
                let received = match read_some(reader, &mut self.header[self.header_filled..])? {
                    ReadOutcome::Bytes(count) => count,
                    ReadOutcome::NothingYet => return Ok(None),
                    ReadOutcome::EndOfStream if self.header_filled == 0 => {
                        return Err(ClusterError::Closed)
                    }
                    ReadOutcome::EndOfStream => {
                        return Err(ClusterError::Truncated {
                            expected: HEADER_BYTES,
                            received: self.header_filled,
                        })
                    }
                };
                self.header_filled += received;
                if self.header_filled == HEADER_BYTES {
                    self.accept_header()?;
                }
            }
        }
    }

    /// Validates a complete header and sizes the payload buffer.
    fn accept_header(&mut self) -> Result<()> {
        let len = u32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ]);
        if len == 0 {
            return Err(ClusterError::EmptyFrame);
        }
        let kind = FrameKind::from_byte(self.header[4])
            .ok_or(ClusterError::UnknownFrameKind(self.header[4]))?;
        let payload_len = len - 1;
        let max = self.limits.max_payload(kind);
        if payload_len > max {
            return Err(ClusterError::Oversized {
                kind: kind.name(),
                len: u64::from(payload_len),
                max: u64::from(max),
            });
        }
        self.kind = Some(kind);
        self.payload = vec![0; payload_len as usize];
        self.payload_filled = 0;
        Ok(())
    }

    fn take_frame(&mut self, kind: FrameKind) -> Frame {
        let payload = std::mem::take(&mut self.payload);
        self.kind = None;
        self.header_filled = 0;
        self.payload_filled = 0;
        Frame { kind, payload }
    }
}

enum ReadOutcome {
    Bytes(usize),
    NothingYet,
    EndOfStream,
}

fn read_some<R: Read>(reader: &mut R, buffer: &mut [u8]) -> Result<ReadOutcome> {
    // Bounded: `Interrupted` (a signal) is retried a few times, then reported.
    for _ in 0..8 {
        match reader.read(buffer) {
            Ok(0) => return Ok(ReadOutcome::EndOfStream),
            Ok(count) => return Ok(ReadOutcome::Bytes(count)),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(ReadOutcome::NothingYet)
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(ReadOutcome::EndOfStream)
            }
            Err(err) => return Err(ClusterError::io("reading a frame", err)),
        }
    }
    Err(ClusterError::io(
        "reading a frame",
        std::io::Error::from(ErrorKind::Interrupted),
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;

    fn encoded(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, kind, payload, &FrameLimits::default()).unwrap();
        bytes
    }

    fn decode_all(bytes: &[u8], limits: FrameLimits) -> (Vec<Frame>, ClusterError) {
        let mut decoder = FrameDecoder::new(limits);
        let mut reader = Cursor::new(bytes);
        let mut frames = Vec::new();
        // A Cursor never times out, so each call yields a frame or an error.
        for _ in 0..=bytes.len() {
            match decoder.read_from(&mut reader) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => panic!("a Cursor never reports NothingYet"),
                Err(err) => return (frames, err),
            }
        }
        panic!("decoder made no progress");
    }

    #[test]
    fn frames_round_trip_and_clean_eof_is_closed() {
        let mut bytes = encoded(FrameKind::Control, b"{\"type\":\"status_request\"}");
        bytes.extend(encoded(FrameKind::Activation, &[7u8; 100_000]));
        bytes.extend(encoded(FrameKind::Bulk, &[]));
        let (frames, end) = decode_all(&bytes, FrameLimits::default());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, FrameKind::Control);
        assert_eq!(frames[1].payload, vec![7u8; 100_000]);
        assert_eq!(frames[2].payload, Vec::<u8>::new());
        assert!(matches!(end, ClusterError::Closed), "{end}");
    }

    #[test]
    fn truncated_header_and_payload_are_errors() {
        let whole = encoded(FrameKind::Control, b"hello");
        let (_, header_cut) = decode_all(&whole[..3], FrameLimits::default());
        assert!(matches!(
            header_cut,
            ClusterError::Truncated {
                expected: 5,
                received: 3
            }
        ));
        let (_, payload_cut) = decode_all(&whole[..7], FrameLimits::default());
        assert!(matches!(
            payload_cut,
            ClusterError::Truncated {
                expected: 10,
                received: 7
            }
        ));
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        // Only the header: the decoder must refuse before wanting (or allocating) the payload.
        let mut header = (u32::MAX).to_be_bytes().to_vec();
        header.push(FrameKind::Activation as u8);
        let (_, err) = decode_all(&header, FrameLimits::default());
        assert!(
            matches!(
                err,
                ClusterError::Oversized {
                    kind: "activation",
                    ..
                }
            ),
            "{err}"
        );
        // During the handshake even a small control frame is too big.
        let control = encoded(FrameKind::Control, b"{}");
        let (_, err) = decode_all(&control, FrameLimits::HANDSHAKE);
        assert!(
            matches!(
                err,
                ClusterError::Oversized {
                    kind: "control",
                    max: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_kind_and_empty_frames_are_errors() {
        let (_, unknown) = decode_all(&[0, 0, 0, 3, 0xee, 1, 2], FrameLimits::default());
        assert!(
            matches!(unknown, ClusterError::UnknownFrameKind(0xee)),
            "{unknown}"
        );
        let (_, empty) = decode_all(&[0, 0, 0, 0, 2], FrameLimits::default());
        assert!(matches!(empty, ClusterError::EmptyFrame), "{empty}");
    }

    #[test]
    fn writer_refuses_oversized_payload_without_writing() {
        let mut sink = Vec::new();
        let limits = FrameLimits {
            max_control_bytes: 4,
            max_data_bytes: 8,
        };
        let err = write_frame(&mut sink, FrameKind::Kv, &[0; 9], &limits).unwrap_err();
        assert!(
            matches!(err, ClusterError::Oversized { len: 9, max: 8, .. }),
            "{err}"
        );
        assert!(sink.is_empty());
    }

    /// A reader that hands out at most `step` bytes per call and reports `WouldBlock` between
    /// calls, like a socket with a read timeout on a slow link.
    struct Trickle {
        bytes: Vec<u8>,
        position: usize,
        step: usize,
        block_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            self.block_next = !self.block_next;
            if !self.block_next {
                return Err(ErrorKind::WouldBlock.into());
            }
            let count = self
                .step
                .min(buffer.len())
                .min(self.bytes.len() - self.position);
            buffer[..count].copy_from_slice(&self.bytes[self.position..self.position + count]);
            self.position += count;
            Ok(count)
        }
    }

    #[test]
    fn decoder_resumes_a_frame_across_timeouts() {
        let mut bytes = encoded(FrameKind::Control, b"0123456789");
        bytes.extend(encoded(FrameKind::Kv, &[9; 33]));
        let mut reader = Trickle {
            bytes: bytes.clone(),
            position: 0,
            step: 3,
            block_next: false,
        };
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut frames = Vec::new();
        let mut num_idle = 0;
        for _ in 0..bytes.len() * 2 {
            match decoder.read_from(&mut reader).unwrap() {
                Some(frame) => frames.push(frame),
                None => num_idle += 1,
            }
            if frames.len() == 2 {
                break;
            }
        }
        assert!(num_idle > 5, "the reader should have timed out mid-frame");
        assert_eq!(frames[0].payload, b"0123456789");
        assert_eq!(frames[1].payload, vec![9; 33]);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn malformed_json_is_a_typed_error() {
        let err =
            decode_message::<crate::message::ControlMessage>(b"\xff\x00garbage", "control message")
                .unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::Malformed {
                    what: "control message",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_protocol_violation());
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_ends_in_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let limits = FrameLimits { max_control_bytes: 64, max_data_bytes: 64 };
            let (frames, _end) = decode_all(&bytes, limits);
            let consumed: usize = frames.iter().map(|frame| HEADER_BYTES + frame.payload.len()).sum();
            prop_assert!(consumed <= bytes.len());
        }
    }
}
