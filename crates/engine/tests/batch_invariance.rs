//! Batch invariance of the serving engine: a prompt's greedy tokens and log-probabilities are
//! the same when it runs alone, in a batch of mixed lengths, with a prefix-cache hit, with
//! chunked prefill, and after preemption and recompute. Runs the golden tiny models (all five
//! architectures; Gemma 3's sliding window is 4 tokens) and SmolLM2 on the CPU, and the golden
//! models on a GPU in batch-invariant mode (`hearth_models::numerics`; skipped without a GPU
//! unless `HEARTH_REQUIRE_GPU=1`; `HEARTH_TEST_TOKENIZER` may name a GGUF with SmolLM2's
//! vocabulary where the SmolLM2 asset is not at hand).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use hearth_engine::serve::{EngineConfig, EngineHandle, EngineRequest, FinishReason, KvPoolParams, LocalExecutor, ModelInfo, StepLimits};
use hearth_models::{LoadOptions, ModelFiles, QuantizeTo};
use hearth_tokenizer::{BosPolicy, Tokenizer};

/// Log-probabilities are computed from F32 logits; batching must not move them beyond this.
const TOLERANCE: f32 = 1e-4;
const NUM_TOP_LOGPROBS: usize = 5;

fn golden_model(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch)
}

fn smollm2() -> PathBuf {
    let assets = std::env::var_os("HEARTH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hearth/assets"));
    let path = assets.join("smollm2-135m-instruct-q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-assets.sh", path.display());
    path
}

fn smollm2_tokenizer() -> Arc<Tokenizer> {
    let path = std::env::var_os("HEARTH_TEST_TOKENIZER").map_or_else(smollm2, PathBuf::from);
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = gguf_file::Content::read(&mut file).unwrap();
    Arc::new(Tokenizer::from_gguf(&content).unwrap())
}

/// Where the model runs: the device, its activation/KV dtype, and an optional load-time
/// quantization of the weights.
#[derive(Clone)]
struct Target {
    device: Device,
    dtype: DType,
    quantize: Option<QuantizeTo>,
}

const CPU: Target = Target { device: Device::Cpu, dtype: DType::F32, quantize: None };

/// The first GPU in batch-invariant mode with BF16 activations, or `None` (the test passes)
/// without one unless `HEARTH_REQUIRE_GPU=1`.
fn gpu_target() -> Option<Target> {
    match Device::new_cuda(0) {
        Ok(device) => {
            hearth_models::numerics::set_batch_invariant(true);
            Some(Target { device, dtype: DType::BF16, quantize: None })
        }
        Err(e) if std::env::var("HEARTH_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("HEARTH_REQUIRE_GPU=1 but no CUDA device: {e}"),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    block_size: usize,
    num_blocks: usize,
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
}

const ROOMY: Limits = Limits { block_size: 4, num_blocks: 512, max_num_batched_tokens: 4096, max_num_seqs: 64 };

fn start(model_path: &Path, tokenizer: Arc<Tokenizer>, limits: Limits, target: &Target) -> EngineHandle {
    let options = LoadOptions { device: target.device.clone(), dtype: target.dtype, quantize: target.quantize };
    let loaded = ModelFiles::open(model_path).unwrap().load(&options).unwrap();
    let config = loaded.model.config.clone();
    let pool = KvPoolParams { num_blocks: limits.num_blocks, block_size: limits.block_size, dtype: target.dtype };
    let step_limits = StepLimits {
        max_num_seqs: limits.max_num_seqs,
        max_num_batched_tokens: limits.max_num_batched_tokens,
        max_model_len: config.context_length,
    };
    let executor = LocalExecutor::new(loaded.model, pool, step_limits, &target.device).unwrap();
    let info = ModelInfo {
        name: "test".into(),
        architecture: config.arch.name().to_string(),
        context_length: config.context_length,
        quantization: "F32".into(),
        num_parameters: 0,
        format: "gguf".into(),
        size_bytes: 0,
        created: 0,
    };
    let engine_config = EngineConfig {
        block_size: limits.block_size,
        num_blocks: limits.num_blocks,
        max_num_batched_tokens: limits.max_num_batched_tokens,
        max_num_seqs: limits.max_num_seqs,
        max_model_len: config.context_length,
        vocab_size: config.vocab_size,
        cache_salt: 7,
    };
    EngineHandle::spawn(Box::new(executor), tokenizer, info, engine_config).unwrap()
}

#[derive(Debug, Clone)]
struct Output {
    token_ids: Vec<u32>,
    /// Per generated token: (chosen logprob, top alternatives).
    logprobs: Vec<(f32, Vec<(u32, f32)>)>,
    num_cached_tokens: usize,
}

/// Submits every prompt at once, then collects each stream.
fn run(handle: &EngineHandle, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Output> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let mut streams: Vec<_> = prompts
            .iter()
            .map(|prompt| {
                let mut request = EngineRequest::greedy(prompt.clone(), max_tokens);
                request.ignore_eos = true;
                request.logprobs = Some(NUM_TOP_LOGPROBS);
                handle.add(request).unwrap()
            })
            .collect();
        let mut outputs = Vec::new();
        for stream in &mut streams {
            let mut output = Output { token_ids: Vec::new(), logprobs: Vec::new(), num_cached_tokens: 0 };
            while let Some(delta) = stream.recv().await {
                output.token_ids.extend(&delta.token_ids);
                output.logprobs.extend(delta.logprobs.iter().map(|lp| (lp.logprob, lp.top.clone())));
                if let Some(finish) = delta.finish {
                    assert_eq!(finish.reason, FinishReason::Length, "request ended early");
                    assert_eq!(finish.usage.completion_tokens, max_tokens);
                    output.num_cached_tokens = finish.usage.cached_tokens;
                }
            }
            outputs.push(output);
        }
        outputs
    })
}

fn assert_same(label: &str, prompt_idx: usize, got: &Output, want: &Output) {
    assert_eq!(got.token_ids, want.token_ids, "{label}: prompt {prompt_idx} generated different tokens");
    let mut max_diff = 0f32;
    for (step, ((got_lp, got_top), (want_lp, want_top))) in got.logprobs.iter().zip(&want.logprobs).enumerate() {
        let got_ids: Vec<u32> = got_top.iter().map(|t| t.0).collect();
        let want_ids: Vec<u32> = want_top.iter().map(|t| t.0).collect();
        assert_eq!(got_ids, want_ids, "{label}: prompt {prompt_idx} step {step}: top tokens differ");
        max_diff = max_diff.max((got_lp - want_lp).abs());
        for (g, w) in got_top.iter().zip(want_top) {
            max_diff = max_diff.max((g.1 - w.1).abs());
        }
    }
    assert!(max_diff <= TOLERANCE, "{label}: prompt {prompt_idx}: logprobs differ by {max_diff} > {TOLERANCE}");
}

/// Runs `prompts` under every scenario and compares each with the prompt run alone.
fn check_invariance(model_path: &Path, tokenizer: Arc<Tokenizer>, prompts: &[Vec<u32>], max_tokens: usize, target: &Target) {
    let start = |tokenizer: Arc<Tokenizer>, limits| start(model_path, tokenizer, limits, target);
    let alone: Vec<Output> = prompts
        .iter()
        .map(|prompt| run(&start(tokenizer.clone(), ROOMY), std::slice::from_ref(prompt), max_tokens).remove(0))
        .collect();
    for output in &alone {
        assert_eq!(output.token_ids.len(), max_tokens);
        assert_eq!(output.num_cached_tokens, 0);
    }

    let batched = run(&start(tokenizer.clone(), ROOMY), prompts, max_tokens);
    for (idx, output) in batched.iter().enumerate() {
        assert_same("mixed batch", idx, output, &alone[idx]);
    }

    let chunked_limits = Limits { max_num_batched_tokens: 5, ..ROOMY };
    let chunked = run(&start(tokenizer.clone(), chunked_limits), prompts, max_tokens);
    for (idx, output) in chunked.iter().enumerate() {
        assert_same("chunked prefill", idx, output, &alone[idx]);
    }

    // The same prompts again on a warm engine hit the prefix cache.
    let warm = start(tokenizer.clone(), ROOMY);
    run(&warm, prompts, max_tokens);
    let cached = run(&warm, prompts, max_tokens);
    for (idx, output) in cached.iter().enumerate() {
        assert!(output.num_cached_tokens > 0 || prompts[idx].len() <= ROOMY.block_size, "prompt {idx} missed the prefix cache");
        assert_same("prefix-cache hit", idx, output, &alone[idx]);
    }

    // A pool that holds only the longest request alone forces preemption and recompute.
    let longest = prompts.iter().map(Vec::len).max().unwrap() + max_tokens;
    let tight = Limits { num_blocks: longest.div_ceil(ROOMY.block_size) + 1, ..ROOMY };
    let preempting = start(tokenizer.clone(), tight);
    let recomputed = run(&preempting, prompts, max_tokens);
    assert!(preempting.stats().num_preemptions > 0, "the tight pool never preempted");
    for (idx, output) in recomputed.iter().enumerate() {
        assert_same("after preemption", idx, output, &alone[idx]);
    }
    assert_eq!(preempting.stats().num_kv_blocks_used, 0, "finished requests still hold blocks");
}

/// Prompts of mixed lengths over a 256-token vocabulary, sharing a prefix pairwise.
fn synthetic_prompts() -> Vec<Vec<u32>> {
    let base: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 256).collect();
    vec![base[..3].to_vec(), base[..17].to_vec(), base.clone(), [&base[..9], &[5, 6, 7, 8, 9, 10, 11]].concat(), base[20..31].to_vec()]
}

#[test]
fn golden_llama_is_batch_invariant() {
    check_invariance(&golden_model("llama"), smollm2_tokenizer(), &synthetic_prompts(), 10, &CPU);
}

#[test]
fn golden_qwen2_is_batch_invariant() {
    check_invariance(&golden_model("qwen2"), smollm2_tokenizer(), &synthetic_prompts(), 10, &CPU);
}

#[test]
fn golden_qwen3_is_batch_invariant() {
    check_invariance(&golden_model("qwen3"), smollm2_tokenizer(), &synthetic_prompts(), 10, &CPU);
}

#[test]
fn golden_gemma3_sliding_window_is_batch_invariant() {
    check_invariance(&golden_model("gemma3"), smollm2_tokenizer(), &synthetic_prompts(), 10, &CPU);
}

#[test]
fn golden_phi3_is_batch_invariant() {
    check_invariance(&golden_model("phi3"), smollm2_tokenizer(), &synthetic_prompts(), 10, &CPU);
}

#[test]
fn smollm2_is_batch_invariant() {
    let tokenizer = smollm2_tokenizer();
    let texts = [
        "The capital of France is",
        "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
        "To be, or not to be, that is the question: whether 'tis",
        "def fibonacci(n):",
    ];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t, BosPolicy::AddIfModelDoes).unwrap()).collect();
    check_invariance(&smollm2(), tokenizer, &prompts, 8, &CPU);
}

/// Batch-invariant mode on a GPU: every architecture with its dense weights (BF16, `dense_mma`),
/// and Llama with Q8_0 weights (dequantized per product); tokens and log-probabilities must be
/// the same in every scenario, as on the CPU.
#[test]
fn gpu_batch_invariant_mode_holds() {
    let Some(gpu) = gpu_target() else { return };
    for arch in ["llama", "qwen2", "qwen3", "gemma3", "phi3"] {
        check_invariance(&golden_model(arch), smollm2_tokenizer(), &synthetic_prompts(), 10, &gpu);
    }
    let q8 = Target { quantize: Some(QuantizeTo::Q8_0), ..gpu };
    check_invariance(&golden_model("llama"), smollm2_tokenizer(), &synthetic_prompts(), 10, &q8);
}
