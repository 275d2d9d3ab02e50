//! Device graphs: record the GPU work of a closure once, then replay it with one launch.
//!
//! A generation step of a small model is hundreds of tiny kernels; launched one by one from the
//! host, launch overhead dominates. [`capture`] runs the closure once eagerly (loads kernels,
//! allocates workspaces, fills candle's cache of small host-to-device parameter uploads), then
//! records it into a CUDA graph with the same tensors. [`DeviceGraph::replay`] re-runs the
//! recorded work on the same buffers: callers update a step's inputs by writing into the
//! buffers the closure read (never by creating new tensors) and read results from the tensors
//! the recording returned.
//!
//! Invariants the caller keeps: everything the closure reads (inputs, weights, KV pool) stays
//! alive and at the same address while the graph exists; the closure uploads nothing from the
//! host except small parameter blocks candle caches (shapes, strides) — a fresh upload during
//! recording is an error, not a silent stale value. Tensors the recording allocates keep their
//! addresses across replays (the graph is instantiated with auto-free-on-launch).
//!
//! Only CUDA devices have graphs; elsewhere [`capture`] returns an error and callers run
//! eagerly.

use candle_core::Device;

use crate::{KernelError, Result};

/// A recorded sequence of GPU work. Replay it on the device it was captured on.
pub struct DeviceGraph {
    #[cfg(feature = "cuda")]
    graph: candle_core::cuda_backend::cudarc::driver::CudaGraph,
}

// SAFETY: a graph is used through `&self` by one thread at a time (it is not `Sync`); moving it
// to another thread between uses is allowed by CUDA (graphs must not be accessed concurrently).
unsafe impl Send for DeviceGraph {}

impl DeviceGraph {
    /// Launches the recorded work on the device's stream (asynchronous, like any kernel).
    pub fn replay(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            self.graph.launch().map_err(|e| KernelError::Graph(format!("replaying a CUDA graph: {e}")))
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(KernelError::Graph("device graphs need the cuda feature".into()))
        }
    }
}

/// Whether `device` can record graphs.
pub fn supported(device: &Device) -> bool {
    cfg!(feature = "cuda") && device.is_cuda()
}

/// Runs `work` once eagerly, then records a second run into a graph. Returns the graph and the
/// recording's output (whose buffers hold the results after each [`DeviceGraph::replay`]; the
/// recording itself computes nothing, so replay once before reading them).
pub fn capture<T>(device: &Device, work: impl Fn() -> candle_core::Result<T>) -> Result<(DeviceGraph, T)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda_capture(dev, work),
        _ => {
            let _ = work;
            Err(KernelError::Graph(format!("device graphs are CUDA-only; {device:?} runs eagerly")))
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_capture<T>(
    dev: &candle_core::CudaDevice,
    work: impl Fn() -> candle_core::Result<T>,
) -> Result<(DeviceGraph, T)> {
    use candle_core::backend::BackendDevice;
    use candle_core::cuda_backend::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

    let fail = |what: &str, e: &dyn std::fmt::Display| KernelError::Graph(format!("{what}: {e}"));
    // One stream: cross-stream event tracking would make recorded launches wait on events
    // recorded outside the graph, which CUDA refuses.
    // SAFETY: candle runs all work of a device on its single stream.
    unsafe { dev.disable_event_tracking() };
    let _upload_cache = dev.enable_cuda_graph_htod_cache();
    drop(work().map_err(|e| fail("warm-up run before recording", &e))?);
    dev.synchronize().map_err(|e| fail("synchronizing before recording", &e))?;
    let stream = dev.cuda_stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| fail("starting a CUDA graph capture", &e))?;
    let recorded = work();
    // Always end the capture, even when the work failed, so the stream is usable again.
    let graph = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    let output = recorded.map_err(|e| fail("recording a CUDA graph", &e))?;
    let graph = graph
        .map_err(|e| fail("instantiating a CUDA graph", &e))?
        .ok_or_else(|| KernelError::Graph("the CUDA graph capture recorded nothing".into()))?;
    graph.upload().map_err(|e| fail("uploading a CUDA graph", &e))?;
    Ok((DeviceGraph { graph }, output))
}
