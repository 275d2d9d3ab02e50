//! The crate's one error type. Every variant names what was wrong and where (a metadata key, a
//! file path, the template engine's own message), so a user can act on it without a debugger.

use std::path::PathBuf;

/// Result with [`TokenizerError`].
pub type Result<T> = std::result::Result<T, TokenizerError>;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata has no `{key}`; this file does not carry a usable tokenizer")]
    MissingMetadata { key: String },

    #[error("GGUF metadata `{key}` is malformed: {reason}")]
    InvalidMetadata { key: String, reason: String },

    #[error(
        "unsupported tokenizer model \"{model}\" (tokenizer.ggml.model); supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece)"
    )]
    UnsupportedModel { model: String },

    #[error("unsupported BPE pre-tokenizer \"{pre}\" (tokenizer.ggml.pre); supported: {supported}")]
    UnsupportedPreTokenizer { pre: String, supported: String },

    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },

    #[error("{path} is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },

    #[error("{path} is not a valid tokenizer.json: {message}")]
    InvalidTokenizerJson { path: PathBuf, message: String },

    #[error("{path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    /// The `tokenizers` library refused something while building or running the pipeline.
    #[error("{context}: {message}")]
    Backend { context: String, message: String },

    #[error("invalid chat template: {message}")]
    InvalidChatTemplate { message: String },

    #[error("chat template failed to render: {message}")]
    ChatTemplateRender { message: String },

    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    UnknownTokenId { id: u32, vocab_size: usize },

    #[error("cannot write this tokenizer as GGUF metadata: {reason}")]
    NotGgufConvertible { reason: String },

    #[error("BOS was requested but the vocabulary has no BOS token")]
    NoBosToken,
}

impl TokenizerError {
    /// Wraps an error from the `tokenizers` crate with what we were doing.
    pub(crate) fn backend(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::Backend {
            context: context.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn invalid_metadata(key: &str, reason: impl Into<String>) -> Self {
        Self::InvalidMetadata {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
