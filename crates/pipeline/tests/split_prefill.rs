//! Split prefill/decode on loopback: a `hearth stage` thread holding the whole model is the
//! prefill node, a `SplitExecutor` the decode node. Fresh prompts (at least `MIN_PREFILL`
//! tokens) are computed remotely and their K/V streamed back layer by layer; decode steps and
//! short prompts run locally; every step's logits equal the single model's (within 1e-4: a step
//! split between the nodes runs as two smaller batches) with the same greedy tokens, on every
//! golden architecture and SmolLM2 (skipped when absent). A prefill node that dies
//! fails the step that needed it, naming it; later prompts run on the decode node and the
//! running sequences keep their K/V.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use hearth_models::{ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, PipelineStage, SequenceInput, Transformer};
use hearth_pipeline::{PoolShape, RemoteStage, SplitExecutor, SplitParams, StageName};

const NUM_BLOCKS: usize = 32;
const BLOCK_SIZE: usize = 4;
const MIN_PREFILL: usize = 4;
/// A step whose sequences are split between the nodes runs as two smaller batches, and an F32
/// matmul's rounding depends on its batch (steps that keep the single model's batch are exact).
const TOLERANCE: f32 = 1e-4;

fn max_abs_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    got.iter().zip(&want).fold(0f32, |m, (g, w)| if (g - w).is_nan() { f32::NAN } else { m.max((g - w).abs()) })
}

fn argmax_rows(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1().unwrap()
}

struct Harness {
    model: Transformer,
    single_kv: PagedKvCache,
    split: SplitExecutor,
    prefill_node: StageThread,
    max_diff: f32,
}

impl Harness {
    fn start(path: &Path) -> Self {
        let files = ModelFiles::open(path).unwrap();
        let num_layers = files.config.num_layers;
        let prefill_node = StageThread::start(path, 0..num_layers);
        let decode = PipelineStage::load(&files, 0..num_layers, &LoadOptions::default()).unwrap();
        let name = StageName { stage_idx: 0, layers: 0..num_layers, address: Some(prefill_node.address.to_string()) };
        let prefill = RemoteStage::dial(&dialer(), prefill_node.address, name, timing()).unwrap();
        let split = SplitExecutor::connect(SplitParams {
            decode,
            prefill,
            config: &files.config,
            pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
            device: Device::Cpu,
            min_prefill_tokens: MIN_PREFILL,
        })
        .unwrap();
        let model = ModelFiles::open(path).unwrap().load(&LoadOptions::default()).unwrap().model;
        let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
        Self { model, single_kv, split, prefill_node, max_diff: 0.0 }
    }

    /// Runs `inputs` on both; checks equality; returns the greedy tokens.
    fn step(&mut self, inputs: &[SequenceInput], what: &str) -> Vec<u32> {
        let batch = ForwardBatch::new(inputs, BLOCK_SIZE, &Device::Cpu).unwrap();
        let want = self.model.forward(&batch, &self.single_kv).unwrap();
        let got = self.split.forward(inputs).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= TOLERANCE, "{what}: max abs diff {diff} > {TOLERANCE}");
        self.max_diff = self.max_diff.max(diff);
        assert_eq!(argmax_rows(&got), argmax_rows(&want), "{what}: greedy tokens differ");
        argmax_rows(&want)
    }
}

/// A sequence's tokens and blocks.
struct Sequence {
    tokens: Vec<u32>,
    table: Vec<u32>,
}

impl Sequence {
    fn prompt(&self) -> SequenceInput {
        SequenceInput { new_token_ids: self.tokens.clone(), num_cached_tokens: 0, block_table: self.table.clone(), wants_logits: true }
    }

    fn decode(&mut self, token: u32) -> SequenceInput {
        let input = SequenceInput {
            new_token_ids: vec![token],
            num_cached_tokens: self.tokens.len(),
            block_table: self.table.clone(),
            wants_logits: true,
        };
        self.tokens.push(token);
        input
    }
}

fn split_matches_single_model(path: &Path) {
    let mut h = Harness::start(path);
    let vocab = h.model.config.vocab_size as u32;
    let blocks = |first: u32| (first..first + 8).collect::<Vec<u32>>();
    let mut a = Sequence { tokens: (0..11).map(|i| (i * 37 + 5) % vocab).collect(), table: blocks(0) };
    let mut b = Sequence { tokens: (0..6).map(|i| (i * 53 + 11) % vocab).collect(), table: blocks(8) };
    let what = path.display().to_string();
    let next = h.step(&[a.prompt(), b.prompt()], &format!("{what}: two prompts on the prefill node"));
    assert_eq!(h.split.num_remote_prompts(), 2, "{what}");
    let (mut next_a, mut next_b) = (next[0], next[1]);
    for step in 0..4 {
        let next = h.step(&[a.decode(next_a), b.decode(next_b)], &format!("{what}: decode step {step}"));
        (next_a, next_b) = (next[0], next[1]);
    }
    // A new prompt arrives while the others decode: it goes remote, they stay here.
    let mut c = Sequence { tokens: (0..7).map(|i| (i * 11 + 3) % vocab).collect(), table: blocks(16) };
    let next = h.step(&[a.decode(next_a), c.prompt(), b.decode(next_b)], &format!("{what}: mixed step"));
    assert_eq!(h.split.num_remote_prompts(), 3, "{what}");
    let (mut next_a, mut next_c) = (next[0], next[1]);
    // A prompt shorter than MIN_PREFILL stays on the decode node.
    let d = Sequence { tokens: vec![1, 2], table: blocks(24) };
    let next = h.step(&[a.decode(next_a), c.decode(next_c), d.prompt()], &format!("{what}: short prompt"));
    assert_eq!(h.split.num_remote_prompts(), 3, "{what}: a short prompt must stay local");
    (next_a, next_c) = (next[0], next[1]);

    // The prefill node dies: the step that needs it fails naming it; then prompts run here and
    // the running sequences keep their K/V.
    h.prefill_node.stop();
    let e = Sequence { tokens: (0..5).map(|i| (i * 7 + 1) % vocab).collect(), table: blocks(24) };
    let message = h.split.forward(&[e.prompt()]).unwrap_err().to_string();
    assert!(message.contains("pipeline stage 0 (layers 0..") && message.contains(&h.prefill_node.address.to_string()), "{message}");
    h.step(&[a.decode(next_a), e.prompt(), c.decode(next_c)], &format!("{what}: after the prefill node died"));
    assert_eq!(h.split.num_remote_prompts(), 3, "{what}");
    eprintln!("{what}: split prefill/decode max abs diff {:e}", h.max_diff);
}

macro_rules! split_equals_single_model {
    ($arch:ident) => {
        #[test]
        fn $arch() {
            split_matches_single_model(&fixture_dir(stringify!($arch)));
        }
    };
}

split_equals_single_model!(llama);
split_equals_single_model!(qwen2);
split_equals_single_model!(qwen3);
split_equals_single_model!(phi3);
split_equals_single_model!(gemma3);

#[test]
fn smollm2_split_equals_single_model() {
    let Some(path) = common::smollm2() else { return };
    split_matches_single_model(&path);
}
