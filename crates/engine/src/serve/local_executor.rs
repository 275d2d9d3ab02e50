//! `LocalExecutor`: runs step plans on this process's device — one flattened forward pass over
//! every planned request, then one sampler per request.
//!
//! Owns: the model, its paged KV tensors (`num_blocks` blocks, matching the scheduler's pool),
//! the device graphs that replay generation steps on a GPU (`DecodeGraphs`), and each request's
//! `Sampler` + `TokenHistory`. Does not own: which blocks a request holds
//! (the plan's block tables say where to write and read).
//!
//! Invariant: a request's history holds its prompt and every token this executor sampled for
//! it, so penalties and seeded streams are the same whether or not it was batched or
//! preempted.

use std::collections::HashMap;

use candle_core::{DType, Device};
use hearth_models::{DecodeGraphs, ForwardBatch, PagedKvCache, SequenceInput, Transformer};
use hearth_scheduler::{RequestId, StepPlan};

use super::executor::{Executor, SampledOutput, SamplingSetup};
use super::request::TokenLogprob;
use crate::sampling::{Sampler, TokenHistory};
use crate::{EngineError, Result};

pub struct LocalExecutor {
    model: Transformer,
    kv_cache: PagedKvCache,
    device: Device,
    graphs: Option<DecodeGraphs>,
    requests: HashMap<RequestId, RequestSampler>,
}

struct RequestSampler {
    sampler: Sampler,
    history: TokenHistory,
    logprobs: Option<usize>,
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
        Ok(Self { model, kv_cache, device: device.clone(), graphs, requests: HashMap::new() })
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }
}

impl Executor for LocalExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> Result<()> {
        let sampler = Sampler::new(setup.params)?;
        let history = TokenHistory::new(&setup.prompt_token_ids);
        self.requests.insert(id, RequestSampler { sampler, history, logprobs: setup.logprobs });
        Ok(())
    }

    fn remove_request(&mut self, id: RequestId) {
        self.requests.remove(&id);
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<Vec<SampledOutput>> {
        let inputs: Vec<SequenceInput> = plan
            .requests
            .iter()
            .map(|scheduled| SequenceInput {
                new_token_ids: scheduled.new_token_ids.clone(),
                num_cached_tokens: scheduled.num_computed_tokens,
                block_table: scheduled.block_table.iter().map(|block| block.0).collect(),
                wants_logits: scheduled.samples,
            })
            .collect();
        // [num_sampling_requests, vocab]
        let logits = self.forward(&inputs)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let sampling_ids = plan.requests.iter().filter(|scheduled| scheduled.samples).map(|scheduled| scheduled.id);
        let mut outputs = Vec::with_capacity(logits.len());
        for (id, row) in sampling_ids.zip(&logits) {
            let request = self
                .requests
                .get_mut(&id)
                .ok_or_else(|| EngineError::Invalid(format!("request {} has no sampler", id.0)))?;
            let token_id = request.sampler.sample(row, &request.history)?;
            request.history.push(token_id);
            let logprob = request.logprobs.map(|num_top| token_logprob(row, token_id, num_top));
            outputs.push(SampledOutput { id, token_id, logprob });
        }
        Ok(outputs)
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

/// Natural-log softmax of the raw logits at `token_id`, and the `num_top` most likely tokens.
pub fn token_logprob(logits: &[f32], token_id: u32, num_top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    let logprob_of = |id: u32| logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| l - log_sum);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let num_top = num_top.min(order.len());
    let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if num_top > 0 && num_top < order.len() {
        order.select_nth_unstable_by(num_top - 1, by_logit_desc);
    }
    order.truncate(num_top);
    order.sort_by(by_logit_desc);
    TokenLogprob { token_id, logprob: logprob_of(token_id), top: order.into_iter().map(|id| (id, logprob_of(id))).collect() }
}
