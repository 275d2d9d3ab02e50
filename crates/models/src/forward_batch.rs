//! `ForwardBatch`: one step's input to a model — the flattened tokens of many sequences with
//! their positions, KV slots and block tables, and which rows need logits.
//!
//! Invariants (checked by [`ForwardBatch::new`]): every sequence's tokens are contiguous and in
//! order; each sequence's new tokens are the last `num_new_tokens` of its `context_len`;
//! positions run `context_len - num_new_tokens .. context_len`; `logit_rows` index into the
//! flattened tokens.

use candle_core::{Device, Tensor};
use hearth_kernels::{AttentionLayout, SequenceSpan};

use crate::{ModelError, Result};

/// One sequence's part of a step, as the scheduler describes it.
#[derive(Debug, Clone)]
pub struct SequenceInput {
    /// Tokens computed this step (a prompt chunk, or one generated token).
    pub new_token_ids: Vec<u32>,
    /// Tokens already in the KV cache before this step (`num_computed_tokens`).
    pub num_cached_tokens: usize,
    /// Block ids covering at least `num_cached_tokens + new_token_ids.len()` positions.
    pub block_table: Vec<u32>,
    /// Whether the logits of this sequence's last new token are wanted.
    pub wants_logits: bool,
}

/// A prepared step on a device.
pub struct ForwardBatch {
    /// `[num_tokens]` u32
    pub token_ids: Tensor,
    /// `[num_tokens]` u32, absolute positions
    pub positions: Tensor,
    /// `[num_tokens]` u32, where each token's K/V is written
    pub slot_mapping: Tensor,
    /// `[num_logit_rows]` u32, rows of the flattened batch whose logits are returned
    pub logit_rows: Tensor,
    pub num_logit_rows: usize,
    /// Sequences for attention (block tables, lengths); the scale and window are set per layer.
    pub sequences: Vec<SequenceSpan>,
    pub block_size: usize,
}

impl ForwardBatch {
    pub fn new(inputs: &[SequenceInput], block_size: usize, device: &Device) -> Result<Self> {
        let bad = |m: String| Err(ModelError::InvalidBatch(m));
        if block_size == 0 {
            return bad("block_size is 0".into());
        }
        let mut token_ids = Vec::new();
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut logit_rows = Vec::new();
        let mut sequences = Vec::with_capacity(inputs.len());
        for (seq_idx, input) in inputs.iter().enumerate() {
            let num_new = input.new_token_ids.len();
            if num_new == 0 {
                return bad(format!("sequence {seq_idx} has no new tokens"));
            }
            let context_len = input.num_cached_tokens + num_new;
            if input.block_table.len() * block_size < context_len {
                return bad(format!(
                    "sequence {seq_idx}: {} blocks of {block_size} cannot hold {context_len} tokens",
                    input.block_table.len()
                ));
            }
            let query_start_idx = token_ids.len();
            for pos in input.num_cached_tokens..context_len {
                positions.push(pos as u32);
                slots.push(input.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
            }
            token_ids.extend_from_slice(&input.new_token_ids);
            if input.wants_logits {
                logit_rows.push((token_ids.len() - 1) as u32);
            }
            sequences.push(SequenceSpan {
                query_start_idx,
                num_query_tokens: num_new,
                context_len,
                block_table: input.block_table.clone(),
            });
        }
        if token_ids.is_empty() {
            return bad("no sequences".into());
        }
        Self::from_parts(token_ids, positions, slots, logit_rows, sequences, block_size, device)
    }

    /// Like [`ForwardBatch::new`] for one sequence but returning logits for every new token
    /// (perplexity, golden tests).
    pub fn all_logits(input: &SequenceInput, block_size: usize, device: &Device) -> Result<Self> {
        let mut batch = Self::new(std::slice::from_ref(input), block_size, device)?;
        let n = input.new_token_ids.len();
        batch.logit_rows = Tensor::arange(0u32, n as u32, device)?;
        batch.num_logit_rows = n;
        Ok(batch)
    }

    fn from_parts(
        token_ids: Vec<u32>,
        positions: Vec<u32>,
        slots: Vec<u32>,
        logit_rows: Vec<u32>,
        sequences: Vec<SequenceSpan>,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let num_logit_rows = logit_rows.len();
        Ok(Self {
            token_ids: Tensor::new(token_ids.as_slice(), device)?,
            positions: Tensor::new(positions.as_slice(), device)?,
            slot_mapping: Tensor::new(slots.as_slice(), device)?,
            logit_rows: Tensor::new(logit_rows.as_slice(), device)?,
            num_logit_rows,
            sequences,
            block_size,
        })
    }

    pub fn num_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.num_query_tokens).sum()
    }

    /// The attention layout for a layer with the given scale and window.
    pub fn attention_layout(&self, scale: f32, sliding_window: Option<usize>) -> AttentionLayout {
        AttentionLayout { sequences: self.sequences.clone(), block_size: self.block_size, scale, sliding_window }
    }
}
