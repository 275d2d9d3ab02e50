//! Serving: many requests at once over one model — the engine thread (`engine_loop`), its
//! async face (`handle`), the `Executor` boundary and the local executor, and per-request
//! output processing (detokenization, stop conditions).
//!
//! Does not own: HTTP (`hearth-server`), scheduling policy and block bookkeeping
//! (`hearth-scheduler`), model math (`hearth-models`).

mod engine_loop;
mod executor;
mod handle;
mod kv_budget;
mod local_executor;
mod output;
mod request;
mod samplers;
mod tensor_parallel_executor;
#[cfg(test)]
mod engine_loop_tests;
#[cfg(test)]
mod tests;

pub use engine_loop::EngineConfig;
pub use executor::{Executor, SampledOutput, SamplingSetup, Submitted};
pub use handle::{DeltaStream, EngineHandle, EngineThread};
pub use kv_budget::KvPoolPlan;
pub use local_executor::{KvPoolParams, LocalExecutor, StepLimits};
pub use tensor_parallel_executor::TensorParallelExecutor;
pub use samplers::{sequence_inputs, token_logprob, RequestSamplers};
pub use request::{
    Delta, EngineRequest, EngineStats, Finish, FinishReason, ModelInfo, TokenLogprob, Usage, MAX_TOP_LOGPROBS,
};
