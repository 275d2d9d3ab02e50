//! Microbenchmarks of the model step, llama-bench style (`hearth bench`, DESIGN.md §7): prompt
//! processing (`ppN`: one sequence, N prompt tokens in chunks) and generation (`tgN` at batch B:
//! B sequences advancing one token per step, N steps), with warm-up runs, timed repetitions,
//! and the numbers a roofline needs.
//!
//! Owns: the tests and their settings (here), running them through the serving engine's own
//! `LocalExecutor` with step plans built here (`harness`: whatever a `hearth serve` step does —
//! `ForwardBatch`, the forward pass or a replayed device graph, logits to the host, greedy
//! sampling per request — the bench measures), bytes read and FLOPs per token from the loaded
//! model (`roofline`), and measuring copy bandwidth (`bandwidth`).
//! Does not own: reading hardware facts, energy counters (callers implement [`EnergyMeter`]:
//! RAPL, NVML), opening models, printing tables or JSON (`hearth bench` in the cli).
//!
//! Invariants: timed regions start and end with the device synchronized (candle's CUDA ops
//! are asynchronous); a test's KV blocks are fixed and reused by every run, so runs differ only
//! in timing; token ids come from a fixed seed, so every run computes the same thing.

mod bandwidth;
mod harness;
mod roofline;

pub use bandwidth::{cpu_copy_bandwidth, CopyBandwidth, CopyParams};
pub use harness::{BenchHarness, HarnessParams, PromptRun};
pub use roofline::{ModelCost, RooflineRow};

use crate::{EngineError, Result};

/// One benchmark test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTest {
    /// `ppN`: one sequence's prompt of `num_tokens` tokens, logits for the last row only.
    Prompt { num_tokens: usize },
    /// `tgN`: `batch_size` sequences, each with a prompt of `num_context_tokens` tokens
    /// computed untimed, then `num_steps` timed steps of one token per sequence.
    Generation { num_steps: usize, batch_size: usize, num_context_tokens: usize },
}

impl BenchTest {
    /// llama-bench's names: `pp512`, `tg128`, `tg128 @ d4096` when generation starts from a
    /// longer context.
    pub fn label(&self) -> String {
        match *self {
            Self::Prompt { num_tokens } => format!("pp{num_tokens}"),
            Self::Generation { num_steps, num_context_tokens, .. } if num_context_tokens > 1 => {
                format!("tg{num_steps} @ d{num_context_tokens}")
            }
            Self::Generation { num_steps, .. } => format!("tg{num_steps}"),
        }
    }

    pub fn batch_size(&self) -> usize {
        match *self {
            Self::Prompt { .. } => 1,
            Self::Generation { batch_size, .. } => batch_size,
        }
    }

    /// Tokens one timed run processes (prompt tokens, or generated tokens over all sequences).
    pub fn tokens_per_run(&self) -> usize {
        match *self {
            Self::Prompt { num_tokens } => num_tokens,
            Self::Generation { num_steps, batch_size, .. } => num_steps * batch_size,
        }
    }

    /// The longest sequence the test builds, in tokens.
    pub fn max_sequence_len(&self) -> usize {
        match *self {
            Self::Prompt { num_tokens } => num_tokens,
            Self::Generation { num_steps, num_context_tokens, .. } => num_context_tokens + num_steps,
        }
    }

    /// KV blocks the test holds at once.
    pub fn kv_blocks(&self, block_size: usize) -> usize {
        self.batch_size() * self.max_sequence_len().div_ceil(block_size.max(1))
    }

    /// Rejects a test that cannot run: a zero count, or a sequence longer than the model's
    /// context. The error names the test and the limit.
    pub fn validate(&self, context_length: usize) -> Result<()> {
        let bad = |m: String| Err(EngineError::Invalid(m));
        match *self {
            Self::Prompt { num_tokens: 0 } => return bad("a prompt test needs at least 1 token (pp0)".into()),
            Self::Generation { num_steps: 0, .. } => return bad("a generation test needs at least 1 step (tg0)".into()),
            Self::Generation { batch_size: 0, .. } => return bad("batch sizes must be at least 1".into()),
            Self::Generation { num_context_tokens: 0, .. } => {
                return bad("generation needs a prompt of at least 1 token to start from".into())
            }
            _ => {}
        }
        if self.max_sequence_len() > context_length {
            return bad(format!(
                "{} needs sequences of {} tokens, but the model's context is {context_length} tokens",
                self.label(),
                self.max_sequence_len()
            ));
        }
        Ok(())
    }
}

/// How each test is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSettings {
    /// Untimed runs before the timed ones.
    pub num_warmup_runs: usize,
    /// Timed runs.
    pub num_timed_runs: usize,
    /// Most prompt tokens per forward pass (prompt tests and generation prompts).
    pub prompt_chunk: usize,
}

impl RunSettings {
    pub fn validate(&self) -> Result<()> {
        if self.num_timed_runs == 0 {
            return Err(EngineError::Invalid("--reps must be at least 1".into()));
        }
        if self.prompt_chunk == 0 {
            return Err(EngineError::Invalid("--prompt-chunk must be at least 1 token".into()));
        }
        Ok(())
    }
}

/// A cumulative energy counter (RAPL, NVML). `None` when it cannot be read right now; the bench
/// then reports no energy for the test rather than failing.
pub trait EnergyMeter {
    /// Joules since an arbitrary origin; successive readings never decrease.
    fn read_joules(&mut self) -> Option<f64>;
}

/// A meter that never has a reading (no energy source on this machine).
pub struct NoEnergyMeter;

impl EnergyMeter for NoEnergyMeter {
    fn read_joules(&mut self) -> Option<f64> {
        None
    }
}

/// One test's timed runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TestMeasurement {
    pub test: BenchTest,
    /// Wall time of each timed run, seconds.
    pub run_seconds: Vec<f64>,
    /// Energy over all timed runs together, when a meter could be read before and after.
    pub joules: Option<f64>,
}

impl TestMeasurement {
    /// Tokens/s of each run, then their mean and sample standard deviation (llama-bench's
    /// `avg_ts ± stddev_ts`; 0 for a single run).
    pub fn tokens_per_second(&self) -> MeanStd {
        let tokens = self.test.tokens_per_run() as f64;
        MeanStd::of(&self.run_seconds.iter().map(|s| tokens / s.max(f64::MIN_POSITIVE)).collect::<Vec<_>>())
    }

    pub fn mean_seconds(&self) -> f64 {
        MeanStd::of(&self.run_seconds).mean
    }

    pub fn joules_per_token(&self) -> Option<f64> {
        let tokens = self.test.tokens_per_run() * self.run_seconds.len();
        self.joules.filter(|_| tokens > 0).map(|j| j / tokens as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub stddev: f64,
}

impl MeanStd {
    /// Mean and sample standard deviation (n − 1); zeros for no values.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self { mean: 0.0, stddev: 0.0 };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let stddev =
            if n < 2 { 0.0 } else { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
        Self { mean, stddev }
    }
}

/// Deterministic pseudo-random token ids in `[0, vocab_size)` (xorshift64 from `seed`).
pub fn random_token_ids(num_tokens: usize, vocab_size: usize, seed: u64) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let vocab_size = vocab_size.max(1) as u64;
    (0..num_tokens)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab_size) as u32
        })
        .collect()
}

/// Block tables for `num_sequences` sequences of up to `max_len` tokens each: sequence `s` owns
/// blocks `[s·n, (s+1)·n)` with `n = ⌈max_len / block_size⌉`.
pub fn disjoint_block_tables(num_sequences: usize, max_len: usize, block_size: usize) -> Vec<Vec<u32>> {
    let per_sequence = max_len.div_ceil(block_size.max(1));
    (0..num_sequences).map(|s| ((s * per_sequence) as u32..((s + 1) * per_sequence) as u32).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_llama_bench() {
        assert_eq!(BenchTest::Prompt { num_tokens: 512 }.label(), "pp512");
        assert_eq!(BenchTest::Generation { num_steps: 128, batch_size: 4, num_context_tokens: 1 }.label(), "tg128");
        assert_eq!(
            BenchTest::Generation { num_steps: 128, batch_size: 1, num_context_tokens: 4096 }.label(),
            "tg128 @ d4096"
        );
    }

    #[test]
    fn validation_names_zero_counts_and_context_overflow() {
        let err = |t: BenchTest| t.validate(512).unwrap_err().to_string();
        assert!(err(BenchTest::Prompt { num_tokens: 0 }).contains("at least 1 token"));
        assert!(err(BenchTest::Generation { num_steps: 4, batch_size: 0, num_context_tokens: 1 }).contains("batch"));
        assert!(err(BenchTest::Generation { num_steps: 0, batch_size: 1, num_context_tokens: 1 }).contains("tg0"));
        let long = err(BenchTest::Prompt { num_tokens: 513 });
        assert!(long.contains("pp513") && long.contains("context is 512"), "{long}");
        let long = err(BenchTest::Generation { num_steps: 500, batch_size: 2, num_context_tokens: 13 });
        assert!(long.contains("513 tokens"), "{long}");
        assert!(BenchTest::Generation { num_steps: 500, batch_size: 2, num_context_tokens: 12 }.validate(512).is_ok());
    }

    #[test]
    fn mean_and_sample_stddev() {
        let s = MeanStd::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean, 5.0);
        assert!((s.stddev - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{s:?}");
        assert_eq!(MeanStd::of(&[3.0]), MeanStd { mean: 3.0, stddev: 0.0 });
    }

    #[test]
    fn token_ids_are_seeded_and_inside_the_vocabulary() {
        let a = random_token_ids(1000, 256, 7);
        assert_eq!(a, random_token_ids(1000, 256, 7));
        assert_ne!(a, random_token_ids(1000, 256, 8));
        assert!(a.iter().all(|&t| t < 256));
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 200);
    }

    #[test]
    fn block_tables_are_disjoint_and_cover_each_sequence() {
        let tables = disjoint_block_tables(3, 33, 16);
        assert_eq!(tables, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]);
        assert_eq!(BenchTest::Generation { num_steps: 32, batch_size: 3, num_context_tokens: 1 }.kv_blocks(16), 9);
    }
}
