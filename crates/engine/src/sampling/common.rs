//! Arithmetic shared by the fast path and the reference: the pieces whose exact floating-point
//! results define the sampler, so that both implementations agree bit for bit for every `u`.
//!
//! Owns: input checks, the penalty formula, the canonical token order, the weight formula
//! (with the branch-free `hearth_kernels::math::exp_nonpositive`, so weight loops vectorize), weight sums, the top-p scan and
//! the inverse-CDF draw. Does not own: selection strategy (sorting, partial selection,
//! pre-filters), which is where `fast` and `reference` differ.
//!
//! Invariants: every function is pure. Weight sums are defined over the *dense* id-indexed
//! weight array of the tokens in play (0 for tokens out of play): ids are grouped into blocks
//! of `SUM_BLOCK_LEN` consecutive ids, each block is summed in a fixed order in `f64`
//! (`block_sum`), and blocks are accumulated in ascending order. Zero entries therefore never change a sum,
//! so a sparse list of members (ascending ids) gives exactly the dense result.

use hearth_kernels::math::exp_nonpositive;
use std::cmp::Ordering;
use std::ops::ControlFlow;

use super::history::TokenHistory;
use super::params::{SamplingError, SamplingParams};

/// Rejects empty logits, NaN or +inf logits, and history ids outside the vocabulary.
pub(crate) fn check_inputs(logits: &[f32], history: &TokenHistory) -> Result<(), SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    if u32::try_from(logits.len()).is_err() {
        return Err(SamplingError::VocabTooLarge {
            num_logits: logits.len(),
        });
    }
    // `x < inf` is false exactly for NaN and +inf. Chunked so the common all-good case
    // vectorizes; the slow scan runs only to name the offending token.
    let all_ok = logits
        .chunks(64)
        .all(|chunk| chunk.iter().fold(true, |ok, &x| ok & (x < f32::INFINITY)));
    if !all_ok {
        if let Some((token_idx, &value)) = logits
            .iter()
            .enumerate()
            .find(|(_, &x)| x.is_nan() || x == f32::INFINITY)
        {
            return Err(SamplingError::NonFiniteLogit {
                token_id: token_idx as u32,
                value,
            });
        }
    }
    match history.max_id() {
        Some(token_id) if token_id as usize >= logits.len() => {
            Err(SamplingError::TokenOutOfVocab {
                token_id,
                num_logits: logits.len(),
            })
        }
        _ => Ok(()),
    }
}

/// The penalized logit of `token_id`. Unseen tokens are unchanged. For a seen token:
/// repetition penalty first (`l > 0 ? l / p : l * p`), then
/// `l - count * frequency_penalty - presence_penalty` if it was generated (`count > 0`).
/// A finite logit that overflows to +inf saturates to `f32::MAX` (so the max stays finite);
/// -inf stays -inf.
pub(crate) fn penalize(
    logit: f32,
    token_id: u32,
    history: &TokenHistory,
    params: &SamplingParams,
) -> f32 {
    if !history.is_seen(token_id) {
        return logit;
    }
    let p = params.repetition_penalty;
    let mut penalized = if logit > 0.0 { logit / p } else { logit * p };
    let count = history.generated_count(token_id);
    if count > 0 {
        penalized = penalized - count as f32 * params.frequency_penalty - params.presence_penalty;
    }
    if penalized == f32::INFINITY {
        f32::MAX
    } else {
        penalized
    }
}

/// The canonical order: larger (penalized) logit first, ties to the lower token id. A strict
/// total order on `(logit, id)` pairs without NaN; `-0.0` and `0.0` count as equal logits.
/// Top-k and top-p take prefixes of this order.
#[inline]
pub(crate) fn canonical_cmp(a: (f32, u32), b: (f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Largest logit (exact: max does not depend on order). Callers have rejected NaN.
pub(crate) fn max_logit(logits: &[f32]) -> f32 {
    const NUM_LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; NUM_LANES];
    let chunks = logits.chunks_exact(NUM_LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    lanes
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m })
}

/// Unnormalized probability: `exp((logit - max_logit) / temperature)`. The best token weighs
/// exactly 1, and shifting before dividing keeps a tiny temperature from making `inf - inf`.
#[inline]
pub(crate) fn weight(logit: f32, max_logit: f32, temperature: f32) -> f32 {
    exp_nonpositive((logit - max_logit) / temperature)
}


/// Ids per block in weight sums.
pub(crate) const SUM_BLOCK_LEN: usize = 64;
const NUM_SUM_LANES: usize = 8;

/// One block's sum in `f64`: lane `j` accumulates the block's entries at offsets `≡ j (mod 8)`
/// in ascending order, then a fixed pairwise tree joins the 8 lanes. A shorter block (the
/// vocabulary's last) sums exactly like one padded with zeros. Vectorizes.
#[inline(always)]
fn block_sum(block: &[f32]) -> f64 {
    let mut lanes = [0.0f64; NUM_SUM_LANES];
    let chunks = block.chunks_exact(NUM_SUM_LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &w) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(w);
        }
    }
    for (lane, &w) in lanes.iter_mut().zip(tail) {
        *lane += f64::from(w);
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// Token weights seen block by block, the form every sum and draw is defined on.
pub(crate) trait WeightBlocks {
    /// Calls `f(block_idx, block)` in ascending block order until it breaks; `block[j]` is the
    /// weight of token `block_idx * SUM_BLOCK_LEN + j`. Blocks not visited hold only zeros.
    fn try_for_each<R>(&self, f: impl FnMut(usize, &[f32]) -> ControlFlow<R>) -> Option<R>;
}

/// A dense id-indexed weight array; weights below `min_weight` count as 0.
#[derive(Clone, Copy)]
pub(crate) struct DenseBlocks<'a> {
    weights: &'a [f32],
    min_weight: f32,
}

pub(crate) fn dense_blocks(weights: &[f32], min_weight: f32) -> DenseBlocks<'_> {
    DenseBlocks {
        weights,
        min_weight,
    }
}

impl WeightBlocks for DenseBlocks<'_> {
    fn try_for_each<R>(&self, mut f: impl FnMut(usize, &[f32]) -> ControlFlow<R>) -> Option<R> {
        let mut masked = [0.0f32; SUM_BLOCK_LEN];
        for (block_idx, chunk) in self.weights.chunks(SUM_BLOCK_LEN).enumerate() {
            // Weights are >= 0, so a bound <= 0 masks nothing.
            let block = if self.min_weight > 0.0 {
                for (out, &w) in masked.iter_mut().zip(chunk) {
                    *out = if w >= self.min_weight { w } else { 0.0 };
                }
                &masked[..chunk.len()]
            } else {
                chunk
            };
            if let ControlFlow::Break(result) = f(block_idx, block) {
                return Some(result);
            }
        }
        None
    }
}

/// A sparse member list `(token id, weight)` in strictly ascending id order; only blocks
/// holding a member are visited (the others sum to 0 and change nothing).
#[derive(Clone, Copy)]
pub(crate) struct SparseBlocks<'a> {
    members: &'a [(u32, f32)],
}

pub(crate) fn sparse_blocks(members: &[(u32, f32)]) -> SparseBlocks<'_> {
    SparseBlocks { members }
}

impl WeightBlocks for SparseBlocks<'_> {
    fn try_for_each<R>(&self, mut f: impl FnMut(usize, &[f32]) -> ControlFlow<R>) -> Option<R> {
        let mut block = [0.0f32; SUM_BLOCK_LEN];
        let mut rest = self.members;
        while let Some(&(first_id, _)) = rest.first() {
            let block_idx = first_id as usize / SUM_BLOCK_LEN;
            let num_in_block = rest
                .iter()
                .take_while(|&&(token_id, _)| token_id as usize / SUM_BLOCK_LEN == block_idx)
                .count();
            let (in_block, after) = rest.split_at(num_in_block);
            for &(token_id, w) in in_block {
                block[token_id as usize % SUM_BLOCK_LEN] = w;
            }
            let flow = f(block_idx, &block);
            for &(token_id, _) in in_block {
                block[token_id as usize % SUM_BLOCK_LEN] = 0.0;
            }
            if let ControlFlow::Break(result) = flow {
                return Some(result);
            }
            rest = after;
        }
        None
    }
}

/// Total weight (see the module doc for the summation order).
pub(crate) fn total_weight(blocks: impl WeightBlocks) -> f64 {
    let mut total = 0.0f64;
    blocks.try_for_each::<()>(|_, block| {
        total += block_sum(block);
        ControlFlow::Continue(())
    });
    total
}

/// Inverse-CDF draw: `target = u * total`; find the first block whose running sum exceeds
/// `target`, then, inside it, the first positive-weight token whose running sum (continuing
/// from the blocks before) exceeds `target`, else that block's last positive token. If no
/// block exceeds `target` (rounding), the last positive token overall. `None` only if every
/// weight is 0.
pub(crate) fn draw(blocks: impl WeightBlocks, u: f32) -> Option<u32> {
    let target = u as f64 * total_weight(&blocks);
    let mut cumulative = 0.0f64;
    let mut last_positive_block_idx = None;
    let found = blocks.try_for_each(|block_idx, block| {
        let block_total = block_sum(block);
        if cumulative + block_total > target {
            return ControlFlow::Break(walk_block(block_idx, block, Some((cumulative, target))));
        }
        if block_total > 0.0 {
            last_positive_block_idx = Some(block_idx);
        }
        cumulative += block_total;
        ControlFlow::Continue(())
    });
    match found {
        Some(token) => token,
        None => {
            // Rounding left `target` at or above the running total: take the last token.
            let wanted_idx = last_positive_block_idx?;
            blocks
                .try_for_each(|block_idx, block| {
                    if block_idx == wanted_idx {
                        ControlFlow::Break(walk_block(block_idx, block, None))
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .flatten()
        }
    }
}

impl<B: WeightBlocks> WeightBlocks for &B {
    fn try_for_each<R>(&self, f: impl FnMut(usize, &[f32]) -> ControlFlow<R>) -> Option<R> {
        (**self).try_for_each(f)
    }
}

/// Walks one block: with `Some((start, target))`, the first positive token whose running sum
/// from `start` exceeds `target`; otherwise (or if none does) the last positive token.
fn walk_block(block_idx: usize, block: &[f32], search: Option<(f64, f64)>) -> Option<u32> {
    let mut cumulative = search.map_or(0.0, |(start, _)| start);
    let mut found = None;
    for (lane_idx, &w) in block.iter().enumerate() {
        if w > 0.0 {
            let token_id = (block_idx * SUM_BLOCK_LEN + lane_idx) as u32;
            cumulative += w as f64;
            if search.is_some_and(|(_, target)| cumulative > target) {
                return Some(token_id);
            }
            found = Some(token_id);
        }
    }
    found
}

/// Top-p bookkeeping over tokens visited in canonical order: the nucleus ends at the first
/// token where the running `f64` sum of weights reaches `top_p * total`, where `total` is the
/// `total_weight` of every token still in play after top-k. Zero weights never end it.
pub(crate) struct NucleusScan {
    threshold: f64,
    cumulative: f64,
}

impl NucleusScan {
    pub(crate) fn new(top_p: f32, total: f64) -> Self {
        Self {
            threshold: top_p as f64 * total,
            cumulative: 0.0,
        }
    }

    pub(crate) fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Adds the next token's weight; true if the nucleus is complete with this token.
    #[inline]
    pub(crate) fn push(&mut self, w: f32) -> bool {
        self.cumulative += w as f64;
        w > 0.0 && self.cumulative >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_blocks_sum_exactly_like_dense_blocks() {
        let dense: Vec<f32> = (0..100)
            .map(|i| if i % 3 == 0 { 0.0 } else { 1.0 / i as f32 })
            .collect();
        let members: Vec<(u32, f32)> = dense
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0.0)
            .map(|(i, &w)| (i as u32, w))
            .collect();
        let dense_total = total_weight(dense_blocks(&dense, 0.0));
        let sparse_total = total_weight(sparse_blocks(&members));
        assert_eq!(dense_total.to_bits(), sparse_total.to_bits());
        for u in [0.0, 0.1, 0.5, 0.9, 0.999_999_9] {
            assert_eq!(
                draw(dense_blocks(&dense, 0.0), u),
                draw(sparse_blocks(&members), u)
            );
        }
    }

    #[test]
    fn draw_skips_zero_weights_and_handles_the_ends() {
        let weights = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0];
        assert_eq!(draw(dense_blocks(&weights, 0.0), 0.0), Some(1));
        assert_eq!(draw(dense_blocks(&weights, 0.0), 0.249), Some(1));
        assert_eq!(draw(dense_blocks(&weights, 0.0), 0.25), Some(9));
        assert_eq!(draw(dense_blocks(&weights, 0.0), 1.0), Some(9));
        assert_eq!(draw(dense_blocks(&[0.0; 5], 0.0), 0.5), None);
        // min_weight masks token 1 entirely.
        assert_eq!(draw(dense_blocks(&weights, 2.0), 0.0), Some(9));
    }
}
