//! `ForwardBatch`: one step's input to a model — the flattened tokens of many sequences with
//! their positions, KV slots and block tables, and which rows need logits.
//!
//! Invariants (checked by [`ForwardBatch::new`]): every sequence's tokens are contiguous and in
//! order; each sequence's new tokens are the last `num_new_tokens` of its `context_len`;
//! positions run `context_len - num_new_tokens .. context_len`; `logit_rows` index into the
//! flattened tokens. A padded step ([`DecodePadding`]) has exactly `rows` one-token sequences.

use candle_core::{Device, Tensor};
use hearth_kernels::{kernel_metadata, AttentionLayout, SequenceSpan};

use crate::{ModelError, Result};

/// One sequence's part of a step, as the scheduler describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Padding of a generation step to a fixed shape (CUDA graphs replay one shape): `rows` query
/// rows (one token per sequence), block tables `table_width` entries wide. Padding rows hold
/// token 0 at position 0 of a one-token sequence living in `scratch_block`, a pool block no
/// request owns ([`crate::PagedKvCache::scratch_block`]), so their K/V writes touch nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePadding {
    pub rows: usize,
    pub table_width: usize,
    pub scratch_block: u32,
}

/// A prepared step on a device. All index tensors are views of one packed u32 buffer, uploaded
/// in one copy: `[token_ids | positions | slot_mapping | logit_rows | attention metadata]`.
#[derive(Clone)]
pub struct ForwardBatch {
    /// `[num_tokens]` u32
    pub token_ids: Tensor,
    /// `[num_tokens]` u32, absolute positions
    pub positions: Tensor,
    /// `[num_tokens]` u32, where each token's K/V is written
    pub slot_mapping: Tensor,
    /// `[num_logit_rows]` u32, rows of the flattened batch whose logits are returned: ascending,
    /// each row at most once (a sequence's last row, or every row of a padded step)
    pub logit_rows: Tensor,
    pub num_logit_rows: usize,
    /// Sequences for attention (block tables, lengths); the scale and window are set per layer.
    pub sequences: Vec<SequenceSpan>,
    pub block_size: usize,
    /// `hearth_kernels::kernel_metadata` of `sequences` on the device (GPU only).
    pub attention_metadata: Option<Tensor>,
    packed: Tensor,
}

/// A step's index arrays on the host, packed as [`ForwardBatch`] lays them out on the device.
pub struct PackedStep {
    data: Vec<u32>,
    num_tokens: usize,
    num_logit_rows: usize,
    sequences: Vec<SequenceSpan>,
    block_size: usize,
    with_metadata: bool,
}

impl PackedStep {
    /// Validates `inputs` and lays out their arrays; with `padding`, the step is padded to its
    /// fixed shape and every row (padding included) returns logits.
    pub fn new(inputs: &[SequenceInput], block_size: usize, padding: Option<DecodePadding>, with_metadata: bool) -> Result<Self> {
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
        let table_width = match padding {
            None => None,
            Some(pad) => {
                if token_ids.len() != inputs.len() || inputs.len() > pad.rows {
                    return bad(format!(
                        "a padded step takes at most {} sequences of one token each, got {} tokens in {} sequences",
                        pad.rows,
                        token_ids.len(),
                        inputs.len()
                    ));
                }
                if let Some(i) = inputs.iter().position(|s| s.block_table.len() > pad.table_width) {
                    return bad(format!("sequence {i}'s block table is wider than the padded width {}", pad.table_width));
                }
                for row in inputs.len()..pad.rows {
                    token_ids.push(0);
                    positions.push(0);
                    slots.push(pad.scratch_block * block_size as u32);
                    sequences.push(SequenceSpan {
                        query_start_idx: row,
                        num_query_tokens: 1,
                        context_len: 1,
                        block_table: vec![pad.scratch_block],
                    });
                }
                logit_rows = (0..pad.rows as u32).collect();
                Some(pad.table_width)
            }
        };
        // What `logit_rows` promises (and `ResidualStream::logits` relies on when it skips the gather).
        debug_assert!(logit_rows.windows(2).all(|w| w[0] < w[1]), "logit rows must ascend, each at most once");
        let (num_tokens, num_logit_rows) = (token_ids.len(), logit_rows.len());
        let mut data = token_ids;
        data.extend(positions);
        data.extend(slots);
        data.extend(logit_rows);
        if with_metadata {
            data.extend(kernel_metadata(&sequences, block_size, table_width));
        }
        Ok(Self { data, num_tokens, num_logit_rows, sequences, block_size, with_metadata })
    }
}

impl ForwardBatch {
    pub fn new(inputs: &[SequenceInput], block_size: usize, device: &Device) -> Result<Self> {
        Self::upload(PackedStep::new(inputs, block_size, None, device.is_cuda())?, device)
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

    /// Uploads a packed step (one host-to-device copy) and takes views of its sections.
    pub fn upload(step: PackedStep, device: &Device) -> Result<Self> {
        let packed = Tensor::new(step.data.as_slice(), device)?;
        let (t, l) = (step.num_tokens, step.num_logit_rows);
        Ok(Self {
            token_ids: packed.narrow(0, 0, t)?,
            positions: packed.narrow(0, t, t)?,
            slot_mapping: packed.narrow(0, 2 * t, t)?,
            logit_rows: packed.narrow(0, 3 * t, l)?,
            num_logit_rows: l,
            attention_metadata: match step.with_metadata {
                true => Some(packed.narrow(0, 3 * t + l, step.data.len() - 3 * t - l)?),
                false => None,
            },
            sequences: step.sequences,
            block_size: step.block_size,
            packed,
        })
    }

    /// Overwrites this batch's device buffer with `step`, which must have the same shape (a
    /// padded step of the same padding): the tensors keep their addresses, so recorded work
    /// (a device graph) reads the new step.
    pub fn overwrite(&mut self, step: PackedStep) -> Result<()> {
        if step.data.len() != self.packed.dim(0)? || step.num_tokens != self.sequences.len() {
            return Err(ModelError::InvalidBatch(format!(
                "cannot overwrite a {}-entry step buffer with {} entries",
                self.packed.dim(0)?,
                step.data.len()
            )));
        }
        let fresh = Tensor::new(step.data.as_slice(), self.packed.device())?;
        self.packed.slice_set(&fresh, 0, 0)?;
        self.sequences = step.sequences;
        Ok(())
    }

    pub fn num_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.num_query_tokens).sum()
    }

    /// The attention layout for a layer with the given scale and window.
    pub fn attention_layout(&self, scale: f32, sliding_window: Option<usize>) -> AttentionLayout {
        AttentionLayout {
            sequences: self.sequences.clone(),
            block_size: self.block_size,
            scale,
            sliding_window,
            device_metadata: self.attention_metadata.clone(),
        }
    }
}
