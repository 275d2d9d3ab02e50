//! Qwen2 / Qwen2.5: the Llama block with biases on the q, k and v projections.

use crate::config::{common_config, Architecture, Metadata, ModelConfig};
use crate::transformer::ArchSpec;
use crate::weights::Bias;
use crate::Result;

pub fn describe(meta: &Metadata) -> Result<(ModelConfig, ArchSpec)> {
    // Qwen2's `sliding_window` in config.json is inert unless `use_sliding_window` is set,
    // which no released checkpoint does; we attend globally like the reference.
    let config = common_config(meta, Architecture::Qwen2)?;
    Ok((config, ArchSpec { qkv_bias: Bias::Required, ..ArchSpec::LLAMA }))
}
