//! `ModelRunner`: a model with its paged KV pool and the block pool that hands out its blocks.
//! It executes one step for a set of sequences; it does not decide what to run (the caller or,
//! later, the scheduler does).
//!
//! Invariant: a `Sequence`'s first `num_computed_tokens` tokens have K/V in the blocks of its
//! block table; `step` appends exactly the tokens it is given.

use candle_core::{DType, Device, Tensor};
use hearth_models::{DecodeGraphs, ForwardBatch, PagedKvCache, SequenceInput, Transformer};
use hearth_scheduler::{BlockPool, BlockTable};

use crate::{EngineError, Result};

#[derive(Debug, Clone, Copy)]
pub struct RunnerParams {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the pool; the pool holds `num_blocks * block_size` tokens in all.
    pub num_blocks: usize,
    pub kv_dtype: DType,
}

impl RunnerParams {
    /// A pool large enough for `num_tokens` tokens of one sequence.
    pub fn for_tokens(num_tokens: usize) -> Self {
        let block_size = 16;
        Self { block_size, num_blocks: num_tokens.div_ceil(block_size).max(1), kv_dtype: DType::F32 }
    }
}

/// One sequence's tokens and where their K/V live.
pub struct Sequence {
    pub token_ids: Vec<u32>,
    pub num_computed_tokens: usize,
    pub block_table: BlockTable,
}

impl Sequence {
    pub fn new(block_size: usize) -> Result<Self> {
        Ok(Self { token_ids: Vec::new(), num_computed_tokens: 0, block_table: BlockTable::new(block_size)? })
    }

    /// Keeps the first `num_tokens` tokens (and their cached K/V); later tokens are dropped and
    /// their slots overwritten by whatever comes next.
    pub fn truncate(&mut self, num_tokens: usize) {
        self.token_ids.truncate(num_tokens);
        self.num_computed_tokens = self.num_computed_tokens.min(num_tokens);
    }
}

pub struct ModelRunner {
    pub model: Transformer,
    kv_cache: PagedKvCache,
    pool: BlockPool,
    device: Device,
    /// Generation steps replayed as device graphs (GPU only).
    graphs: Option<DecodeGraphs>,
}

impl ModelRunner {
    pub fn new(model: Transformer, params: RunnerParams, device: &Device) -> Result<Self> {
        let kv_cache = PagedKvCache::new(&model.config, params.num_blocks, params.block_size, params.kv_dtype, device)?;
        let graphs = DecodeGraphs::new(device, 1, params.num_blocks, 512);
        Ok(Self { model, kv_cache, pool: BlockPool::new(params.num_blocks)?, device: device.clone(), graphs })
    }

    pub fn block_size(&self) -> usize {
        self.kv_cache.block_size
    }

    pub fn capacity_tokens(&self) -> usize {
        self.kv_cache.num_blocks * self.kv_cache.block_size
    }

    pub fn new_sequence(&self) -> Result<Sequence> {
        Sequence::new(self.block_size())
    }

    /// Computes the sequence's uncomputed tokens, at most `max_chunk` per step (chunked
    /// prefill), and returns the logits `[vocab]` of its last token.
    pub fn compute(&mut self, seq: &mut Sequence, max_chunk: usize) -> Result<Tensor> {
        let mut last = None;
        while seq.num_computed_tokens < seq.token_ids.len() {
            let end = seq.token_ids.len().min(seq.num_computed_tokens + max_chunk.max(1));
            let logits = self.run(seq, end, LogitRows::Last)?;
            last = Some(logits.squeeze(0)?);
        }
        last.ok_or_else(|| EngineError::Invalid("sequence has no tokens to compute".into()))
    }

    /// Computes all uncomputed tokens in one step and returns `[n, vocab]` logits for each.
    pub fn compute_all_logits(&mut self, seq: &mut Sequence) -> Result<Tensor> {
        let end = seq.token_ids.len();
        if end == seq.num_computed_tokens {
            return Err(EngineError::Invalid("sequence has no tokens to compute".into()));
        }
        self.run(seq, end, LogitRows::All)
    }

    fn run(&mut self, seq: &mut Sequence, end: usize, rows: LogitRows) -> Result<Tensor> {
        seq.block_table.ensure_capacity(end, &mut self.pool)?;
        let input = SequenceInput {
            new_token_ids: seq.token_ids[seq.num_computed_tokens..end].to_vec(),
            num_cached_tokens: seq.num_computed_tokens,
            block_table: seq.block_table.blocks().iter().map(|b| b.0).collect(),
            wants_logits: true,
        };
        let num_new = input.new_token_ids.len();
        let graphed = match (&mut self.graphs, &rows) {
            (Some(graphs), LogitRows::Last) => graphs.forward(&self.model, &self.kv_cache, std::slice::from_ref(&input))?,
            _ => None,
        };
        let logits = match graphed {
            Some(logits) => logits,
            None => {
                if let Some(graphs) = &mut self.graphs {
                    graphs.before_eager_step(num_new);
                }
                let batch = match rows {
                    LogitRows::Last => ForwardBatch::new(std::slice::from_ref(&input), self.block_size(), &self.device)?,
                    LogitRows::All => ForwardBatch::all_logits(&input, self.block_size(), &self.device)?,
                };
                self.model.forward(&batch, &self.kv_cache)?
            }
        };
        seq.num_computed_tokens = end;
        Ok(logits)
    }

    /// Returns the sequence's blocks to the pool.
    pub fn release(&mut self, seq: &mut Sequence) -> Result<()> {
        seq.block_table.release(&mut self.pool)?;
        seq.num_computed_tokens = 0;
        Ok(())
    }
}

enum LogitRows {
    Last,
    All,
}
