//! Qwen3 (dense): the Llama block with per-head RMSNorm of q and k before RoPE, and an explicit
//! `head_dim` that may differ from hidden/heads.

use crate::config::{common_config, Architecture, Metadata, ModelConfig};
use crate::transformer::ArchSpec;
use crate::weights::Bias;
use crate::Result;

pub fn describe(meta: &Metadata) -> Result<(ModelConfig, ArchSpec)> {
    let config = common_config(meta, Architecture::Qwen3)?;
    let qkv_bias = if meta.hf_bool("attention_bias") == Some(true) { Bias::Required } else { Bias::None };
    Ok((config, ArchSpec { qkv_bias, qk_norm: true, ..ArchSpec::LLAMA }))
}
