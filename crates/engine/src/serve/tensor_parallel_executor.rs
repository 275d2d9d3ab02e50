//! `TensorParallelExecutor`: runs step plans on a tensor-parallel group in this process — one
//! forward over every planned request on all ranks (each rank its share of every layer, joined
//! by all-reduces), then one sampler per request on rank 0's logits.
//!
//! Owns: the group (its ranks' models and KV pools, each pool `num_blocks` blocks holding the
//! rank's KV heads, indexed by the same block ids the scheduler hands out). Does not own:
//! slicing, collectives or the failure rule (`hearth_models::tensor_parallel`).

use hearth_models::tensor_parallel::TensorParallelGroup;
use hearth_scheduler::{RequestId, StepPlan};

use super::executor::{Executor, SampledOutput, SamplingSetup};
use super::samplers::{sequence_inputs, RequestSamplers};
use crate::Result;

pub struct TensorParallelExecutor {
    group: TensorParallelGroup,
    samplers: RequestSamplers,
}

impl TensorParallelExecutor {
    pub fn new(group: TensorParallelGroup) -> Self {
        Self { group, samplers: RequestSamplers::default() }
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }
}

impl Executor for TensorParallelExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> Result<()> {
        self.samplers.add(id, setup)
    }

    fn remove_request(&mut self, id: RequestId) {
        self.samplers.remove(id);
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<Vec<SampledOutput>> {
        // [num_sampling_requests, vocab], identical on every rank
        let logits = self.group.forward(&sequence_inputs(plan))?;
        self.samplers.sample(plan, &logits)
    }
}
