//! `hearth_engine::bench` on the golden tiny models (tests/fixtures/golden): the harness runs
//! prompt and generation tests with sane timings, the roofline's bytes per token equal a count
//! by hand of the fixtures' tensors, and impossible tests are refused with a clear error.

use std::path::PathBuf;

use candle_core::{DType, Device};
use hearth_engine::bench::{
    BenchHarness, BenchTest, EnergyMeter, HarnessParams, NoEnergyMeter, RunSettings,
};
use hearth_models::{LoadOptions, ModelFiles};

const BLOCK_SIZE: usize = 16;

fn golden(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden").join(arch).join("model.gguf")
}

const SETTINGS: RunSettings = RunSettings { num_warmup_runs: 1, num_timed_runs: 2, prompt_chunk: 16 };

fn harness(arch: &str, tests: &[BenchTest]) -> BenchHarness {
    let model = ModelFiles::open(&golden(arch)).unwrap().load(&LoadOptions::default()).unwrap().model;
    let params = HarnessParams { block_size: BLOCK_SIZE, kv_dtype: DType::F32 };
    BenchHarness::new(model, tests, &SETTINGS, params, &Device::Cpu).unwrap()
}

/// Counts readings; each reading adds one joule.
struct CountingMeter(f64);

impl EnergyMeter for CountingMeter {
    fn read_joules(&mut self) -> Option<f64> {
        self.0 += 1.0;
        Some(self.0)
    }
}

#[test]
fn harness_times_prompt_and_generation_runs() {
    let tests = [
        BenchTest::Prompt { num_tokens: 40 },
        BenchTest::Generation { num_steps: 4, batch_size: 1, num_context_tokens: 1 },
        BenchTest::Generation { num_steps: 4, batch_size: 3, num_context_tokens: 20 },
    ];
    let mut harness = harness("llama", &tests);
    for test in &tests {
        let mut num_runs = 0;
        let m = harness.measure(test, &SETTINGS, &mut CountingMeter(0.0), &mut || num_runs += 1).unwrap();
        assert_eq!(num_runs, 3, "{}: one warm-up and two timed runs", test.label());
        assert_eq!(m.run_seconds.len(), 2);
        assert!(m.run_seconds.iter().all(|s| *s > 0.0 && *s < 10.0), "{}: {:?}", test.label(), m.run_seconds);
        let tps = m.tokens_per_second();
        assert!(tps.mean > 0.0 && tps.mean.is_finite() && tps.stddev >= 0.0, "{tps:?}");
        // Read once before and once after the timed runs.
        assert_eq!(m.joules, Some(1.0));
        assert_eq!(m.joules_per_token(), Some(1.0 / (2 * test.tokens_per_run()) as f64));
    }
    assert_eq!(tests[2].tokens_per_run(), 12);
    let m = harness.measure(&tests[0], &SETTINGS, &mut NoEnergyMeter, &mut || {}).unwrap();
    assert_eq!(m.joules_per_token(), None);
}

#[test]
fn chunked_prompt_samples_the_unchunked_token_and_times_each_chunk() {
    let tests = [BenchTest::Prompt { num_tokens: 37 }];
    let mut harness = harness("qwen3", &tests);
    let tokens = hearth_engine::bench::random_token_ids(37, 256, 3);
    let table: Vec<u32> = (0..3).collect();
    let whole = harness.compute_prompt(&tokens, &table, 64).unwrap();
    let chunked = harness.compute_prompt(&tokens, &table, 10).unwrap();
    assert_eq!(whole.chunk_seconds.len(), 1);
    assert_eq!(chunked.chunk_seconds.len(), 4);
    assert!(chunked.seconds >= chunked.chunk_seconds.iter().sum::<f64>());
    assert_eq!(whole.first_token, chunked.first_token);
    assert!(whole.first_token < 256);
}

/// The golden llama: hidden 64, 2 layers, 4 heads / 2 kv heads × 16, mlp 128, vocab 256,
/// tied embeddings, every tensor F32.
#[test]
fn bytes_per_token_match_a_hand_count_on_the_tied_llama() {
    let tests = [BenchTest::Prompt { num_tokens: 1 }];
    let harness = harness("llama", &tests);
    let cost = harness.cost().clone();
    // Per layer: q 64×64, k 32×64, v 32×64, o 64×64, gate/up 128×64, down 64×128.
    let matrix_weights_per_layer = 4096 + 2048 + 2048 + 4096 + 3 * 8192;
    assert_eq!(cost.weights.block_matrix_weights, 2 * matrix_weights_per_layer);
    // Matrices + 2 norms of 64 per layer, + the final norm; 4 bytes each.
    let block_bytes = 4 * (2 * (matrix_weights_per_layer + 2 * 64) + 64);
    assert_eq!(cost.weights.block_bytes, block_bytes);
    assert!(cost.weights.lm_head_tied);
    assert_eq!(cost.weights.lm_head_bytes, 256 * 64 * 4);
    assert_eq!(cost.weights.embedding_bytes, 256 * 64 * 4);
    // Tied: the lm_head reads the table whole, so the looked-up rows add nothing.
    assert_eq!(cost.weight_bytes_per_step(1), 361_728);
    assert_eq!(cost.weight_bytes_per_step(2), 361_728);
    // K and V: 2 layers × 2 kv heads × 16 × 4 bytes each = 256 bytes per layer-position.
    assert_eq!(cost.kv_bytes_per_token_per_layer, 256);
    assert_eq!(cost.kv_bytes_read(10), 10 * 512);
    // tg4 at batch 2 from 1 token: contexts 2, 3, 4, 5 (mean 3.5).
    let per_token = cost.generation_bytes_per_token(4, 2, 1);
    assert_eq!(per_token, (361_728.0 + 2.0 * 512.0 * 3.5) / 2.0);
    assert_eq!(per_token, 182_656.0);
    let row = cost.row(&BenchTest::Generation { num_steps: 4, batch_size: 2, num_context_tokens: 1 }, 0.5, 16.0, 1e9);
    assert_eq!(row.bytes_per_token, Some(182_656.0));
    assert_eq!(row.roofline_tokens_per_second, Some(1e9 / 182_656.0));
    assert!((row.roofline_fraction.unwrap() - 16.0 * 182_656.0 / 1e9).abs() < 1e-12);
    // FLOPs of tg4 at batch 2: per token 2 × (matrices + lm_head) + attention 4 × 64 per position per layer.
    let flops: f64 = (2..=5).map(|c| 2.0 * (73_728.0 + 16_384.0) + 2.0 * 4.0 * 64.0 * c as f64).sum::<f64>() * 2.0;
    assert_eq!(row.flops_per_run, flops);
    assert_eq!(row.achieved_tflops, flops / 0.5 / 1e12);
}

/// The golden qwen2 adds q/k/v biases and an untied lm_head: each token then also reads its
/// embedding row.
#[test]
fn untied_lm_head_adds_one_embedding_row_per_token() {
    let tests = [BenchTest::Prompt { num_tokens: 1 }];
    let harness = harness("qwen2", &tests);
    let cost = harness.cost().clone();
    let per_layer = 4 * (4096 + 2048 + 2048 + 4096 + 3 * 8192 + (64 + 32 + 32) + 2 * 64);
    assert_eq!(cost.weights.block_bytes, (2 * per_layer + 4 * 64) as u64);
    assert!(!cost.weights.lm_head_tied);
    assert_eq!(cost.weights.lm_head_bytes, 65_536);
    let step = 2 * per_layer as u64 + 256 + 65_536;
    assert_eq!(cost.weight_bytes_per_step(1), step + 256);
    assert_eq!(cost.weight_bytes_per_step(3), step + 3 * 256);
    // The prompt view: 2 FLOPs per matrix element per token, the lm_head once, causal attention.
    let pp = cost.flops_per_run(&BenchTest::Prompt { num_tokens: 3 });
    assert_eq!(pp, 2.0 * 73_728.0 * 3.0 + 2.0 * 16_384.0 + 2.0 * 256.0 * (1 + 2 + 3) as f64);
}

/// Gemma 3's five sliding layers (window 4) read at most 4 positions each.
#[test]
fn sliding_window_layers_read_at_most_their_window() {
    let tests = [BenchTest::Prompt { num_tokens: 1 }];
    let harness = harness("gemma3", &tests);
    let cost = harness.cost().clone();
    let per_position = cost.kv_bytes_per_token_per_layer;
    assert_eq!(per_position, 2 * 2 * 32 * 4);
    assert_eq!(cost.kv_bytes_read(3), 6 * 3 * per_position);
    assert_eq!(cost.kv_bytes_read(100), (5 * 4 + 100) * per_position);
}

#[test]
fn impossible_tests_are_refused_with_the_reason() {
    let tests = [BenchTest::Prompt { num_tokens: 32 }];
    let mut harness = harness("llama", &tests);
    let settings = RunSettings { num_warmup_runs: 0, num_timed_runs: 1, prompt_chunk: 16 };
    let mut err = |test: BenchTest, settings: RunSettings| {
        harness.measure(&test, &settings, &mut NoEnergyMeter, &mut || {}).unwrap_err().to_string()
    };
    let e = err(BenchTest::Prompt { num_tokens: 600 }, settings);
    assert!(e.contains("context is 512"), "{e}");
    let e = err(BenchTest::Generation { num_steps: 4, batch_size: 8, num_context_tokens: 1 }, settings);
    assert!(e.contains("KV blocks"), "{e}");
    let e = err(BenchTest::Prompt { num_tokens: 16 }, RunSettings { num_timed_runs: 0, ..settings });
    assert!(e.contains("--reps"), "{e}");
    let e = err(BenchTest::Prompt { num_tokens: 16 }, RunSettings { prompt_chunk: 0, ..settings });
    assert!(e.contains("--prompt-chunk"), "{e}");
}
