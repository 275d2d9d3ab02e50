//! The models crate's one error type. Messages name the file, tensor or key at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: invalid safetensors: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: invalid config.json: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("missing model metadata `{0}`")]
    MissingMetadata(String),
    #[error("unsupported architecture `{0}` (supported: llama, mistral, qwen2, qwen3, gemma3, phi3)")]
    UnknownArchitecture(String),
    #[error("unsupported model setting: {0}")]
    Unsupported(String),
    #[error("model weights do not match the architecture:\n{}", .0.join("\n"))]
    TensorProblems(Vec<String>),
    #[error("invalid forward batch: {0}")]
    InvalidBatch(String),
    #[error("not a model: {0}")]
    NotAModel(String),
    #[error("tensor parallelism: {0}")]
    TensorParallel(String),
    #[error("collective communication failed: {0}")]
    Collective(String),
    #[error(transparent)]
    Kernel(#[from] hearth_kernels::KernelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
