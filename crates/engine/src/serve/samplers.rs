//! `RequestSamplers`: the per-request half of every executor — each request's `Sampler` and
//! `TokenHistory`, and turning one step's logits into sampled tokens. Executors differ only in
//! how they compute logits (one device, a tensor-parallel group, pipeline stages); they share
//! this.
//!
//! Invariant: a request's history holds its prompt and every token sampled for it, so
//! penalties and seeded streams are the same whether or not it was batched or preempted.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use hearth_kernels::greedy;
use hearth_models::SequenceInput;
use hearth_scheduler::{RequestId, StepPlan};

use super::executor::{SampledOutput, SamplingSetup};
use super::request::TokenLogprob;
use crate::sampling::{Sampler, TokenHistory};
use crate::{EngineError, Result};

#[derive(Default)]
pub struct RequestSamplers {
    requests: HashMap<RequestId, RequestSampler>,
}

struct RequestSampler {
    sampler: Sampler,
    history: TokenHistory,
    logprobs: Option<usize>,
}

impl RequestSamplers {
    /// Registers a request's sampler; fails on invalid sampling parameters.
    pub fn add(&mut self, id: RequestId, setup: SamplingSetup) -> Result<()> {
        let sampler = Sampler::new(setup.params)?;
        let history = TokenHistory::new(&setup.prompt_token_ids);
        self.requests.insert(id, RequestSampler { sampler, history, logprobs: setup.logprobs });
        Ok(())
    }

    pub fn remove(&mut self, id: RequestId) {
        self.requests.remove(&id);
    }

    /// Samples one token per plan entry with `samples == true`, in plan order, from `logits`
    /// (`[num_sampling_entries, vocab]`, any float dtype, any device).
    pub fn sample(&mut self, plan: &StepPlan, logits: &Tensor) -> Result<Vec<SampledOutput>> {
        if let Some(outputs) = self.sample_on_device(plan, logits)? {
            return Ok(outputs);
        }
        let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let sampling_ids: Vec<RequestId> = plan.requests.iter().filter(|s| s.samples).map(|s| s.id).collect();
        if sampling_ids.len() != logits.len() {
            return Err(EngineError::Invalid(format!(
                "the step produced {} logit rows for {} sampling requests",
                logits.len(),
                sampling_ids.len()
            )));
        }
        let mut outputs = Vec::with_capacity(logits.len());
        for (id, row) in sampling_ids.into_iter().zip(&logits) {
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

impl RequestSamplers {
    /// On a GPU, when every sampling request wants the plain argmax and no logprobs: the
    /// tokens chosen on the device (`hearth_kernels::greedy`), so only `[rows]` ids reach the
    /// host. `None` when this does not apply or a row has non-finite logits (the host path then
    /// reports the error).
    fn sample_on_device(&mut self, plan: &StepPlan, logits: &Tensor) -> Result<Option<Vec<SampledOutput>>> {
        let sampling_ids: Vec<RequestId> = plan.requests.iter().filter(|s| s.samples).map(|s| s.id).collect();
        let all_plain_argmax = sampling_ids.iter().all(|id| {
            self.requests.get(id).is_some_and(|r| r.logprobs.is_none() && r.sampler.is_plain_argmax())
        });
        if !logits.device().is_cuda() || sampling_ids.is_empty() || !all_plain_argmax || logits.dims() != [sampling_ids.len(), logits.dim(1)?] {
            return Ok(None);
        }
        let token_ids = greedy::greedy_tokens(&logits.to_dtype(DType::F32)?)
            .map_err(|e| EngineError::Invalid(e.to_string()))?
            .to_vec1::<u32>()?;
        if token_ids.contains(&greedy::NO_TOKEN) {
            return Ok(None);
        }
        let mut outputs = Vec::with_capacity(token_ids.len());
        for (id, token_id) in sampling_ids.into_iter().zip(token_ids) {
            let request = self.requests.get_mut(&id).ok_or_else(|| EngineError::Invalid(format!("request {} has no sampler", id.0)))?;
            request.sampler.record_argmax_choice();
            request.history.push(token_id);
            outputs.push(SampledOutput { id, token_id, logprob: None });
        }
        Ok(Some(outputs))
    }
}

/// The model inputs of a step plan: one `SequenceInput` per planned request, in plan order.
pub fn sequence_inputs(plan: &StepPlan) -> Vec<SequenceInput> {
    plan.requests
        .iter()
        .map(|scheduled| SequenceInput {
            new_token_ids: scheduled.new_token_ids.clone(),
            num_cached_tokens: scheduled.num_computed_tokens,
            block_table: scheduled.block_table.iter().map(|block| block.0).collect(),
            wants_logits: scheduled.samples,
        })
        .collect()
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
