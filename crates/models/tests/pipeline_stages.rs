//! Pipeline stages in one process: a chain of 2 or 3 `PipelineStage`s (contiguous layer ranges,
//! each with its own KV pool) computes the single model's logits — bit for bit on the CPU in F32
//! — over a two-sequence prompt step and several greedy decode steps, from both the safetensors
//! and the GGUF form of every golden architecture. Also: a stage loads only its own tensors (a
//! file missing another stage's layer still loads), bad ranges and wrong inputs are refused.

// One-element lists of layer ranges are stage lists here, not mistaken `Range` arrays.
#![allow(clippy::single_range_in_vec_init)]

mod common;
use common::two_sequence_script;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hearth_models::{
    ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, PipelineStage, SequenceInput, StageInput, StageOutput, Transformer,
};

const BLOCK_SIZE: usize = 4;
const NUM_BLOCKS: usize = 24;
const TOLERANCE: f32 = 1e-5;

fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

fn load(path: &Path) -> Transformer {
    ModelFiles::open(path).unwrap().load(&LoadOptions::default()).unwrap().model
}

/// `num_stages` contiguous ranges covering `0..num_layers`, boundaries at ceil(i * n / k); with
/// more stages than layers the middle stages hold no layers (pass-throughs), e.g. 2 layers in 3
/// stages: `[0..1, 1..1, 1..2]`.
fn even_split(num_layers: usize, num_stages: usize) -> Vec<Range<usize>> {
    if num_stages > num_layers {
        let middles = (1..num_stages - 1).map(|_| 1..1);
        return [0..1].into_iter().chain(middles).chain([1..num_layers]).collect();
    }
    let bound = |i: usize| (i * num_layers).div_ceil(num_stages);
    (0..num_stages).map(|i| bound(i)..bound(i + 1)).collect()
}

struct Chain {
    stages: Vec<(PipelineStage, PagedKvCache)>,
}

impl Chain {
    fn load(path: &Path, ranges: &[Range<usize>]) -> Self {
        let files = ModelFiles::open(path).unwrap();
        let stages = ranges
            .iter()
            .map(|range| {
                let stage = PipelineStage::load(&files, range.clone(), &LoadOptions::default()).unwrap();
                let kv = stage.new_kv_cache(NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
                assert_eq!(kv.layers.len(), range.len(), "a stage's KV pool holds its layers only");
                (stage, kv)
            })
            .collect();
        Self { stages }
    }

    fn forward(&self, batch: &ForwardBatch) -> Tensor {
        let mut hidden: Option<Tensor> = None;
        for (stage_idx, (stage, kv)) in self.stages.iter().enumerate() {
            let input = match &hidden {
                None => StageInput::TokenIds,
                Some(h) => StageInput::Hidden(h),
            };
            match stage.forward(input, batch, kv).unwrap() {
                StageOutput::Hidden(h) => hidden = Some(h),
                StageOutput::Logits(logits) => {
                    assert_eq!(stage_idx, self.stages.len() - 1, "only the last stage returns logits");
                    return logits;
                }
            }
        }
        panic!("no stage returned logits")
    }
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

/// Two sequences: a prompt step (every position's logits for one, the last for the other),
/// then `num_decode_steps` greedy steps. Returns the largest logit difference (expected 0).
fn stages_match_single_model(model_path: &Path, num_stages: usize, num_decode_steps: usize) -> f32 {
    let model = load(model_path);
    let ranges = even_split(model.config.num_layers, num_stages);
    let chain = Chain::load(model_path, &ranges);
    let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let vocab = model.config.vocab_size as u32;
    let mut max_diff = 0f32;
    let what_model = format!("{} in stages {ranges:?}", model_path.display());
    let compare = |batch: &ForwardBatch, step: &str| -> Vec<u32> {
        let want = model.forward(batch, &single_kv).unwrap();
        let got = chain.forward(batch);
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= TOLERANCE, "{what_model}: {step}: max abs diff {diff} > {TOLERANCE}");
        assert_eq!(diff, 0.0, "{what_model}: {step}: F32 stages on the CPU must be bit-identical, max abs diff {diff}");
        assert_eq!(argmax_rows(&got), argmax_rows(&want), "{what_model}: {step}: greedy tokens differ");
        max_diff = max_diff.max(diff);
        argmax_rows(&want)
    };
    two_sequence_script(vocab, NUM_BLOCKS, BLOCK_SIZE, num_decode_steps, compare);
    max_diff
}

macro_rules! stages_equal_single_model {
    ($arch:ident) => {
        mod $arch {
            use super::*;
            #[test]
            fn two_and_three_stages_equal_the_single_model_from_safetensors() {
                for num_stages in [2, 3] {
                    let diff = stages_match_single_model(&fixture_dir(stringify!($arch)), num_stages, 8);
                    eprintln!("{} safetensors, {num_stages} stages: max abs diff {diff:e}", stringify!($arch));
                }
            }
            #[test]
            fn two_and_three_stages_equal_the_single_model_from_gguf() {
                for num_stages in [2, 3] {
                    let diff = stages_match_single_model(&fixture_dir(stringify!($arch)).join("model.gguf"), num_stages, 8);
                    eprintln!("{} gguf, {num_stages} stages: max abs diff {diff:e}", stringify!($arch));
                }
            }
        }
    };
}

stages_equal_single_model!(llama);
stages_equal_single_model!(qwen2);
stages_equal_single_model!(qwen3);
stages_equal_single_model!(phi3);
stages_equal_single_model!(gemma3);

#[test]
fn a_stage_loads_only_its_own_tensors() {
    // A copy of the llama fixture without layer 1: the whole model refuses it, stage 0..1 loads.
    let source = fixture_dir("llama");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors = candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let num_all = tensors.len();
    let kept: std::collections::HashMap<String, Tensor> =
        tensors.into_iter().filter(|(name, _)| !name.starts_with("model.layers.1.")).collect();
    assert!(kept.len() < num_all, "the fixture has layer 1 tensors");
    candle_core::safetensors::save(&kept, dir.path().join("model.safetensors")).unwrap();
    let files = ModelFiles::open(dir.path()).unwrap();
    let first = PipelineStage::load(&files, 0..1, &LoadOptions::default()).unwrap();
    assert!(first.is_first() && !first.is_last());
    let message = PipelineStage::load(&files, 1..2, &LoadOptions::default()).err().unwrap().to_string();
    assert!(message.contains("missing tensor `model.layers.1."), "{message}");
    assert!(ModelFiles::open(dir.path()).unwrap().load(&LoadOptions::default()).is_err());
}

#[test]
fn ranges_outside_the_model_and_wrong_inputs_are_refused() {
    let files = ModelFiles::open(&fixture_dir("llama")).unwrap();
    let message = PipelineStage::load(&files, 1..3, &LoadOptions::default()).err().unwrap().to_string();
    assert!(message.contains("1..3") && message.contains("2 layers"), "{message}");
    let message = PipelineStage::load(&files, 2..2, &LoadOptions::default()).err().unwrap().to_string();
    assert!(message.contains("empty pipeline stage 2..2"), "{message}");
    let last = PipelineStage::load(&files, 1..2, &LoadOptions::default()).unwrap();
    let kv = last.new_kv_cache(2, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let input = SequenceInput { new_token_ids: vec![1, 2, 3], num_cached_tokens: 0, block_table: vec![0], wants_logits: true };
    let batch = ForwardBatch::new(&[input], BLOCK_SIZE, &Device::Cpu).unwrap();
    let message = last.forward(StageInput::TokenIds, &batch, &kv).unwrap_err().to_string();
    assert!(message.contains("layers 1..2") && message.contains("not the first stage"), "{message}");
    let wrong = Tensor::zeros((2, files.config.hidden_size), DType::F32, &Device::Cpu).unwrap();
    let message = last.forward(StageInput::Hidden(&wrong), &batch, &kv).unwrap_err().to_string();
    assert!(message.contains("shape [2,"), "{message}");
}
