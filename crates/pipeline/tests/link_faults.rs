//! A pipeline whose link to a stage fails, through the cluster tests' user-space fault proxy
//! (this kernel has no netem): a cut link that stays open (bytes swallowed) fails the step
//! within the silence timeout naming the stage; dropped connections fail it at once; a slow
//! link (added delay) still computes the single model's logits; once the link works again the
//! coordinator reconnects (the stage's KV pool starts empty, which the KV generation reports).

// One-element lists of layer ranges are stage lists here, not mistaken `Range` arrays.
#![allow(clippy::single_range_in_vec_init)]

mod common;
// The cluster tests' proxy, shared rather than copied (not every control is used here).
#[allow(dead_code)]
#[path = "../../cluster/tests/common/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use common::*;
use hearth_engine::serve::Executor;
use hearth_models::{ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, SequenceInput};
use hearth_pipeline::{PipelineExecutor, PipelineParams, PoolShape, StageLocation};
use proxy::FaultProxy;

const NUM_BLOCKS: usize = 24;
const BLOCK_SIZE: usize = 4;

fn step(token: u32, num_cached_tokens: usize) -> Vec<SequenceInput> {
    vec![SequenceInput { new_token_ids: vec![token], num_cached_tokens, block_table: vec![0, 1, 2], wants_logits: true }]
}

fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs()))
}

#[test]
fn a_cut_dropped_or_slow_link_to_a_stage_is_named_and_bounded() {
    let path = fixture_dir("qwen2");
    let files = ModelFiles::open(&path).unwrap();
    let model = ModelFiles::open(&path).unwrap().load(&LoadOptions::default()).unwrap().model;
    let stage = StageThread::start(&path, 1..2);
    let proxy = FaultProxy::start(stage.address);
    let first = hearth_models::PipelineStage::load(&files, 0..1, &LoadOptions::default()).unwrap();
    let dialer = dialer();
    let params = PipelineParams {
        config: &files.config,
        stages: vec![(0..1, StageLocation::Local(Box::new(first))), (1..2, StageLocation::Remote(proxy.address()))],
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: silence_timing(),
        device: Device::Cpu,
    };
    let mut pipeline = PipelineExecutor::connect(params).unwrap();
    let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let check = |pipeline: &mut PipelineExecutor, inputs: &[SequenceInput]| {
        let want = model.forward(&ForwardBatch::new(inputs, BLOCK_SIZE, &Device::Cpu).unwrap(), &single_kv).unwrap();
        assert_eq!(max_abs_diff(&pipeline.forward(inputs).unwrap(), &want), 0.0);
    };
    check(&mut pipeline, &step(3, 0));

    // Slow: 20 ms each way per chunk still gives the same logits.
    proxy.set_delay(Duration::from_millis(20));
    check(&mut pipeline, &step(5, 1));
    proxy.set_delay(Duration::ZERO);

    // Cut but open: the stage's answer never arrives; the silence timeout ends the wait.
    proxy.set_blackhole(true);
    let started = Instant::now();
    let message = pipeline.forward(&step(7, 2)).unwrap_err().to_string();
    let elapsed = started.elapsed();
    assert!(message.contains("pipeline stage 1 (layers 1..2") && message.contains("silent"), "{message}");
    assert!(elapsed >= silence_timing().silence_timeout && elapsed < silence_timing().silence_timeout + Duration::from_secs(1), "took {elapsed:?}");
    proxy.set_blackhole(false);

    // Back: the executor dials again; the stage's pool is new, so the KV generation advances.
    let message = pipeline.forward(&step(7, 2)).unwrap_err().to_string();
    assert!(message.contains("reconnected"), "{message}");
    assert_eq!(pipeline.kv_generation(), 1);

    // Dropped: fails at once.
    pipeline.forward(&step(9, 0)).unwrap();
    proxy.drop_connections();
    let started = Instant::now();
    let message = pipeline.forward(&step(9, 1)).unwrap_err().to_string();
    assert!(message.contains("pipeline stage 1"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}: {message}", started.elapsed());
}

