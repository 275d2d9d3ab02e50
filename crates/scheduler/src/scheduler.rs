//! `Scheduler`: the continuous-batching policy — admission, per-step token budgets, chunking,
//! preemption — over requests and the prefix-cached block pool.
//!
//! Owns: the request set, the waiting queue (FIFO; preempted requests go to its front), the
//! running list (admission order, oldest first), and the counters behind `stats`. Does not
//! own: block bookkeeping (`KvCacheManager`), hashing (`prefix_cache`), sampling, or tensors.
//!
//! Protocol: `schedule` -> run the plan -> `update(&plan, &sampled)`. Several plans may be in
//! flight at once (a pipeline computes one step per stage): a plan's requests are *in flight*
//! from the `schedule` that planned them to the `update` of that plan (or their abort), and a
//! later `schedule` leaves them out, so plans in flight never share a request. Plans in flight
//! may be updated in any order, each exactly once. `abort_request` may come at any point;
//! `update` skips plan entries of requests aborted since `schedule`.
//!
//! Policy, each step: running requests not in flight (oldest first) each get `min(uncomputed,
//! budget left)` tokens. A request that cannot grow its table preempts the newest running
//! request neither in this plan nor in flight, until it fits. A request in flight is never
//! preempted: its step is writing K/V into its blocks. If no such victim is left:
//! - when newer running requests are in flight, the request *stalls*: it keeps its blocks and
//!   waits for their plans to come back, when it will preempt them. (Preempting itself
//!   instead let a newer request take its blocks, and two requests could trade places
//!   forever, each re-admitted from the prefix cache and preempted again: a livelock the
//!   property tests found with two plans in flight.)
//! - when it is the newest running request, it preempts itself.
//!
//! Either way no more running requests are scheduled this step. So the oldest running
//! request is only ever preempted by itself, when alone, which never happens (`add_request`
//! admits only requests that fit the pool alone): it always progresses, and all finish.
//! `schedule_share(num_plans)` plans at most its share of the requests not in flight
//! (`ceil(n / num_plans)`), so that plans scheduled one after another for a pipeline's free
//! slots split the requests evenly instead of the first taking all. Then, only if memory was
//! not short this step (nobody preempted or stalled; a request preempted in this step must
//! not re-enter the same plan), waiting requests are admitted FIFO with their longest cached
//! prefix while the budget, `max_num_seqs` and free blocks allow; the first that does not
//! fit stops admission (FIFO order is kept).
//!
//! Prefix-cache accounting: query and hit tokens are counted once per request, at its first
//! admission (a preempted request's re-admission also reuses the cache but is not counted, so
//! the hit rate describes prompts, not recomputation).
//!
//! Invariants: see `invariants.rs` (`check_invariants`).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::block_table::BlockTable;
use crate::config::SchedulerConfig;
use crate::error::SchedulerError;
use crate::kv_cache_manager::KvCacheManager;
use crate::plan::{SampledToken, ScheduledRequest, SchedulerStats, StepPlan};
use crate::request::{NewRequest, Request, RequestId, RequestStatus};

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) kv: KvCacheManager,
    pub(crate) requests: HashMap<RequestId, Request>,
    /// Waiting and preempted requests, front first.
    pub(crate) waiting: VecDeque<RequestId>,
    /// Running requests in admission order (oldest first).
    pub(crate) running: Vec<RequestId>,
    /// Requests of plans handed out by `schedule` and not yet `update`d (all running).
    pub(crate) in_flight: HashSet<RequestId>,
    num_prefix_query_tokens: u64,
    num_prefix_hit_tokens: u64,
    num_preemptions: u64,
    /// Shape of the last plan, re-checked by `check_invariants`.
    pub(crate) last_plan_check: Result<(), String>,
    /// First bookkeeping error from a call that cannot return one (`schedule`, `abort`);
    /// such errors mean a bug, and `check_invariants` reports them.
    pub(crate) internal_error: Option<SchedulerError>,
}

/// How growing a running request's table ended.
enum Growth {
    Grown,
    /// No victim was left and newer running requests are in flight: it waits, keeping its
    /// blocks.
    Stalled,
    /// No victim was left and it was the newest running request.
    PreemptedItself,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        Ok(Self {
            kv: KvCacheManager::new(config.num_blocks, config.block_size)?,
            config,
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            in_flight: HashSet::new(),
            num_prefix_query_tokens: 0,
            num_prefix_hit_tokens: 0,
            num_preemptions: 0,
            last_plan_check: Ok(()),
            internal_error: None,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request. Rejects an empty prompt, `max_tokens == 0`, a duplicate id (of an
    /// unfinished request), prompt + max_tokens over `max_model_len`, and requests that could
    /// not run even alone (prompt + max_tokens need more blocks than the pool has).
    pub fn add_request(&mut self, request: NewRequest) -> Result<(), SchedulerError> {
        let id = request.id;
        let num_prompt_tokens = request.prompt_token_ids.len();
        let max_tokens = request.max_tokens;
        if num_prompt_tokens == 0 {
            return Err(SchedulerError::EmptyPrompt { id });
        }
        if max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens { id });
        }
        if self.requests.contains_key(&id) {
            return Err(SchedulerError::DuplicateRequest { id });
        }
        let max_model_len = self.config.max_model_len;
        let num_tokens = num_prompt_tokens
            .checked_add(max_tokens)
            .filter(|&num_tokens| num_tokens <= max_model_len)
            .ok_or(SchedulerError::ExceedsModelLen {
                id,
                num_prompt_tokens,
                max_tokens,
                max_model_len,
            })?;
        let num_blocks_needed = self.kv.num_blocks_for(num_tokens);
        if num_blocks_needed > self.config.num_blocks {
            return Err(SchedulerError::ExceedsPoolCapacity {
                id,
                num_tokens,
                num_blocks_needed,
                num_blocks: self.config.num_blocks,
            });
        }
        let block_table = BlockTable::new(self.config.block_size)?;
        self.requests.insert(id, Request::new(request, block_table));
        self.waiting.push_back(id);
        Ok(())
    }

    /// Builds the next step's plan (see the module header for the policy).
    pub fn schedule(&mut self) -> StepPlan {
        self.schedule_share(1)
    }

    /// Builds a plan that is one of `num_plans` to be scheduled now: with at most
    /// `ceil(n / num_plans)` requests, `n` being the requests not in flight.
    pub fn schedule_share(&mut self, num_plans: usize) -> StepPlan {
        let num_not_in_flight = self.requests.len().saturating_sub(self.in_flight.len());
        let max_num_requests = num_not_in_flight.div_ceil(num_plans.max(1));
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut running_idx = 0;
        let mut memory_short = false;
        while running_idx < self.running.len() && budget > 0 && plan.requests.len() < max_num_requests {
            let id = self.running[running_idx];
            let Some(request) = self.requests.get(&id) else {
                self.note_internal(SchedulerError::UnknownRequest { id });
                self.running.remove(running_idx);
                continue;
            };
            let num_new_tokens = request.num_uncomputed_tokens().min(budget);
            if num_new_tokens == 0 || self.in_flight.contains(&id) {
                running_idx += 1;
                continue;
            }
            match self.grow_or_preempt(running_idx, num_new_tokens, &mut plan.preempted) {
                Growth::Stalled | Growth::PreemptedItself => {
                    memory_short = true;
                    break;
                }
                Growth::Grown => {
                    if let Some(request) = self.requests.get(&id) {
                        plan.requests.push(scheduled(request, num_new_tokens));
                    }
                    budget -= num_new_tokens;
                    running_idx += 1;
                }
            }
        }
        if !memory_short && plan.preempted.is_empty() {
            self.admit_waiting(&mut plan, &mut budget, max_num_requests);
        }
        plan.num_batched_tokens = self.config.max_num_batched_tokens - budget;
        self.last_plan_check = plan.check_budgets(&self.config);
        self.in_flight.extend(plan.requests.iter().map(|entry| entry.id));
        plan
    }

    /// Grows `running[running_idx]`'s table by `num_new_tokens`, preempting the newest running
    /// requests not in flight after it until it fits; then, if none is left, it stalls (newer
    /// requests are in flight) or preempts itself (it is the newest). `running[running_idx]`
    /// itself is not in flight.
    fn grow_or_preempt(
        &mut self,
        running_idx: usize,
        num_new_tokens: usize,
        preempted: &mut Vec<RequestId>,
    ) -> Growth {
        loop {
            let id = self.running[running_idx];
            let grown = match self.requests.get_mut(&id) {
                Some(request) => self.kv.allocate_for_step(request, num_new_tokens).is_ok(),
                None => false,
            };
            if grown {
                return Growth::Grown;
            }
            let newer = running_idx + 1..self.running.len();
            let victim_idx = newer
                .clone()
                .rev()
                .find(|&idx| !self.in_flight.contains(&self.running[idx]));
            let victim_idx = match victim_idx {
                Some(idx) => idx,
                None if !newer.is_empty() => return Growth::Stalled,
                None => running_idx,
            };
            let victim = self.running.remove(victim_idx);
            self.preempt(victim);
            preempted.push(victim);
            if victim_idx == running_idx {
                return Growth::PreemptedItself;
            }
        }
    }

    fn preempt(&mut self, id: RequestId) {
        if let Some(request) = self.requests.get_mut(&id) {
            request.status = RequestStatus::Preempted;
            if let Err(err) = self.kv.free(request) {
                self.internal_error.get_or_insert(err);
            }
        }
        self.waiting.push_front(id);
        self.num_preemptions += 1;
    }

    fn admit_waiting(&mut self, plan: &mut StepPlan, budget: &mut usize, max_num_requests: usize) {
        while let Some(&id) = self.waiting.front() {
            if *budget == 0
                || self.running.len() >= self.config.max_num_seqs
                || plan.requests.len() >= max_num_requests
            {
                break;
            }
            let Some(request) = self.requests.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            let cached = self.kv.find_cached_prefix(request);
            let num_cached_tokens = cached.len() * self.config.block_size;
            let num_new_tokens = (request.num_tokens() - num_cached_tokens).min(*budget);
            if self
                .kv
                .allocate_for_admission(request, &cached, num_new_tokens)
                .is_err()
            {
                break;
            }
            self.waiting.pop_front();
            request.status = RequestStatus::Running;
            if request.num_cached_prompt_tokens.is_none() {
                request.num_cached_prompt_tokens = Some(num_cached_tokens);
                self.num_prefix_query_tokens += request.num_prompt_tokens() as u64;
                self.num_prefix_hit_tokens += num_cached_tokens as u64;
            }
            self.running.push(id);
            plan.requests.push(scheduled(request, num_new_tokens));
            *budget -= num_new_tokens;
        }
    }

    /// Applies a step's results: advances each entry's `num_computed_tokens` by its new
    /// tokens, registers newly full blocks in the prefix cache, appends each sampled token, and
    /// frees (status Finished, then forgotten) requests whose sample has `finished`, and ends
    /// the plan's flight (its requests may be scheduled again). `sampled` holds exactly one
    /// entry per plan entry with `samples` (any order); entries of requests aborted since
    /// `schedule` are skipped, with or without their samples. Errors, with nothing applied:
    /// missing/duplicate/unexpected samples, a non-finishing `max_tokens`-th sample, a plan
    /// that does not match the requests (`StalePlan`: applied twice, or not from `schedule`).
    pub fn update(
        &mut self,
        plan: &StepPlan,
        sampled: &[SampledToken],
    ) -> Result<(), SchedulerError> {
        let samples = self.validate_update(plan, sampled)?;
        for entry in &plan.requests {
            self.in_flight.remove(&entry.id);
            let Some(request) = self.requests.get_mut(&entry.id) else {
                continue; // aborted since `schedule`
            };
            request.num_computed_tokens += entry.new_token_ids.len();
            self.kv.cache_full_blocks(request)?;
            let Some(sample) = samples.get(&entry.id) else {
                continue;
            };
            if sample.finished {
                self.remove_request(entry.id, RequestStatus::Finished)?;
            } else {
                request.append_token(sample.token_id);
            }
        }
        Ok(())
    }

    /// Checks `update`'s preconditions; returns the samples by request id.
    fn validate_update<'a>(
        &self,
        plan: &StepPlan,
        sampled: &'a [SampledToken],
    ) -> Result<HashMap<RequestId, &'a SampledToken>, SchedulerError> {
        let mut samples = HashMap::with_capacity(sampled.len());
        for sample in sampled {
            let id = sample.id;
            if !plan
                .requests
                .iter()
                .any(|entry| entry.id == id && entry.samples)
            {
                return Err(SchedulerError::UnexpectedSample { id });
            }
            if samples.insert(id, sample).is_some() {
                return Err(SchedulerError::DuplicateSample { id });
            }
        }
        let mut seen = HashSet::with_capacity(plan.requests.len());
        for entry in &plan.requests {
            let id = entry.id;
            let sample = samples.get(&id);
            let Some(request) = self.requests.get(&id) else {
                continue; // aborted since `schedule`: its sample does not matter
            };
            if entry.samples && sample.is_none() {
                return Err(SchedulerError::MissingSample { id });
            }
            let num_tokens_after = entry.num_computed_tokens + entry.new_token_ids.len();
            let consistent = request.status == RequestStatus::Running
                && self.in_flight.contains(&id)
                && request.num_computed_tokens == entry.num_computed_tokens
                && num_tokens_after <= request.num_tokens()
                && entry.samples == (num_tokens_after == request.num_tokens())
                && seen.insert(id);
            if !consistent {
                return Err(SchedulerError::StalePlan {
                    id,
                    plan_num_computed_tokens: entry.num_computed_tokens,
                    num_computed_tokens: request.num_computed_tokens,
                    status: request.status,
                });
            }
            let num_output_tokens = request.num_output_tokens() + 1;
            if sample.is_some_and(|s| !s.finished) && num_output_tokens >= request.max_tokens {
                return Err(SchedulerError::MaxTokensExceeded {
                    id,
                    num_output_tokens,
                    max_tokens: request.max_tokens,
                });
            }
        }
        Ok(samples)
    }

    /// Removes the request wherever it is and frees its blocks at once. Returns false if the
    /// id is unknown (never added, or already finished or aborted).
    pub fn abort_request(&mut self, id: RequestId) -> bool {
        match self.remove_request(id, RequestStatus::Aborted) {
            Ok(found) => found,
            Err(err) => {
                self.internal_error.get_or_insert(err);
                true
            }
        }
    }

    /// Forgets `id` (leaving it with `status`) and frees its blocks; false if unknown.
    fn remove_request(
        &mut self,
        id: RequestId,
        status: RequestStatus,
    ) -> Result<bool, SchedulerError> {
        let Some(mut request) = self.requests.remove(&id) else {
            return Ok(false);
        };
        self.waiting.retain(|&waiting_id| waiting_id != id);
        self.running.retain(|&running_id| running_id != id);
        self.in_flight.remove(&id);
        request.status = status;
        self.kv.free(&mut request)?;
        Ok(true)
    }

    fn note_internal(&mut self, err: SchedulerError) {
        self.internal_error.get_or_insert(err);
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting + preempted.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Whether `id` is in a plan handed out by `schedule` and not yet `update`d.
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.in_flight.contains(&id)
    }

    /// Status of an unfinished request; `None` once it finished or was aborted.
    pub fn request_status(&self, id: RequestId) -> Option<RequestStatus> {
        self.requests.get(&id).map(|request| request.status)
    }

    pub fn stats(&self) -> SchedulerStats {
        let pool = self.kv.pool();
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            num_blocks_used: pool.num_used(),
            num_blocks_total: pool.num_total(),
            num_cached_blocks: pool.num_cached_blocks(),
            num_prefix_query_tokens: self.num_prefix_query_tokens,
            num_prefix_hit_tokens: self.num_prefix_hit_tokens,
            num_preemptions: self.num_preemptions,
        }
    }
}

/// `request`'s plan entry for `num_new_tokens` past its computed tokens.
fn scheduled(request: &Request, num_new_tokens: usize) -> ScheduledRequest {
    let start = request.num_computed_tokens;
    let end = start + num_new_tokens;
    // Callers keep `end <= num_tokens`; an empty entry would fail `check_budgets`.
    let new_token_ids = request.token_ids().get(start..end).unwrap_or_default();
    ScheduledRequest {
        id: request.id,
        num_computed_tokens: start,
        new_token_ids: new_token_ids.to_vec(),
        block_table: request.block_table.blocks().to_vec(),
        samples: end == request.num_tokens(),
        num_cached_prompt_tokens: request.num_cached_prompt_tokens.unwrap_or(0),
    }
}
