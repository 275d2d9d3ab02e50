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
//! the request finished or was aborted, and never while a step holding it is in flight; when
//! `kv_generation` changes, every block's contents are gone.
//!
//! Steps in flight (pipeline stages compute different steps at once): the loop may `submit`
//! up to `max_steps_in_flight` steps before completing the oldest. Steps in flight share no
//! request (the scheduler leaves requests in flight out of new plans). An executor computes
//! the steps in flight in submission order wherever they share a device or stage, so a block
//! freed by an aborted request and handed to a newer step is written by the newer step last.
//! `complete_oldest` returns the oldest step that `submit` answered `InFlight`, each once. By
//! default a step runs synchronously inside `submit` (`Submitted::Ran`), and nothing is ever in
//! flight: executors without a pipeline only implement `execute`. `execute` is not mixed with
//! `submit` while steps are in flight.

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

/// What `submit` did with a step.
#[derive(Debug)]
pub enum Submitted {
    /// The step already ran: its outputs (as `execute` returns them).
    Ran(Vec<SampledOutput>),
    /// The step is computing; a later `complete_oldest` returns it.
    InFlight,
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

    /// The most steps this executor computes at once (submitted, not yet completed); at
    /// least 1.
    fn max_steps_in_flight(&self) -> usize {
        1
    }

    /// Starts a step. `Err`: the step failed (as `execute` fails) and is not in flight.
    fn submit(&mut self, plan: &StepPlan) -> Result<Submitted> {
        self.execute(plan).map(Submitted::Ran)
    }

    /// Waits for the oldest step in flight and returns its outputs (as `execute` does), or the
    /// error that failed it; either way it is no longer in flight.
    fn complete_oldest(&mut self) -> Result<Vec<SampledOutput>> {
        Err(crate::EngineError::Invalid("this executor runs every step inside submit; none is in flight".into()))
    }
}
