//! `SplitExecutor`: split prefill and decode. This process is the decode node (the whole model
//! and the KV pool the scheduler's blocks point into); a `hearth stage` holding the whole model
//! is the prefill node. A fresh prompt long enough (`min_prefill_tokens`, which `hearth serve`
//! takes from the planner's break-even) is computed there; its first token's logits come back
//! with the step, then its K/V streams back layer by layer (`ExportKv` → one `KvLayer` per
//! layer, each written into the local pool as it arrives) before the step returns, so the
//! request's next step decodes here as if the prompt had been computed here.
//!
//! Owns: which sequences of a step go to the prefill node, the K/V hand-over, putting the
//! logit rows back in plan order. Does not own: sampling (`RequestSamplers`), the stage protocol
//! (`remote_stage`, `stage_server`).
//!
//! Invariants: only a sequence with nothing cached (no prefix hit: its K/V is all computed in
//! this step) whose prompt completes in this step goes remote, so the prefill node never needs
//! K/V it does not have; the blocks handed over are exactly those covering the prompt; the
//! decode node's K/V never leaves this process, so a dead prefill node loses no running
//! request: the step that finds it dead fails, and later prompts are computed here.

use candle_core::{Device, Tensor};
use hearth_engine::serve::{sequence_inputs, Executor, RequestSamplers, SampledOutput, SamplingSetup};
use hearth_models::{ForwardBatch, ModelConfig, PagedKvCache, PipelineStage, SequenceInput, StageInput, StageOutput};
use hearth_scheduler::{RequestId, StepPlan};

use crate::error::{PipelineError, Result};
use crate::executor::LocalStage;
use crate::remote_stage::{PoolShape, RemoteStage};
use crate::wire::OutputKind;

pub struct SplitParams<'a> {
    /// The whole model, loaded here (the decode node).
    pub decode: PipelineStage,
    /// A `hearth stage` that serves (or loads) the whole model, dialed (`RemoteStage::dial`)
    /// and not yet opened: the prefill node.
    pub prefill: RemoteStage,
    pub config: &'a ModelConfig,
    pub pool: PoolShape,
    pub device: Device,
    /// Fresh prompts at least this long are computed on the prefill node.
    pub min_prefill_tokens: usize,
}

pub struct SplitExecutor {
    decode: LocalStage,
    prefill: RemoteStage,
    samplers: RequestSamplers,
    device: Device,
    pool: PoolShape,
    min_prefill_tokens: usize,
    next_step_id: u64,
    num_remote_prompts: u64,
}

impl SplitExecutor {
    pub fn connect(params: SplitParams) -> Result<Self> {
        let all_layers = 0..params.config.num_layers;
        if params.decode.layers != all_layers {
            return Err(PipelineError::Config(format!(
                "the decode node needs the whole model (layers 0..{}), not {}..{}",
                params.config.num_layers, params.decode.layers.start, params.decode.layers.end
            )));
        }
        let mut prefill = params.prefill;
        prefill.open(all_layers, params.config, params.pool)?;
        Ok(Self {
            decode: LocalStage::new(params.decode, params.pool, &params.device)?,
            prefill,
            samplers: RequestSamplers::default(),
            device: params.device,
            pool: params.pool,
            min_prefill_tokens: params.min_prefill_tokens.max(1),
            next_step_id: 1,
            num_remote_prompts: 0,
        })
    }

    /// Prompts computed on the prefill node so far.
    pub fn num_remote_prompts(&self) -> u64 {
        self.num_remote_prompts
    }

    fn goes_remote(&self, sequence: &SequenceInput) -> bool {
        self.prefill.failure().is_none()
            && sequence.num_cached_tokens == 0
            && sequence.wants_logits
            && sequence.new_token_ids.len() >= self.min_prefill_tokens
    }

    /// Runs one step. F32 logits `[num_logit_rows, vocab]`, rows in `inputs` order.
    pub fn forward(&mut self, inputs: &[SequenceInput]) -> Result<Tensor> {
        let step_id = self.next_step_id;
        self.next_step_id += 1;
        let remote: Vec<bool> = inputs.iter().map(|s| self.goes_remote(s)).collect();
        let pick = |want_remote: bool| -> Vec<SequenceInput> {
            inputs.iter().zip(&remote).filter(|(_, &r)| r == want_remote).map(|(s, _)| s.clone()).collect()
        };
        let (remote_inputs, local_inputs) = (pick(true), pick(false));
        let remote_logits = if remote_inputs.is_empty() { None } else { Some(self.prefill_remotely(step_id, &remote_inputs)?) };
        let local_logits = if local_inputs.is_empty() {
            None
        } else {
            let batch = ForwardBatch::new(&local_inputs, self.pool.block_size, &self.device)?;
            match self.decode.stage.forward(StageInput::TokenIds, &batch, &self.decode.kv_cache)? {
                StageOutput::Logits(logits) => Some(logits),
                StageOutput::Hidden(_) => return Err(PipelineError::Config("the decode node's model has no head".into())),
            }
        };
        // Rows back in plan order: every sequence that wants logits has one, remote or local.
        let (mut next_remote, mut next_local) = (0, 0);
        let mut rows = Vec::new();
        for (sequence, &is_remote) in inputs.iter().zip(&remote) {
            if !sequence.wants_logits {
                continue;
            }
            let (source, next) = if is_remote { (&remote_logits, &mut next_remote) } else { (&local_logits, &mut next_local) };
            let source = source.as_ref().ok_or_else(|| PipelineError::Protocol("a logit row without its sub-step".into()))?;
            rows.push(source.narrow(0, *next, 1)?);
            *next += 1;
        }
        if rows.is_empty() {
            let vocab = local_logits.as_ref().or(remote_logits.as_ref()).map_or(0, |l| l.dim(1).unwrap_or(0));
            return Ok(Tensor::zeros((0, vocab), candle_core::DType::F32, &self.device)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// The prompts' first-token logits from the prefill node, then their K/V into the local pool.
    fn prefill_remotely(&mut self, step_id: u64, prompts: &[SequenceInput]) -> Result<Tensor> {
        let (kind, logits) = self.prefill.run(step_id, prompts, None, &self.device)?;
        if kind != OutputKind::Logits {
            return Err(PipelineError::Protocol("the prefill node returned a hidden state, not logits".into()));
        }
        let block_size = self.pool.block_size;
        let mut block_ids = Vec::new();
        for prompt in prompts {
            let num_blocks = prompt.new_token_ids.len().div_ceil(block_size);
            let covering = prompt.block_table.get(..num_blocks).ok_or_else(|| {
                PipelineError::Protocol(format!("a prompt of {} tokens with only {} blocks", prompt.new_token_ids.len(), prompt.block_table.len()))
            })?;
            block_ids.extend_from_slice(covering);
        }
        let kv_cache = &self.decode.kv_cache;
        self.prefill.export_kv(step_id, &block_ids, &self.device, |layer_idx, k, v| write_blocks(kv_cache, layer_idx, &block_ids, &k, &v))?;
        self.num_remote_prompts += prompts.len() as u64;
        Ok(logits)
    }
}

/// Writes `k`/`v` (`[block_ids.len(), block_size, kv_heads, head_dim]`) into the pool's blocks.
fn write_blocks(kv_cache: &PagedKvCache, layer_idx: usize, block_ids: &[u32], k: &Tensor, v: &Tensor) -> Result<()> {
    let (k_cache, v_cache) = kv_cache
        .layers
        .get(layer_idx)
        .ok_or_else(|| PipelineError::Protocol(format!("KV layer {layer_idx} beyond the pool's {} layers", kv_cache.layers.len())))?;
    let expected_rows = block_ids.len();
    if k.dim(0)? != expected_rows || v.dim(0)? != expected_rows || k.dims()[1..] != k_cache.dims()[1..] || v.dims()[1..] != v_cache.dims()[1..] {
        return Err(PipelineError::Protocol(format!(
            "KV layer {layer_idx} of shape {:?}/{:?} does not fit {expected_rows} blocks of {:?}",
            k.dims(),
            v.dims(),
            &k_cache.dims()[1..]
        )));
    }
    let (k, v) = (k.to_dtype(k_cache.dtype())?, v.to_dtype(v_cache.dtype())?);
    for (row, &block) in block_ids.iter().enumerate() {
        k_cache.slice_set(&k.narrow(0, row, 1)?.contiguous()?, 0, block as usize)?;
        v_cache.slice_set(&v.narrow(0, row, 1)?.contiguous()?, 0, block as usize)?;
    }
    Ok(())
}

impl Executor for SplitExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> hearth_engine::Result<()> {
        self.samplers.add(id, setup)
    }

    fn remove_request(&mut self, id: RequestId) {
        self.samplers.remove(id);
    }

    fn execute(&mut self, plan: &StepPlan) -> hearth_engine::Result<Vec<SampledOutput>> {
        // [num_sampling_requests, vocab]
        let logits = self.forward(&sequence_inputs(plan))?;
        self.samplers.sample(plan, &logits)
    }
}
