//! Writing a model as a Hugging Face directory: `config.json` and BF16 `model.safetensors`
//! with Hugging Face tensor names. GGUF's conventions are undone on the way out (Llama's
//! permuted Q/K rows by the GGUF source; Gemma's `1 + w` norms here), so transformers and
//! hearth's own safetensors loader read the result as the original model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use serde_json::json;

use crate::config::{LayerKind, RopeScaling};
use crate::loader::ModelFormat;
use crate::weights::RawTensor;
use crate::{Architecture, ModelError, ModelFiles, Result};

/// Writes `config.json` and `model.safetensors` (BF16) for `files` into `out_dir`.
pub fn export_hf(files: &ModelFiles, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Io { path: out_dir.to_path_buf(), source })?;
    let gemma_norm_offset = files.format == ModelFormat::Gguf && files.config.arch == Architecture::Gemma3;
    let (tensors, has_lm_head) = files.with_source(|source| {
        let mut tensors = HashMap::new();
        for name in source.names() {
            if crate::weights::names::is_ignorable(&name) {
                continue;
            }
            let dense = match source.load(&name, &Device::Cpu)? {
                RawTensor::Quantized(q) => q.dequantize(&Device::Cpu)?,
                RawTensor::Dense(t) => t.to_dtype(DType::F32)?,
            };
            let dense = if gemma_norm_offset && name.ends_with("norm.weight") { (dense - 1.0)? } else { dense };
            tensors.insert(name, dense.to_dtype(DType::BF16)?);
        }
        let has_lm_head = tensors.contains_key("lm_head.weight");
        Ok((tensors, has_lm_head))
    })?;
    let weights_path = out_dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights_path)?;
    let config = hf_config(files, !has_lm_head);
    let config_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Unsupported(e.to_string()))?;
    std::fs::write(&config_path, text).map_err(|source| ModelError::Io { path: config_path, source })?;
    Ok(())
}

fn hf_config(files: &ModelFiles, tie_word_embeddings: bool) -> serde_json::Value {
    let c = &files.config;
    let (model_type, class) = match c.arch {
        Architecture::Llama => ("llama", "LlamaForCausalLM"),
        Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Architecture::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        Architecture::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
        Architecture::Phi3 => ("phi3", "Phi3ForCausalLM"),
    };
    let mut config = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    });
    let Some(map) = config.as_object_mut() else { return config };
    match &c.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            map.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
            map.insert("rope_scaling".into(), json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position,
            }));
        }
        None => {}
    }
    match c.arch {
        Architecture::Gemma3 => {
            let layer_types: Vec<&str> = c
                .layer_kinds
                .iter()
                .map(|k| if *k == LayerKind::Sliding { "sliding_attention" } else { "full_attention" })
                .collect();
            map.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            map.insert("sliding_window".into(), json!(c.sliding_window));
            map.insert("layer_types".into(), json!(layer_types));
            map.insert("rope_local_base_freq".into(), json!(c.rope_local_theta));
            map.insert("query_pre_attn_scalar".into(), json!(c.attention_scale.powi(-2).round()));
        }
        Architecture::Llama | Architecture::Phi3 => {
            if let Some(window) = c.sliding_window {
                map.insert("sliding_window".into(), json!(window));
            }
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {}
    }
    config
}
