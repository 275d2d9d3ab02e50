//! "This machine" as a planner node: free memory, measured memory bandwidth, estimated compute.
//!
//! Owns: the stated per-core compute estimate and the size and time bounds of the bandwidth
//! measurement. Free memory (`MemAvailable`) and the multi-threaded copy come from the cluster
//! crate's `measure`, so `hearth plan` describes this machine as a cluster node advertises it.
//! Does not own GPU probing (a described `--hardware` covers GPUs) or any planning.
//!
//! Invariants: the measurement is bounded: copy rounds for at most [`MEASURE_SECONDS`] (at least
//! one), of at most [`COPY_BYTES`] (less when memory is short); the fastest round counts.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_cluster::{available_memory_bytes, measure_memory_bandwidth, MemoryBandwidthParams};
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
    let memory_bytes = available_memory_bytes().context(
        "this machine's memory is read from Linux's /proc/meminfo (MemAvailable); describe it with --hardware or --nodes",
    )?;
    let num_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Leave most of the free memory alone: copy at most an eighth of it (two buffers).
    let copy_bytes = COPY_BYTES.min((memory_bytes / 16) as usize).max(1 << 20);
    let bandwidth = measure_copy_bandwidth(
        copy_bytes,
        num_cores,
        Duration::from_secs_f64(MEASURE_SECONDS),
    )?;
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

/// Bytes per second moved by `num_threads` threads copying `num_bytes` (read + write counted,
/// as STREAM's copy does), fastest round within `budget`.
pub fn measure_copy_bandwidth(
    num_bytes: usize,
    num_threads: usize,
    budget: Duration,
) -> Result<f64> {
    let params = MemoryBandwidthParams {
        buffer_bytes: num_bytes,
        num_threads: num_threads.max(1),
        time_limit: budget,
        max_rounds: 1000,
    };
    Ok(measure_memory_bandwidth(&params)?.bytes_per_s)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn copy_bandwidth_is_positive_and_bounded_in_time() {
        let start = Instant::now();
        let bandwidth = measure_copy_bandwidth(4 << 20, 2, Duration::from_millis(50)).unwrap();
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
