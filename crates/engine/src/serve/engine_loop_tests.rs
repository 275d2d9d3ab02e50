//! The engine loop with several steps in flight, over `FakePipeline` (an executor that keeps
//! up to two steps in flight and completes one per permit from the test): plans in flight
//! never share a request; a request aborted while its step is in flight loses that step's
//! outputs and keeps its sampler until the step completed, while the others generate every
//! token; a KV loss reported by one step fails the requests of the other step in flight too;
//! the engine thread stops, its executor dropped, only once every handle and stream is gone.
//! Test-only; owns nothing at run time.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_scheduler::{RequestId, StepPlan};

use super::executor::{Executor, SampledOutput, SamplingSetup, Submitted};
use super::handle::{DeltaStream, EngineHandle};
use super::request::{EngineRequest, FinishReason, ModelInfo};
use super::tests::tokenizer;
use super::EngineConfig;
use crate::{EngineError, Result};

/// The first token `FakePipeline` samples for a request; each later one is one more.
const FIRST_TOKEN: u32 = 1000;
/// A permit not given within this long fails the step (a test that forgot to give one).
const PERMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// What `FakePipeline` saw, for the test to check.
#[derive(Default)]
struct FakeLog {
    max_steps_in_flight: usize,
    /// Broken contracts: a request in two steps in flight, a sampler removed while its step
    /// was in flight, a step completed without a sampler for a request.
    violations: Vec<String>,
    removed: Vec<RequestId>,
    /// The request ids of each step in flight, oldest first.
    in_flight: Vec<Vec<RequestId>>,
    /// `complete_oldest` waits for a permit.
    waiting_for_permit: bool,
    num_permits_taken: usize,
    /// Fail the first completion with another step in flight, reporting a KV loss.
    lose_kv_with_two_in_flight: bool,
    lost_kv: bool,
    /// The executor was dropped (the engine thread is stopping).
    dropped: bool,
}

struct FakePipeline {
    in_flight: VecDeque<StepPlan>,
    /// Tokens sampled so far per request.
    samplers: HashMap<RequestId, u32>,
    permits: Receiver<()>,
    log: Arc<Mutex<FakeLog>>,
    kv_generation: u64,
}

impl Drop for FakePipeline {
    fn drop(&mut self) {
        self.log.lock().unwrap().dropped = true;
    }
}

impl FakePipeline {
    fn in_flight_ids(&self) -> Vec<Vec<RequestId>> {
        self.in_flight.iter().map(|plan| plan.requests.iter().map(|entry| entry.id).collect()).collect()
    }

    fn sample(&mut self, plan: &StepPlan) -> Result<Vec<SampledOutput>> {
        let mut outputs = Vec::new();
        for entry in plan.requests.iter().filter(|entry| entry.samples) {
            let Some(num_sampled) = self.samplers.get_mut(&entry.id) else {
                let message = format!("request {} has no sampler", entry.id);
                self.log.lock().unwrap().violations.push(message.clone());
                return Err(EngineError::Invalid(message));
            };
            outputs.push(SampledOutput { id: entry.id, token_id: FIRST_TOKEN + *num_sampled, logprob: None });
            *num_sampled += 1;
        }
        Ok(outputs)
    }
}

impl Executor for FakePipeline {
    fn add_request(&mut self, id: RequestId, _setup: SamplingSetup) -> Result<()> {
        self.samplers.insert(id, 0);
        Ok(())
    }

    fn remove_request(&mut self, id: RequestId) {
        let mut log = self.log.lock().unwrap();
        if self.in_flight.iter().any(|plan| plan.requests.iter().any(|entry| entry.id == id)) {
            log.violations.push(format!("sampler of request {id} removed while its step is in flight"));
        }
        log.removed.push(id);
        self.samplers.remove(&id);
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<Vec<SampledOutput>> {
        self.sample(plan)
    }

    fn kv_generation(&self) -> u64 {
        self.kv_generation
    }

    fn max_steps_in_flight(&self) -> usize {
        2
    }

    fn submit(&mut self, plan: &StepPlan) -> Result<Submitted> {
        let mut log = self.log.lock().unwrap();
        for entry in &plan.requests {
            if self.in_flight.iter().any(|other| other.requests.iter().any(|e| e.id == entry.id)) {
                log.violations.push(format!("request {} is in two steps in flight", entry.id));
            }
        }
        self.in_flight.push_back(plan.clone());
        log.max_steps_in_flight = log.max_steps_in_flight.max(self.in_flight.len());
        log.in_flight = self.in_flight_ids();
        Ok(Submitted::InFlight)
    }

    fn complete_oldest(&mut self) -> Result<Vec<SampledOutput>> {
        self.log.lock().unwrap().waiting_for_permit = true;
        let permitted = self.permits.recv_timeout(PERMIT_TIMEOUT);
        let plan = self.in_flight.pop_front().ok_or_else(|| EngineError::Invalid("no step in flight".into()))?;
        permitted.map_err(|_| EngineError::Execution("no permit to complete the step".into()))?;
        {
            let mut log = self.log.lock().unwrap();
            log.waiting_for_permit = false;
            log.num_permits_taken += 1;
            log.in_flight = self.in_flight_ids();
            if log.lose_kv_with_two_in_flight && !self.in_flight.is_empty() && !log.lost_kv {
                log.lost_kv = true;
                self.kv_generation += 1;
                return Err(EngineError::Execution("a stage came back empty".into()));
            }
        }
        self.sample(&plan)
    }
}

/// An engine over a `FakePipeline` whose steps hold at most 4 tokens (so two prompts of 12
/// tokens are chunked into alternating steps), the sender of its permits, and its log.
fn engine(lose_kv_with_two_in_flight: bool) -> (EngineHandle, Sender<()>, Arc<Mutex<FakeLog>>) {
    let (permits_tx, permits) = mpsc::channel();
    let log = Arc::new(Mutex::new(FakeLog { lose_kv_with_two_in_flight, ..FakeLog::default() }));
    let executor = FakePipeline { in_flight: VecDeque::new(), samplers: HashMap::new(), permits, log: log.clone(), kv_generation: 0 };
    let tokenizer = tokenizer();
    let config = EngineConfig {
        block_size: 4,
        num_blocks: 64,
        max_num_batched_tokens: 4,
        max_num_seqs: 8,
        max_model_len: 64,
        vocab_size: tokenizer.vocab_size(),
        cache_salt: 1,
    };
    let info = ModelInfo {
        name: "fake".into(),
        architecture: "llama".into(),
        context_length: 64,
        quantization: "F32".into(),
        num_parameters: 0,
        format: "gguf".into(),
        size_bytes: 0,
        created: 0,
    };
    (EngineHandle::spawn(Box::new(executor), tokenizer, info, config).unwrap(), permits_tx, log)
}

fn add(handle: &EngineHandle, first_token: u32, max_tokens: usize) -> DeltaStream {
    let mut request = EngineRequest::greedy((first_token..first_token + 12).collect(), max_tokens);
    request.ignore_eos = true;
    handle.add(request).unwrap()
}

/// The stream's token ids up to its final delta, or the error it finished with.
fn collect(runtime: &tokio::runtime::Runtime, stream: &mut DeltaStream) -> std::result::Result<Vec<u32>, String> {
    runtime.block_on(async {
        let mut token_ids = Vec::new();
        while let Some(delta) = stream.recv().await {
            token_ids.extend(&delta.token_ids);
            if let Some(finish) = delta.finish {
                return match finish.reason {
                    FinishReason::Error(message) => Err(message),
                    _ => Ok(token_ids),
                };
            }
        }
        Err("the stream ended without a final delta".into())
    })
}

fn give_permits(permits: &Sender<()>, num_permits: usize) {
    for _ in 0..num_permits {
        permits.send(()).unwrap();
    }
}

/// Waits (at most 10 s) until the engine blocks for permit `num_given + 1`; returns the
/// request ids of the steps in flight then, oldest first.
fn in_flight_when_blocked(log: &Mutex<FakeLog>, num_given: usize) -> Vec<Vec<RequestId>> {
    for _ in 0..1000 {
        {
            let log = log.lock().unwrap();
            if log.waiting_for_permit && log.num_permits_taken == num_given {
                return log.in_flight.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the engine never waited for permit {}", num_given + 1);
}

#[test]
fn the_engine_thread_stops_with_its_executor_dropped_once_every_handle_and_stream_is_gone() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (handle, permits, log) = engine(false);
    let mut thread = handle.take_engine_thread().expect("the first take gets the thread");
    assert!(handle.take_engine_thread().is_none(), "the thread is taken once");
    let mut stream = add(&handle, 10, 2);
    give_permits(&permits, 64);
    assert_eq!(collect(&runtime, &mut stream).unwrap(), vec![FIRST_TOKEN, FIRST_TOKEN + 1]);
    let clone = handle.clone();
    drop(handle);
    assert!(!thread.join_within(Duration::from_millis(50)), "a handle is left: the engine keeps running");
    assert!(!log.lock().unwrap().dropped);
    drop(clone);
    assert!(!thread.join_within(Duration::from_millis(50)), "a stream is left: the engine keeps running");
    drop(stream);
    assert!(thread.join_within(Duration::from_secs(10)), "the engine thread did not stop");
    assert!(log.lock().unwrap().dropped, "the executor is dropped before the thread ends");
    assert!(thread.join_within(Duration::ZERO), "a stopped thread stays stopped");
}

#[test]
fn a_request_aborted_while_its_step_is_in_flight_loses_only_its_own_outputs() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (handle, permits, log) = engine(false);
    let mut kept = add(&handle, 10, 8);
    let aborted = add(&handle, 30, 8);
    let aborted_id = aborted.request_id();
    // Step until the engine completes a step while the aborted request's step is in flight
    // behind it: the abort then arrives with that step still in flight.
    let mut num_given = 0;
    while !in_flight_when_blocked(&log, num_given).get(1).is_some_and(|ids| ids.contains(&aborted_id)) {
        assert!(num_given < 4, "the two prompts never had steps in flight together");
        give_permits(&permits, 1);
        num_given += 1;
    }
    drop(aborted);
    give_permits(&permits, 64);
    let tokens = collect(&runtime, &mut kept).unwrap();
    assert_eq!(tokens, (FIRST_TOKEN..FIRST_TOKEN + 8).collect::<Vec<_>>());
    let log = log.lock().unwrap();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert_eq!(log.max_steps_in_flight, 2, "the two requests' steps were in flight together");
    assert!(log.removed.contains(&aborted_id), "the aborted request's sampler is removed once its step completed");
    assert!(handle.is_running());
}

#[test]
fn a_kv_loss_in_one_step_fails_the_requests_of_the_other_step_in_flight() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (handle, permits, log) = engine(true);
    let mut first = add(&handle, 10, 8);
    let mut second = add(&handle, 30, 8);
    give_permits(&permits, 64);
    let messages = [collect(&runtime, &mut first).unwrap_err(), collect(&runtime, &mut second).unwrap_err()];
    assert!(log.lock().unwrap().lost_kv);
    assert!(messages.iter().any(|m| m.contains("failed to run a step") && m.contains("came back empty")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("KV cache was lost")), "{messages:?}");
    // The step still in flight completes later; its outputs are dropped. New requests run.
    let mut third = add(&handle, 50, 4);
    assert_eq!(collect(&runtime, &mut third).unwrap(), (FIRST_TOKEN..FIRST_TOKEN + 4).collect::<Vec<_>>());
    let log = log.lock().unwrap();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert_eq!(log.max_steps_in_flight, 2);
}
