//! Tensor parallelism on the CPU: the shard specs of the golden tiny models (shapes, every
//! weight element owned by exactly one rank or replicated, refusals), and a TP=2 group on
//! in-process threads whose logits equal the single-process model's within 1e-4 (F32) over a
//! two-sequence prompt step and several decode steps through the paged KV pool, from both the
//! safetensors and the GGUF form of every architecture. Also: ranks that diverge get an error
//! naming both calls, within the collective timeout.

mod common;
use common::two_sequence_script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use hearth_models::tensor_parallel::{shard_spec, GroupParams, ShardedTransformer, Split, TensorParallelGroup, ThreadGroup, WeightShard};
use hearth_models::weights::safetensors::SafetensorsSource;
use hearth_models::weights::TensorSource;
use hearth_models::{ForwardBatch, LoadOptions, ModelError, ModelFiles, PagedKvCache, QuantizeTo, SequenceInput, Transformer};

const ARCHS: [&str; 5] = ["llama", "qwen2", "qwen3", "phi3", "gemma3"];
const BLOCK_SIZE: usize = 4;
const NUM_BLOCKS: usize = 24;
const TOLERANCE: f32 = 1e-4;
const TIMEOUT: Duration = Duration::from_secs(20);

fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

fn load(path: &Path) -> Transformer {
    ModelFiles::open(path).unwrap().load(&LoadOptions::default()).unwrap().model
}

/// `rank`'s part of a tensor whose elements are their own flat indices.
fn owned_indices(weight: &WeightShard, rank: usize, world_size: usize) -> Vec<u32> {
    let num_elements: usize = weight.shape.iter().product();
    let full = Tensor::arange(0u32, num_elements as u32, &Device::Cpu).unwrap().reshape(weight.shape.as_slice()).unwrap();
    let part = weight.take(&full, rank, world_size).unwrap();
    assert_eq!(part.dims(), weight.rank_shape(rank, world_size).as_slice(), "{}: rank {rank} shape", weight.name);
    part.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn golden_shard_specs_cover_every_weight_element_exactly_once_or_replicated() {
    for arch in ARCHS {
        let model = load(&fixture_dir(arch));
        let c = &model.config;
        let file = SafetensorsSource::open_dir(&fixture_dir(arch)).unwrap();
        let in_file: BTreeMap<String, Vec<usize>> = file.names().into_iter().map(|n| (n.clone(), file.shape(&n).unwrap())).collect();
        for world_size in [1, 2] {
            let spec = shard_spec(&model, world_size).unwrap();
            let in_spec: BTreeMap<String, Vec<usize>> = spec.weights.iter().map(|w| (w.name.clone(), w.shape.clone())).collect();
            assert_eq!(in_spec, in_file, "{arch}: the spec must list exactly the file's tensors with their shapes");
            assert_eq!(spec.rank_shape.num_heads * world_size, c.num_heads, "{arch}");
            assert_eq!(spec.rank_shape.num_kv_heads * world_size, c.num_kv_heads, "{arch}");
            assert!(spec.vocab_sharded(), "{arch}: vocabulary {} divides by {world_size}", c.vocab_size);
            for weight in spec.weights.iter().chain([&spec.lm_head]) {
                let num_elements: usize = weight.shape.iter().product();
                let parts: Vec<Vec<u32>> = (0..world_size).map(|rank| owned_indices(weight, rank, world_size)).collect();
                match &weight.split {
                    Split::Replicated => {
                        let whole: Vec<u32> = (0..num_elements as u32).collect();
                        assert!(parts.iter().all(|p| *p == whole), "{arch} {}: a replicated part differs", weight.name);
                    }
                    Split::Sharded { .. } => {
                        let mut owners = vec![0u32; num_elements];
                        parts.iter().flatten().for_each(|&i| owners[i as usize] += 1);
                        let bad = owners.iter().position(|&n| n != 1);
                        assert!(bad.is_none(), "{arch} {}: element {bad:?} owned by {:?} ranks", weight.name, bad.map(|i| owners[i]));
                    }
                }
            }
        }
        let spec = shard_spec(&model, 2).unwrap();
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let expected: Vec<(&str, Vec<usize>)> = match arch {
            "phi3" => vec![
                ("model.layers.0.self_attn.qkv_proj.weight", vec![(q_dim + 2 * kv_dim) / 2, c.hidden_size]),
                ("model.layers.0.mlp.gate_up_proj.weight", vec![c.intermediate_size, c.hidden_size]),
            ],
            _ => vec![
                ("model.layers.0.self_attn.q_proj.weight", vec![q_dim / 2, c.hidden_size]),
                ("model.layers.0.self_attn.k_proj.weight", vec![kv_dim / 2, c.hidden_size]),
                ("model.layers.0.mlp.gate_proj.weight", vec![c.intermediate_size / 2, c.hidden_size]),
            ],
        };
        let common = [
            ("model.layers.0.self_attn.o_proj.weight", vec![c.hidden_size, q_dim / 2]),
            ("model.layers.0.mlp.down_proj.weight", vec![c.hidden_size, c.intermediate_size / 2]),
            ("model.layers.0.input_layernorm.weight", vec![c.hidden_size]),
            ("model.embed_tokens.weight", vec![c.vocab_size, c.hidden_size]),
        ];
        for (name, shape) in expected.into_iter().chain(common) {
            assert_eq!(spec.weight(name).unwrap().rank_shape(1, 2), shape, "{arch} {name}");
        }
        assert_eq!(spec.lm_head.rank_shape(0, 2), vec![c.vocab_size / 2, c.hidden_size], "{arch}");
    }
}

#[test]
fn head_counts_that_do_not_divide_are_refused_with_the_numbers() {
    for arch in ARCHS {
        let model = load(&fixture_dir(arch));
        let c = &model.config;
        let message = shard_spec(&model, 4).unwrap_err().to_string();
        let kv_part = format!("{} key/value heads are not divisible by 4", c.num_kv_heads);
        assert!(message.contains(arch) && message.contains(&kv_part), "{arch}: {message}");
        let message = shard_spec(&model, 3).unwrap_err().to_string();
        let heads_part = format!("{} attention heads are not divisible by 3", c.num_heads);
        assert!(message.contains(&heads_part), "{arch}: {message}");
        let group = TensorParallelGroup::new(&model, &vec![Device::Cpu; 4], group_params(4));
        assert!(matches!(group, Err(ModelError::TensorParallel(_))), "{arch}");
    }
}

fn group_params(num_blocks: usize) -> GroupParams {
    GroupParams { num_blocks, block_size: BLOCK_SIZE, kv_dtype: DType::F32, collective_timeout: TIMEOUT }
}

/// Max |a - b| over two logit matrices of the same shape.
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
/// then `num_decode_steps` steps of one greedy token each, all through the paged KV pool.
/// Returns the largest difference between the single model and the TP=2 group.
fn tp2_matches_single_process(model_path: &Path, num_decode_steps: usize) -> f32 {
    tp2_matches(&load(model_path), &model_path.display().to_string(), num_decode_steps, TOLERANCE)
}

/// [`tp2_matches_single_process`] for a loaded model, within `tolerance`.
fn tp2_matches(model: &Transformer, name: &str, num_decode_steps: usize, tolerance: f32) -> f32 {
    let group = TensorParallelGroup::new(model, &[Device::Cpu, Device::Cpu], group_params(NUM_BLOCKS)).unwrap();
    let (rank1, rank1_kv) = group.rank(1).unwrap();
    assert_eq!(rank1.rank_config().num_kv_heads * 2, model.config.num_kv_heads);
    assert_eq!(rank1_kv.layers[0].0.dim(2).unwrap(), model.config.num_kv_heads / 2, "a rank's KV pool holds its heads only");
    let single_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
    let vocab = model.config.vocab_size as u32;
    let mut max_diff = 0f32;
    let compare = |batch: &ForwardBatch, what: &str| -> Vec<u32> {
        let want = model.forward(batch, &single_kv).unwrap();
        let got = group.forward_with(&|_| Ok(batch.clone())).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= tolerance, "{name}: {what}: max abs diff {diff} > {tolerance}");
        assert_eq!(argmax_rows(&got), argmax_rows(&want), "{name}: {what}: greedy tokens differ");
        max_diff = max_diff.max(diff);
        argmax_rows(&want)
    };
    two_sequence_script(vocab, NUM_BLOCKS, BLOCK_SIZE, num_decode_steps, compare);
    max_diff
}

macro_rules! tp2_equals_one_process {
    ($arch:ident) => {
        mod $arch {
            use super::*;
            #[test]
            fn tp2_on_threads_equals_one_process_from_safetensors() {
                let diff = tp2_matches_single_process(&fixture_dir(stringify!($arch)), 8);
                eprintln!("{} safetensors TP=2: max abs diff {diff:e}", stringify!($arch));
            }
            #[test]
            fn tp2_on_threads_equals_one_process_from_gguf() {
                let diff = tp2_matches_single_process(&fixture_dir(stringify!($arch)).join("model.gguf"), 8);
                eprintln!("{} gguf TP=2: max abs diff {diff:e}", stringify!($arch));
            }
        }
    };
}

tp2_equals_one_process!(llama);
tp2_equals_one_process!(qwen2);
tp2_equals_one_process!(qwen3);
tp2_equals_one_process!(phi3);
tp2_equals_one_process!(gemma3);

#[test]
fn ranks_that_issue_different_collectives_fail_with_both_calls_named_not_hang() {
    // Rank 0 runs the 2-layer llama, rank 1 the 6-layer gemma3 (same hidden size): their first
    // four collectives agree, then llama gathers logits while gemma3 reduces layer 2's attention.
    let llama = load(&fixture_dir("llama"));
    let gemma = load(&fixture_dir("gemma3"));
    let rank0 = ShardedTransformer::from_full(&llama, &shard_spec(&llama, 2).unwrap(), 0, &Device::Cpu).unwrap();
    let rank1 = ShardedTransformer::from_full(&gemma, &shard_spec(&gemma, 2).unwrap(), 1, &Device::Cpu).unwrap();
    let timeout = Duration::from_secs(10);
    let comms = ThreadGroup::connect(2, timeout).unwrap();
    let input = SequenceInput { new_token_ids: vec![1, 2, 3], num_cached_tokens: 0, block_table: vec![0], wants_logits: true };
    let batch = ForwardBatch::new(&[input], BLOCK_SIZE, &Device::Cpu).unwrap();
    let started = Instant::now();
    let results: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = [&rank0, &rank1]
            .into_iter()
            .zip(&comms)
            .map(|(model, comm)| {
                let batch = &batch;
                scope.spawn(move || {
                    let kv = model.new_kv_cache(2, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
                    model.forward(batch, &kv, comm).map(|_| ()).unwrap_err().to_string()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    for message in &results {
        assert!(message.contains("same order"), "{message}");
        assert!(message.contains("Logits") && message.contains("AttentionOutput { layer_idx: 2 }"), "{message}");
    }
    assert!(elapsed < timeout, "a mismatch must fail at once, took {elapsed:?}");
    eprintln!("mismatch detected in {elapsed:?}: {}", results[0]);
}

/// Quantized weights are cut from their blocks: a Q8_0 model (and the Q4_K_M-style GGUF
/// types where the golden shapes hold whole blocks) split over two ranks equals the same
/// quantized model in one process. Row-parallel products sum per-rank partial dot products in
/// a different order, hence a tolerance above F32 rounding.
#[test]
fn quantized_models_split_equal_one_process() {
    let mut num_split = 0;
    for arch in ARCHS {
        let options = LoadOptions { quantize: Some(QuantizeTo::Q8_0), ..LoadOptions::default() };
        let model = ModelFiles::open(&fixture_dir(arch)).unwrap().load(&options).unwrap().model;
        // A rank's share of the MLP features must hold whole 32-column blocks.
        if model.config.intermediate_size / 2 % 32 != 0 {
            let params = group_params(NUM_BLOCKS);
            let Err(e) = TensorParallelGroup::new(&model, &[Device::Cpu, Device::Cpu], params) else {
                panic!("{arch}: a split inside quantization blocks must be refused")
            };
            assert!(e.to_string().contains("quantization blocks") && e.to_string().contains("down_proj"), "{arch}: {e}");
            continue;
        }
        let diff = tp2_matches(&model, &format!("{arch} Q8_0"), 4, 1e-3);
        eprintln!("{arch} Q8_0 TP=2: max abs diff {diff:e}");
        num_split += 1;
    }
    assert!(num_split >= 3, "only {num_split} golden models have block-aligned shapes");
}

/// On a GPU: a group whose ranks are CUDA devices runs its collectives through NCCL. With one
/// GPU the group has one rank (NCCL with a single rank; two ranks cannot share a GPU), which
/// still runs the sliced model, NCCL's all-reduce and all-gather on the device: its logits
/// equal the CPU model's (F32 both). With two or more GPUs, two ranks. Skips without a GPU or
/// NCCL unless `HEARTH_REQUIRE_GPU=1`.
#[test]
fn a_group_on_cuda_gpus_through_nccl_equals_the_cpu_model() {
    let require = std::env::var("HEARTH_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let mut gpus = Vec::new();
    while gpus.len() < 2 {
        match Device::new_cuda(gpus.len()) {
            Ok(device) => gpus.push(device),
            Err(_) => break,
        }
    }
    if gpus.is_empty() {
        assert!(!require, "HEARTH_REQUIRE_GPU=1 but no CUDA device");
        eprintln!("skipped: no CUDA device");
        return;
    }
    for arch in ARCHS {
        let model = load(&fixture_dir(arch));
        let group = match TensorParallelGroup::new(&model, &gpus, group_params(NUM_BLOCKS)) {
            Ok(group) => group,
            Err(e) if !require && e.to_string().contains("NCCL") => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{arch}: {e}"),
        };
        let cpu_kv = PagedKvCache::new(&model.config, NUM_BLOCKS, BLOCK_SIZE, DType::F32, &Device::Cpu).unwrap();
        let vocab = model.config.vocab_size as u32;
        let mut context: Vec<u32> = (0..9).map(|i| (i * 41 + 3) % vocab).collect();
        let table: Vec<u32> = (0..NUM_BLOCKS as u32).rev().collect();
        let mut max_diff = 0f32;
        // A mid-prompt chunk wants no logits: an empty [0, vocab] (a GPU cannot allocate an
        // empty buffer, so nothing may try).
        let chunk = SequenceInput { new_token_ids: context[..4].to_vec(), num_cached_tokens: 0, block_table: table.clone(), wants_logits: false };
        let none = group.forward(&[chunk.clone()]).unwrap();
        assert_eq!(none.dims(), &[0, model.config.vocab_size], "{arch}");
        model.forward(&ForwardBatch::new(&[chunk], BLOCK_SIZE, &Device::Cpu).unwrap(), &cpu_kv).unwrap();
        for step in 0..6 {
            let new_tokens = match step {
                0 => context[4..].to_vec(),
                _ => context[context.len() - 1..].to_vec(),
            };
            let input = SequenceInput {
                new_token_ids: new_tokens.clone(),
                num_cached_tokens: context.len() - new_tokens.len(),
                block_table: table.clone(),
                wants_logits: true,
            };
            let want = model.forward(&ForwardBatch::new(&[input.clone()], BLOCK_SIZE, &Device::Cpu).unwrap(), &cpu_kv).unwrap();
            // From a fresh thread, as a server's engine thread calls it: no GPU is current there
            // until the group binds one (a rank's tensor freed with none current poisons its GPU).
            let got = std::thread::scope(|s| s.spawn(|| group.forward(&[input]).unwrap().to_device(&Device::Cpu).unwrap()).join().unwrap());
            let diff = max_abs_diff(&got, &want);
            assert!(diff <= 1e-3, "{arch} step {step}: max abs diff {diff}");
            assert_eq!(argmax_rows(&got), argmax_rows(&want), "{arch} step {step}");
            max_diff = max_diff.max(diff);
            context.push(argmax_rows(&want)[0]);
        }
        eprintln!("{arch}: {} rank(s) on CUDA through NCCL vs CPU: max abs diff {max_diff:e}", gpus.len());
    }
}
