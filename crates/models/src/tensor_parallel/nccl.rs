//! [`NcclCollective`]: the [`Collective`] trait over NCCL (`hearth_kernels::nccl`), one
//! communicator per GPU, made together by [`NcclCollective::connect`].
//!
//! NCCL cannot check that ranks issue the same calls; a mismatch hangs the GPUs. Every rank
//! runs the same code, so calls match by construction; with `HEARTH_TP_CHECK_ORDER=1` each call
//! is preceded by an all-gather of its tag, operation and size, and a mismatch is an error
//! naming both calls (a debugging aid: it synchronizes the host on every collective).
//!
//! Invariant: `abort` on any rank aborts every communicator of the group, so ranks blocked in a
//! collective return instead of waiting for a rank that stopped.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hearth_kernels::nccl::{NcclComm, NcclId};

use super::collective::{Collective, CollectiveOp, CollectiveTag};
use crate::{ModelError, Result};

pub struct NcclCollective {
    comm: Arc<NcclComm>,
    /// Every rank's communicator, for `abort`.
    group: Arc<Vec<Arc<NcclComm>>>,
    check_order: bool,
}

fn nccl_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Collective(e.to_string())
}

impl NcclCollective {
    /// One handle per device (rank = index), after checking that NCCL can be loaded.
    pub fn connect(devices: &[Device]) -> Result<Vec<Self>> {
        hearth_kernels::nccl::probe().map_err(|e| ModelError::TensorParallel(e.to_string()))?;
        let id = NcclId::new().map_err(nccl_error)?;
        let world_size = devices.len();
        // ncclCommInitRank blocks until every rank joined: one thread per rank.
        let comms: Vec<Result<NcclComm>> = std::thread::scope(|scope| {
            let threads: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(rank, device)| scope.spawn(move || NcclComm::init_rank(device, &id, rank, world_size).map_err(nccl_error)))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(nccl_error("NCCL init thread panicked")))).collect()
        });
        let comms: Vec<Arc<NcclComm>> = comms.into_iter().map(|c| c.map(Arc::new)).collect::<Result<_>>()?;
        let group = Arc::new(comms.clone());
        let check_order = std::env::var("HEARTH_TP_CHECK_ORDER").is_ok_and(|v| v == "1");
        Ok(comms.into_iter().map(|comm| Self { comm, group: group.clone(), check_order }).collect())
    }

    /// With order checking on: gathers every rank's (tag, op, size) and compares them.
    fn check_same_call(&self, x: &Tensor, op: CollectiveOp, tag: CollectiveTag) -> Result<()> {
        if !self.check_order {
            return Ok(());
        }
        let code = |v: usize| (v % (1 << 24)) as f32;
        let tag_code = match tag {
            CollectiveTag::AttentionOutput { layer_idx } => 4 * layer_idx + 1,
            CollectiveTag::MlpOutput { layer_idx } => 4 * layer_idx + 2,
            CollectiveTag::Logits => 3,
        };
        let op_code = match op {
            CollectiveOp::AllReduceSum => 0,
            CollectiveOp::AllGather { dim } => 1 + dim,
        };
        let mine = Tensor::new(&[code(tag_code), code(op_code), code(x.elem_count())], x.device())?;
        let all: Vec<Vec<f32>> = self.comm.all_gather(&mine).map_err(nccl_error)?.to_dtype(DType::F32)?.to_vec2()?;
        match all.iter().position(|call| call != &all[0]) {
            None => Ok(()),
            Some(rank) => Err(ModelError::Collective(format!(
                "collective calls differ between ranks (ranks must issue collectives in the same order): rank 0 issued \
                 (tag code, op, elements) {:?}, rank {rank} issued {:?}; this rank: {tag:?} {op:?}",
                all[0], all[rank]
            ))),
        }
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&self, x: &Tensor, tag: CollectiveTag) -> Result<Tensor> {
        self.check_same_call(x, CollectiveOp::AllReduceSum, tag)?;
        self.comm.all_reduce_sum(&x.contiguous()?).map_err(nccl_error)
    }

    fn all_gather(&self, x: &Tensor, dim: usize, tag: CollectiveTag) -> Result<Tensor> {
        self.check_same_call(x, CollectiveOp::AllGather { dim }, tag)?;
        // [world_size, ...x.dims()] -> every rank's part concatenated along `dim`
        let stacked = self.comm.all_gather(&x.contiguous()?).map_err(nccl_error)?;
        let parts = (0..self.world_size()).map(|r| stacked.get(r)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, dim)?)
    }

    fn abort(&self, _reason: &str) {
        self.group.iter().for_each(|comm| comm.abort());
    }
}
