//! CPU fast path of paged attention: online softmax over the visible positions, read straight
//! from the pool through the block table (no gather, no mask tensor). F32 only; other dtypes
//! take the reference path.
//!
//! Work items are (sequence, KV head, a tile of up to [`TILE_TOKENS`] query tokens, the query
//! heads of that KV head's group, or one of them when items are scarce), run on the quantized
//! matmul's work-sharing pool. An item walks the positions its rows see in chunks of
//! [`CHUNK`] positions aligned to absolute positions: the chunk's K and V rows are read from the
//! pool once into L1 and serve every row of the item (the GQA group's heads and the tile's
//! tokens), and the softmax state of a row is rescaled once per chunk, not once per new maximum.
//!
//! Invariant: a row's arithmetic depends only on its own query, its visible positions and the
//! fixed chunk grid — never on which other rows share its item — so results do not depend on
//! batching or tiling. Per row and chunk `c` (positions `P_c` it sees, scores
//! `s_p = scale · q·k_p`): `m' = max(m, max s)`, `a = e^(m − m')`, `l' = a·l + Σ e^(s_p − m')`,
//! `o' = a·o + Σ e^(s_p − m')·v_p` (sums in ascending position order); the output is `o / l`.
//! `exp` is a branch-free polynomial (a few ulp; `exp_nonpositive`), so chunks vectorize.

use crate::math::exp_nonpositive;
use candle_core::{CpuStorage, Layout, Shape};

use super::{AttentionLayout, SequenceSpan};

/// Positions per softmax update; chunks start at multiples of it.
const CHUNK: usize = 16;
/// Query tokens per work item (each with all heads of a KV group).
const TILE_TOKENS: usize = 8;
/// Below this many multiply-adds (q·k and p·v over all rows) a call runs on the calling thread.
const MIN_PARALLEL_WORK: usize = 1 << 16;

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data,
        _ => candle_core::bail!("paged attention: {what} must be f32"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("paged attention: {what} must be contiguous"),
    }
}

/// One work item: query tokens `[token_start, token_end)` of a sequence (indices among its
/// query tokens) × heads `[head_start, head_end)`, all of KV head `kv_head`.
#[derive(Clone, Copy)]
struct Item<'a> {
    seq: &'a SequenceSpan,
    kv_head: usize,
    token_start: usize,
    token_end: usize,
    head_start: usize,
    head_end: usize,
}

/// A raw pointer shared by workers that write provably disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    /// Closures must capture the wrapper (which is `Sync`), not its raw-pointer field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only written at the (token, head) rows that exactly one work item owns,
// and the pool joins all workers before the buffer is used again.
unsafe impl Sync for SharedMut {}
// SAFETY: as above.
unsafe impl Send for SharedMut {}

/// Shapes shared by every work item of a call.
struct Dims {
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

pub(super) fn forward(
    layout: &AttentionLayout,
    (q_storage, q_layout): (&CpuStorage, &Layout),
    (k_storage, k_layout): (&CpuStorage, &Layout),
    (v_storage, v_layout): (&CpuStorage, &Layout),
) -> candle_core::Result<(CpuStorage, Shape)> {
    let q = contiguous_f32(q_storage, q_layout, "q")?;
    let k_cache = contiguous_f32(k_storage, k_layout, "k_cache")?;
    let v_cache = contiguous_f32(v_storage, v_layout, "v_cache")?;
    let (num_tokens, num_heads, head_dim) = q_layout.shape().dims3()?;
    let (_, _, num_kv_heads, _) = k_layout.shape().dims4()?;
    let group = num_heads / num_kv_heads;
    let dims = Dims { num_heads, num_kv_heads, head_dim };

    // Items with whole groups first; if that leaves too few to share, one head per item.
    let mut work = 0usize;
    let mut items = Vec::new();
    let threads = rayon::current_num_threads();
    for seq in &layout.sequences {
        work += seq.num_query_tokens * seq.context_len * group * num_kv_heads * head_dim * 2;
        for kv_head in 0..num_kv_heads {
            for token_start in (0..seq.num_query_tokens).step_by(TILE_TOKENS) {
                let token_end = seq.num_query_tokens.min(token_start + TILE_TOKENS);
                let (head_start, head_end) = (kv_head * group, (kv_head + 1) * group);
                items.push(Item { seq, kv_head, token_start, token_end, head_start, head_end });
            }
        }
    }
    if group > 1 && items.len() < 4 * threads {
        items = items
            .into_iter()
            .flat_map(|item| {
                (item.head_start..item.head_end).map(move |head| Item { head_start: head, head_end: head + 1, ..item })
            })
            .collect();
    }

    let mut out = vec![0f32; num_tokens * num_heads * head_dim];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        for item in &items[range] {
            run_item(layout, &dims, item, q, k_cache, v_cache, out_ptr);
        }
    };
    if work < MIN_PARALLEL_WORK {
        run(0..items.len());
    } else {
        crate::quant_matmul::pool::global().run(items.len(), 1, &run);
    }
    Ok((CpuStorage::F32(out), Shape::from((num_tokens, num_heads, head_dim))))
}

/// Computes one item's rows and writes them to `out`.
fn run_item(
    layout: &AttentionLayout,
    dims: &Dims,
    item: &Item<'_>,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    out: SharedMut,
) {
    let Dims { num_heads, num_kv_heads, head_dim } = *dims;
    let seq = item.seq;
    let first_pos = seq.context_len - seq.num_query_tokens;
    // Row r = (token t, head h), token-major. Its position and first visible position.
    let rows: Vec<(usize, usize, usize)> = (item.token_start..item.token_end)
        .flat_map(|t| {
            let pos = first_pos + t;
            let row_in_batch = seq.query_start_idx + t;
            (item.head_start..item.head_end)
                .map(move |h| ((row_in_batch * num_heads + h) * head_dim, pos, layout.first_visible(pos)))
        })
        .collect();
    let num_rows = rows.len();
    let mut max = vec![f32::NEG_INFINITY; num_rows];
    let mut sum = vec![0f32; num_rows];
    let mut acc = vec![0f32; num_rows * head_dim];

    // Positions any row sees: from the first row's first visible one to the last row's own.
    let lo = rows.iter().map(|r| r.2).min().unwrap_or(0);
    let hi = rows.iter().map(|r| r.1).max().unwrap_or(0);
    let row_stride = num_kv_heads * head_dim;
    let kv_offset = item.kv_head * head_dim;
    let mut k_rows: [&[f32]; CHUNK] = [&[]; CHUNK];
    let mut v_rows: [&[f32]; CHUNK] = [&[]; CHUNK];
    let mut chunk_start = lo / CHUNK * CHUNK;
    while chunk_start <= hi {
        let c_lo = chunk_start.max(lo);
        let c_hi = (chunk_start + CHUNK - 1).min(hi);
        for p in c_lo..=c_hi {
            let base = layout.slot(seq, p) * row_stride + kv_offset;
            k_rows[p - chunk_start] = &k_cache[base..base + head_dim];
            v_rows[p - chunk_start] = &v_cache[base..base + head_dim];
        }
        // The next chunk's K/V rows come from wherever its block lives: ask for them now (decode
        // over a long context streams the pool from DRAM; a hint only, it never faults).
        #[cfg(target_arch = "x86_64")]
        for p in (chunk_start + CHUNK)..=(chunk_start + 2 * CHUNK - 1).min(hi) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let base = layout.slot(seq, p) * row_stride + kv_offset;
            for line in (0..head_dim).step_by(16) {
                // SAFETY: prefetching has no memory effects; `wrapping_add` keeps the address
                // computation defined even outside the buffers.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(k_cache.as_ptr().wrapping_add(base + line) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(v_cache.as_ptr().wrapping_add(base + line) as *const i8);
                }
            }
        }
        for (r, &(q_off, pos, first)) in rows.iter().enumerate() {
            let (r_lo, r_hi) = (c_lo.max(first), c_hi.min(pos));
            if r_lo > r_hi {
                continue;
            }
            let (j_lo, j_hi) = (r_lo - chunk_start, r_hi - chunk_start + 1);
            let q_row = &q[q_off..q_off + head_dim];
            let o = &mut acc[r * head_dim..(r + 1) * head_dim];
            update_row(q_row, &k_rows[j_lo..j_hi], &v_rows[j_lo..j_hi], layout.scale, &mut max[r], &mut sum[r], o);
        }
        chunk_start += CHUNK;
    }

    for (r, &(q_off, _, _)) in rows.iter().enumerate() {
        let inv = 1.0 / sum[r];
        // SAFETY: `q_off` is this row's offset in `[num_tokens, num_heads, head_dim]` (the same
        // layout as `out`); rows (token, head) belong to exactly one item, so the `head_dim`
        // values written here are in bounds and written by no other worker.
        let out_row = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(q_off), head_dim) };
        for (o, &a) in out_row.iter_mut().zip(&acc[r * head_dim..(r + 1) * head_dim]) {
            *o = a * inv;
        }
    }
}

/// One row's online-softmax update over one chunk of 1..=[`CHUNK`] visible positions.
#[inline]
fn update_row(
    q_row: &[f32],
    k_rows: &[&[f32]],
    v_rows: &[&[f32]],
    scale: f32,
    max: &mut f32,
    sum: &mut f32,
    acc: &mut [f32],
) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    if q_row.len().is_multiple_of(simd::LANES) {
        // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build; the head
        // dimension is a multiple of 8 and every slice has `q_row.len()` values.
        unsafe { simd::update_row(q_row, k_rows, v_rows, scale, max, sum, acc) };
        return;
    }
    update_row_portable(q_row, k_rows, v_rows, scale, max, sum, acc);
}

/// [`update_row`] in portable code (other targets, head dimensions that are not multiples of 8).
fn update_row_portable(
    q_row: &[f32],
    k_rows: &[&[f32]],
    v_rows: &[&[f32]],
    scale: f32,
    max: &mut f32,
    sum: &mut f32,
    acc: &mut [f32],
) {
    let n = k_rows.len();
    let mut scores = [f32::NEG_INFINITY; CHUNK];
    for (score, k) in scores.iter_mut().zip(k_rows) {
        *score = q_row.iter().zip(k.iter()).fold(0f32, |s, (&q, &k)| q.mul_add(k, s)) * scale;
    }
    let chunk_max = scores[..n].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let new_max = max.max(chunk_max);
    // Exactly 1 when the maximum holds (also while both are −∞), 0 on the first chunk.
    let correction = if new_max == *max { 1.0 } else { exp_nonpositive(*max - new_max) };
    let mut weights = [0f32; CHUNK];
    for (w, &s) in weights.iter_mut().zip(&scores[..n]) {
        *w = exp_nonpositive(s - new_max);
    }
    *max = new_max;
    *sum = weights[..n].iter().fold(*sum * correction, |acc, &w| acc + w);
    for (d, a) in acc.iter_mut().enumerate() {
        *a = weights[..n].iter().zip(v_rows).fold(*a * correction, |r, (&w, v)| w.mul_add(v[d], r));
    }
}

/// AVX2/FMA body of [`update_row`] for head dimensions that are multiples of 8.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod simd {
    use std::arch::x86_64::*;

    use super::CHUNK;

    pub(super) const LANES: usize = 8;

    /// Four dot products `q · k_i`: one 8-lane FMA chain each, joined by one `hadd` tree (the
    /// same reduction for every lane, whatever its neighbours).
    ///
    /// # Safety
    /// Every `k_i` has at least `q.len()` values; `q.len()` is a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dot4(q: &[f32], k: [&[f32]; 4]) -> __m128 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < q.len() {
            // SAFETY: i + 8 <= q.len() <= k_j.len() (the caller's contract).
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                for (a, k) in acc.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(i)), *a);
                }
            }
            i += LANES;
        }
        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
        let t = _mm256_hadd_ps(t0, t1); // [s0 s1 s2 s3 | s0' s1' s2' s3'] (low and high halves)
        _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t))
    }

    /// `exp(x)` for `x <= 0` on 8 lanes: the scalar `exp_nonpositive`'s polynomial and edges.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp_nonpositive(x: __m256) -> __m256 {
        let clamped = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.0)), _mm256_setzero_ps());
        let round = _mm256_set1_ps(12_582_912.0);
        let shifted = _mm256_add_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(std::f32::consts::LOG2_E)), round);
        let n = _mm256_sub_ps(shifted, round);
        let r = _mm256_sub_ps(
            _mm256_sub_ps(clamped, _mm256_mul_ps(n, _mm256_set1_ps(0.693_359_4))),
            _mm256_mul_ps(n, _mm256_set1_ps(-2.121_944_4e-4)),
        );
        let c = |v: f32| _mm256_set1_ps(v);
        let p = _mm256_add_ps(_mm256_mul_ps(c(1.987_569_2e-4), r), c(1.398_199_9e-3));
        let p = _mm256_add_ps(_mm256_mul_ps(p, r), c(8.333_452e-3));
        let p = _mm256_add_ps(_mm256_mul_ps(p, r), c(4.166_579_6e-2));
        let p = _mm256_add_ps(_mm256_mul_ps(p, r), c(1.666_666_5e-1));
        let p = _mm256_add_ps(_mm256_mul_ps(p, r), c(0.5));
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), c(1.0));
        const ROUND_BITS: u32 = 12_582_912f32.to_bits();
        let bits = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32((ROUND_BITS - 127) as i32));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits));
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, c(-87.0));
        _mm256_andnot_ps(tiny, _mm256_mul_ps(y, scale))
    }

    /// See `super::update_row`.
    ///
    /// # Safety
    /// `q_row.len()` is a multiple of 8; every K and V row and `acc` hold `q_row.len()` values;
    /// `1 <= k_rows.len() == v_rows.len() <= CHUNK`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn update_row(
        q_row: &[f32],
        k_rows: &[&[f32]],
        v_rows: &[&[f32]],
        scale: f32,
        max: &mut f32,
        sum: &mut f32,
        acc: &mut [f32],
    ) {
        let n = k_rows.len();
        let head_dim = q_row.len();
        assert!(n <= CHUNK && v_rows.len() == n && acc.len() == head_dim);
        assert!(k_rows.iter().chain(v_rows).all(|row| row.len() >= head_dim));
        let mut scores = [f32::NEG_INFINITY; CHUNK];
        let mut j = 0;
        while j < n {
            // A tail of 1..=3 positions repeats the last one (the repeats are not stored).
            let pick = |i: usize| k_rows[(j + i).min(n - 1)];
            // SAFETY: the K rows hold head_dim values (asserted); head_dim is a multiple of 8.
            let d = unsafe { dot4(q_row, [pick(0), pick(1), pick(2), pick(3)]) };
            let mut four = [0f32; 4];
            // SAFETY: `four` holds 4 floats; unaligned store.
            unsafe { _mm_storeu_ps(four.as_mut_ptr(), _mm_mul_ps(d, _mm_set1_ps(scale))) };
            let take = (n - j).min(4);
            scores[j..j + take].copy_from_slice(&four[..take]);
            j += 4;
        }
        // SAFETY: `scores` holds 16 floats; unaligned loads.
        let (s0, s1) = unsafe { (_mm256_loadu_ps(scores.as_ptr()), _mm256_loadu_ps(scores.as_ptr().add(8))) };
        let m = _mm256_max_ps(s0, s1);
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let chunk_max = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let new_max = max.max(chunk_max);
        // Exactly 1 when the maximum holds (also while both are −∞), 0 on the first chunk.
        let correction = if new_max == *max { 1.0 } else { super::exp_nonpositive(*max - new_max) };
        *max = new_max;
        let nm = _mm256_set1_ps(new_max);
        let (w0, w1) = (exp_nonpositive(_mm256_sub_ps(s0, nm)), exp_nonpositive(_mm256_sub_ps(s1, nm)));
        let mut weights = [0f32; CHUNK];
        // SAFETY: `weights` holds 16 floats; unaligned stores.
        unsafe {
            _mm256_storeu_ps(weights.as_mut_ptr(), w0);
            _mm256_storeu_ps(weights.as_mut_ptr().add(8), w1);
        }
        // Padding lanes (scores −∞) weigh exactly 0; a fixed tree sums the 16.
        let w = _mm256_add_ps(w0, w1);
        let w = _mm_add_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps::<1>(w));
        let w = _mm_add_ps(w, _mm_movehl_ps(w, w));
        let chunk_sum = _mm_cvtss_f32(_mm_add_ss(w, _mm_movehdup_ps(w)));
        *sum = *sum * correction + chunk_sum;

        // acc = correction · acc + Σ_j w_j · v_j, four vectors (32 values) of acc at a time in
        // registers, then single vectors.
        let corr = _mm256_set1_ps(correction);
        let mut d = 0;
        while d + 4 * LANES <= head_dim {
            // SAFETY: d + 32 <= head_dim; acc and the V rows hold head_dim values (asserted).
            unsafe { accumulate_block::<4>(acc, d, corr, &weights[..n], v_rows) };
            d += 4 * LANES;
        }
        while d < head_dim {
            // SAFETY: d + 8 <= head_dim (head_dim is a multiple of 8), as above.
            unsafe { accumulate_block::<1>(acc, d, corr, &weights[..n], v_rows) };
            d += LANES;
        }
    }

    /// `acc[d..d + 8W] = corr · acc[d..] + Σ_j weights[j] · v_rows[j][d..]`, the block held in
    /// `W` registers across all positions.
    ///
    /// # Safety
    /// `acc` and every V row hold at least `d + 8·W` values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn accumulate_block<const W: usize>(acc: &mut [f32], d: usize, corr: __m256, weights: &[f32], v_rows: &[&[f32]]) {
        let acc_ptr = acc.as_mut_ptr();
        let mut regs = [_mm256_setzero_ps(); W];
        for (i, reg) in regs.iter_mut().enumerate() {
            // SAFETY: d + 8·(i + 1) <= acc.len() (the caller's contract).
            *reg = _mm256_mul_ps(unsafe { _mm256_loadu_ps(acc_ptr.add(d + i * LANES)) }, corr);
        }
        for (&w, v) in weights.iter().zip(v_rows) {
            let w = _mm256_set1_ps(w);
            for (i, reg) in regs.iter_mut().enumerate() {
                // SAFETY: as above, for the V row.
                *reg = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(v.as_ptr().add(d + i * LANES)) }, *reg);
            }
        }
        for (i, reg) in regs.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_ps(acc_ptr.add(d + i * LANES), *reg) };
        }
    }
}


#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::super::tests::{make_case, max_abs_diff};
    use super::super::{paged_attention, paged_attention_reference, AttentionLayout, SequenceSpan};

    /// SmolLM2-like shapes (9 heads over 3 KV heads, head_dim 64, blocks of 16): the parallel path,
    /// many chunks per row, query tiles, and sliding windows that start mid-chunk.
    #[test]
    fn long_contexts_match_the_reference() {
        for window in [None, Some(100), Some(7)] {
            let case = make_case(&[(1, 1000), (37, 300), (130, 700), (1, 17), (3, 3)], 9, 3, 64, 16, window);
            let fast = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
            let slow = paged_attention_reference(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
            let diff = max_abs_diff(&fast, &slow);
            assert!(diff <= 1e-5, "window {window:?}: max abs diff {diff} > 1e-5");
        }
    }

    /// Head dimensions that are not multiples of 8 take the portable path.
    #[test]
    fn odd_head_dims_match_the_reference() {
        let case = make_case(&[(1, 300), (20, 90), (2, 2)], 4, 2, 12, 4, None);
        let fast = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
        let slow = paged_attention_reference(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
        let diff = max_abs_diff(&fast, &slow);
        assert!(diff <= 1e-5, "max abs diff {diff} > 1e-5");
    }

    /// The SIMD chunk update agrees with the portable one for every chunk length and a running
    /// state that the chunk does or does not raise.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[test]
    fn simd_chunk_update_matches_the_portable_one() {
        use super::CHUNK;
        let head_dim = 64;
        let values = |n: usize| Tensor::randn(0f32, 1.0, n, &candle_core::Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let q = values(head_dim);
        let k = values(CHUNK * head_dim);
        let v = values(CHUNK * head_dim);
        let k_rows: Vec<&[f32]> = k.chunks_exact(head_dim).collect();
        let v_rows: Vec<&[f32]> = v.chunks_exact(head_dim).collect();
        for n in 1..=CHUNK {
            for (start_max, start_sum) in [(f32::NEG_INFINITY, 0.0), (-3.0, 2.5), (40.0, 1.0)] {
                let start_acc = values(head_dim);
                let (mut m1, mut s1, mut a1) = (start_max, start_sum, start_acc.clone());
                let (mut m2, mut s2, mut a2) = (start_max, start_sum, start_acc.clone());
                // SAFETY: compiled only with AVX2 and FMA; all rows hold head_dim values.
                unsafe { super::simd::update_row(&q, &k_rows[..n], &v_rows[..n], 0.125, &mut m1, &mut s1, &mut a1) };
                super::update_row_portable(&q, &k_rows[..n], &v_rows[..n], 0.125, &mut m2, &mut s2, &mut a2);
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
                assert!(close(m1, m2), "n {n}: max {m1} vs {m2}");
                assert!(close(s1, s2), "n {n}: sum {s1} vs {s2}");
                for (d, (&x, &y)) in a1.iter().zip(&a2).enumerate() {
                    assert!(close(x, y), "n {n}, start max {start_max}: acc[{d}] {x} vs {y}");
                }
            }
        }
    }

    /// The rows of `layout.sequences[seq_idx]` from a full-batch output `[rows, heads, dim]`.
    fn rows_of(out: &Tensor, layout: &AttentionLayout, seq_idx: usize) -> Vec<f32> {
        let seq = &layout.sequences[seq_idx];
        out.narrow(0, seq.query_start_idx, seq.num_query_tokens).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A sequence alone, in a batch (where its items are not split by head), and with its query
    /// tokens split over two calls (chunked prefill) gives the same bits for every row.
    #[test]
    fn rows_do_not_depend_on_batching_tiling_or_chunking() {
        let case = make_case(&[(1, 700), (45, 333), (9, 40), (1, 5), (20, 20)], 6, 2, 32, 4, None);
        let batched = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
        for (seq_idx, seq) in case.layout.sequences.iter().enumerate() {
            let want = rows_of(&batched, &case.layout, seq_idx);
            let q = case.q.narrow(0, seq.query_start_idx, seq.num_query_tokens).unwrap();
            let alone = AttentionLayout {
                sequences: vec![SequenceSpan { query_start_idx: 0, ..seq.clone() }],
                ..case.layout.clone()
            };
            let got = paged_attention(&q, &case.k_cache, &case.v_cache, &alone).unwrap();
            assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "sequence {seq_idx} alone");
            if seq.num_query_tokens < 2 {
                continue;
            }
            // The first `split` query tokens in one call (context up to them), the rest in another.
            let split = seq.num_query_tokens / 2 + 1;
            let first = SequenceSpan {
                query_start_idx: 0,
                num_query_tokens: split,
                context_len: seq.context_len - (seq.num_query_tokens - split),
                block_table: seq.block_table.clone(),
            };
            let second = SequenceSpan { query_start_idx: 0, num_query_tokens: seq.num_query_tokens - split, ..seq.clone() };
            let mut parts = Vec::new();
            for (span, start) in [(first, 0), (second, split)] {
                let layout = AttentionLayout { sequences: vec![span.clone()], device_metadata: None, ..case.layout.clone() };
                let q_part = q.narrow(0, start, span.num_query_tokens).unwrap();
                let out = paged_attention(&q_part, &case.k_cache, &case.v_cache, &layout).unwrap();
                parts.extend(out.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            assert_eq!(parts, want, "sequence {seq_idx} chunked");
        }
    }
}
