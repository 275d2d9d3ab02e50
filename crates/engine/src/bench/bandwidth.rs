//! Measured memory bandwidth for the roofline: the best time of a large copy, counted as read +
//! write (`2 × bytes ÷ seconds`), the figure used as the device's achievable DRAM throughput.
//!
//! Owns: the warm-up / best-of protocol (`CopyBandwidth::measure`, device-agnostic: the caller
//! passes one synchronized copy) and the CPU copy (threads each copying a slice of a buffer
//! larger than the last-level cache). Does not own: picking the buffer size (callers know the
//! cache) or the GPU copy (the cli issues it through the CUDA driver).

use std::time::Instant;

use crate::{EngineError, Result};

/// How a copy is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyParams {
    /// Bytes copied per copy (source and destination each hold this many).
    pub num_bytes: usize,
    /// Threads sharing a CPU copy (ignored by device copies).
    pub num_threads: usize,
    /// Untimed copies run for at least this long (clocks up, pages mapped), and at least once.
    pub min_warmup_seconds: f64,
    /// Timed copies; the best is kept.
    pub num_timed_copies: usize,
}

/// The best of several timed copies.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyBandwidth {
    /// What was copied and how, for the report.
    pub method: String,
    pub bytes_per_copy: u64,
    pub num_timed_copies: usize,
    pub best_seconds: f64,
}

impl CopyBandwidth {
    /// Read + write: `2 × bytes_per_copy ÷ best_seconds`.
    pub fn bytes_per_second(&self) -> f64 {
        2.0 * self.bytes_per_copy as f64 / self.best_seconds.max(f64::MIN_POSITIVE)
    }

    /// Warms up with `copy_once`, then times `params.num_timed_copies` calls and keeps the
    /// fastest. `copy_once` must return only when its copy is complete (device synchronized).
    pub fn measure<E>(
        method: String,
        params: &CopyParams,
        mut copy_once: impl FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Self, E> {
        let warmup_start = Instant::now();
        // Bounded: at most 1000 warm-up copies whatever the clock says.
        for _ in 0..1000 {
            copy_once()?;
            if warmup_start.elapsed().as_secs_f64() >= params.min_warmup_seconds {
                break;
            }
        }
        let mut best_seconds = f64::INFINITY;
        for _ in 0..params.num_timed_copies.max(1) {
            let start = Instant::now();
            copy_once()?;
            best_seconds = best_seconds.min(start.elapsed().as_secs_f64());
        }
        Ok(Self {
            method,
            bytes_per_copy: params.num_bytes as u64,
            num_timed_copies: params.num_timed_copies.max(1),
            best_seconds,
        })
    }
}

/// A multi-threaded `memcpy` of `params.num_bytes` between two buffers in host memory.
pub fn cpu_copy_bandwidth(params: &CopyParams) -> Result<CopyBandwidth> {
    if params.num_bytes == 0 || params.num_threads == 0 {
        return Err(EngineError::Invalid("a copy bandwidth test needs a non-empty buffer and a thread".into()));
    }
    // Written once so every page is mapped before timing.
    let source = vec![1u8; params.num_bytes];
    let mut destination = vec![0u8; params.num_bytes];
    let slice_len = params.num_bytes.div_ceil(params.num_threads);
    let method = format!(
        "memcpy of {:.0} MiB in host memory, {} thread(s)",
        params.num_bytes as f64 / (1u64 << 20) as f64,
        params.num_threads
    );
    let bandwidth = CopyBandwidth::measure(method, params, || {
        std::thread::scope(|scope| {
            for (src, dst) in source.chunks(slice_len).zip(destination.chunks_mut(slice_len)) {
                scope.spawn(move || dst.copy_from_slice(src));
            }
        });
        Ok::<(), EngineError>(())
    })?;
    if destination.last() != source.last() {
        return Err(EngineError::Invalid("the bandwidth copy did not copy".into()));
    }
    Ok(bandwidth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_copy_reports_read_plus_write_over_the_best_time() {
        let params = CopyParams { num_bytes: 4 << 20, num_threads: 2, min_warmup_seconds: 0.0, num_timed_copies: 3 };
        let bw = cpu_copy_bandwidth(&params).unwrap();
        assert_eq!(bw.bytes_per_copy, 4 << 20);
        assert_eq!(bw.num_timed_copies, 3);
        assert!(bw.best_seconds > 0.0 && bw.best_seconds.is_finite());
        assert_eq!(bw.bytes_per_second(), 2.0 * (4 << 20) as f64 / bw.best_seconds);
        // Any machine copies faster than 100 MB/s and slower than 100 TB/s.
        assert!(bw.bytes_per_second() > 1e8 && bw.bytes_per_second() < 1e14, "{bw:?}");
    }

    #[test]
    fn measure_keeps_the_fastest_copy_and_passes_errors_through() {
        let params = CopyParams { num_bytes: 1, num_threads: 1, min_warmup_seconds: 0.0, num_timed_copies: 4 };
        let mut calls = 0;
        let bw = CopyBandwidth::measure("sleep".into(), &params, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_millis(if calls == 3 { 1 } else { 20 }));
            Ok::<(), String>(())
        })
        .unwrap();
        assert_eq!(calls, 5, "one warm-up and four timed copies");
        assert!(bw.best_seconds < 0.015, "{bw:?}");
        let err = CopyBandwidth::measure("fails".into(), &params, || Err::<(), _>("no device")).unwrap_err();
        assert_eq!(err, "no device");
    }
}
