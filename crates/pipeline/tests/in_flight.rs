//! Several steps in flight through a `PipelineExecutor` (one step per stage at a time):
//! - served through the engine with several concurrent requests over 2 and 3 loopback stages,
//!   depth = stages generates exactly the greedy tokens of depth 1, with log-probabilities
//!   within F32 tolerance, and really had that many steps in flight;
//! - over two slow fake stages (each answers a step after a fixed delay), depth 2 keeps both
//!   stages busy at once and finishes the same steps in clearly less time than depth 1;
//! - a stage that dies while two steps are in flight fails both, naming it, without a hang.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::*;
use hearth_cluster::FrameKind;
use hearth_engine::sampling::SamplingParams;
use hearth_engine::serve::{EngineRequest, Executor, FinishReason, SampledOutput, SamplingSetup, Submitted};
use hearth_models::ModelFiles;
use hearth_pipeline::{PipelineExecutor, PipelineParams, PoolShape, StageDescription, StageLocation, StageMessage, WireTensor};
use hearth_scheduler::{BlockId, RequestId, ScheduledRequest, StepPlan};

/// Log-probabilities of the same tokens computed in different batches (F32 on the CPU).
const LOGPROB_TOLERANCE: f32 = 1e-4;

/// Delegates to a `PipelineExecutor` and records the most steps it had in flight.
struct CountingExecutor {
    inner: PipelineExecutor,
    num_in_flight: usize,
    max_in_flight: Arc<AtomicUsize>,
}

impl Executor for CountingExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> hearth_engine::Result<()> {
        self.inner.add_request(id, setup)
    }

    fn remove_request(&mut self, id: RequestId) {
        self.inner.remove_request(id);
    }

    fn execute(&mut self, plan: &StepPlan) -> hearth_engine::Result<Vec<SampledOutput>> {
        self.inner.execute(plan)
    }

    fn kv_generation(&self) -> u64 {
        self.inner.kv_generation()
    }

    fn max_steps_in_flight(&self) -> usize {
        self.inner.max_steps_in_flight()
    }

    fn submit(&mut self, plan: &StepPlan) -> hearth_engine::Result<Submitted> {
        let submitted = self.inner.submit(plan)?;
        if matches!(submitted, Submitted::InFlight) {
            self.num_in_flight += 1;
            self.max_in_flight.fetch_max(self.num_in_flight, Ordering::Relaxed);
        }
        Ok(submitted)
    }

    fn complete_oldest(&mut self) -> hearth_engine::Result<Vec<SampledOutput>> {
        self.num_in_flight -= 1;
        self.inner.complete_oldest()
    }
}

/// Each request's generated tokens and their log-probabilities.
type Generations = Vec<(Vec<u32>, Vec<f32>)>;

/// Serves `prompts` at once through the pipeline with at most `depth` steps in flight; returns
/// the generations and the most steps that were in flight. Steps batch at most 6 tokens, so the
/// prompts are chunked and land in different steps.
fn serve(model_path: &Path, ranges: &[std::ops::Range<usize>], stage0_local: bool, depth: usize, prompts: &[Vec<u32>]) -> (Generations, usize) {
    let files = ModelFiles::open(model_path).unwrap();
    let (mut pipeline, _threads) = open_pipeline(model_path, ranges, if stage0_local { Stage0::InCoordinator } else { Stage0::Remote });
    pipeline.set_max_steps_in_flight(depth);
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let executor = CountingExecutor { inner: pipeline, num_in_flight: 0, max_in_flight: max_in_flight.clone() };
    let handle = start_engine(executor, &files, 6);
    let mut streams: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let mut request = EngineRequest::greedy(prompt.clone(), 5);
            request.ignore_eos = true;
            request.logprobs = Some(2);
            handle.add(request).unwrap()
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let generations = streams
        .iter_mut()
        .map(|stream| {
            runtime.block_on(async {
                let (mut token_ids, mut logprobs) = (Vec::new(), Vec::new());
                while let Some(delta) = stream.recv().await {
                    token_ids.extend(&delta.token_ids);
                    logprobs.extend(delta.logprobs.iter().map(|l| l.logprob));
                    if let Some(finish) = delta.finish {
                        assert!(!matches!(finish.reason, FinishReason::Error(_)), "{:?}", finish.reason);
                        break;
                    }
                }
                (token_ids, logprobs)
            })
        })
        .collect();
    (generations, max_in_flight.load(Ordering::Relaxed))
}

fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    (0..4u32).map(|r| (0..9 + 2 * r).map(|i| (i * 37 + 11 * r + 5) % vocab).collect()).collect()
}

fn assert_same_generations(what: &str, got: &Generations, want: &Generations) {
    for (request_idx, ((got_ids, got_lp), (want_ids, want_lp))) in got.iter().zip(want).enumerate() {
        assert_eq!(got_ids, want_ids, "{what}: request {request_idx}: greedy tokens differ");
        let diff = got_lp.iter().zip(want_lp).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(diff <= LOGPROB_TOLERANCE, "{what}: request {request_idx}: logprob max abs diff {diff} > {LOGPROB_TOLERANCE}");
    }
}

#[test]
fn steps_in_flight_generate_what_one_step_at_a_time_generates_over_two_and_three_stages() {
    let path = fixture_dir("gemma3").join("model.gguf");
    let vocab = ModelFiles::open(&path).unwrap().config.vocab_size as u32;
    let prompts = prompts(vocab);
    for (ranges, stage0_local) in [(vec![0..3, 3..6], false), (vec![0..2, 2..4, 4..6], true)] {
        let what = format!("stages {ranges:?} (stage 0 {})", if stage0_local { "local" } else { "remote" });
        let (one_at_a_time, max_one) = serve(&path, &ranges, stage0_local, 1, &prompts);
        let (in_flight, max_in_flight) = serve(&path, &ranges, stage0_local, ranges.len(), &prompts);
        assert_eq!(max_one, 1, "{what}: depth 1 keeps one step in flight");
        assert_eq!(max_in_flight, ranges.len(), "{what}: depth {} never had that many steps in flight", ranges.len());
        assert_same_generations(&what, &in_flight, &one_at_a_time);
        assert!(in_flight.iter().all(|(ids, _)| ids.len() == 5), "{what}: {in_flight:?}");
    }
}

#[test]
fn steps_in_flight_generate_what_one_step_at_a_time_generates_on_smollm2() {
    let Some(path) = smollm2() else { return };
    let vocab = ModelFiles::open(&path).unwrap().config.vocab_size as u32;
    let prompts = prompts(vocab);
    let ranges = [0..15, 15..30];
    let (one_at_a_time, _) = serve(&path, &ranges, true, 1, &prompts);
    let (in_flight, max_in_flight) = serve(&path, &ranges, true, 2, &prompts);
    assert_eq!(max_in_flight, 2);
    assert_same_generations("SmolLM2 in 2 stages", &in_flight, &one_at_a_time);
}

/// A fake stage: answers `Open` with `description` and each step, after `delay`, with zeros of
/// the right shape (a hidden state, or logits when it is the last stage); counts in `busy`
/// how many fake stages compute at once (and the most in `max_busy`). With `die_at_first_step`
/// it closes the connection when the first step arrives instead. Its thread ends when the
/// coordinator closes the connection (or after 30 s of silence).
struct FakeStage {
    address: SocketAddr,
}

#[derive(Default)]
struct BusyCount {
    busy: AtomicUsize,
    max_busy: AtomicUsize,
}

struct FakeStageParams {
    description: StageDescription,
    delay: Duration,
    die_at_first_step: bool,
    busy: Arc<BusyCount>,
}

impl FakeStage {
    fn start(params: FakeStageParams) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut connection = hearth_cluster::Connection::accept(stream, &handshake(), &connection_timing(), |_| Ok(())).unwrap();
            connection.set_limits(hearth_pipeline::PIPELINE_FRAME_LIMITS);
            // Bounded: a coordinator that stops talking for 30 s ends the fake.
            while let Ok(frame) = connection.recv_frame(Duration::from_secs(30)) {
                let reply = match StageMessage::decode(&frame.payload).unwrap() {
                    StageMessage::Open { .. } => StageMessage::Ready(params.description.clone()),
                    StageMessage::Step { .. } if params.die_at_first_step => break,
                    StageMessage::Step { step_id, sequences, .. } => {
                        let count = &params.busy;
                        let num_busy = count.busy.fetch_add(1, Ordering::SeqCst) + 1;
                        count.max_busy.fetch_max(num_busy, Ordering::SeqCst);
                        std::thread::sleep(params.delay);
                        count.busy.fetch_sub(1, Ordering::SeqCst);
                        fake_output(&params.description, step_id, &sequences)
                    }
                    other => panic!("a fake stage does not take {}", other.name()),
                };
                if connection.send_frame(FrameKind::Activation, &reply.encode()).is_err() {
                    break;
                }
            }
            connection.shutdown();
        });
        Self { address }
    }
}

fn fake_output(description: &StageDescription, step_id: u64, sequences: &[hearth_models::SequenceInput]) -> StageMessage {
    let is_last = description.layer_end == description.num_layers;
    let (kind, rows, cols) = if is_last {
        let num_rows = sequences.iter().filter(|s| s.wants_logits).count();
        (hearth_pipeline::OutputKind::Logits, num_rows, description.vocab_size as usize)
    } else {
        let num_rows = sequences.iter().map(|s| s.new_token_ids.len()).sum();
        (hearth_pipeline::OutputKind::Hidden, num_rows, description.hidden_size as usize)
    };
    let tensor = WireTensor::from_tensor(&Tensor::zeros((rows, cols), DType::F32, &Device::Cpu).unwrap()).unwrap();
    StageMessage::Output { step_id, kind, tensor }
}

/// Two fake stages over the golden llama's two layers, the second dying at its first step if
/// asked; and the executor over them.
fn fake_pipeline(delay: Duration, second_dies: bool, busy: &Arc<BusyCount>) -> (PipelineExecutor, [FakeStage; 2]) {
    let files = ModelFiles::open(&fixture_dir("llama")).unwrap();
    let description = |layer_start, layer_end| StageDescription {
        layer_start,
        layer_end,
        num_layers: 2,
        hidden_size: files.config.hidden_size as u32,
        vocab_size: files.config.vocab_size as u32,
    };
    let first = FakeStage::start(FakeStageParams { description: description(0, 1), delay, die_at_first_step: false, busy: busy.clone() });
    let second = FakeStage::start(FakeStageParams { description: description(1, 2), delay, die_at_first_step: second_dies, busy: busy.clone() });
    let dialer = dialer();
    let params = PipelineParams {
        config: &files.config,
        stages: vec![(0..1, StageLocation::Remote(first.address)), (1..2, StageLocation::Remote(second.address))],
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: timing(),
        device: Device::Cpu,
    };
    (PipelineExecutor::connect(params).unwrap(), [first, second])
}

/// A decode step of request `id` (registered with a greedy sampler on first use).
fn decode_plan(executor: &mut PipelineExecutor, id: u64, num_computed_tokens: usize) -> StepPlan {
    if num_computed_tokens == 0 {
        let setup = SamplingSetup { params: SamplingParams::greedy(), prompt_token_ids: vec![1], logprobs: None };
        executor.add_request(RequestId(id), setup).unwrap();
    }
    let entry = ScheduledRequest {
        id: RequestId(id),
        num_computed_tokens,
        new_token_ids: vec![1],
        block_table: vec![BlockId(id as u32)],
        samples: true,
        num_cached_prompt_tokens: 0,
    };
    StepPlan { requests: vec![entry], preempted: Vec::new(), num_batched_tokens: 1 }
}

/// Runs `num_steps` steps alternating over two requests, keeping up to `depth` in flight as
/// the engine does; returns the time it took.
fn run_steps(executor: &mut PipelineExecutor, depth: usize, num_steps: usize) -> Duration {
    executor.set_max_steps_in_flight(depth);
    let started = Instant::now();
    let (mut num_submitted, mut num_in_flight) = (0, 0);
    while num_submitted < num_steps || num_in_flight > 0 {
        while num_submitted < num_steps && num_in_flight < executor.max_steps_in_flight() {
            let plan = decode_plan(executor, (num_submitted % 2) as u64, num_submitted / 2);
            assert!(matches!(executor.submit(&plan).unwrap(), Submitted::InFlight));
            num_submitted += 1;
            num_in_flight += 1;
        }
        assert_eq!(executor.complete_oldest().unwrap().len(), 1);
        num_in_flight -= 1;
    }
    started.elapsed()
}

#[test]
fn two_steps_in_flight_keep_two_slow_stages_busy_at_once_and_finish_sooner() {
    const DELAY: Duration = Duration::from_millis(100);
    const NUM_STEPS: usize = 8;
    let mut times = Vec::new();
    for depth in [1, 2] {
        let busy = Arc::new(BusyCount::default());
        let (mut executor, _stages) = fake_pipeline(DELAY, false, &busy);
        times.push(run_steps(&mut executor, depth, NUM_STEPS));
        assert_eq!(busy.max_busy.load(Ordering::SeqCst), depth, "depth {depth}: most stages busy at once");
    }
    eprintln!("{NUM_STEPS} steps over 2 stages of {DELAY:?} each: depth 1 {:?}, depth 2 {:?}", times[0], times[1]);
    // Ideal: 16 x 100 ms vs 9 x 100 ms. The margin leaves room for a slow, loaded machine.
    assert!(times[1] < times[0].mul_f64(0.8), "depth 2 took {:?}, depth 1 {:?}", times[1], times[0]);
}

#[test]
fn a_stage_that_dies_with_two_steps_in_flight_fails_both_naming_it() {
    let busy = Arc::new(BusyCount::default());
    let (mut executor, stages) = fake_pipeline(Duration::from_millis(50), true, &busy);
    let second_address = stages[1].address.to_string();
    let started = Instant::now();
    for id in [0, 1] {
        let plan = decode_plan(&mut executor, id, 0);
        assert!(matches!(executor.submit(&plan).unwrap(), Submitted::InFlight));
    }
    let errors: Vec<String> = (0..2).map(|_| executor.complete_oldest().unwrap_err().to_string()).collect();
    let elapsed = started.elapsed();
    for message in &errors {
        assert!(message.contains("pipeline stage 1 (layers 1..2") && message.contains(&second_address), "{message}");
    }
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    // The next step (nothing in flight any more) dials the stage again, which is gone.
    let plan = decode_plan(&mut executor, 2, 0);
    let message = executor.submit(&plan).unwrap_err().to_string();
    assert!(message.contains("pipeline stage 1") && message.contains("reconnecting failed"), "{message}");
}
