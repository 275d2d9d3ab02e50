//! The fast path: the sampler's definition (see `sampling/mod.rs`) without sorting the whole
//! vocabulary; what `Sampler` runs.
//!
//! Owns: the selection strategy. Greedy is a max pass and a first-index pass (no exp).
//! Penalties touch only the seen ids of a copy. Top-k streams the vocabulary keeping at most
//! ~2k candidates behind a running threshold, then works on those k only. Without top-k,
//! weights are one vectorized O(V) pass (AVX2/AVX-512 when the CPU has them); top-p then
//! collects only a canonical prefix (tokens within `T * c` of the max logit, the smallest
//! `c` in 4, 8, 16, 32 whose weight clearly exceeds the threshold) and sorts it chunk by chunk
//! only until the nucleus is complete. Does not own: the arithmetic (`common`, shared with
//! `reference`), which is why the two agree bit for bit for every `u`.
//!
//! Invariant: for valid params, `choose` returns exactly what `reference::choose` returns.
//! Pre-filters only ever skip tokens that cannot change the result (zero weight, or outside
//! a prefix that provably holds the nucleus); when in doubt they fall back to the full scan.

use std::cmp::Ordering;

use super::common::{
    canonical_cmp, check_inputs, dense_blocks, draw, max_logit, penalize, sparse_blocks,
    total_weight, weight, NucleusScan,
};
use super::history::TokenHistory;
use super::params::{SamplingError, SamplingParams};

/// Reusable buffers, so a `Sampler` does not allocate per token.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    penalized: Vec<f32>,
    weights: Vec<f32>,
    /// `(penalized logit, token id)`.
    candidates: Vec<(f32, u32)>,
    /// `(token id, weight)`.
    members: Vec<(u32, f32)>,
}

/// First nucleus chunk; each later chunk is 4x larger.
const FIRST_CHUNK_LEN: usize = 64;
/// Logits per chunk in scans that skip whole chunks after one vectorized test.
const SCAN_CHUNK_LEN: usize = 64;

/// Picks a token for uniform `u` in `[0, 1)`: same contract as `reference::choose`.
pub fn choose(
    logits: &[f32],
    history: &TokenHistory,
    params: &SamplingParams,
    u: f32,
) -> Result<u32, SamplingError> {
    params.validate()?;
    choose_with(&mut Scratch::default(), logits, history, params, u)
}

/// `choose` with caller-owned buffers; `params` must already be valid.
pub(crate) fn choose_with(
    scratch: &mut Scratch,
    logits: &[f32],
    history: &TokenHistory,
    params: &SamplingParams,
    u: f32,
) -> Result<u32, SamplingError> {
    check_inputs(logits, history)?;
    let Scratch {
        penalized,
        weights,
        candidates,
        members,
    } = scratch;
    let logits: &[f32] = if params.has_penalties() && history.num_seen_ids() > 0 {
        penalized.clear();
        penalized.extend_from_slice(logits);
        for token_id in history.seen_ids() {
            // In range: check_inputs compared the history's max id with the vocabulary.
            let logit = &mut penalized[token_id as usize];
            *logit = penalize(*logit, token_id, history, params);
        }
        penalized
    } else {
        logits
    };

    let max = max_logit(logits);
    if max == f32::NEG_INFINITY {
        return Err(SamplingError::AllLogitsMasked);
    }
    if params.is_greedy() {
        // First index holding the max: ties go to the lowest id.
        return Ok(first_index_of(logits, max).unwrap_or(0) as u32);
    }

    let top_k_active = params.top_k > 0 && params.top_k < logits.len();
    let token = if top_k_active {
        choose_top_k(logits, max, params, u, candidates, members)
    } else {
        choose_dense(logits, max, params, u, weights, candidates, members)
    };
    token.ok_or(SamplingError::AllLogitsMasked)
}

/// Index of the first logit equal to `value`; whole chunks are tested with one vectorized
/// comparison first.
fn first_index_of(logits: &[f32], value: f32) -> Option<usize> {
    logits
        .chunks(SCAN_CHUNK_LEN)
        .enumerate()
        .find_map(|(chunk_idx, chunk)| {
            if !chunk.iter().fold(false, |any, &l| any | (l == value)) {
                return None;
            }
            let lane_idx = chunk.iter().position(|&l| l == value)?;
            Some(chunk_idx * SCAN_CHUNK_LEN + lane_idx)
        })
}

/// Top-k on: everything after selection works on the k candidates only.
fn choose_top_k(
    logits: &[f32],
    max: f32,
    params: &SamplingParams,
    u: f32,
    candidates: &mut Vec<(f32, u32)>,
    members: &mut Vec<(u32, f32)>,
) -> Option<u32> {
    let t = params.temperature;
    select_top_k(logits, params.top_k, candidates);
    members.clear();
    members.extend(
        candidates
            .iter()
            .map(|&(l, token_id)| (token_id, weight(l, max, t))),
    );
    members.sort_unstable_by_key(|&(token_id, _)| token_id);

    if params.top_p < 1.0 {
        let mut scan = NucleusScan::new(params.top_p, total_weight(sparse_blocks(members)));
        candidates.sort_unstable_by(|a, b| canonical_cmp(*a, *b));
        let num_nucleus = candidates
            .iter()
            .position(|&(l, _)| scan.push(weight(l, max, t)))
            .map_or(candidates.len(), |j| j + 1);
        let cutoff = candidates[num_nucleus - 1];
        members.retain(|&(token_id, _)| {
            canonical_cmp((logits[token_id as usize], token_id), cutoff) != Ordering::Greater
        });
    }
    let min_p = params.min_p;
    members.retain(|&(_, w)| w >= min_p);
    draw(sparse_blocks(members), u)
}

/// The top `k` tokens in canonical order (as a set, unordered) into `candidates`
/// (`1 <= k < logits.len()`). Streams the vocabulary: once `2k` candidates have piled up they
/// are cut to the best `k`, and later tokens enter only if they beat the k-th (a later id must
/// have a strictly larger logit to win a tie). Chunks with no such token are skipped with one
/// vectorized comparison, so most of the vocabulary costs almost nothing.
fn select_top_k(logits: &[f32], k: usize, candidates: &mut Vec<(f32, u32)>) {
    const CHUNK_LEN: usize = 16; // shorter than SCAN_CHUNK_LEN: the threshold rises as it goes
    candidates.clear();
    let cap = k.saturating_mul(2).max(k + FIRST_CHUNK_LEN);
    let mut threshold = f32::NEG_INFINITY;
    let mut has_threshold = false;
    for (chunk_idx, chunk) in logits.chunks(CHUNK_LEN).enumerate() {
        if has_threshold && !chunk.iter().fold(false, |any, &l| any | (l > threshold)) {
            continue;
        }
        for (lane_idx, &l) in chunk.iter().enumerate() {
            if has_threshold && l <= threshold {
                continue;
            }
            candidates.push((l, (chunk_idx * CHUNK_LEN + lane_idx) as u32));
            if candidates.len() >= cap {
                keep_best(candidates, k);
                threshold = candidates[k - 1].0;
                has_threshold = true;
            }
        }
    }
    if candidates.len() > k {
        keep_best(candidates, k);
    }
}

/// Keeps the `k` best of `candidates` (requires `1 <= k < len`); the k-th best ends last.
fn keep_best(candidates: &mut Vec<(f32, u32)>, k: usize) {
    candidates.select_nth_unstable_by(k - 1, |a, b| canonical_cmp(*a, *b));
    candidates.truncate(k);
}

/// Top-k off: weights for the whole vocabulary in one (vectorized) pass.
fn choose_dense(
    logits: &[f32],
    max: f32,
    params: &SamplingParams,
    u: f32,
    weights: &mut Vec<f32>,
    candidates: &mut Vec<(f32, u32)>,
    members: &mut Vec<(u32, f32)>,
) -> Option<u32> {
    let t = params.temperature;
    let min_p = params.min_p;
    weights.clear();
    weights.resize(logits.len(), 0.0);
    fill_weights(weights, logits, max, t);
    if params.top_p >= 1.0 {
        return draw(dense_blocks(weights, min_p), u);
    }

    let total = total_weight(dense_blocks(weights, 0.0));
    let num_nucleus = find_nucleus(
        logits,
        weights,
        NucleusParams { max, params, total },
        candidates,
    );
    members.clear();
    members.extend(
        candidates[..num_nucleus]
            .iter()
            .map(|&(_, token_id)| (token_id, weights[token_id as usize]))
            .filter(|&(_, w)| w >= min_p),
    );
    members.sort_unstable_by_key(|&(token_id, _)| token_id);
    draw(sparse_blocks(members), u)
}

/// `weights[i] = weight(logits[i], max, t)`, the hottest loop of dense sampling. On x86-64 it
/// runs in an AVX2 (or AVX-512) compilation of the same code when the CPU has it: the same
/// IEEE operations in wider registers (Rust never fuses multiply-add on its own), so results
/// are bit-identical to the baseline build; the fast-vs-reference tests check exactly that.
fn fill_weights(weights: &mut [f32], logits: &[f32], max: f32, t: f32) {
    #[inline(always)]
    fn fill(weights: &mut [f32], logits: &[f32], max: f32, t: f32) {
        for (w, &l) in weights.iter_mut().zip(logits) {
            *w = weight(l, max, t);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn fill_avx512(weights: &mut [f32], logits: &[f32], max: f32, t: f32) {
            fill(weights, logits, max, t)
        }
        #[target_feature(enable = "avx2")]
        fn fill_avx2(weights: &mut [f32], logits: &[f32], max: f32, t: f32) {
            fill(weights, logits, max, t)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the enabled feature (checked just above).
            return unsafe { fill_avx512(weights, logits, max, t) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { fill_avx2(weights, logits, max, t) };
        }
    }
    fill(weights, logits, max, t)
}

struct NucleusParams<'a> {
    max: f32,
    params: &'a SamplingParams,
    /// Total weight of the vocabulary (`total_weight` of the dense weights).
    total: f64,
}

/// Fills `candidates` so that its first `n` entries (`n` returned) are the positive-weight
/// tokens of the nucleus, in canonical order.
///
/// Tokens with logit `>= max - T * c` form a canonical prefix. Trying `c = 4, 8, 16, 32`
/// (weights down to `e^-c`), the first prefix whose weight clearly exceeds the top-p threshold
/// contains the nucleus, and only it is collected and sorted. If rounding defeats that (the
/// exact scan does not complete inside), the scan is redone over every positive-weight token,
/// so the result is always exactly the reference's.
fn find_nucleus(
    logits: &[f32],
    weights: &[f32],
    nucleus: NucleusParams<'_>,
    candidates: &mut Vec<(f32, u32)>,
) -> usize {
    let NucleusParams { max, params, total } = nucleus;
    let threshold = NucleusScan::new(params.top_p, total).threshold();
    for c in [4.0f32, 8.0, 16.0, 32.0] {
        let cutoff = max - params.temperature * c;
        if cutoff == f32::NEG_INFINITY {
            break;
        }
        if weight_at_or_above(logits, weights, cutoff) < threshold * (1.0 + 1e-3) {
            continue;
        }
        collect_candidates(logits, weights, cutoff, candidates);
        if let Some(num_nucleus) =
            nucleus_len(candidates, weights, NucleusScan::new(params.top_p, total))
        {
            return num_nucleus;
        }
        break;
    }
    collect_candidates(logits, weights, f32::NEG_INFINITY, candidates);
    nucleus_len(candidates, weights, NucleusScan::new(params.top_p, total))
        .unwrap_or(candidates.len())
}

/// Approximate weight of tokens with logit `>= cutoff` (`f32` lanes, any order; typical
/// relative error ~1e-6, well inside the 1e-3 margin it is compared with). Only steers which
/// prefix `find_nucleus` tries, never decides the result.
fn weight_at_or_above(logits: &[f32], weights: &[f32], cutoff: f32) -> f64 {
    const NUM_LANES: usize = 16;
    let mut lanes = [0.0f32; NUM_LANES];
    let logit_chunks = logits.chunks_exact(NUM_LANES);
    let weight_chunks = weights.chunks_exact(NUM_LANES);
    let tail: f64 = logit_chunks
        .remainder()
        .iter()
        .zip(weight_chunks.remainder())
        .map(|(&l, &w)| if l >= cutoff { w as f64 } else { 0.0 })
        .sum();
    for (logit_chunk, weight_chunk) in logit_chunks.zip(weight_chunks) {
        for ((lane, &l), &w) in lanes.iter_mut().zip(logit_chunk).zip(weight_chunk) {
            *lane += if l >= cutoff { w } else { 0.0 };
        }
    }
    lanes.iter().map(|&lane| lane as f64).sum::<f64>() + tail
}

/// Positive-weight tokens with logit `>= cutoff`, as `(logit, id)`.
fn collect_candidates(
    logits: &[f32],
    weights: &[f32],
    cutoff: f32,
    candidates: &mut Vec<(f32, u32)>,
) {
    candidates.clear();
    let chunks = logits
        .chunks(SCAN_CHUNK_LEN)
        .zip(weights.chunks(SCAN_CHUNK_LEN));
    for (chunk_idx, (logit_chunk, weight_chunk)) in chunks.enumerate() {
        let passes = |(&l, &w): (&f32, &f32)| l >= cutoff && w > 0.0;
        let any_passes = logit_chunk
            .iter()
            .zip(weight_chunk)
            .fold(false, |any, (&l, &w)| any | ((l >= cutoff) & (w > 0.0)));
        if !any_passes {
            continue;
        }
        candidates.extend(
            logit_chunk
                .iter()
                .zip(weight_chunk)
                .enumerate()
                .filter(|&(_, pair)| passes(pair))
                .map(|(lane_idx, (&l, _))| (l, (chunk_idx * SCAN_CHUNK_LEN + lane_idx) as u32)),
        );
    }
}

/// Length of the nucleus among `candidates` if the scan completes inside them, reordering
/// them so that it is their prefix in canonical order. Sorts chunk after chunk (64, 256,
/// 1024, ...) of the best remaining candidates, stopping as soon as the scan completes.
fn nucleus_len(
    candidates: &mut [(f32, u32)],
    weights: &[f32],
    mut scan: NucleusScan,
) -> Option<usize> {
    let num_candidates = candidates.len();
    let mut start = 0;
    let mut chunk_len = FIRST_CHUNK_LEN;
    while start < num_candidates {
        let end = start.saturating_add(chunk_len).min(num_candidates);
        let rest = &mut candidates[start..];
        if end < num_candidates {
            rest.select_nth_unstable_by(end - start - 1, |a, b| canonical_cmp(*a, *b));
        }
        rest[..end - start].sort_unstable_by(|a, b| canonical_cmp(*a, *b));
        for (j, &(_, token_id)) in rest[..end - start].iter().enumerate() {
            if scan.push(weights[token_id as usize]) {
                return Some(start + j + 1);
            }
        }
        start = end;
        chunk_len = chunk_len.saturating_mul(4);
    }
    None
}
