//! The reference sampler: the definition in `sampling/mod.rs`, written as plainly as possible.
//!
//! Owns: nothing the product runs; it is the slow twin the fast path is tested against. It
//! penalizes every logit, fully sorts the vocabulary in canonical order, and applies each step
//! literally. Does not own: the shared arithmetic (`common`), which both implementations call
//! so that their floating-point results are identical.
//! Invariant: O(V log V) per call and obviously following the documented order of operations.

use super::common::{
    canonical_cmp, check_inputs, dense_blocks, draw, penalize, total_weight, weight, NucleusScan,
};
use super::history::TokenHistory;
use super::params::{SamplingError, SamplingParams};

/// Picks a token for uniform `u` in `[0, 1)`.
pub fn choose(
    logits: &[f32],
    history: &TokenHistory,
    params: &SamplingParams,
    u: f32,
) -> Result<u32, SamplingError> {
    params.validate()?;
    check_inputs(logits, history)?;
    let num_logits = logits.len();

    // 1. Penalties.
    let penalized: Vec<f32> = logits
        .iter()
        .enumerate()
        .map(|(token_idx, &l)| penalize(l, token_idx as u32, history, params))
        .collect();

    // Canonical order of the whole vocabulary: best first, ties to the lower id.
    let mut order: Vec<u32> = (0..num_logits as u32).collect();
    order.sort_by(|&a, &b| canonical_cmp((penalized[a as usize], a), (penalized[b as usize], b)));
    let best = order[0];
    let max = penalized[best as usize];
    if max == f32::NEG_INFINITY {
        return Err(SamplingError::AllLogitsMasked);
    }

    // 2. Temperature 0: argmax.
    if params.is_greedy() {
        return Ok(best);
    }

    // 3. Temperature scaling and softmax numerators (weights; the best token weighs 1).
    let weights: Vec<f32> = penalized
        .iter()
        .map(|&l| weight(l, max, params.temperature))
        .collect();

    // 4. Top-k: a prefix of the canonical order.
    let num_top_k = if params.top_k == 0 {
        num_logits
    } else {
        params.top_k.min(num_logits)
    };
    let mut kept: Vec<u32> = order[..num_top_k].to_vec();

    // 5. Top-p: the shortest canonical prefix whose weight reaches top_p of the kept total.
    if params.top_p < 1.0 {
        let total = total_weight(dense_blocks(&weights_of(&kept, &weights), 0.0));
        let mut scan = NucleusScan::new(params.top_p, total);
        if let Some(j) = kept.iter().position(|&id| scan.push(weights[id as usize])) {
            kept.truncate(j + 1);
        }
    }

    // 6. Min-p: p < min_p * p_max, i.e. weight < min_p since the best token weighs 1.
    kept.retain(|&id| weights[id as usize] >= params.min_p);

    // 7. Renormalize and draw: inverse CDF over the kept tokens in ascending id order.
    draw(dense_blocks(&weights_of(&kept, &weights), 0.0), u).ok_or(SamplingError::AllLogitsMasked)
}

/// The dense id-indexed weights of `token_ids`, 0 for every other token.
fn weights_of(token_ids: &[u32], weights: &[f32]) -> Vec<f32> {
    let mut dense = vec![0.0; weights.len()];
    for &id in token_ids {
        dense[id as usize] = weights[id as usize];
    }
    dense
}
