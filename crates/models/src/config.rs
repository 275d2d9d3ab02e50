//! `ModelConfig`: the one description of a model's shape, read from a Hugging Face
//! `config.json` or from GGUF metadata (through [`Metadata`], which names each value by its
//! Hugging Face key and its GGUF key so arch files list them once).
//!
//! Invariants (checked by [`ModelConfig::validate`]): `num_heads % num_kv_heads == 0`,
//! `head_dim` even (RoPE), `layer_kinds.len() == num_layers`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;

use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

impl Architecture {
    /// From a Hugging Face `model_type` or a GGUF `general.architecture`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" | "mistral" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma3" | "gemma3_text" => Self::Gemma3,
            "phi3" => Self::Phi3,
            other => return Err(ModelError::UnknownArchitecture(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }
}

/// Which positions a layer's attention sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Global,
    /// Local attention over the last `window` positions, with its own RoPE base.
    Sliding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers when it differs (Gemma 3).
    pub rope_local_theta: Option<f64>,
    pub rope_scaling: Option<RopeScaling>,
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    pub layer_kinds: Vec<LayerKind>,
    /// Multiplier of q·k.
    pub attention_scale: f64,
    pub activation: Activation,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Unsupported(m));
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return bad(format!("{} heads cannot share {} kv heads", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} is odd; RoPE needs it even", self.head_dim));
        }
        if self.layer_kinds.len() != self.num_layers {
            return bad(format!("{} layer kinds for {} layers", self.layer_kinds.len(), self.num_layers));
        }
        if self.layer_kinds.contains(&LayerKind::Sliding) && !self.sliding_window.is_some_and(|w| w > 0) {
            return bad("sliding-window layers without a window size".into());
        }
        if [self.vocab_size, self.hidden_size, self.num_layers, self.num_heads, self.head_dim].contains(&0) {
            return bad("a zero dimension in the model config".into());
        }
        Ok(())
    }

    /// Bytes of K and V per token across all layers, at `bytes_per_element`.
    pub fn kv_bytes_per_token(&self, bytes_per_element: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element
    }
}

/// Model metadata from either source, addressed by (Hugging Face key, GGUF key suffix).
pub enum Metadata<'a> {
    HfConfig(&'a serde_json::Value),
    Gguf { metadata: &'a HashMap<String, gguf_file::Value>, arch: &'a str },
}

/// Which layers a RoPE setting is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RopeLayers {
    Full,
    Sliding,
}

/// A config value's names: the `config.json` key and the GGUF key after `{arch}.`.
#[derive(Clone, Copy)]
pub struct Key {
    pub hf: &'static str,
    pub gguf: &'static str,
}

pub const fn key(hf: &'static str, gguf: &'static str) -> Key {
    Key { hf, gguf }
}

impl Metadata<'_> {
    fn describe(&self, key: Key) -> String {
        match self {
            Self::HfConfig(_) => format!("config.json `{}`", key.hf),
            Self::Gguf { arch, .. } => format!("GGUF `{arch}.{}`", key.gguf),
        }
    }

    /// A number, or `None` when the key is absent (or null).
    pub fn opt_f64(&self, key: Key) -> Result<Option<f64>> {
        let wrong = || ModelError::Unsupported(format!("{} is not a number", self.describe(key)));
        match self {
            Self::HfConfig(json) => match json.get(key.hf) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(wrong),
            },
            Self::Gguf { metadata, arch } => {
                let Some(v) = metadata.get(&format!("{arch}.{}", key.gguf)) else { return Ok(None) };
                use gguf_file::Value as V;
                Ok(Some(match v {
                    V::U8(x) => *x as f64,
                    V::I8(x) => *x as f64,
                    V::U16(x) => *x as f64,
                    V::I16(x) => *x as f64,
                    V::U32(x) => *x as f64,
                    V::I32(x) => *x as f64,
                    V::U64(x) => *x as f64,
                    V::I64(x) => *x as f64,
                    V::F32(x) => *x as f64,
                    V::F64(x) => *x,
                    _ => return Err(wrong()),
                }))
            }
        }
    }

    pub fn f64(&self, key: Key) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| ModelError::MissingMetadata(self.describe(key)))
    }

    pub fn opt_usize(&self, key: Key) -> Result<Option<usize>> {
        match self.opt_f64(key)? {
            Some(v) if v >= 0.0 && v.fract() == 0.0 => Ok(Some(v as usize)),
            Some(v) => Err(ModelError::Unsupported(format!("{} = {v} is not a count", self.describe(key)))),
            None => Ok(None),
        }
    }

    pub fn usize(&self, key: Key) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| ModelError::MissingMetadata(self.describe(key)))
    }

    /// A Hugging Face-only boolean (GGUF encodes the same facts in tensor presence).
    pub fn hf_bool(&self, hf_key: &str) -> Option<bool> {
        match self {
            Self::HfConfig(json) => json.get(hf_key).and_then(|v| v.as_bool()),
            Self::Gguf { .. } => None,
        }
    }

    pub fn hf_value(&self, hf_key: &str) -> Option<&serde_json::Value> {
        match self {
            Self::HfConfig(json) => json.get(hf_key).filter(|v| !v.is_null()),
            Self::Gguf { .. } => None,
        }
    }

    /// transformers ≥ 5 writes RoPE settings as `rope_parameters`, either flat or keyed by
    /// layer type (`full_attention` / `sliding_attention`).
    pub fn hf_rope_parameters(&self, layers: RopeLayers) -> Option<&serde_json::Value> {
        let params = self.hf_value("rope_parameters")?;
        let key = match layers {
            RopeLayers::Full => "full_attention",
            RopeLayers::Sliding => "sliding_attention",
        };
        match params.get(key) {
            Some(per_type) => Some(per_type),
            None if layers == RopeLayers::Full => Some(params),
            None => None,
        }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self, Self::Gguf { .. })
    }
}

/// Keys every architecture shares.
pub mod keys {
    use super::{key, Key};
    pub const VOCAB: Key = key("vocab_size", "vocab_size");
    pub const HIDDEN: Key = key("hidden_size", "embedding_length");
    pub const INTERMEDIATE: Key = key("intermediate_size", "feed_forward_length");
    pub const LAYERS: Key = key("num_hidden_layers", "block_count");
    pub const HEADS: Key = key("num_attention_heads", "attention.head_count");
    pub const KV_HEADS: Key = key("num_key_value_heads", "attention.head_count_kv");
    pub const HEAD_DIM: Key = key("head_dim", "attention.key_length");
    pub const RMS_EPS: Key = key("rms_norm_eps", "attention.layer_norm_rms_epsilon");
    pub const ROPE_THETA: Key = key("rope_theta", "rope.freq_base");
    pub const CONTEXT: Key = key("max_position_embeddings", "context_length");
    pub const SLIDING_WINDOW: Key = key("sliding_window", "attention.sliding_window");
}

/// The fields most architectures read the same way; arch files adjust what differs.
pub fn common_config(meta: &Metadata, arch: Architecture) -> Result<ModelConfig> {
    use keys::*;
    let hidden_size = meta.usize(HIDDEN)?;
    let num_heads = meta.usize(HEADS)?;
    let num_kv_heads = meta.opt_usize(KV_HEADS)?.unwrap_or(num_heads);
    if num_heads == 0 {
        return Err(ModelError::Unsupported("0 attention heads".into()));
    }
    let head_dim = meta.opt_usize(HEAD_DIM)?.unwrap_or(hidden_size / num_heads);
    let num_layers = meta.usize(LAYERS)?;
    let vocab_size = match meta.opt_usize(VOCAB)? {
        Some(v) => v,
        None if meta.is_gguf() => 0, // filled from the embedding tensor by the loader
        None => return Err(ModelError::MissingMetadata(format!("config.json `{}`", VOCAB.hf))),
    };
    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: meta.usize(INTERMEDIATE)?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: meta.opt_f64(RMS_EPS)?.unwrap_or(1e-6),
        rope_theta: match meta.opt_f64(ROPE_THETA)? {
            Some(theta) => theta,
            None => meta.hf_rope_parameters(RopeLayers::Full).and_then(|p| p.get("rope_theta")?.as_f64()).unwrap_or(10_000.0),
        },
        rope_local_theta: None,
        rope_scaling: rope_scaling(meta)?,
        context_length: meta.opt_usize(CONTEXT)?.unwrap_or(4096),
        tie_word_embeddings: meta.hf_bool("tie_word_embeddings").unwrap_or(false),
        sliding_window: None,
        layer_kinds: vec![LayerKind::Global; num_layers],
        attention_scale: (head_dim as f64).powf(-0.5),
        activation: Activation::Silu,
    })
}

fn rope_scaling(meta: &Metadata) -> Result<Option<RopeScaling>> {
    match meta {
        Metadata::HfConfig(json) => {
            let scaling = json.get("rope_scaling").filter(|v| !v.is_null());
            let Some(scaling) = scaling.or_else(|| meta.hf_rope_parameters(RopeLayers::Full)) else { return Ok(None) };
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            let num = |k: &str, default: f64| scaling.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
            match kind {
                "default" => Ok(None),
                "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor", 1.0) })),
                "llama3" => Ok(Some(RopeScaling::Llama3 {
                    factor: num("factor", 8.0),
                    low_freq_factor: num("low_freq_factor", 1.0),
                    high_freq_factor: num("high_freq_factor", 4.0),
                    original_max_position: num("original_max_position_embeddings", 8192.0) as usize,
                })),
                other => Err(ModelError::Unsupported(format!("rope_scaling type `{other}`"))),
            }
        }
        Metadata::Gguf { metadata, arch } => {
            let get = |k: &str| metadata.get(&format!("{arch}.rope.scaling.{k}"));
            match get("type").and_then(|v| v.to_string().ok()).map(String::as_str) {
                None | Some("none") => Ok(None),
                Some("linear") => Ok(Some(RopeScaling::Linear {
                    factor: get("factor").and_then(|v| v.to_f32().ok()).unwrap_or(1.0) as f64,
                })),
                Some(other) => Err(ModelError::Unsupported(format!("GGUF rope scaling `{other}`"))),
            }
        }
    }
}
