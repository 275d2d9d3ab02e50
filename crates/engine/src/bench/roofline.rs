//! Bytes read and FLOPs of a benchmark test, from the loaded model's own tensors
//! (`Transformer::weight_footprint`) and its config, and the memory-bandwidth roofline.
//!
//! Owns the accounting rules:
//! - A step with `n` tokens reads every block matrix, bias and norm and the final norm once,
//!   the lm_head once (`n` logit rows), and `n` embedding rows — unless the lm_head is the
//!   embedding table (tied), which the lm_head then reads whole, so the table counts once.
//! - A token's attention at context `c` (itself included) reads K and V of `min(c, window)`
//!   positions in each layer (window: a sliding-window layer's, else unbounded), at the pool's
//!   element size (`ModelConfig::kv_bytes_per_token` split per layer).
//! - Not counted: activations, RoPE tables, K/V writes, block tables (small next to weights).
//! - FLOPs: 2 per matrix element per token through it (the lm_head only for logit rows), plus
//!   attention's `4 · heads · head_dim` per visible position (q·k and p·v) per layer.
//!
//! Roofline: tokens/s ≤ bandwidth ÷ bytes per token, with the bandwidth a measured copy's
//! (read + write counted, `bandwidth`).

use candle_core::DType;
use hearth_models::config::LayerKind;
use hearth_models::transformer::WeightFootprint;
use hearth_models::Transformer;

use super::BenchTest;

/// A loaded model's costs per token.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCost {
    pub weights: WeightFootprint,
    /// K + V bytes of one position in one layer, at the pool's element size.
    pub kv_bytes_per_token_per_layer: u64,
    /// Per layer: its sliding window, or `None` for global attention.
    layer_windows: Vec<Option<usize>>,
    num_heads: usize,
    head_dim: usize,
}

/// Roofline numbers of one measured test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RooflineRow {
    /// Generation: bytes read per generated token (step weights ÷ batch + KV), averaged over
    /// the steps. `None` for prompt tests (compute-bound: see the FLOP/s instead).
    pub bytes_per_token: Option<f64>,
    /// `bandwidth ÷ bytes_per_token`.
    pub roofline_tokens_per_second: Option<f64>,
    /// Measured tokens/s ÷ roofline tokens/s.
    pub roofline_fraction: Option<f64>,
    /// FLOPs of one run of the test.
    pub flops_per_run: f64,
    /// `flops_per_run ÷ mean run seconds`, in TFLOP/s.
    pub achieved_tflops: f64,
}

impl ModelCost {
    pub fn new(model: &Transformer, kv_dtype: DType) -> Self {
        let c = &model.config;
        let layer_windows = c
            .layer_kinds
            .iter()
            .map(|kind| match kind {
                LayerKind::Global => None,
                LayerKind::Sliding => c.sliding_window,
            })
            .collect();
        Self {
            weights: model.weight_footprint(),
            kv_bytes_per_token_per_layer: (c.kv_bytes_per_token(kv_dtype.size_in_bytes()) / c.num_layers.max(1)) as u64,
            layer_windows,
            num_heads: c.num_heads,
            head_dim: c.head_dim,
        }
    }

    /// Weight bytes one step over `num_tokens` tokens reads (with logits for some rows).
    pub fn weight_bytes_per_step(&self, num_tokens: usize) -> u64 {
        let w = &self.weights;
        let embedding_rows = if w.lm_head_tied || w.embedding_rows == 0 {
            0
        } else {
            w.embedding_bytes / w.embedding_rows * num_tokens as u64
        };
        w.block_bytes + w.lm_head_bytes + embedding_rows
    }

    /// K/V bytes one token's attention reads at `context_len` positions (itself included).
    pub fn kv_bytes_read(&self, context_len: usize) -> u64 {
        self.layer_windows.iter().map(|w| visible(context_len, *w) as u64).sum::<u64>()
            * self.kv_bytes_per_token_per_layer
    }

    /// Attention FLOPs of one query token at `context_len` positions.
    pub fn attention_flops(&self, context_len: usize) -> f64 {
        let per_position = 4.0 * (self.num_heads * self.head_dim) as f64;
        self.layer_windows.iter().map(|w| visible(context_len, *w) as f64 * per_position).sum()
    }

    /// Bytes read per generated token by a generation test, averaged over its steps: step `i`
    /// (from 0) feeds each sequence one token at context `num_context_tokens + i + 1`.
    pub fn generation_bytes_per_token(&self, num_steps: usize, batch_size: usize, num_context_tokens: usize) -> f64 {
        let weight_bytes = self.weight_bytes_per_step(batch_size) as f64 * num_steps as f64;
        let kv_bytes: f64 = (0..num_steps).map(|i| self.kv_bytes_read(num_context_tokens + i + 1) as f64).sum::<f64>()
            * batch_size as f64;
        (weight_bytes + kv_bytes) / (num_steps * batch_size).max(1) as f64
    }

    /// FLOPs of one run of `test`.
    pub fn flops_per_run(&self, test: &BenchTest) -> f64 {
        let w = &self.weights;
        let (block, head) = (2.0 * w.block_matrix_weights as f64, 2.0 * w.lm_head_weights as f64);
        match *test {
            BenchTest::Prompt { num_tokens } => {
                // Logits for the last row only.
                block * num_tokens as f64 + head + (1..=num_tokens).map(|c| self.attention_flops(c)).sum::<f64>()
            }
            BenchTest::Generation { num_steps, batch_size, num_context_tokens } => {
                let per_token: f64 =
                    (0..num_steps).map(|i| block + head + self.attention_flops(num_context_tokens + i + 1)).sum();
                per_token * batch_size as f64
            }
        }
    }

    /// The roofline numbers of `test` measured at `mean_seconds` per run (tokens/s
    /// `measured_tokens_per_second`) against `bandwidth_bytes_per_second`.
    pub fn row(
        &self,
        test: &BenchTest,
        mean_seconds: f64,
        measured_tokens_per_second: f64,
        bandwidth_bytes_per_second: f64,
    ) -> RooflineRow {
        let bytes_per_token = match *test {
            BenchTest::Prompt { .. } => None,
            BenchTest::Generation { num_steps, batch_size, num_context_tokens } => {
                Some(self.generation_bytes_per_token(num_steps, batch_size, num_context_tokens))
            }
        };
        let roofline_tokens_per_second = bytes_per_token.filter(|b| *b > 0.0).map(|b| bandwidth_bytes_per_second / b);
        let roofline_fraction = roofline_tokens_per_second.filter(|r| *r > 0.0).map(|r| measured_tokens_per_second / r);
        let flops_per_run = self.flops_per_run(test);
        let achieved_tflops = if mean_seconds > 0.0 { flops_per_run / mean_seconds / 1e12 } else { 0.0 };
        RooflineRow { bytes_per_token, roofline_tokens_per_second, roofline_fraction, flops_per_run, achieved_tflops }
    }
}

/// Positions a query at `context_len` sees in a layer with `window`.
fn visible(context_len: usize, window: Option<usize>) -> usize {
    window.map_or(context_len, |w| context_len.min(w))
}
