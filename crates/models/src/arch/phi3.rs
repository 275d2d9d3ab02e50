//! Phi-3: the Llama block with fused `qkv_proj` and fused `gate_up_proj` weights.
//! LongRoPE ("su"/"longrope") checkpoints are refused with a clear message for now.

use crate::config::{common_config, key, keys, Architecture, LayerKind, Metadata, ModelConfig};
use crate::transformer::ArchSpec;
use crate::{ModelError, Result};

pub fn describe(meta: &Metadata) -> Result<(ModelConfig, ArchSpec)> {
    let mut config = common_config(meta, Architecture::Phi3)?;
    if let Some(partial) = meta.hf_value("partial_rotary_factor").and_then(|v| v.as_f64()) {
        if partial != 1.0 {
            return Err(ModelError::Unsupported(format!("Phi-3 partial_rotary_factor {partial}")));
        }
    }
    if let Some(rope_dims) = meta.opt_usize(key("", "rope.dimension_count"))? {
        if meta.is_gguf() && rope_dims != config.head_dim {
            return Err(ModelError::Unsupported(format!("partial RoPE over {rope_dims} of {} dims", config.head_dim)));
        }
    }
    if let Some(window) = meta.opt_usize(keys::SLIDING_WINDOW)?.filter(|&w| w > 0) {
        // Phi-3 mini's window (2047/262144) exceeds its context: global attention in practice,
        // but we honor it exactly as the reference does.
        config.sliding_window = Some(window);
        config.layer_kinds = vec![LayerKind::Sliding; config.num_layers];
    }
    Ok((config, ArchSpec { fused_qkv: true, fused_gate_up: true, ..ArchSpec::LLAMA }))
}
