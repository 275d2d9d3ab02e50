//! The paged KV pool: per layer, K and V tensors of `[num_blocks, block_size, num_kv_heads,
//! head_dim]`. Which blocks belong to which sequence is the scheduler's business; this type
//! only owns the memory.
//!
//! The tensors hold one block more than `num_blocks`: the scratch block (id `num_blocks`), which
//! no sequence owns. Padding rows of fixed-shape steps write their K/V there.

use candle_core::{DType, Device, Tensor};

use crate::{ModelConfig, Result};

pub struct PagedKvCache {
    /// `(k, v)` per layer, `num_blocks + 1` blocks each (the last is the scratch block).
    pub layers: Vec<(Tensor, Tensor)>,
    /// Blocks available to sequences (ids `0..num_blocks`).
    pub num_blocks: usize,
    pub block_size: usize,
}

impl PagedKvCache {
    pub fn new(config: &ModelConfig, num_blocks: usize, block_size: usize, dtype: DType, device: &Device) -> Result<Self> {
        Self::for_layers(config, config.num_layers, num_blocks, block_size, dtype, device)
    }

    /// A pool for `num_layers` of the model's layers (a pipeline stage holds only its own).
    pub fn for_layers(
        config: &ModelConfig,
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (num_blocks + 1, block_size, config.num_kv_heads, config.head_dim);
        let layers = (0..num_layers)
            .map(|_| Ok((Tensor::zeros(shape, dtype, device)?, Tensor::zeros(shape, dtype, device)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, num_blocks, block_size })
    }

    /// The block no sequence owns, written by padding rows.
    pub fn scratch_block(&self) -> u32 {
        self.num_blocks as u32
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }
}
