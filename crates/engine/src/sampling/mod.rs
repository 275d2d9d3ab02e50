//! Sampling: turning one row of logits into one token id.
//!
//! Owns: `SamplingParams` (+ validation), `TokenHistory` (what the penalties look at), the
//! per-request `Sampler` (params + seeded RNG + scratch buffers), the fast path (`fast`) and
//! its slow reference twin (`reference`). Does not own: logits computation, stop conditions,
//! detokenization, or batching (a batched engine holds one `Sampler` per request).
//!
//! # Definition (both implementations follow it exactly)
//!
//! Let `l` be the logits, `V = l.len()`, `u` one uniform draw in `[0, 1)`.
//! 1. **Penalties** on seen tokens (prompt + generated): repetition penalty
//!    `l > 0 ? l / p : l * p`; then, for generated tokens (OpenAI semantics),
//!    `l - count * frequency_penalty - presence_penalty`. An overflow to +inf saturates to
//!    `f32::MAX`.
//! 2. **Temperature 0** ⇒ argmax of the penalized logits, ties to the lowest id (no RNG use
//!    beyond the draw the `Sampler` always makes, so a seed gives the same stream either way).
//! 3. **Temperature scaling + softmax numerators**: `w = exp((l - max) / T)` (`max` weighs 1).
//! 4. **Top-k**: keep the first `k` tokens of the *canonical order* (penalized logit
//!    descending, ties to the lower id).
//! 5. **Top-p**: keep the shortest canonical prefix whose running `f64` weight sum reaches
//!    `top_p * Z`, `Z` = total weight after top-k; always at least one token; if rounding
//!    never reaches it, keep all.
//! 6. **Min-p**: drop tokens with `p < min_p * p_max`, i.e. `w < min_p`.
//! 7. **Renormalize and draw**: inverse CDF over the kept tokens in ascending id order:
//!    the first token whose running sum exceeds `u * total`.
//!
//! Totals and running sums are `f64` over the id-indexed weights of the tokens in play, in
//! blocks of 64 ids (fixed lane/tree order inside a block, blocks in ascending order; see
//! `common`), which vectorizes and gives the same bits whether a set is held densely or as
//! a sparse list. Weights use our own branch-free `exp` (a few ulp, exactly 1 at 0).
//!
//! Sampling steps 3–7 are applied in this order (filters never renormalize in between; the
//! draw's `total` is the renormalization). Inputs: NaN or +inf logits, empty logits, history
//! ids outside the vocabulary, and all logits -inf are errors, never a silent pick.
//!
//! The arithmetic (penalty, weight, order, sums, draw) lives in `common`, shared by `fast`
//! and `reference`, so they agree exactly for every `u`, not just away from boundaries.

mod common;
pub mod fast;
mod history;
mod params;
pub mod reference;
#[cfg(test)]
mod tests;

use rand::rngs::{SysRng, Xoshiro256PlusPlus};
use rand::{Rng, SeedableRng};

pub use history::TokenHistory;
pub use params::{SamplingError, SamplingParams};

/// One request's sampler: validated params, its own RNG and reusable buffers.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256PlusPlus,
    scratch: fast::Scratch,
}

impl Sampler {
    /// Validates `params`; seeds from `params.seed` (deterministic, portable: xoshiro256++
    /// seeded via SplitMix64) or from OS entropy when `None`.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => Xoshiro256PlusPlus::seed_from_u64(seed),
            None => Xoshiro256PlusPlus::try_from_rng(&mut SysRng)
                .map_err(|err| SamplingError::Entropy(err.to_string()))?,
        };
        Ok(Self {
            params,
            rng,
            scratch: fast::Scratch::default(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether this request's next token is the plain argmax of the raw logits (temperature 0,
    /// no penalties), so it may be chosen where the logits are (`hearth_kernels::greedy`).
    pub fn is_plain_argmax(&self) -> bool {
        self.params.is_greedy() && !self.params.has_penalties()
    }

    /// Records a token chosen elsewhere by plain argmax (see [`is_plain_argmax`]
    /// (Self::is_plain_argmax)): consumes the one draw [`sample`](Self::sample) would, so the
    /// request's RNG stream is the same either way.
    pub fn record_argmax_choice(&mut self) {
        self.rng.next_u32();
    }

    /// Samples one token from `logits` (one row, length = vocabulary) given the request's
    /// history. Always consumes exactly one draw from the RNG.
    pub fn sample(&mut self, logits: &[f32], history: &TokenHistory) -> Result<u32, SamplingError> {
        let u = unit_f32(self.rng.next_u32());
        fast::choose_with(&mut self.scratch, logits, history, &self.params, u)
    }
}

/// Maps 32 random bits to `[0, 1)` with 24 bits of precision (every value exact in `f32`).
fn unit_f32(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}
