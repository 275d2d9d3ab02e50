//! Batch-invariant mode: one kernel per operation on a GPU, whatever the step's row count.
//!
//! By default a GPU step picks each product's and attention's fastest kernel by how many rows
//! it has: the int8 matvec for 1..=8 rows, `quant_mma` up to 127, dequantize + cuBLAS from 128;
//! the prefill kernel for prompt rows and paged attention, split over the sequence by grid size,
//! for generation rows. Those kernels round differently, so a sequence's logits depend on what
//! else was in its steps and on prefix-cache hits (measured on the H100 in crates/kernels/PERF.md:
//! 0 of 16 greedy continuations identical alone and in a batch of 16).
//!
//! In batch-invariant mode every row of every step goes through one kernel per operation:
//! - products: `quant_mma` for Q4_K/Q6_K weights, `dense_mma` (the same kernel) for dense
//!   BF16/F16 weights and for every other block type (dequantized to the activations' type per
//!   call); each token's result is bit-for-bit independent of its batch (tested in the kernels);
//! - attention: paged attention's one-block path for prompt and generation rows alike (each row
//!   walks its own context in a fixed order);
//! - everything else (norms, RoPE, activations, the greedy argmax) already works row by row.
//! So a request's tokens and log-probabilities are the same alone, batched, chunked, after a
//! prefix-cache hit or a preemption (`crates/engine/tests/batch_invariance.rs` runs on the GPU
//! too). It costs speed: prompts lose the cuBLAS GEMM and the tiled prefill attention, single
//! sequences the int8 matvec, and long contexts the split (PERF.md has the numbers).
//!
//! The CPU path is batch-invariant already (its kernels work row by row), so the mode changes
//! nothing there. It needs BF16/F16 activations and a GPU of compute capability 8.0 or newer;
//! elsewhere products fail with an error that says so.
//!
//! Invariant: the mode is read per product, so set it before the first step: CUDA graphs
//! recorded earlier replay the kernels they were recorded with.

use std::sync::atomic::{AtomicU8, Ordering};

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether batch-invariant mode is on: as set by [`set_batch_invariant`], or else from the
/// environment (`HEARTH_BATCH_INVARIANT=1`), read once.
pub fn batch_invariant() -> bool {
    match MODE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var("HEARTH_BATCH_INVARIANT").is_ok_and(|v| v.trim() == "1");
            MODE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns batch-invariant mode on or off for the process (`hearth serve --batch-invariant`).
pub fn set_batch_invariant(on: bool) {
    MODE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}
