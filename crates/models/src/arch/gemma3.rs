//! Gemma 3 (text): embeddings scaled by sqrt(hidden), GeGLU (tanh GELU) MLP, q/k RMSNorm,
//! four norms per block, and interleaved sliding-window (local RoPE base) / global layers.
//!
//! Hugging Face stores norms as `w` applied as `1 + w`; llama.cpp's GGUF stores `1 + w`. The
//! spec folds the 1 in for HF files so one RMSNorm serves both.

use crate::config::{common_config, key, keys, Activation, Architecture, LayerKind, Metadata, ModelConfig, RopeLayers};
use crate::transformer::ArchSpec;
use crate::{ModelError, Result};

/// llama.cpp's fixed Gemma 3 pattern: every sixth layer is global.
const DEFAULT_SLIDING_PATTERN: usize = 6;
const DEFAULT_LOCAL_ROPE_THETA: f64 = 10_000.0;

pub fn describe(meta: &Metadata) -> Result<(ModelConfig, ArchSpec)> {
    let mut config = common_config(meta, Architecture::Gemma3)?;
    config.activation = Activation::GeluTanh;
    if meta.hf_bool("tie_word_embeddings").is_none() {
        config.tie_word_embeddings = true;
    }
    config.sliding_window = Some(meta.opt_usize(keys::SLIDING_WINDOW)?.unwrap_or(4096));
    let local_theta = match meta.opt_f64(key("rope_local_base_freq", "rope.local_freq_base"))? {
        Some(theta) => theta,
        None => meta
            .hf_rope_parameters(RopeLayers::Sliding)
            .and_then(|p| p.get("rope_theta")?.as_f64())
            .unwrap_or(DEFAULT_LOCAL_ROPE_THETA),
    };
    config.rope_local_theta = Some(local_theta);
    let query_pre_attn_scalar = meta
        .opt_f64(key("query_pre_attn_scalar", "attention.query_pre_attn_scalar"))?
        .unwrap_or(config.head_dim as f64);
    config.attention_scale = query_pre_attn_scalar.powf(-0.5);
    config.layer_kinds = layer_kinds(meta, config.num_layers)?;
    if meta.hf_value("final_logit_softcapping").is_some() || meta.hf_value("attn_logit_softcapping").is_some() {
        return Err(ModelError::Unsupported("Gemma logit soft-capping".into()));
    }
    let spec = ArchSpec {
        qk_norm: true,
        sandwich_norms: true,
        scale_embeddings: true,
        norm_weight_offset: if meta.is_gguf() { 0.0 } else { 1.0 },
        ..ArchSpec::LLAMA
    };
    Ok((config, spec))
}

fn layer_kinds(meta: &Metadata, num_layers: usize) -> Result<Vec<LayerKind>> {
    if let Some(types) = meta.hf_value("layer_types").and_then(|v| v.as_array()) {
        let kinds = types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(LayerKind::Sliding),
                Some("full_attention") => Ok(LayerKind::Global),
                other => Err(ModelError::Unsupported(format!("Gemma 3 layer type {other:?}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(kinds);
    }
    let pattern = meta
        .opt_usize(key("sliding_window_pattern", "attention.sliding_window_pattern"))?
        .unwrap_or(DEFAULT_SLIDING_PATTERN)
        .max(1);
    Ok((0..num_layers)
        .map(|i| if (i + 1) % pattern == 0 { LayerKind::Global } else { LayerKind::Sliding })
        .collect())
}
