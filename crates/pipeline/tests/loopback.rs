//! Pipeline stages on loopback: `StageServer`s on threads, each behind its own authenticated
//! listener, driven by a `PipelineExecutor`. Checks: 2 and 3 stages (remote only, and stage 0
//! in the coordinator's process) compute the single model's logits over a prompt step and
//! greedy decode steps on every golden architecture and SmolLM2 (skipped with a message when
//! its file is absent); a stage that stops or goes silent fails the step within the silence
//! timeout naming the stage, and later steps fail at once; a step a stage cannot run (a block
//! outside its pool) fails only that step; a malformed frame closes only that connection; a
//! stage serving other layers, or asked for too large a pool, is refused at connect; a second
//! coordinator is refused at once while a stage serves one.

// One-element lists of layer ranges are stage lists here, not mistaken `Range` arrays.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::net::TcpListener;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::*;
use hearth_cluster::{FrameKind, Purpose};
use hearth_models::{ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, PipelineStage, SequenceInput, Transformer};
use hearth_pipeline::{PipelineExecutor, PipelineParams, PoolShape, StageLocation, StageMessage};

fn even_split(num_layers: usize, num_stages: usize) -> Vec<Range<usize>> {
    if num_stages > num_layers {
        let middles = (1..num_stages - 1).map(|_| 1..1);
        return [0..1].into_iter().chain(middles).chain([1..num_layers]).collect();
    }
    let bound = |i: usize| (i * num_layers).div_ceil(num_stages);
    (0..num_stages).map(|i| bound(i)..bound(i + 1)).collect()
}

fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    got.iter().zip(&want).fold(0f32, |m, (g, w)| if (g - w).is_nan() { f32::NAN } else { m.max((g - w).abs()) })
}

fn argmax_rows(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1().unwrap()
}

/// Two sequences (one prompt of 11 tokens, one of 6), a prompt step, then greedy decode steps;
/// the pipeline's logits against the single model's. Returns the max abs difference.
fn pipeline_matches_single_model(model_path: &Path, num_stages: usize, stage0: Stage0, num_decode_steps: usize) -> f32 {
    let model: Transformer = ModelFiles::open(model_path).unwrap().load(&LoadOptions::default()).unwrap().model;
    let ranges = even_split(model.config.num_layers, num_stages);
    let (mut pipeline, _threads) = open_pipeline(model_path, &ranges, stage0);
    let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let vocab = model.config.vocab_size as u32;
    let tables: [Vec<u32>; 2] =
        [(0..NUM_BLOCKS as u32 / 2).rev().map(|b| 2 * b).collect(), (0..NUM_BLOCKS as u32 / 2).map(|b| 2 * b + 1).collect()];
    let mut contexts: [Vec<u32>; 2] = [(0..11).map(|i| (i * 37 + 5) % vocab).collect(), (0..6).map(|i| (i * 53 + 11) % vocab).collect()];
    let what = format!("{} in stages {ranges:?}", model_path.display());
    let mut max_diff = 0f32;
    let mut compare = |inputs: &[SequenceInput], step: &str| -> Vec<u32> {
        let batch = ForwardBatch::new(inputs, BLOCK_SIZE, &Device::Cpu).unwrap();
        let want = model.forward(&batch, &single_kv).unwrap();
        let got = pipeline.forward(inputs).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= TOLERANCE, "{what}: {step}: max abs diff {diff} > {TOLERANCE}");
        assert_eq!(argmax_rows(&got), argmax_rows(&want), "{what}: {step}: greedy tokens differ");
        max_diff = max_diff.max(diff);
        argmax_rows(&want)
    };
    let prompts: Vec<SequenceInput> = (0..2)
        .map(|s| SequenceInput { new_token_ids: contexts[s].clone(), num_cached_tokens: 0, block_table: tables[s].clone(), wants_logits: true })
        .collect();
    let mut next = compare(&prompts, "prompt step");
    for step in 0..num_decode_steps {
        let inputs: Vec<SequenceInput> = (0..2)
            .map(|s| {
                let input = SequenceInput {
                    new_token_ids: vec![next[s]],
                    num_cached_tokens: contexts[s].len(),
                    block_table: tables[s].clone(),
                    wants_logits: true,
                };
                contexts[s].push(next[s]);
                input
            })
            .collect();
        next = compare(&inputs, &format!("decode step {step}"));
    }
    max_diff
}

#[test]
fn two_and_three_stages_on_loopback_equal_the_single_model_on_every_golden_architecture() {
    for arch in ["llama", "qwen2", "qwen3", "phi3", "gemma3"] {
        for (num_stages, stage0) in [(2, Stage0::Remote), (3, Stage0::InCoordinator), (3, Stage0::Remote)] {
            let diff = pipeline_matches_single_model(&fixture_dir(arch), num_stages, stage0, 6);
            eprintln!("{arch}: {num_stages} stages (stage 0 {}): max abs diff {diff:e}", if stage0 == Stage0::Remote { "remote" } else { "local" });
        }
    }
}

#[test]
fn two_and_three_stages_on_loopback_equal_the_single_model_on_smollm2() {
    let Some(path) = smollm2() else { return };
    for num_stages in [2, 3] {
        let diff = pipeline_matches_single_model(&path, num_stages, Stage0::Remote, 4);
        eprintln!("SmolLM2: {num_stages} stages: max abs diff {diff:e}");
    }
}

fn one_decode_input(token: u32, num_cached_tokens: usize) -> Vec<SequenceInput> {
    vec![SequenceInput { new_token_ids: vec![token], num_cached_tokens, block_table: vec![0, 1], wants_logits: true }]
}

#[test]
fn a_stage_that_stops_fails_the_step_at_once_naming_it_and_later_steps_fail_too() {
    let path = fixture_dir("gemma3");
    let (mut pipeline, mut threads) = open_pipeline(&path, &[0..2, 2..4, 4..6], Stage0::Remote);
    pipeline.forward(&one_decode_input(3, 0)).unwrap();
    let middle_address = threads[1].address;
    threads[1].stop();
    let started = Instant::now();
    let message = pipeline.forward(&one_decode_input(4, 1)).unwrap_err().to_string();
    let elapsed = started.elapsed();
    assert!(message.contains("pipeline stage 1 (layers 2..4") && message.contains(&middle_address.to_string()), "{message}");
    assert!(elapsed < Duration::from_secs(3), "a stopped stage must fail the step at once, took {elapsed:?}: {message}");
    let started = Instant::now();
    let again = pipeline.forward(&one_decode_input(4, 1)).unwrap_err().to_string();
    assert!(again.contains("pipeline stage 1") && again.contains("earlier failure") && again.contains("reconnecting failed"), "{again}");
    assert!(started.elapsed() < Duration::from_millis(500), "a broken stage must fail at once");
    eprintln!("stopped stage detected in {elapsed:?}: {message}");
}

#[test]
fn a_silent_stage_fails_the_step_within_the_silence_timeout() {
    // A fake stage: completes the handshake, answers the open, then never answers a step.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let files = ModelFiles::open(&fixture_dir("llama")).unwrap();
    let description = hearth_pipeline::StageDescription {
        layer_start: 1,
        layer_end: 2,
        num_layers: 2,
        hidden_size: files.config.hidden_size as u32,
        vocab_size: files.config.vocab_size as u32,
    };
    let release = Arc::new(AtomicBool::new(false));
    let fake = std::thread::spawn({
        let release = Arc::clone(&release);
        move || {
            let (stream, _) = listener.accept().unwrap();
            let mut connection = hearth_cluster::Connection::accept(stream, &handshake(), &connection_timing(), |_| Ok(())).unwrap();
            connection.set_limits(hearth_pipeline::PIPELINE_FRAME_LIMITS);
            let open = connection.recv_frame(Duration::from_secs(5)).unwrap();
            assert!(matches!(StageMessage::decode(&open.payload).unwrap(), StageMessage::Open { .. }));
            connection.send_frame(FrameKind::Activation, &StageMessage::Ready(description).encode()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !release.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let first = PipelineStage::load(&files, 0..1, &LoadOptions::default()).unwrap();
    let dialer = dialer();
    let params = PipelineParams {
        config: &files.config,
        stages: vec![(0..1, StageLocation::Local(Box::new(first))), (1..2, StageLocation::Remote(address))],
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: silence_timing(),
        device: Device::Cpu,
    };
    let mut pipeline = PipelineExecutor::connect(params).unwrap();
    let started = Instant::now();
    let message = pipeline.forward(&one_decode_input(3, 0)).unwrap_err().to_string();
    let elapsed = started.elapsed();
    release.store(true, Ordering::Relaxed);
    fake.join().unwrap();
    assert!(message.contains("pipeline stage 1 (layers 1..2") && message.contains("silent"), "{message}");
    assert!(elapsed >= silence_timing().silence_timeout && elapsed < silence_timing().silence_timeout + Duration::from_secs(1), "took {elapsed:?}");
    eprintln!("silent stage detected in {elapsed:?}: {message}");
}

#[test]
fn a_malformed_frame_closes_only_that_connection() {
    let stage = StageThread::start(&fixture_dir("llama"), 0..1);
    let mut connection = dialer().connect(stage.address, Purpose::Data).unwrap();
    connection.set_limits(hearth_pipeline::PIPELINE_FRAME_LIMITS);
    connection.send_frame(FrameKind::Activation, &[3, 1, 2]).unwrap();
    let reply = connection.recv_frame(Duration::from_secs(5)).unwrap();
    let StageMessage::Failed { message, .. } = StageMessage::decode(&reply.payload).unwrap() else { panic!("expected a failure") };
    assert!(message.contains("malformed pipeline message") && message.contains("truncated step_id"), "{message}");
    assert!(connection.recv_frame(Duration::from_secs(5)).is_err(), "the stage closes the connection");
    // The stage still serves the next coordinator.
    let files = ModelFiles::open(&fixture_dir("llama")).unwrap();
    let last = PipelineStage::load(&files, 1..2, &LoadOptions::default()).unwrap();
    let dialer = dialer();
    let params = PipelineParams {
        config: &files.config,
        stages: vec![(0..1, StageLocation::Remote(stage.address)), (1..2, StageLocation::Local(Box::new(last)))],
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: timing(),
        device: Device::Cpu,
    };
    let mut pipeline = PipelineExecutor::connect(params).unwrap();
    assert_eq!(pipeline.forward(&one_decode_input(3, 0)).unwrap().dims(), &[1, files.config.vocab_size]);
}

#[test]
fn a_stage_serving_other_layers_or_too_large_a_pool_is_refused_at_connect() {
    let stage = StageThread::start(&fixture_dir("llama"), 1..2);
    let files = ModelFiles::open(&fixture_dir("llama")).unwrap();
    let dialer = dialer();
    let whole = StageThread::start(&fixture_dir("llama"), 0..2);
    let connect = |ranges: Vec<Range<usize>>, pool: PoolShape| {
        let remote_address = if ranges.len() == 1 { whole.address } else { stage.address };
        let stages = ranges
            .into_iter()
            .map(|layers| {
                let location = if layers.start == 0 {
                    StageLocation::Remote(remote_address)
                } else {
                    StageLocation::Local(Box::new(PipelineStage::load(&files, layers.clone(), &LoadOptions::default()).unwrap()))
                };
                (layers, location)
            })
            .collect();
        let params = PipelineParams { config: &files.config, stages, pool, dialer: &dialer, timing: timing(), device: Device::Cpu };
        PipelineExecutor::connect(params).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let pool = PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE };
    let message = connect(vec![0..1, 1..2], pool);
    assert!(message.contains("pipeline stage 0") && message.contains("serves layers 1..2") && message.contains("not 0..1"), "{message}");
    let message = connect(vec![0..2], PoolShape { num_blocks: 1 << 30, block_size: BLOCK_SIZE });
    assert!(message.contains("exceeds this stage's budget"), "{message}");
    let message = connect(vec![0..1, 1..1], pool);
    assert!(message.contains("contiguous") || message.contains("cover"), "{message}");
}

#[test]
fn a_step_a_stage_cannot_run_fails_that_step_and_the_stage_keeps_serving() {
    let path = fixture_dir("llama");
    let (mut pipeline, _threads) = open_pipeline(&path, &[0..1, 1..2], Stage0::Remote);
    // Block 1000 is outside every stage's pool of NUM_BLOCKS blocks.
    let bad = vec![SequenceInput { new_token_ids: vec![3], num_cached_tokens: 0, block_table: vec![1000], wants_logits: true }];
    let message = pipeline.forward(&bad).unwrap_err().to_string();
    assert!(message.contains("pipeline stage 0 (layers 0..1") && message.contains("step 1 failed there"), "{message}");
    let logits = pipeline.forward(&one_decode_input(3, 0)).unwrap();
    assert_eq!(logits.dims()[0], 1, "the same connections serve the next step");
}

#[test]
fn a_second_coordinator_is_refused_promptly_while_a_stage_serves_one() {
    let path = fixture_dir("llama");
    let (mut pipeline, threads) = open_pipeline(&path, &[0..1, 1..2], Stage0::Remote);
    let started = Instant::now();
    let err = dialer().connect(threads[0].address, Purpose::Data).unwrap_err().to_string();
    assert!(err.contains("too many connections"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    pipeline.forward(&one_decode_input(3, 0)).unwrap();
}

#[test]
fn on_demand_stages_describe_themselves_and_load_the_layers_they_are_opened_with() {
    let path = fixture_dir("gemma3");
    let model: Transformer = ModelFiles::open(&path).unwrap().load(&LoadOptions::default()).unwrap().model;
    let stages = [StageThread::start_on_demand(&path), StageThread::start_on_demand(&path)];
    let dialer = dialer();
    let mut remotes = Vec::new();
    for (idx, stage) in stages.iter().enumerate() {
        let name = hearth_pipeline::StageName { stage_idx: idx, layers: 0..0, address: Some(stage.address.to_string()) };
        let mut remote = hearth_pipeline::RemoteStage::dial(&dialer, stage.address, name, timing()).unwrap();
        let resources = remote.describe().unwrap();
        assert_eq!((resources.num_layers, resources.fixed_layers, resources.memory_bytes), (6, None, 1 << 30));
        remotes.push(remote);
    }
    let files = ModelFiles::open(&path).unwrap();
    let first = PipelineStage::load(&files, 0..1, &LoadOptions::default()).unwrap();
    let mut remotes = remotes.into_iter();
    let params = PipelineParams {
        config: &files.config,
        stages: vec![
            (0..1, StageLocation::Local(Box::new(first))),
            (1..4, StageLocation::Connected(Box::new(remotes.next().unwrap()))),
            (4..6, StageLocation::Connected(Box::new(remotes.next().unwrap()))),
        ],
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: timing(),
        device: Device::Cpu,
    };
    let mut pipeline = PipelineExecutor::connect(params).unwrap();
    let names: Vec<String> = pipeline.stage_names().iter().map(ToString::to_string).collect();
    assert!(names[2].starts_with("pipeline stage 2 (layers 4..6 at 127.0.0.1:"), "{names:?}");
    let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let prompt = vec![SequenceInput { new_token_ids: vec![5, 9, 2, 7, 1], num_cached_tokens: 0, block_table: vec![0, 1], wants_logits: true }];
    let batch = ForwardBatch::new(&prompt, BLOCK_SIZE, &Device::Cpu).unwrap();
    let want = model.forward(&batch, &single_kv).unwrap();
    let got = pipeline.forward(&prompt).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
}

#[test]
fn a_stage_that_comes_back_is_dialed_again_and_the_kv_generation_advances() {
    use hearth_engine::serve::Executor;
    let path = fixture_dir("llama");
    let model: Transformer = ModelFiles::open(&path).unwrap().load(&LoadOptions::default()).unwrap().model;
    let (mut pipeline, mut threads) = open_pipeline(&path, &[0..1, 1..2], Stage0::Remote);
    pipeline.forward(&one_decode_input(3, 0)).unwrap();
    let address = threads[1].address;
    threads[1].stop();
    assert!(pipeline.forward(&one_decode_input(4, 1)).is_err());
    assert_eq!(pipeline.kv_generation(), 0, "nothing came back yet");
    let _restarted = StageThread::start_at(&path, 1..2, address);
    let message = pipeline.forward(&one_decode_input(4, 1)).unwrap_err().to_string();
    assert!(message.contains("pipeline stage 1") && message.contains("reconnected") && message.contains("KV cache starts empty"), "{message}");
    assert_eq!(pipeline.kv_generation(), 1);
    // A fresh prompt runs through the new connection and equals the single model.
    let prompt = vec![SequenceInput { new_token_ids: vec![7, 1, 4], num_cached_tokens: 0, block_table: vec![2], wants_logits: true }];
    let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let want = model.forward(&ForwardBatch::new(&prompt, BLOCK_SIZE, &Device::Cpu).unwrap(), &single_kv).unwrap();
    assert_eq!(max_abs_diff(&pipeline.forward(&prompt).unwrap(), &want), 0.0);
    assert_eq!(pipeline.kv_generation(), 1);
}
