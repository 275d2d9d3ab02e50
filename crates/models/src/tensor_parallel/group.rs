//! `TensorParallelGroup`: every rank of one tensor-parallel group in this process — its sharded
//! model, KV pool (its KV heads only) and collective handle — and one step run on all of them.
//!
//! Ranks on the CPU talk through the in-process [`ThreadGroup`]; ranks on CUDA GPUs (one GPU
//! each) through NCCL ([`NcclCollective`]). Each step runs one thread per rank over the same
//! inputs; each rank builds its own `ForwardBatch` on its device.
//!
//! Owns: building the ranks from a loaded model, the per-step fan-out and the failure rule.
//! Does not own: slicing or the rank forward (`sharded`), the transports.
//!
//! Invariants: every rank runs the same step with the same inputs, so collectives are issued
//! in the same order. A rank that fails aborts the whole group (thread rounds are poisoned,
//! NCCL communicators aborted), so no rank waits forever for it; a failed group stays failed
//! and the caller must build a new one.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};

use super::collective::{Collective, ThreadGroup};
use super::nccl::NcclCollective;
use super::sharded::{shard_spec, ShardedTransformer};
use crate::forward_batch::{ForwardBatch, SequenceInput};
use crate::kv_cache::PagedKvCache;
use crate::transformer::Transformer;
use crate::{ModelError, Result};

/// How to size a group's KV pools and bound its waits.
#[derive(Debug, Clone, Copy)]
pub struct GroupParams {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_dtype: DType,
    /// How long a CPU rank waits for the others in one collective before the step fails.
    pub collective_timeout: Duration,
}

struct Rank {
    model: ShardedTransformer,
    kv_cache: PagedKvCache,
    comm: Box<dyn Collective>,
    device: Device,
}

pub struct TensorParallelGroup {
    ranks: Vec<Rank>,
    block_size: usize,
}

impl TensorParallelGroup {
    /// Splits the loaded `model` (on the CPU, weights in the dtype the devices compute in) into
    /// one rank per entry of `devices`: all CPU (thread collectives) or all distinct CUDA GPUs
    /// (NCCL).
    pub fn new(model: &Transformer, devices: &[Device], params: GroupParams) -> Result<Self> {
        let spec = shard_spec(model, devices.len())?;
        let comms = connect(devices, params.collective_timeout)?;
        let ranks = comms
            .into_iter()
            .zip(devices)
            .enumerate()
            .map(|(rank, (comm, device))| {
                let model = ShardedTransformer::from_full(model, &spec, rank, device)?;
                let kv_cache = model.new_kv_cache(params.num_blocks, params.block_size, params.kv_dtype, device)?;
                Ok(Rank { model, kv_cache, comm, device: device.clone() })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { ranks, block_size: params.block_size })
    }

    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// Rank `rank`'s model and KV pool.
    pub fn rank(&self, rank: usize) -> Option<(&ShardedTransformer, &PagedKvCache)> {
        self.ranks.get(rank).map(|r| (&r.model, &r.kv_cache))
    }

    /// Runs one step on every rank; returns rank 0's F32 logits (on rank 0's device). A rank
    /// that fails aborts the group so the others stop waiting; the first rank's own error (not
    /// a consequence) is returned.
    pub fn forward(&self, inputs: &[SequenceInput]) -> Result<Tensor> {
        self.forward_with(&|device| ForwardBatch::new(inputs, self.block_size, device))
    }

    /// [`forward`](Self::forward) with each rank's batch made by `make_batch(rank_device)`
    /// (every call must describe the same step).
    pub fn forward_with(&self, make_batch: &(dyn Fn(&Device) -> Result<ForwardBatch> + Sync)) -> Result<Tensor> {
        let results: Vec<Result<Option<Tensor>>> = std::thread::scope(|scope| {
            let threads: Vec<_> = self
                .ranks
                .iter()
                .enumerate()
                .map(|(index, rank)| {
                    scope.spawn(move || {
                        let result = make_batch(&rank.device)
                            .and_then(|batch| rank.model.forward(&batch, &rank.kv_cache, rank.comm.as_ref()))
                            // Wait for the device here, so a rank that hangs or fails on the
                            // GPU is seen by this thread (and aborts the others).
                            .and_then(|logits| {
                                rank.device.synchronize()?;
                                Ok(logits)
                            });
                        if let Err(e) = &result {
                            rank.comm.abort(&e.to_string());
                        }
                        // Only rank 0's logits leave; the others are freed here, with their GPU
                        // current (see `hearth_kernels::bind_device_to_thread`).
                        result.map(|logits| (index == 0).then_some(logits))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err(ModelError::Collective("a rank's thread panicked".into()))))
                .collect()
        });
        // The caller reads and frees rank 0's logits on this thread.
        if let Some(rank) = self.ranks.first() {
            hearth_kernels::bind_device_to_thread(&rank.device)?;
        }
        let mut first_error = None;
        let mut logits = None;
        for result in results {
            match result {
                Ok(t) => logits = logits.or(t),
                Err(e @ ModelError::Collective(_)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match (first_error, logits) {
            (Some(e), _) => Err(e),
            (None, Some(logits)) => Ok(logits),
            (None, None) => Err(ModelError::TensorParallel("a group with no ranks".into())),
        }
    }
}

impl Drop for TensorParallelGroup {
    /// Frees each rank's weights and KV pool with its own GPU current on this thread.
    fn drop(&mut self) {
        for rank in self.ranks.drain(..) {
            if let Err(e) = hearth_kernels::bind_device_to_thread(&rank.device) {
                tracing::warn!("freeing a tensor-parallel rank: {e}");
            }
            drop(rank);
        }
    }
}

/// One collective handle per device.
fn connect(devices: &[Device], timeout: Duration) -> Result<Vec<Box<dyn Collective>>> {
    if devices.is_empty() {
        return Err(ModelError::TensorParallel("a tensor-parallel group needs at least one device".into()));
    }
    if devices.iter().all(Device::is_cpu) {
        return Ok(ThreadGroup::connect(devices.len(), timeout)?.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect());
    }
    if !devices.iter().all(Device::is_cuda) {
        return Err(ModelError::TensorParallel(format!("a group's ranks must all be on the CPU or all on CUDA GPUs, got {devices:?}")));
    }
    for (i, a) in devices.iter().enumerate() {
        if devices[..i].iter().any(|b| b.same_device(a)) {
            return Err(ModelError::TensorParallel(format!(
                "two ranks on one GPU ({a:?}): NCCL needs one GPU per rank"
            )));
        }
    }
    Ok(NcclCollective::connect(devices)?.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect())
}
