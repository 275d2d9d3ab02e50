//! "This machine" as a planner node: free memory, measured memory bandwidth, estimated compute.
//!
//! Owns: reading `MemAvailable` (Linux `/proc/meminfo`), a short multi-threaded copy to measure
//! memory bandwidth, and the stated per-core compute estimate. Does not own GPU probing (a
//! described `--hardware` covers GPUs) or any planning.
//!
//! Invariants: the measurement is bounded: one warm-up copy plus timed copies for at most
//! [`MEASURE_SECONDS`], of at most [`COPY_BYTES`] (less when memory is short).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hearth_planner::NodeSpec;

/// Bytes copied per pass (source and destination each).
pub const COPY_BYTES: usize = 256 << 20;
/// Time spent on timed passes, at most (plus the warm-up pass).
pub const MEASURE_SECONDS: f64 = 0.5;
/// Sustained F32 matmul rate per core: AVX2 with two FMA units is 2 × 8 lanes × 2 FLOPs ×
/// ~3 GHz ≈ 96 GFLOP/s peak; hearth's CPU kernels reach about half of that.
pub const CPU_FLOPS_PER_CORE: f64 = 50e9;

pub struct ThisMachine {
    pub node: NodeSpec,
    pub num_cores: usize,
    pub copy_bytes: usize,
}

/// Memory from `MemAvailable`, bandwidth from a copy, compute from the core count.
pub fn describe() -> Result<ThisMachine> {
    let memory_bytes = available_memory_bytes()?;
    let num_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Leave most of the free memory alone: copy at most an eighth of it (two buffers).
    let copy_bytes = COPY_BYTES.min((memory_bytes / 16) as usize).max(1 << 20);
    let bandwidth = measure_copy_bandwidth(
        copy_bytes,
        num_cores,
        Duration::from_secs_f64(MEASURE_SECONDS),
    );
    Ok(ThisMachine {
        node: NodeSpec {
            name: "this-machine".into(),
            memory_bytes,
            bandwidth_bytes_per_s: bandwidth,
            flops_per_s: CPU_FLOPS_PER_CORE * num_cores as f64,
            power_watts: None,
        },
        num_cores,
        copy_bytes,
    })
}

/// `MemAvailable` from /proc/meminfo.
fn available_memory_bytes() -> Result<u64> {
    let hint = "this machine's memory is read from Linux's /proc/meminfo; describe it with --hardware or --nodes";
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .with_context(|| format!("reading /proc/meminfo ({hint})"))?;
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
        .with_context(|| format!("no MemAvailable in /proc/meminfo ({hint})"))
}

/// Bytes per second moved by `num_threads` threads copying `num_bytes` (read + write counted,
/// as STREAM's copy does): one untimed pass faults the pages in, then passes until `budget`.
pub fn measure_copy_bandwidth(num_bytes: usize, num_threads: usize, budget: Duration) -> f64 {
    let source = vec![1u8; num_bytes];
    let mut destination = vec![0u8; num_bytes];
    let num_threads = num_threads.max(1);
    let chunk = num_bytes.div_ceil(num_threads).max(1);
    let copy = |destination: &mut [u8]| {
        std::thread::scope(|scope| {
            for (dst, src) in destination.chunks_mut(chunk).zip(source.chunks(chunk)) {
                scope.spawn(move || dst.copy_from_slice(src));
            }
        });
    };
    copy(&mut destination);
    let start = Instant::now();
    let mut num_passes = 0u32;
    // Bounded by time and by count.
    while num_passes < 1000 && (num_passes == 0 || start.elapsed() < budget) {
        copy(&mut destination);
        num_passes += 1;
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(&destination);
    2.0 * num_bytes as f64 * num_passes as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_bandwidth_is_positive_and_bounded_in_time() {
        let start = Instant::now();
        let bandwidth = measure_copy_bandwidth(4 << 20, 2, Duration::from_millis(50));
        assert!(
            bandwidth > 1e8,
            "{bandwidth} B/s is implausibly slow for a memory copy"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let bytes = available_memory_bytes().unwrap();
        assert!(bytes > 16 << 20, "{bytes} bytes available");
    }
}
