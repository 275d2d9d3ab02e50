//! The paged KV pool: per layer, K and V tensors of `[num_blocks, block_size, num_kv_heads,
//! head_dim]`. Which blocks belong to which sequence is the scheduler's business; this type
//! only owns the memory.

use candle_core::{DType, Device, Tensor};

use crate::{ModelConfig, Result};

pub struct PagedKvCache {
    /// `(k, v)` per layer.
    pub layers: Vec<(Tensor, Tensor)>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl PagedKvCache {
    pub fn new(config: &ModelConfig, num_blocks: usize, block_size: usize, dtype: DType, device: &Device) -> Result<Self> {
        let shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim);
        let layers = (0..config.num_layers)
            .map(|_| Ok((Tensor::zeros(shape, dtype, device)?, Tensor::zeros(shape, dtype, device)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, num_blocks, block_size })
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }
}
