//! NCCL collectives between GPUs: a capability probe, a communicator per rank, and all-reduce
//! (sum) / all-gather on candle CUDA tensors.
//!
//! NCCL is loaded at run time with `dlopen` (`libnccl.so.2`, or the file named by
//! `HEARTH_NCCL_LIBRARY`), not linked: a CUDA build of hearth must start on machines without
//! NCCL, and a missing library or symbol must be a clear error, not a panic. (candle builds its
//! cudarc with `dynamic-linking`, and cudarc forbids mixing that with `dynamic-loading`, so
//! cudarc's own `nccl` module would make libnccl a load-time dependency of the binary.)
//!
//! Owns: the FFI (a handful of functions), communicator setup and teardown, the collective
//! launches on candle's stream of each device. Does not own: which tensors are reduced or the
//! ordering of calls across ranks (`hearth_models::tensor_parallel`).
//!
//! Invariants: a collective is enqueued on the device's one candle stream, so it is ordered
//! after the kernels that produced its input and before those that read its output; the
//! output is a fresh tensor. Every rank must issue the same collectives in the same order, or
//! NCCL waits forever: [`NcclComm::abort`] (callable from any thread) ends such a wait.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::{Device, Tensor};

use crate::{KernelError, Result};

/// An NCCL unique id: made by one rank ([`NcclId::new`]) and handed to every rank of the group.
#[derive(Clone, Copy)]
pub struct NcclId(pub [u8; 128]);

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclInfo {
    /// The library file that was opened.
    pub library: String,
    /// NCCL's version code (e.g. 22703 for 2.27.3).
    pub version: i32,
}

#[cfg(not(feature = "cuda"))]
fn unavailable(what: &str) -> KernelError {
    KernelError::Candle(candle_core::Error::Msg(format!("{what}: this hearth was built without CUDA, so NCCL is unavailable")))
}

/// Loads NCCL (once) and reports its version, or explains why it cannot be used.
pub fn probe() -> Result<NcclInfo> {
    #[cfg(feature = "cuda")]
    return cuda::probe();
    #[cfg(not(feature = "cuda"))]
    Err(unavailable("NCCL probe"))
}

impl NcclId {
    pub fn new() -> Result<Self> {
        #[cfg(feature = "cuda")]
        return cuda::unique_id();
        #[cfg(not(feature = "cuda"))]
        Err(unavailable("NCCL unique id"))
    }
}

/// One rank's communicator, bound to one CUDA device.
pub struct NcclComm {
    #[cfg(feature = "cuda")]
    inner: cuda::Comm,
    rank: usize,
    world_size: usize,
}

impl NcclComm {
    /// Joins the group `id` as `rank` of `world_size` on `device`. Blocks until every rank has
    /// joined: call it for all ranks concurrently (one thread or process per rank).
    pub fn init_rank(device: &Device, id: &NcclId, rank: usize, world_size: usize) -> Result<Self> {
        if rank >= world_size {
            return Err(KernelError::Candle(candle_core::Error::Msg(format!("NCCL: rank {rank} of a {world_size}-rank group"))));
        }
        #[cfg(feature = "cuda")]
        return Ok(Self { inner: cuda::Comm::init_rank(device, id, rank, world_size)?, rank, world_size });
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (device, id);
            Err(unavailable("NCCL communicator"))
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Elementwise sum of every rank's `x` (F32, BF16 or F16; same shape on every rank).
    pub fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        return self.inner.all_reduce_sum(x);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = x;
            Err(unavailable("NCCL all-reduce"))
        }
    }

    /// Every rank's `x` stacked in rank order: `[world_size, ...x.dims()]`.
    pub fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        return self.inner.all_gather(x, self.world_size);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = x;
            Err(unavailable("NCCL all-gather"))
        }
    }

    /// Aborts the communicator: pending and future collectives on it fail instead of waiting
    /// for ranks that will never arrive. Safe to call from another thread, more than once.
    pub fn abort(&self) {
        #[cfg(feature = "cuda")]
        self.inner.abort();
    }

    /// The first asynchronous error NCCL recorded on this communicator, if any.
    pub fn check_async_error(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.inner.check_async_error();
        #[cfg(not(feature = "cuda"))]
        Ok(())
    }
}
