//! `LocalExecutor`: runs step plans on this process's device — one flattened forward pass over
//! every planned request, then one sampler per request (`RequestSamplers`).
//!
//! Owns: the model, its paged KV tensors (`num_blocks` blocks, matching the scheduler's pool),
//! and the device graphs that replay generation steps on a GPU (`DecodeGraphs`). Does not own:
//! which blocks a request holds (the plan's block tables say where to write and read).

use candle_core::{DType, Device};
use hearth_models::{DecodeGraphs, ForwardBatch, PagedKvCache, SequenceInput, Transformer};
use hearth_scheduler::{RequestId, StepPlan};

use super::executor::{Executor, SampledOutput, SamplingSetup};
use super::samplers::{sequence_inputs, RequestSamplers};
use crate::Result;

pub struct LocalExecutor {
    model: Transformer,
    kv_cache: PagedKvCache,
    device: Device,
    graphs: Option<DecodeGraphs>,
    samplers: RequestSamplers,
}
/// Shape of the KV pool a `LocalExecutor` allocates.
#[derive(Debug, Clone, Copy)]
pub struct KvPoolParams {
    pub num_blocks: usize,
    pub block_size: usize,
    pub dtype: DType,
}

/// The largest steps the scheduler will plan (its budgets), for sizing device graphs.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
}

impl LocalExecutor {
    pub fn new(model: Transformer, pool: KvPoolParams, limits: StepLimits, device: &Device) -> Result<Self> {
        let kv_cache = PagedKvCache::new(&model.config, pool.num_blocks, pool.block_size, pool.dtype, device)?;
        let table_width = limits.max_model_len.div_ceil(pool.block_size.max(1));
        let graphs = DecodeGraphs::new(device, limits.max_num_seqs, table_width, limits.max_num_batched_tokens);
        Ok(Self { model, kv_cache, device: device.clone(), graphs, samplers: RequestSamplers::default() })
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }
}

impl Executor for LocalExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> Result<()> {
        self.samplers.add(id, setup)
    }

    fn remove_request(&mut self, id: RequestId) {
        self.samplers.remove(id);
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<Vec<SampledOutput>> {
        // [num_sampling_requests, vocab]
        let logits = self.forward(&sequence_inputs(plan))?;
        self.samplers.sample(plan, &logits)
    }
}

impl LocalExecutor {
    /// A generation step through a device graph where possible, else the eager forward.
    fn forward(&mut self, inputs: &[SequenceInput]) -> Result<candle_core::Tensor> {
        if let Some(graphs) = &mut self.graphs {
            if let Some(logits) = graphs.forward(&self.model, &self.kv_cache, inputs)? {
                return Ok(logits);
            }
            graphs.before_eager_step(inputs.iter().map(|s| s.new_token_ids.len()).sum());
        }
        let batch = ForwardBatch::new(inputs, self.kv_cache.block_size, &self.device)?;
        Ok(self.model.forward(&batch, &self.kv_cache)?)
    }
}
