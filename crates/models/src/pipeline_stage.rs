//! A pipeline stage: the model restricted to a contiguous layer range `[start, end)`.
//!
//! Owns: loading only the stage's weights (its blocks; the token embedding when it is the first
//! stage; the final norm and the output projection when it is the last, reading the embedding
//! table for a tied head), its KV pool (its layers only), and one step over those layers.
//! Does not own: moving hidden states between stages (`hearth-pipeline`), which requests are in
//! a step, sampling.
//!
//! Invariants: a stage's forward runs the same code as [`Transformer::forward`] (the shared
//! `ResidualStream`); between stages the residual stream is handed over materialized (the
//! residual plus the pending delta, the sum the next block's first norm would form), so on the CPU in F32 a
//! chain of stages computes bit-for-bit the single model's logits (on a GPU the F32 residual
//! stream is rounded once to the activations' dtype at each boundary). The first stage is the one
//! whose range starts at 0, the last the one whose range ends at `num_layers`; so an empty range
//! is refused at either end (it would make two first or two last stages) and allowed in the
//! middle (a pass-through).
//!
//! [`Transformer::forward`]: crate::Transformer::forward

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::forward_batch::ForwardBatch;
use crate::kv_cache::PagedKvCache;
use crate::layers::Embedding;
use crate::loader::{LoadOptions, ModelFiles};
use crate::transformer::{check_kv_layers, embed_tokens, load_parts, Block, Head, ModelPart, ResidualStream};
use crate::weights::Weights;
use crate::{ModelConfig, ModelError, Result};

/// What a stage receives: the batch's token ids (first stage) or the previous stage's hidden
/// state `[num_tokens, hidden]`.
pub enum StageInput<'a> {
    TokenIds,
    Hidden(&'a Tensor),
}

/// What a stage produces: the hidden state for the next stage `[num_tokens, hidden]`, or (last
/// stage) F32 logits `[num_logit_rows, vocab]`.
#[derive(Debug)]
pub enum StageOutput {
    Hidden(Tensor),
    Logits(Tensor),
}

pub struct PipelineStage {
    pub config: ModelConfig,
    /// The model layers this stage runs, `start..end`.
    pub layers: Range<usize>,
    embed: Option<Embedding>,
    embed_scale: Option<f64>,
    blocks: Vec<Block>,
    head: Option<Head>,
    dtype: DType,
}

impl PipelineStage {
    /// Loads the stage `layers` of the model in `files`: its blocks, plus the embedding when
    /// `layers.start == 0` and the head when `layers.end == num_layers`. Every problem with the
    /// tensors it needs is reported at once; tensors of other stages are left unread.
    pub fn load(files: &ModelFiles, layers: Range<usize>, options: &LoadOptions) -> Result<Self> {
        let quantize = files.load_quantization(options)?;
        let config = files.config.clone();
        if layers.is_empty() && (layers.start == 0 || layers.end == config.num_layers) {
            return Err(ModelError::Unsupported(format!(
                "an empty pipeline stage {}..{} at an end of the model's {} layers (only a middle stage may hold no layers)",
                layers.start, layers.end, config.num_layers
            )));
        }
        let part = ModelPart { embedding: layers.start == 0, head: layers.end == config.num_layers, layers };
        files.with_source(|source| {
            let weights = Weights::new(source, &options.device, options.dtype, quantize);
            let parts = load_parts(&config, files.spec, &weights, &part)?;
            weights.finish_except(|name| owned_by_other_stage(name, &part))?;
            Ok(Self {
                config,
                layers: part.layers,
                embed: parts.embed,
                embed_scale: parts.embed_scale,
                blocks: parts.blocks,
                head: parts.head,
                dtype: parts.dtype,
            })
        })
    }

    pub fn is_first(&self) -> bool {
        self.embed.is_some()
    }

    pub fn is_last(&self) -> bool {
        self.head.is_some()
    }

    /// The dtype of the hidden states this stage takes and returns.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A KV pool holding this stage's layers only.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize, dtype: DType, device: &Device) -> Result<PagedKvCache> {
        PagedKvCache::for_layers(&self.config, self.blocks.len(), num_blocks, block_size, dtype, device)
    }

    /// Runs this stage's layers over one step.
    pub fn forward(&self, input: StageInput, batch: &ForwardBatch, kv_cache: &PagedKvCache) -> Result<StageOutput> {
        check_kv_layers(kv_cache, self.blocks.len())?;
        let hidden = match (input, &self.embed) {
            (StageInput::TokenIds, Some(embed)) => embed_tokens(embed, self.embed_scale, batch, self.dtype)?,
            (StageInput::Hidden(hidden), None) => {
                self.check_hidden(hidden, batch)?;
                hidden.clone()
            }
            (StageInput::TokenIds, None) => {
                return Err(self.refuse("takes a hidden state, not token ids (it is not the first stage)"))
            }
            (StageInput::Hidden(_), Some(_)) => return Err(self.refuse("takes token ids, not a hidden state (it is the first stage)")),
        };
        let stream = ResidualStream::start(hidden)?.through_blocks(&self.blocks, batch, &kv_cache.layers)?;
        Ok(match &self.head {
            Some(head) => StageOutput::Logits(stream.logits(&head.norm, &head.lm_head, batch)?),
            None => StageOutput::Hidden(stream.materialize(self.dtype)?),
        })
    }

    fn check_hidden(&self, hidden: &Tensor, batch: &ForwardBatch) -> Result<()> {
        let expected = [batch.token_ids.dim(0)?, self.config.hidden_size];
        if hidden.dims() != expected {
            return Err(self.refuse(&format!("got a hidden state of shape {:?}, expected {expected:?}", hidden.dims())));
        }
        if hidden.dtype() != self.dtype {
            return Err(self.refuse(&format!("got a {:?} hidden state, computes in {:?}", hidden.dtype(), self.dtype)));
        }
        Ok(())
    }

    fn refuse(&self, what: &str) -> ModelError {
        ModelError::InvalidBatch(format!("pipeline stage of layers {}..{} {what}", self.layers.start, self.layers.end))
    }
}

/// Whether `name` is a tensor another stage loads: a block outside `part.layers`, or the
/// embedding / final norm / output projection when `part` lacks them.
fn owned_by_other_stage(name: &str, part: &ModelPart) -> bool {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let layer_idx = rest.split('.').next().and_then(|idx| idx.parse::<usize>().ok());
        return layer_idx.is_some_and(|idx| !part.layers.contains(&idx));
    }
    match name {
        "model.embed_tokens.weight" => !part.embedding,
        "model.norm.weight" | "lm_head.weight" | "lm_head.bias" => !part.head,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_stages_own_blocks_outside_the_range_and_the_ends_a_middle_stage_lacks() {
        let middle = ModelPart { layers: 2..4, embedding: false, head: false };
        assert!(owned_by_other_stage("model.layers.1.mlp.down_proj.weight", &middle));
        assert!(owned_by_other_stage("model.layers.4.input_layernorm.weight", &middle));
        assert!(!owned_by_other_stage("model.layers.2.mlp.down_proj.weight", &middle));
        assert!(owned_by_other_stage("model.embed_tokens.weight", &middle));
        assert!(owned_by_other_stage("lm_head.weight", &middle));
        assert!(!owned_by_other_stage("model.layers.x.weight", &middle), "an unparsable layer index stays unexpected");
        assert!(!owned_by_other_stage("model.vision_tower.weight", &middle));
        let last = ModelPart { layers: 4..6, embedding: false, head: true };
        assert!(!owned_by_other_stage("model.norm.weight", &last));
    }
}
