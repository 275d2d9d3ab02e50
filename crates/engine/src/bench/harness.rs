//! `BenchHarness`: runs prompt and generation tests through the serving engine's own
//! `LocalExecutor` — step plans built here instead of by the scheduler, everything after that
//! (`ForwardBatch`, the model's forward or a replayed device graph, logits to the host, one
//! `Sampler` per request) exactly as `hearth serve` runs a step.
//!
//! Owns: the executor for the duration of a benchmark, the block layout of each test (disjoint
//! tables, fixed, reused by every run), warm-up and timed runs. Does not own: choosing tests,
//! hardware facts, rooflines (`roofline`), printing.
//!
//! Invariants: a timed region starts after `Device::synchronize` and ends after the sampled
//! tokens are on the host and the device is synchronized again; a generation test's prompts
//! are computed before its region starts. Every run registers fresh requests with the executor
//! and removes them when done.

use std::time::Instant;

use candle_core::{DType, Device};
use hearth_models::{ModelConfig, Transformer};
use hearth_scheduler::{BlockId, RequestId, ScheduledRequest, StepPlan};

use super::roofline::ModelCost;
use super::{disjoint_block_tables, random_token_ids, BenchTest, EnergyMeter, RunSettings, TestMeasurement};
use crate::sampling::SamplingParams;
use crate::serve::{Executor, KvPoolParams, LocalExecutor, SamplingSetup, StepLimits};
use crate::{EngineError, Result};

/// Seed of prompt test token ids; generation sequence `s` uses `GENERATION_SEED + s`.
const PROMPT_SEED: u64 = 0x5eed;
const GENERATION_SEED: u64 = 0x6e6e;

pub struct BenchHarness {
    executor: Box<dyn Executor>,
    pool: KvPoolParams,
    context_length: usize,
    vocab_size: usize,
    /// The whole model's bytes and FLOPs per token (all ranks together).
    cost: ModelCost,
    device: Device,
    next_request_id: u64,
}

/// How the harness's KV pool is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarnessParams {
    pub block_size: usize,
    pub kv_dtype: DType,
}

/// One prompt computed in chunks.
#[derive(Debug, Clone)]
pub struct PromptRun {
    /// Wall time of each chunk's step (device synchronized after each), seconds.
    pub chunk_seconds: Vec<f64>,
    /// From the first chunk's start to the first generated token on the host, seconds.
    pub seconds: f64,
    /// The greedy token after the prompt.
    pub first_token: u32,
}

impl BenchHarness {
    /// The serving executor for `model` with a KV pool and step limits just large enough for
    /// every test in `tests` (run one at a time) at `settings`.
    pub fn new(
        model: Transformer,
        tests: &[BenchTest],
        settings: &RunSettings,
        params: HarnessParams,
        device: &Device,
    ) -> Result<Self> {
        let (pool, limits) = Self::sizes(&model.config, tests, settings, params)?;
        let cost = ModelCost::new(&model, params.kv_dtype);
        let config = model.config.clone();
        let executor = LocalExecutor::new(model, pool, limits, device)?;
        Ok(Self::with_executor(Box::new(executor), &config, cost, pool, device))
    }

    /// A harness over another executor (a tensor-parallel group) whose KV pool has `pool`'s
    /// shape (from [`sizes`](Self::sizes)); `cost` is the whole model's, `device` the one whose
    /// `synchronize` ends a timed region (the executor must synchronize the others itself).
    pub fn with_executor(executor: Box<dyn Executor>, config: &ModelConfig, cost: ModelCost, pool: KvPoolParams, device: &Device) -> Self {
        Self {
            executor,
            pool,
            context_length: config.context_length,
            vocab_size: config.vocab_size,
            cost,
            device: device.clone(),
            next_request_id: 0,
        }
    }

    /// The KV pool and step limits just large enough for every test in `tests` (run one at a
    /// time) at `settings`, after validating them.
    pub fn sizes(config: &ModelConfig, tests: &[BenchTest], settings: &RunSettings, params: HarnessParams) -> Result<(KvPoolParams, StepLimits)> {
        settings.validate()?;
        for test in tests {
            test.validate(config.context_length)?;
        }
        let pool = KvPoolParams {
            num_blocks: Self::kv_blocks_needed(tests, params.block_size),
            block_size: params.block_size,
            dtype: params.kv_dtype,
        };
        let max_batch = tests.iter().map(BenchTest::batch_size).max().unwrap_or(1);
        let max_prompt_step = tests
            .iter()
            .map(|t| match *t {
                BenchTest::Prompt { num_tokens } => num_tokens.min(settings.prompt_chunk),
                BenchTest::Generation { batch_size, num_context_tokens: 1, .. } => batch_size,
                BenchTest::Generation { num_context_tokens, .. } => num_context_tokens.min(settings.prompt_chunk),
            })
            .max()
            .unwrap_or(1);
        let limits = StepLimits {
            max_num_seqs: max_batch,
            max_num_batched_tokens: max_prompt_step.max(max_batch),
            max_model_len: tests.iter().map(BenchTest::max_sequence_len).max().unwrap_or(1),
        };
        Ok((pool, limits))
    }

    /// KV blocks of `block_size` tokens a pool needs to run every test in `tests` (one at a time).
    pub fn kv_blocks_needed(tests: &[BenchTest], block_size: usize) -> usize {
        tests.iter().map(|t| t.kv_blocks(block_size)).max().unwrap_or(0).max(1)
    }

    /// The whole model's bytes and FLOPs per token.
    pub fn cost(&self) -> &ModelCost {
        &self.cost
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Element type of the KV pool.
    pub fn kv_dtype(&self) -> DType {
        self.pool.dtype
    }

    /// `settings.num_warmup_runs` untimed runs of `test`, then `settings.num_timed_runs` timed
    /// ones; `meter` is read just before the first and just after the last timed run.
    /// `after_each_run` is called after every run (progress).
    pub fn measure(
        &mut self,
        test: &BenchTest,
        settings: &RunSettings,
        meter: &mut dyn EnergyMeter,
        after_each_run: &mut dyn FnMut(),
    ) -> Result<TestMeasurement> {
        settings.validate()?;
        test.validate(self.context_length)?;
        let num_blocks = test.kv_blocks(self.pool.block_size);
        if num_blocks > self.pool.num_blocks {
            return Err(EngineError::Invalid(format!(
                "{} at batch {} needs {num_blocks} KV blocks; the pool has {}",
                test.label(),
                test.batch_size(),
                self.pool.num_blocks
            )));
        }
        for _ in 0..settings.num_warmup_runs {
            self.run_once(test, settings)?;
            after_each_run();
        }
        let joules_before = meter.read_joules();
        let mut run_seconds = Vec::with_capacity(settings.num_timed_runs);
        for _ in 0..settings.num_timed_runs {
            run_seconds.push(self.run_once(test, settings)?);
            after_each_run();
        }
        let joules = match (joules_before, meter.read_joules()) {
            (Some(before), Some(after)) if after >= before => Some(after - before),
            _ => None,
        };
        Ok(TestMeasurement { test: *test, run_seconds, joules })
    }

    /// One run of `test`; returns its timed seconds.
    fn run_once(&mut self, test: &BenchTest, settings: &RunSettings) -> Result<f64> {
        match *test {
            BenchTest::Prompt { num_tokens } => {
                let tokens = random_token_ids(num_tokens, self.vocab_size, PROMPT_SEED);
                let table = &disjoint_block_tables(1, num_tokens, self.pool.block_size)[0];
                Ok(self.compute_prompt(&tokens, table, settings.prompt_chunk)?.seconds)
            }
            BenchTest::Generation { num_steps, batch_size, num_context_tokens } => {
                self.generate(num_steps, batch_size, num_context_tokens, settings.prompt_chunk)
            }
        }
    }

    /// Computes one sequence's `tokens` from an empty cache into the blocks of `block_table`,
    /// `chunk` tokens per step, sampling (greedy) after the last.
    pub fn compute_prompt(&mut self, tokens: &[u32], block_table: &[u32], chunk: usize) -> Result<PromptRun> {
        if tokens.is_empty() || chunk == 0 {
            return Err(EngineError::Invalid(
                "a prompt run needs at least one token and a chunk of at least one".into(),
            ));
        }
        let id = self.add_request(tokens)?;
        self.device.synchronize()?;
        let start = Instant::now();
        let result = self.prefill(id, tokens, block_table, chunk);
        let seconds = start.elapsed().as_secs_f64();
        self.executor.remove_request(id);
        let (first_token, chunk_seconds) = result?;
        Ok(PromptRun { chunk_seconds, seconds, first_token })
    }

    /// Steps request `id` through `tokens` in chunks; returns the token sampled after the last
    /// chunk and each chunk's seconds (device synchronized after each).
    fn prefill(&mut self, id: RequestId, tokens: &[u32], block_table: &[u32], chunk: usize) -> Result<(u32, Vec<f64>)> {
        let block_table: Vec<BlockId> = block_table.iter().map(|&b| BlockId(b)).collect();
        let mut chunk_seconds = Vec::with_capacity(tokens.len().div_ceil(chunk));
        let mut first_token = None;
        for (chunk_idx, new_tokens) in tokens.chunks(chunk).enumerate() {
            let chunk_start = Instant::now();
            let num_computed_tokens = chunk_idx * chunk;
            let samples = num_computed_tokens + new_tokens.len() == tokens.len();
            let outputs = self.step(vec![ScheduledRequest {
                id,
                num_computed_tokens,
                new_token_ids: new_tokens.to_vec(),
                block_table: block_table.clone(),
                samples,
                num_cached_prompt_tokens: 0,
            }])?;
            self.device.synchronize()?;
            chunk_seconds.push(chunk_start.elapsed().as_secs_f64());
            first_token = outputs.first().map(|o| o.0).or(first_token);
        }
        let first_token =
            first_token.ok_or_else(|| EngineError::Invalid("the executor sampled no token after the prompt".into()))?;
        Ok((first_token, chunk_seconds))
    }

    /// `batch_size` sequences: each prompt (`num_context_tokens` tokens) untimed, then
    /// `num_steps` timed steps of one token per sequence, greedy.
    fn generate(
        &mut self,
        num_steps: usize,
        batch_size: usize,
        num_context_tokens: usize,
        chunk: usize,
    ) -> Result<f64> {
        let tables = disjoint_block_tables(batch_size, num_context_tokens + num_steps, self.pool.block_size);
        let vocab_size = self.vocab_size;
        let prompts: Vec<Vec<u32>> = (0..batch_size)
            .map(|s| random_token_ids(num_context_tokens, vocab_size, GENERATION_SEED + s as u64))
            .collect();
        let ids = prompts.iter().map(|p| self.add_request(p)).collect::<Result<Vec<_>>>()?;
        let result = self.generate_requests(&ids, &prompts, &tables, num_steps, chunk);
        for id in ids {
            self.executor.remove_request(id);
        }
        result
    }

    fn generate_requests(
        &mut self,
        ids: &[RequestId],
        prompts: &[Vec<u32>],
        tables: &[Vec<u32>],
        num_steps: usize,
        chunk: usize,
    ) -> Result<f64> {
        let num_context_tokens = prompts.first().map_or(0, Vec::len);
        let block_tables: Vec<Vec<BlockId>> = tables.iter().map(|t| t.iter().map(|&b| BlockId(b)).collect()).collect();
        let mut next_tokens: Vec<u32> = if num_context_tokens == 1 {
            // All one-token prompts in one step, as the scheduler would batch them.
            let requests = ids
                .iter()
                .zip(prompts)
                .zip(&block_tables)
                .map(|((&id, prompt), table)| ScheduledRequest {
                    id,
                    num_computed_tokens: 0,
                    new_token_ids: prompt.clone(),
                    block_table: table.clone(),
                    samples: true,
                    num_cached_prompt_tokens: 0,
                })
                .collect();
            self.step(requests)?.into_iter().map(|(token_id, _)| token_id).collect()
        } else {
            let mut first_tokens = Vec::with_capacity(ids.len());
            for ((&id, prompt), table) in ids.iter().zip(prompts).zip(tables) {
                first_tokens.push(self.prefill(id, prompt, table, chunk)?.0);
            }
            first_tokens
        };

        self.device.synchronize()?;
        let start = Instant::now();
        for step_idx in 0..num_steps {
            let requests = ids
                .iter()
                .zip(&next_tokens)
                .zip(&block_tables)
                .map(|((&id, &token_id), table)| ScheduledRequest {
                    id,
                    num_computed_tokens: num_context_tokens + step_idx,
                    new_token_ids: vec![token_id],
                    block_table: table.clone(),
                    samples: true,
                    num_cached_prompt_tokens: 0,
                })
                .collect();
            next_tokens = self.step(requests)?.into_iter().map(|(token_id, _)| token_id).collect();
        }
        self.device.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Registers a greedy request whose prompt is `prompt`.
    fn add_request(&mut self, prompt: &[u32]) -> Result<RequestId> {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        let setup =
            SamplingSetup { params: SamplingParams::greedy(), prompt_token_ids: prompt.to_vec(), logprobs: None };
        self.executor.add_request(id, setup)?;
        Ok(id)
    }

    /// Executes one plan of `requests`; returns `(token, request)` for each sampling request,
    /// in plan order, checking the executor answered every one.
    fn step(&mut self, requests: Vec<ScheduledRequest>) -> Result<Vec<(u32, RequestId)>> {
        let num_batched_tokens = requests.iter().map(|r| r.new_token_ids.len()).sum();
        let expected: Vec<RequestId> = requests.iter().filter(|r| r.samples).map(|r| r.id).collect();
        let plan = StepPlan { requests, preempted: Vec::new(), num_batched_tokens };
        let outputs = self.executor.execute(&plan)?;
        if outputs.iter().map(|o| o.id).ne(expected.iter().copied()) {
            return Err(EngineError::Invalid(format!(
                "the executor returned {} tokens for {} sampling requests",
                outputs.len(),
                expected.len()
            )));
        }
        Ok(outputs.into_iter().map(|o| (o.token_id, o.id)).collect())
    }
}
