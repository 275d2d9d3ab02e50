//! `Executor`: "run this step plan" — separated from the engine loop so that where a step runs
//! (this process's CPU or GPU now, remote pipeline stages later) is not the loop's business.
//!
//! Owns: the contract between the loop and whatever executes. Does not own: scheduling,
//! detokenization, stop conditions (the loop's), or the block bookkeeping (the scheduler's;
//! the executor only reads block tables and writes K/V where they point).
//!
//! Contract: `add_request` before a request first appears in a plan; `execute` returns exactly
//! one `SampledOutput` per plan entry with `samples == true`, in plan order; sampling state
//! (seeded RNG, penalty history) lives here and survives preemption; `remove_request` after
//! the request finished or was aborted; when `kv_generation` changes, every block's contents
//! are gone.

use hearth_scheduler::{RequestId, StepPlan};

use super::request::TokenLogprob;
use crate::sampling::SamplingParams;
use crate::Result;

/// How one request wants its tokens chosen.
#[derive(Debug, Clone)]
pub struct SamplingSetup {
    pub params: SamplingParams,
    pub prompt_token_ids: Vec<u32>,
    /// `Some(k)`: report logprobs with `k` alternatives.
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampledOutput {
    pub id: RequestId,
    pub token_id: u32,
    pub logprob: Option<TokenLogprob>,
}

pub trait Executor: Send + 'static {
    /// Registers a request's sampler; fails on invalid sampling parameters.
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> Result<()>;

    /// Forgets a request's sampler (finished or aborted).
    fn remove_request(&mut self, id: RequestId);

    /// Runs one step: computes every planned request's new tokens into the KV cache and
    /// samples a token for each entry with `samples == true`.
    fn execute(&mut self, plan: &StepPlan) -> Result<Vec<SampledOutput>>;

    /// Counts the times the KV cache's contents were lost (a pipeline stage that came back
    /// empty after a reconnect). It changes only inside an `execute` that returns `Err`; the
    /// loop then fails every live request and stops matching blocks cached before.
    fn kv_generation(&self) -> u64 {
        0
    }
}
