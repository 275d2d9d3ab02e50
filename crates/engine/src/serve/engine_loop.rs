//! The engine thread: drain commands → `schedule` → `submit` (while the executor takes more
//! steps in flight and the scheduler finds requests not in flight) → complete the oldest step
//! → process outputs → `update`, until every handle and stream is gone.
//!
//! Owns: the `Scheduler`, the `Executor`, the plans in flight (submitted, not completed;
//! oldest first), each live request's `OutputProcessor` and delta sender, and publishing
//! `EngineStats` after every step. Does not own: HTTP, prompt rendering, or how a step is
//! computed.
//!
//! Invariants: a request is in `requests` exactly while the scheduler knows it; every request
//! that leaves gets exactly one final delta (unless its stream was dropped, which is what
//! removed it); at most `max_steps_in_flight` plans are in flight and they share no request;
//! outputs of a request that left while its step was in flight are dropped, and its sampler is
//! removed only once that step completed; the thread blocks on the command channel whenever
//! it has nothing to run and nothing in flight; after the executor reports a KV loss
//! (`kv_generation`), no live request survives — those in other steps in flight included —
//! and no block cached before is matched again.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hearth_scheduler::{NewRequest, RequestId, SampledToken, Scheduler, SchedulerConfig, StepPlan};
use hearth_tokenizer::Tokenizer;

use super::executor::{Executor, SampledOutput, SamplingSetup, Submitted};
use super::handle::DeltaSender;
use super::output::OutputProcessor;
use super::request::{EngineRequest, EngineStats};
use crate::{EngineError, Result};

/// Sizes and limits of a serving engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool (the executor's cache has the same number).
    pub num_blocks: usize,
    /// Most tokens computed in one step (all requests together).
    pub max_num_batched_tokens: usize,
    /// Most requests in one step.
    pub max_num_seqs: usize,
    /// The model's context length: prompt + max_tokens must fit.
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// Distinguishes this model's cached blocks from another's with the same tokens.
    pub cache_salt: u64,
}

impl EngineConfig {
    fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            max_model_len: self.max_model_len,
        }
    }
}

pub(crate) enum Command {
    Add { id: RequestId, request: EngineRequest, deltas: DeltaSender },
    Abort(RequestId),
}

/// Starts the engine thread; returns the sender its handles use.
pub(crate) fn spawn(
    executor: Box<dyn Executor>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    stats: Arc<Mutex<EngineStats>>,
    running: Arc<AtomicBool>,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>)> {
    let scheduler = Scheduler::new(config.scheduler_config())?;
    let (commands_tx, commands) = mpsc::channel();
    let kv_generation = executor.kv_generation();
    let engine = EngineLoop {
        scheduler,
        executor,
        tokenizer,
        config,
        requests: HashMap::new(),
        in_flight: VecDeque::new(),
        commands,
        stats,
        kv_generation,
    };
    let thread = std::thread::Builder::new()
        .name("hearth-engine".into())
        .spawn(move || {
            let _running = RunningFlag(running);
            engine.run()
        })
        .map_err(|err| EngineError::Invalid(format!("cannot start the engine thread: {err}")))?;
    Ok((commands_tx, thread))
}

/// Clears the shared "engine is running" flag when the thread ends, even by panic.
struct RunningFlag(Arc<AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct LiveRequest {
    output: OutputProcessor,
    deltas: DeltaSender,
}

struct EngineLoop {
    scheduler: Scheduler,
    executor: Box<dyn Executor>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    requests: HashMap<RequestId, LiveRequest>,
    /// Plans the executor answered `Submitted::InFlight`, oldest first.
    in_flight: VecDeque<StepPlan>,
    commands: Receiver<Command>,
    stats: Arc<Mutex<EngineStats>>,
    /// The executor's `kv_generation` the cached blocks belong to.
    kv_generation: u64,
}

impl EngineLoop {
    /// The salt of new requests' block hashes: the model's, changed with each KV generation so
    /// that blocks cached before a KV loss never match again.
    fn cache_salt(&self) -> u64 {
        self.config.cache_salt ^ self.kv_generation.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Requests to run or steps to complete.
    fn has_work(&self) -> bool {
        self.scheduler.has_unfinished() || !self.in_flight.is_empty()
    }

    fn run(mut self) {
        // The pool's size is known before any request: readers never see an empty snapshot.
        self.publish_stats();
        loop {
            if !self.has_work() {
                // Idle: sleep until a command arrives; all senders gone means shut down.
                match self.commands.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return,
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.has_work() => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if self.has_work() {
                self.step();
            }
            self.publish_stats();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Add { id, request, deltas } => self.add(id, request, deltas),
            Command::Abort(id) => self.remove(id),
        }
    }

    fn add(&mut self, id: RequestId, request: EngineRequest, deltas: DeltaSender) {
        let output = OutputProcessor::new(self.tokenizer.clone(), &request);
        let setup = SamplingSetup {
            params: request.sampling.clone(),
            prompt_token_ids: request.prompt_token_ids.clone(),
            logprobs: request.logprobs,
        };
        let new_request = NewRequest {
            id,
            prompt_token_ids: request.prompt_token_ids,
            max_tokens: request.max_tokens,
            cache_salt: self.cache_salt(),
        };
        let added = self
            .executor
            .add_request(id, setup)
            .and_then(|()| self.scheduler.add_request(new_request).map_err(EngineError::from));
        if let Err(err) = added {
            self.executor.remove_request(id);
            let _ = deltas.send(output.failed(err.to_string()));
            return;
        }
        self.requests.insert(id, LiveRequest { output, deltas });
    }

    /// Forgets a request everywhere (abort, or its stream is gone). A step in flight still
    /// samples for it: its sampler goes when that step completes (`forget_samplers`).
    fn remove(&mut self, id: RequestId) {
        self.scheduler.abort_request(id);
        self.requests.remove(&id);
        if !self.is_in_flight(id) {
            self.executor.remove_request(id);
        }
    }

    fn is_in_flight(&self, id: RequestId) -> bool {
        self.in_flight.iter().any(|plan| plan.requests.iter().any(|entry| entry.id == id))
    }

    /// Fills the executor's free step slots, then completes the oldest step in flight.
    fn step(&mut self) {
        self.submit_steps();
        if let Some(plan) = self.in_flight.pop_front() {
            let outputs = self.executor.complete_oldest();
            self.forget_samplers(&plan);
            self.finish_step(&plan, outputs);
        }
    }

    /// Submits plans while fewer than `max_steps_in_flight` are in flight (at most that many
    /// per call, so a synchronous executor runs one step per loop iteration) and the scheduler
    /// finds requests not in flight; the free slots' plans split those requests evenly.
    fn submit_steps(&mut self) {
        let num_free = self.executor.max_steps_in_flight().max(1).saturating_sub(self.in_flight.len());
        for slot_idx in 0..num_free {
            // Each free slot's plan gets its share of the requests not in flight.
            let plan = self.scheduler.schedule_share(num_free - slot_idx);
            if plan.requests.is_empty() {
                if plan.preempted.is_empty() && self.in_flight.is_empty() {
                    // Nothing runnable, nothing freed, nothing in flight: cannot happen while
                    // every request fits the pool alone (add_request checks); fail loudly
                    // rather than spin.
                    self.fail_all("the scheduler could not place any request".into());
                }
                return;
            }
            for scheduled in &plan.requests {
                if let Some(live) = self.requests.get_mut(&scheduled.id) {
                    live.output.set_cached_tokens(scheduled.num_cached_prompt_tokens);
                }
            }
            match self.executor.submit(&plan) {
                Ok(Submitted::InFlight) => self.in_flight.push_back(plan),
                Ok(Submitted::Ran(outputs)) => self.finish_step(&plan, Ok(outputs)),
                Err(err) => self.finish_step(&plan, Err(err)),
            }
        }
    }

    /// Removes the samplers of `plan`'s requests that left while it was in flight.
    fn forget_samplers(&mut self, plan: &StepPlan) {
        for entry in &plan.requests {
            if !self.requests.contains_key(&entry.id) {
                self.executor.remove_request(entry.id);
            }
        }
    }

    /// Applies a completed step, or fails its requests (and, after a KV loss, every request).
    fn finish_step(&mut self, plan: &StepPlan, outputs: Result<Vec<SampledOutput>>) {
        let err = match outputs {
            Ok(outputs) => return self.apply(plan, outputs),
            Err(err) => err,
        };
        tracing::error!("step failed: {err}");
        let message = format!("the engine failed to run a step: {err}");
        for scheduled in &plan.requests {
            self.fail(scheduled.id, message.clone());
        }
        let generation = self.executor.kv_generation();
        if generation != self.kv_generation {
            // Every request's K/V (running, cached, or in another step in flight) is gone:
            // fail them all, and new requests hash their blocks with a new salt.
            self.kv_generation = generation;
            self.fail_all(format!("the KV cache was lost: {err}"));
        }
    }

    /// Turns sampled tokens into deltas, applies the step to the scheduler, and only then
    /// sends the deltas: a client that sees its final delta sees its blocks already freed.
    fn apply(&mut self, plan: &StepPlan, outputs: Vec<SampledOutput>) {
        let mut sampled = Vec::with_capacity(outputs.len());
        let mut deltas = Vec::with_capacity(outputs.len());
        for output in outputs {
            let Some(live) = self.requests.get_mut(&output.id) else { continue };
            let delta = live.output.push(output.token_id, output.logprob).unwrap_or_else(|err| live.output.failed(format!("detokenization failed: {err}")));
            sampled.push(SampledToken { id: output.id, token_id: output.token_id, finished: delta.finish.is_some() });
            deltas.push((output.id, delta));
        }
        if let Err(err) = self.scheduler.update(plan, &sampled) {
            // A broken contract between loop and scheduler: nothing can be trusted any more.
            tracing::error!("scheduler update failed: {err}");
            self.fail_all(format!("internal scheduler error: {err}"));
            return;
        }
        self.publish_stats();
        for (id, delta) in deltas {
            let finished = delta.finish.is_some();
            let receiver_gone = self.requests.get(&id).is_none_or(|live| live.deltas.send(delta).is_err());
            if finished {
                self.executor.remove_request(id);
                self.requests.remove(&id);
            } else if receiver_gone {
                self.remove(id);
            }
        }
    }

    fn fail(&mut self, id: RequestId, message: String) {
        if let Some(live) = self.requests.get(&id) {
            let _ = live.deltas.send(live.output.failed(message));
            self.remove(id);
        }
    }

    fn fail_all(&mut self, message: String) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.fail(id, message.clone());
        }
    }

    fn publish_stats(&self) {
        let scheduler = self.scheduler.stats();
        let stats = EngineStats {
            num_running: scheduler.num_running,
            num_waiting: scheduler.num_waiting,
            num_kv_blocks_used: scheduler.num_blocks_used,
            num_kv_blocks_total: scheduler.num_blocks_total,
            num_prefix_query_tokens: scheduler.num_prefix_query_tokens,
            num_prefix_hit_tokens: scheduler.num_prefix_hit_tokens,
            num_preemptions: scheduler.num_preemptions,
        };
        if let Ok(mut shared) = self.stats.lock() {
            *shared = stats;
        }
    }
}
