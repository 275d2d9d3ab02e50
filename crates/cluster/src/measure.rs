//! Measurements a placement needs: this machine's memory bandwidth and free memory, and the
//! latency and bandwidth of the link to each peer.
//!
//! Owns: the multithreaded memcpy benchmark, `/proc/meminfo`, the link probe (prober side:
//! `probe_link`; responder side: `serve_probe`) over an authenticated `Purpose::Probe`
//! connection. Does not own: when to measure (`coordinator.rs`, `worker.rs`).
//!
//! Invariants: every measurement is bounded in bytes and in time; the responder accepts at most
//! `max_bulk_bytes` per transfer and ends after an idle timeout; bandwidths count payload bytes
//! (memory: bytes read + bytes written, the convention of DESIGN.md §7).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::error::{ClusterError, Result};
use crate::frame::FrameKind;
use crate::message::{ControlMessage, LinkMeasurement, NodeResources};

/// Sizes and bounds of the memory-bandwidth benchmark.
#[derive(Debug, Clone, Copy)]
pub struct MemoryBandwidthParams {
    /// Bytes in each of the source and destination buffers (larger than the last-level cache).
    pub buffer_bytes: usize,
    pub num_threads: usize,
    /// Stop starting new rounds after this long (at least one round runs).
    pub time_limit: Duration,
    pub max_rounds: usize,
}

impl Default for MemoryBandwidthParams {
    fn default() -> Self {
        Self {
            buffer_bytes: 128 << 20,
            num_threads: std::thread::available_parallelism().map_or(1, |count| count.get()),
            time_limit: Duration::from_secs(1),
            max_rounds: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBandwidth {
    /// The best round's bytes read plus bytes written, per second.
    pub bytes_per_s: f64,
    pub num_rounds: usize,
}

/// Copies a buffer with `num_threads` threads, round after round, and keeps the fastest round.
pub fn measure_memory_bandwidth(params: &MemoryBandwidthParams) -> Result<MemoryBandwidth> {
    if params.buffer_bytes == 0 || params.num_threads == 0 || params.max_rounds == 0 {
        return Err(ClusterError::Config(format!(
            "memory bandwidth benchmark needs a buffer, a thread and a round (got {params:?})"
        )));
    }
    // Filling both buffers touches every page, so page faults stay out of the timing.
    let source = vec![1u8; params.buffer_bytes];
    let mut destination = vec![0u8; params.buffer_bytes];
    let chunk = params.buffer_bytes.div_ceil(params.num_threads);
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut num_rounds = 0;
    while num_rounds < params.max_rounds
        && (num_rounds == 0 || started.elapsed() < params.time_limit)
    {
        let round_start = Instant::now();
        std::thread::scope(|scope| {
            for (to, from) in destination.chunks_mut(chunk).zip(source.chunks(chunk)) {
                scope.spawn(move || to.copy_from_slice(from));
            }
        });
        best = best.min(round_start.elapsed());
        black_box(&destination);
        num_rounds += 1;
    }
    let seconds = best.as_secs_f64().max(1e-9);
    Ok(MemoryBandwidth {
        bytes_per_s: 2.0 * params.buffer_bytes as f64 / seconds,
        num_rounds,
    })
}

/// `MemAvailable` from `/proc/meminfo`; `None` where that file does not exist (not Linux).
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
}

/// What a CPU node offers: its free system memory, the given bandwidth, its thread count.
pub fn cpu_resources(memory_bandwidth_bytes_per_s: Option<f64>) -> NodeResources {
    let num_threads = std::thread::available_parallelism().map_or(1, |count| count.get());
    NodeResources {
        backend: "cpu".into(),
        free_memory_bytes: available_memory_bytes(),
        memory_bandwidth_bytes_per_s,
        compute: format!("cpu x{num_threads}"),
    }
}

/// Sizes and bounds of one link probe.
#[derive(Debug, Clone, Copy)]
pub struct LinkProbeParams {
    pub num_pings: u32,
    pub bulk_bytes: u64,
    pub chunk_bytes: usize,
    /// The whole probe (pings and bulk) must finish within this.
    pub time_limit: Duration,
}

impl Default for LinkProbeParams {
    fn default() -> Self {
        Self {
            num_pings: 10,
            bulk_bytes: 4 << 20,
            chunk_bytes: 256 << 10,
            time_limit: Duration::from_secs(5),
        }
    }
}

/// Measures the link over `connection` (a `Purpose::Probe` connection): `num_pings` round trips
/// of small control frames, then `bulk_bytes` of `Bulk` frames until the responder confirms.
/// Bandwidth is bulk bytes over the transfer time less one minimum round trip (the
/// confirmation's way back).
pub fn probe_link(
    connection: &mut Connection,
    params: &LinkProbeParams,
) -> Result<LinkMeasurement> {
    if params.num_pings == 0 || params.chunk_bytes == 0 {
        return Err(ClusterError::Config(
            "a link probe needs at least one ping and a chunk size".into(),
        ));
    }
    let deadline = Instant::now() + params.time_limit;
    let remaining = |what| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ClusterError::Timeout {
                what,
                after: params.time_limit,
            })
        } else {
            Ok(left)
        }
    };
    let mut rtts = Vec::with_capacity(params.num_pings as usize);
    for seq in 0..u64::from(params.num_pings) {
        let sent = Instant::now();
        connection.send_message(&ControlMessage::Ping { seq })?;
        match connection.recv_message(remaining("probing link latency")?)? {
            ControlMessage::Pong { seq: echoed } if echoed == seq => rtts.push(sent.elapsed()),
            other => return Err(unexpected("pong", &other)),
        }
    }
    rtts.sort();
    let rtt_min = rtts[0];
    let rtt_median = rtts[rtts.len() / 2];

    let chunk = vec![0x5au8; params.chunk_bytes];
    let started = Instant::now();
    connection.send_message(&ControlMessage::BulkStart {
        total_bytes: params.bulk_bytes,
    })?;
    let mut sent_bytes = 0u64;
    while sent_bytes < params.bulk_bytes {
        remaining("probing link bandwidth")?;
        let count = (params.bulk_bytes - sent_bytes).min(chunk.len() as u64) as usize;
        connection.send_frame(FrameKind::Bulk, &chunk[..count])?;
        sent_bytes += count as u64;
    }
    match connection.recv_message(remaining("probing link bandwidth")?)? {
        ControlMessage::BulkDone { received_bytes } if received_bytes == params.bulk_bytes => {}
        other => return Err(unexpected("bulk_done", &other)),
    }
    let transfer = started
        .elapsed()
        .saturating_sub(rtt_min)
        .max(Duration::from_micros(1));
    Ok(LinkMeasurement {
        rtt_median_us: rtt_median.as_secs_f64() * 1e6,
        rtt_min_us: rtt_min.as_secs_f64() * 1e6,
        bandwidth_bytes_per_s: params.bulk_bytes as f64 / transfer.as_secs_f64(),
        bulk_bytes: params.bulk_bytes,
    })
}

/// The responder's side of `probe_link`: answers pings, counts bulk bytes, confirms each
/// transfer. Returns when the prober closes, after `idle_timeout` without a frame, or when
/// `stop` is set.
pub fn serve_probe(
    connection: &mut Connection,
    stop: &AtomicBool,
    idle_timeout: Duration,
    max_bulk_bytes: u64,
) -> Result<()> {
    let mut last_frame = Instant::now();
    // (announced, received) of the transfer in progress.
    let mut transfer: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let frame = match connection.poll_frame(Duration::from_millis(200)) {
            Ok(Some(frame)) => frame,
            Ok(None) if last_frame.elapsed() > idle_timeout => return Ok(()),
            Ok(None) => continue,
            Err(ClusterError::Closed) => return Ok(()),
            Err(err) => return Err(err),
        };
        last_frame = Instant::now();
        match (frame.kind, transfer) {
            (FrameKind::Bulk, Some((announced, received))) => {
                let received = received + frame.payload.len() as u64;
                if received > announced {
                    return Err(violation(
                        connection,
                        format!("{received} bulk bytes where {announced} were announced"),
                    ));
                }
                transfer = Some((announced, received));
                if received == announced {
                    connection.send_message(&ControlMessage::BulkDone {
                        received_bytes: received,
                    })?;
                    transfer = None;
                }
            }
            (FrameKind::Control, None) => {
                let message = crate::frame::decode_message(&frame.payload, "control message")
                    .inspect_err(|_| connection.shutdown())?;
                match message {
                    ControlMessage::Ping { seq } => {
                        connection.send_message(&ControlMessage::Pong { seq })?
                    }
                    ControlMessage::BulkStart { total_bytes } if total_bytes > max_bulk_bytes => {
                        return Err(violation(
                            connection,
                            format!(
                                "a bulk transfer of {total_bytes} bytes (at most {max_bulk_bytes})"
                            ),
                        ));
                    }
                    ControlMessage::BulkStart { total_bytes: 0 } => {
                        connection.send_message(&ControlMessage::BulkDone { received_bytes: 0 })?
                    }
                    ControlMessage::BulkStart { total_bytes } => transfer = Some((total_bytes, 0)),
                    other => {
                        return Err(violation(
                            connection,
                            format!("control message `{}` on a probe connection", other.name()),
                        ))
                    }
                }
            }
            (kind, _) => {
                return Err(violation(
                    connection,
                    format!("a {} frame at this point of a probe", kind.name()),
                ));
            }
        }
    }
    Ok(())
}

fn violation(connection: &Connection, got: String) -> ClusterError {
    connection.shutdown();
    ClusterError::Unexpected {
        expected: "the link probe protocol",
        got,
    }
}

fn unexpected(expected: &'static str, got: &ControlMessage) -> ClusterError {
    ClusterError::Unexpected {
        expected,
        got: format!("control message `{}`", got.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_bandwidth_is_positive_and_bounded_in_rounds() {
        let params = MemoryBandwidthParams {
            buffer_bytes: 4 << 20,
            num_threads: 2,
            time_limit: Duration::from_millis(200),
            max_rounds: 3,
        };
        let measured = measure_memory_bandwidth(&params).unwrap();
        assert!(measured.bytes_per_s > 1e8, "{measured:?}");
        assert!((1..=3).contains(&measured.num_rounds));
        let empty = MemoryBandwidthParams {
            buffer_bytes: 0,
            ..params
        };
        assert!(measure_memory_bandwidth(&empty).is_err());
    }

    #[test]
    fn available_memory_reads_meminfo_on_linux() {
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(available_memory_bytes().unwrap() > 0);
        }
    }
}
