//! The engine: runs models step by step over the paged KV cache and turns logits into tokens.
//!
//! Owns: the model runner (`runner`: a model, its KV pool and block pool; executes one step),
//! single-sequence generation (`generate`, what `hearth run` drives), the perplexity protocol
//! (`perplexity`) and sampling (`sampling`, fast path beside a reference twin).
//! Does not own: HTTP, chat templates (callers render them), file formats (`hearth-models`).
//! Serving many requests at once (`serve`): the engine thread, its async handle, the executor.
//! Microbenchmarks of the step with roofline accounting (`bench`, for `hearth bench`).

pub mod bench;
pub mod generate;
pub mod perplexity;
pub mod runner;
pub mod sampling;
pub mod serve;

pub use generate::{FinishReason, GenerateParams, Generation, GenerationStats};
pub use runner::{ModelRunner, RunnerParams, Sequence};

/// The engine crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] hearth_models::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] hearth_tokenizer::TokenizerError),
    #[error(transparent)]
    Sampling(#[from] sampling::SamplingError),
    #[error("KV cache: {0}")]
    Cache(#[from] hearth_scheduler::SchedulerError),
    #[error("prompt of {num_prompt_tokens} tokens plus {max_new_tokens} new tokens exceeds the model's context of {context_length} tokens")]
    ContextOverflow { num_prompt_tokens: usize, max_new_tokens: usize, context_length: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A step's work outside this process failed (e.g. a pipeline stage died); the message
    /// names the part at fault.
    #[error("{0}")]
    Execution(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;
