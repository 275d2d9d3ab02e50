//! Generation steps replayed as device graphs: one recorded forward pass per padded batch size.
//!
//! A generation step (every sequence advances one token) of a small model is hundreds of tiny
//! kernels whose launch cost exceeds their run time. `DecodeGraphs` pads such a step to the
//! next of a few fixed batch sizes ([`DecodeGraphs::padded_sizes`]), records the model's
//! forward pass for that shape once (`hearth_kernels::graph`), and afterwards only copies the
//! step's packed indices into the recorded batch's buffer and replays.
//!
//! Owns: choosing the padded size, the recorded batches and their graphs. Does not own: the
//! model or the KV pool (borrowed per call; the same pool must be passed every time, since the
//! graphs hold its addresses).
//!
//! Invariants: a step is replayed only if every sequence has exactly one new token and a block
//! table no wider than `table_width`; anything else (prompts, chunks, oversized batches, the
//! CPU) returns `None` and the caller runs the eager forward, which computes the same values.
//! Padding rows write only the pool's scratch block. When recording fails once (an operation
//! that cannot be captured), graphs are switched off for the rest of the process with one
//! warning.
//!
//! Workspaces: candle's quantized matmuls keep grow-only scratch buffers; growing one frees the
//! buffer recorded graphs point at. So before the first recording an eager warm-up runs the
//! largest step the caller declared (`max_step_tokens`, in the scratch block), and an eager step
//! larger than that ([`DecodeGraphs::before_eager_step`]) drops every graph (re-recorded on
//! next use) before it runs.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use hearth_kernels::graph::{self, DeviceGraph};

use crate::forward_batch::{DecodePadding, ForwardBatch, PackedStep, SequenceInput};
use crate::kv_cache::PagedKvCache;
use crate::transformer::Transformer;
use crate::Result;

/// Padded batch sizes: 1, 2, 4, then multiples of 8, up to the first that holds `max_batch`.
fn padded_sizes(max_batch: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    for size in [1, 2, 4].into_iter().chain((1..).map(|i| 8 * i)) {
        if max_batch == 0 {
            break;
        }
        sizes.push(size);
        if size >= max_batch {
            break;
        }
    }
    sizes
}

struct RecordedStep {
    batch: ForwardBatch,
    /// `[padded rows, vocab]` F32: the recording's output, rewritten by every replay.
    logits: Tensor,
    graph: DeviceGraph,
}

pub struct DecodeGraphs {
    device: Device,
    sizes: Vec<usize>,
    table_width: usize,
    steps: HashMap<usize, RecordedStep>,
    /// The most tokens any eager step may run without invalidating the graphs.
    max_step_tokens: usize,
    warmed_up: bool,
    disabled: bool,
}

impl DecodeGraphs {
    /// Graphs for steps of up to `max_batch` sequences whose contexts need at most `table_width`
    /// blocks; eager steps run at most `max_step_tokens` tokens. `None` where the device has no
    /// graphs or `HEARTH_CUDA_GRAPHS=0` turns them off.
    pub fn new(device: &Device, max_batch: usize, table_width: usize, max_step_tokens: usize) -> Option<Self> {
        let off = std::env::var("HEARTH_CUDA_GRAPHS").is_ok_and(|v| v == "0");
        if off || !graph::supported(device) || max_batch == 0 || table_width == 0 {
            return None;
        }
        Some(Self {
            device: device.clone(),
            sizes: padded_sizes(max_batch),
            table_width,
            steps: HashMap::new(),
            max_step_tokens: max_step_tokens.max(8),
            warmed_up: false,
            disabled: false,
        })
    }

    /// Call before running an eager step of `num_tokens` tokens: a step larger than any before
    /// drops the graphs (its workspaces may move).
    pub fn before_eager_step(&mut self, num_tokens: usize) {
        if num_tokens > self.max_step_tokens {
            self.steps.clear();
            self.max_step_tokens = num_tokens;
            self.warmed_up = false;
        }
    }

    /// Grows candle's matmul workspaces to their largest: one step of `max_step_tokens` tokens
    /// and one of 8 one-token sequences, all in the scratch block.
    fn warm_up(&mut self, model: &Transformer, kv: &PagedKvCache) -> Result<()> {
        let scratch = kv.scratch_block();
        let dummy = |num_tokens: usize| SequenceInput {
            new_token_ids: vec![0; num_tokens],
            num_cached_tokens: 0,
            block_table: vec![scratch; num_tokens.div_ceil(kv.block_size)],
            wants_logits: true,
        };
        for inputs in [vec![dummy(self.max_step_tokens)], vec![dummy(1); 8]] {
            drop(model.forward(&ForwardBatch::new(&inputs, kv.block_size, &self.device)?, kv)?);
        }
        self.warmed_up = true;
        Ok(())
    }

    pub fn padded_sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Runs a generation step through a graph: F32 logits of the sequences that want them, in
    /// order (as `Transformer::forward` returns them). `None`: not a graph step; run eagerly.
    pub fn forward(&mut self, model: &Transformer, kv: &PagedKvCache, inputs: &[SequenceInput]) -> Result<Option<Tensor>> {
        let Some(&rows) = self.sizes.iter().find(|&&s| s >= inputs.len()) else { return Ok(None) };
        let eligible = !self.disabled
            && !inputs.is_empty()
            && inputs.iter().all(|s| s.new_token_ids.len() == 1 && s.block_table.len() <= self.table_width);
        if !eligible {
            return Ok(None);
        }
        let padding = DecodePadding { rows, table_width: self.table_width, scratch_block: kv.scratch_block() };
        let step = PackedStep::new(inputs, kv.block_size, Some(padding), true)?;
        if let Some(recorded) = self.steps.get_mut(&rows) {
            recorded.batch.overwrite(step)?;
        } else {
            if !self.warmed_up {
                self.warm_up(model, kv)?;
            }
            let batch = ForwardBatch::upload(step, &self.device)?;
            match graph::capture(&self.device, || model.forward(&batch, kv).map_err(candle_core::Error::wrap)) {
                Ok((graph, logits)) => {
                    self.steps.insert(rows, RecordedStep { batch, logits, graph });
                }
                Err(e) => {
                    tracing::warn!("device graphs disabled, running eagerly: {e}");
                    self.disabled = true;
                    return Ok(None);
                }
            }
        }
        let recorded = &self.steps[&rows];
        recorded.graph.replay()?;
        let logits = recorded.logits.narrow(0, 0, inputs.len())?;
        if inputs.iter().all(|s| s.wants_logits) {
            return Ok(Some(logits));
        }
        let wanted: Vec<u32> = (0..inputs.len() as u32).filter(|&i| inputs[i as usize].wants_logits).collect();
        Ok(Some(logits.index_select(&Tensor::new(wanted.as_slice(), &self.device)?, 0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_sizes_cover_every_batch_up_to_the_maximum() {
        assert_eq!(padded_sizes(1), vec![1]);
        assert_eq!(padded_sizes(3), vec![1, 2, 4]);
        assert_eq!(padded_sizes(20), vec![1, 2, 4, 8, 16, 24]);
        assert_eq!(padded_sizes(64), vec![1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]);
        for max in 1..100 {
            let sizes = padded_sizes(max);
            assert!((1..=max).all(|n| sizes.iter().any(|&s| s >= n)), "{max}: {sizes:?}");
            assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn the_cpu_has_no_graphs() {
        assert!(DecodeGraphs::new(&Device::Cpu, 8, 16, 512).is_none());
    }
}
