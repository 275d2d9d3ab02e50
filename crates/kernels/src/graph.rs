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
    if std::env::var("HEARTH_GRAPH_STATS").is_ok_and(|v| v == "1") {
        match census(graph.cu_graph()) {
            Ok(census) => eprintln!("hearth: CUDA graph: {census}"),
            Err(e) => eprintln!("hearth: CUDA graph: no census ({e})"),
        }
    }
    Ok((DeviceGraph { graph }, output))
}

/// What a recorded graph holds: kernels, memory nodes (candle allocates stream-ordered, so every
/// allocation and drop inside the recording is one), other nodes, and how many of its edges are
/// programmatic (a dependent launch overlapping its predecessor) — a diagnostic
/// (`HEARTH_GRAPH_STATS=1`).
#[cfg(feature = "cuda")]
fn census(graph: candle_core::cuda_backend::cudarc::driver::sys::CUgraph) -> std::result::Result<String, String> {
    use candle_core::cuda_backend::cudarc::driver::sys::{self, CUgraphNodeType};

    let check = |what: &str, r: sys::CUresult| match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(format!("{what}: {e:?}")),
    };
    let mut num_nodes = 0usize;
    // SAFETY: a null array asks for the count; then an array of that many.
    check("cuGraphGetNodes", unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut num_nodes) })?;
    let mut nodes = vec![std::ptr::null_mut(); num_nodes];
    check("cuGraphGetNodes", unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut num_nodes) })?;
    let (mut kernels, mut memory, mut other) = (0, 0, 0);
    for &node in &nodes[..num_nodes] {
        let mut kind = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
        check("cuGraphNodeGetType", unsafe { sys::cuGraphNodeGetType(node, &mut kind) })?;
        match kind {
            CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL => kernels += 1,
            CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC | CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_FREE => memory += 1,
            _ => other += 1,
        }
    }
    let mut num_edges = 0usize;
    let none = std::ptr::null_mut();
    check("cuGraphGetEdges_v2", unsafe { sys::cuGraphGetEdges_v2(graph, none, none, std::ptr::null_mut(), &mut num_edges) })?;
    let mut from: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); num_edges];
    let mut to = from.clone();
    // SAFETY: all-zero edge data is valid plain data.
    let mut data = vec![unsafe { std::mem::zeroed::<sys::CUgraphEdgeData>() }; num_edges];
    check("cuGraphGetEdges_v2", unsafe {
        sys::cuGraphGetEdges_v2(graph, from.as_mut_ptr(), to.as_mut_ptr(), data.as_mut_ptr(), &mut num_edges)
    })?;
    let programmatic = data[..num_edges].iter().filter(|d| d.type_ != 0).count();
    Ok(format!(
        "{kernels} kernels, {memory} memory nodes, {other} other nodes; {num_edges} edges, {programmatic} programmatic"
    ))
}
