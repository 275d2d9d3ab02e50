//! Tensor names: llama.cpp's GGUF names mapped to Hugging Face names, which the model code uses.
//!
//! The mapping depends on the architecture only where llama.cpp reuses a name: `ffn_norm` is the
//! pre-MLP norm (Hugging Face `post_attention_layernorm` for Llama-style models, but
//! `pre_feedforward_layernorm` for Gemma 3, whose `post_attention_layernorm` is GGUF's
//! `post_attention_norm`), and Phi-3's fused `ffn_up` holds gate and up together.

use crate::Architecture;

/// Hugging Face name for a GGUF tensor name, or `None` when there is no counterpart.
pub fn gguf_to_hf(arch: Architecture, gguf: &str) -> Option<String> {
    let global = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => Some("rope_freqs.weight"),
        _ => None,
    };
    if let Some(name) = global {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (stem, suffix) = rest.rsplit_once('.')?;
    let hf_stem = match (stem, arch) {
        ("attn_norm", _) => "input_layernorm",
        ("attn_q", _) => "self_attn.q_proj",
        ("attn_k", _) => "self_attn.k_proj",
        ("attn_v", _) => "self_attn.v_proj",
        ("attn_qkv", _) => "self_attn.qkv_proj",
        ("attn_output", _) => "self_attn.o_proj",
        ("attn_q_norm", _) => "self_attn.q_norm",
        ("attn_k_norm", _) => "self_attn.k_norm",
        ("ffn_norm", Architecture::Gemma3) => "pre_feedforward_layernorm",
        ("ffn_norm", _) => "post_attention_layernorm",
        ("post_attention_norm", _) => "post_attention_layernorm",
        ("post_ffw_norm", _) => "post_feedforward_layernorm",
        ("ffn_gate", _) => "mlp.gate_proj",
        ("ffn_up", Architecture::Phi3) => "mlp.gate_up_proj",
        ("ffn_up", _) => "mlp.up_proj",
        ("ffn_down", _) => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_stem}.{suffix}"))
}

/// Tensors a file may carry that no model needs (precomputed RoPE tables and the like).
pub fn is_ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || name == "rope_freqs.weight"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_norm_maps_by_architecture() {
        assert_eq!(
            gguf_to_hf(Architecture::Llama, "blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(
            gguf_to_hf(Architecture::Gemma3, "blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            gguf_to_hf(Architecture::Gemma3, "blk.0.post_attention_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
    }

    #[test]
    fn unknown_names_have_no_mapping() {
        assert_eq!(gguf_to_hf(Architecture::Llama, "blk.x.attn_q.weight"), None);
        assert_eq!(gguf_to_hf(Architecture::Llama, "mystery.weight"), None);
    }
}
