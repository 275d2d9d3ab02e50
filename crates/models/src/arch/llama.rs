//! Llama 2/3, SmolLM2, Mistral: pre-norm blocks, SwiGLU MLP, RoPE (optionally Llama-3 scaled),
//! grouped-query attention, optional attention bias, optional uniform sliding window (Mistral).

use crate::config::{common_config, keys, Architecture, LayerKind, Metadata, ModelConfig};
use crate::transformer::ArchSpec;
use crate::weights::Bias;
use crate::Result;

pub fn describe(meta: &Metadata) -> Result<(ModelConfig, ArchSpec)> {
    let mut config = common_config(meta, Architecture::Llama)?;
    if let Some(window) = meta.opt_usize(keys::SLIDING_WINDOW)?.filter(|&w| w > 0) {
        config.sliding_window = Some(window);
        config.layer_kinds = vec![LayerKind::Sliding; config.num_layers];
    }
    let qkv_bias = match meta.hf_bool("attention_bias") {
        Some(true) => Bias::Required,
        Some(false) => Bias::None,
        None => Bias::IfPresent,
    };
    Ok((config, ArchSpec { qkv_bias, ..ArchSpec::LLAMA }))
}
