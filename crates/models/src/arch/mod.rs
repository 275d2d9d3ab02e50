//! One file per architecture: how its config is read (Hugging Face `config.json` or GGUF
//! metadata) and how its weights combine ([`ArchSpec`]). The forward pass is shared
//! (`transformer`), so an architecture is a description, not a fork.

pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

use crate::config::{Architecture, Metadata, ModelConfig};
use crate::transformer::ArchSpec;
use crate::Result;

/// The config and weight layout of a model of architecture `arch`.
pub fn describe(arch: Architecture, meta: &Metadata) -> Result<(ModelConfig, ArchSpec)> {
    match arch {
        Architecture::Llama => llama::describe(meta),
        Architecture::Qwen2 => qwen2::describe(meta),
        Architecture::Qwen3 => qwen3::describe(meta),
        Architecture::Gemma3 => gemma3::describe(meta),
        Architecture::Phi3 => phi3::describe(meta),
    }
}
