//! How many ways the CUDA kernel splits each (row, head) over the sequence (split-K /
//! flash-decoding), decided on the host. Plain arithmetic, no device: compiled and unit-tested
//! in every build.
//!
//! Why split: the one-block path runs one thread block per (row, head). A generation step of a
//! few sequences has few such blocks (batch 1 of a 32-head model: 32 blocks on an H100's 132
//! SMs), and with long contexts each block streams thousands of K/V rows alone, so most of the
//! GPU idles. Splitting each (row, head) over `num_splits` ranges of positions multiplies the
//! blocks; a small combine kernel merges the partial softmax states.
//!
//! Invariant (CUDA-graph safety): the number of splits depends only on what a recorded graph
//! holds fixed — the number of rows, heads and sequences, the metadata's length (with a fixed
//! table width, the widest context any row can have), the block size, the sliding window and
//! the device's SM count — never on the step's context lengths when the metadata has a uniform
//! table width (the only kind a graph can replay, `kernel_metadata(.., Some(width))`). The
//! kernel itself partitions each row's *actual* visible span over the `num_splits` ranges, so
//! the result is exact for any `num_splits >= 1`; the choice here only affects speed.
//!
//! One launch, one path for all its rows: with `num_splits > 1`, a row whose visible span is at
//! most `MIN_SPLIT_POSITIONS` is done entirely by split 0 (the others write neutral partials),
//! and prompt rows are split like generation rows (each row has its own span). Prompt-heavy
//! steps have many rows, so their grids are full and they take the one-block path anyway.

use super::AttentionLayout;

/// No split range is shorter than this many positions. Measured on an H100 (PERF.md, with the
/// earlier thread-per-position kernel): 128 beat 256 at 1k–16k contexts; 64 gained nothing.
pub const MIN_SPLIT_POSITIONS: usize = 128;
/// Upper bound on splits per (row, head); bounds the scratch buffer.
pub const MAX_SPLITS: usize = 64;
/// Split only when the one-block grid has fewer than this many blocks per SM.
const SPLIT_BELOW_BLOCKS_PER_SM: usize = 2;
/// When splitting, aim for about this many blocks per SM (latency hiding for the K/V reads;
/// measured on an H100: 8 beat 4 at 16k contexts and batches of 3 and 8, PERF.md).
const TARGET_BLOCKS_PER_SM: usize = 8;

/// Which CUDA path runs: chosen by [`num_splits`] (`Auto`), or fixed (tests, benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitChoice {
    Auto,
    /// Exactly this many splits (1: the one-block path). Clamped to `1..=MAX_SPLITS`.
    Fixed(usize),
}

/// Splits per (row, head) for a grid of `num_rows * num_heads` blocks whose rows see at most
/// `max_positions` positions, on a device with `num_sms` SMs. 1 means the one-block path.
///
/// Rule: no split when the grid already has `SPLIT_BELOW_BLOCKS_PER_SM` blocks per SM or the
/// rows fit in one [`MIN_SPLIT_POSITIONS`] range; otherwise enough splits to reach
/// `TARGET_BLOCKS_PER_SM` blocks per SM, but no more than the positions allow
/// (`max_positions / MIN_SPLIT_POSITIONS`, rounded up) nor [`MAX_SPLITS`].
pub fn num_splits(num_rows: usize, num_heads: usize, max_positions: usize, num_sms: usize) -> usize {
    let blocks = num_rows * num_heads;
    if blocks == 0 || blocks >= SPLIT_BELOW_BLOCKS_PER_SM * num_sms.max(1) || max_positions <= MIN_SPLIT_POSITIONS {
        return 1;
    }
    let by_length = max_positions.div_ceil(MIN_SPLIT_POSITIONS);
    let to_fill = (TARGET_BLOCKS_PER_SM * num_sms.max(1)).div_ceil(blocks);
    by_length.min(to_fill).clamp(1, MAX_SPLITS)
}

/// An upper bound on the positions any row of `layout` sees, fixed for every step that shares
/// this metadata length (see the module invariant). `metadata_len` is the length of the
/// `kernel_metadata` array the kernel reads, `num_rows` the query rows.
///
/// With a uniform table width `w` (every sequence's table takes `w` entries and `w` covers each
/// context: `kernel_metadata(.., Some(w))`), the bound is `w * block_size`, a function of the
/// metadata length and the number of sequences only. Otherwise (tables cut to their contexts:
/// eager steps, which are never replayed) it is the widest table this step uses. Either way a
/// sliding window caps it at the window.
pub fn max_row_positions(layout: &AttentionLayout, num_rows: usize, metadata_len: usize) -> usize {
    let num_seqs = layout.sequences.len();
    let used = |s: &super::SequenceSpan| s.context_len.div_ceil(layout.block_size).min(s.block_table.len());
    let widest_used = layout.sequences.iter().map(used).max().unwrap_or(0);
    // `kernel_metadata` = row_pos (num_rows) + row_table (num_rows) + tables + one trailing 0.
    let tables_len = metadata_len.saturating_sub(2 * num_rows + 1);
    let width = match num_seqs {
        0 => 0,
        n if tables_len.is_multiple_of(n) && tables_len / n >= widest_used => tables_len / n,
        _ => widest_used,
    };
    let positions = width * layout.block_size;
    match layout.sliding_window {
        Some(window) => positions.min(window),
        None => positions,
    }
}

impl SplitChoice {
    /// The number of splits for this launch (see [`num_splits`]).
    pub fn resolve(self, num_rows: usize, num_heads: usize, max_positions: usize, num_sms: usize) -> usize {
        match self {
            SplitChoice::Auto => num_splits(num_rows, num_heads, max_positions, num_sms),
            SplitChoice::Fixed(n) => n.clamp(1, MAX_SPLITS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{kernel_metadata, SequenceSpan};
    use super::*;

    const H100_SMS: usize = 132;

    fn layout(seqs: &[(usize, usize, usize)], block_size: usize, window: Option<usize>) -> AttentionLayout {
        // (num_query_tokens, context_len, table entries)
        let mut start = 0;
        let sequences = seqs
            .iter()
            .map(|&(q, context_len, width)| {
                let span = SequenceSpan { query_start_idx: start, num_query_tokens: q, context_len, block_table: (0..width as u32).collect() };
                start += q;
                span
            })
            .collect();
        AttentionLayout { sequences, block_size, scale: 1.0, sliding_window: window, device_metadata: None }
    }

    #[test]
    fn batch_one_with_a_long_context_splits_to_fill_the_gpu() {
        // 32 heads: 32 blocks on 132 SMs. 4100 positions allow 33 ranges of 128; 1056 blocks
        // (8 per SM) need 33 splits.
        assert_eq!(num_splits(1, 32, 4100, H100_SMS), 33);
        assert_eq!(num_splits(1, 32, 1024, H100_SMS), 8);
        // A longer context is capped by the fill target, not the length.
        assert_eq!(num_splits(1, 32, 32768, H100_SMS), 33);
        // Few heads (tensor parallel shards): more splits, capped at MAX_SPLITS.
        assert_eq!(num_splits(1, 2, 1 << 20, H100_SMS), MAX_SPLITS);
    }

    #[test]
    fn short_contexts_and_full_grids_keep_the_one_block_path() {
        assert_eq!(num_splits(1, 32, 1, H100_SMS), 1);
        assert_eq!(num_splits(1, 32, MIN_SPLIT_POSITIONS, H100_SMS), 1);
        assert_eq!(num_splits(1, 32, MIN_SPLIT_POSITIONS + 1, H100_SMS), 2);
        // 9 rows x 32 heads = 288 blocks >= 2 per SM.
        assert_eq!(num_splits(9, 32, 100_000, H100_SMS), 1);
        // 8 rows x 32 heads = 256 blocks < 264: a few splits.
        assert_eq!(num_splits(8, 32, 4100, H100_SMS), 5);
        assert_eq!(num_splits(0, 32, 4100, H100_SMS), 1);
    }

    #[test]
    fn splits_never_exceed_the_limits() {
        for rows in [1, 2, 3, 5, 8, 16] {
            for heads in [1, 4, 8, 32, 64] {
                for positions in [0, 1, 255, 256, 257, 1000, 4100, 1 << 16] {
                    for sms in [1, 8, 108, 132] {
                        let n = num_splits(rows, heads, positions, sms);
                        assert!((1..=MAX_SPLITS).contains(&n));
                        assert!(n == 1 || (n - 1) * MIN_SPLIT_POSITIONS < positions, "{rows} {heads} {positions} {sms}: {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn fixed_choices_are_clamped() {
        assert_eq!(SplitChoice::Fixed(0).resolve(1, 1, 1, 1), 1);
        assert_eq!(SplitChoice::Fixed(7).resolve(1, 1, 1, 1), 7);
        assert_eq!(SplitChoice::Fixed(1000).resolve(1, 1, 1, 1), MAX_SPLITS);
        assert_eq!(SplitChoice::Auto.resolve(1, 32, 4100, H100_SMS), 33);
    }

    #[test]
    fn padded_metadata_bounds_rows_by_the_table_width_not_the_contexts() {
        // A recorded decode step: 4 one-token rows, tables padded to 300 blocks of 16.
        let short = layout(&[(1, 5, 1), (1, 40, 3), (1, 1, 1), (1, 17, 2)], 16, None);
        let long = layout(&[(1, 4000, 250), (1, 4800, 300), (1, 1, 1), (1, 17, 2)], 16, None);
        for l in [&short, &long] {
            let meta = kernel_metadata(&l.sequences, 16, Some(300));
            assert_eq!(max_row_positions(l, 4, meta.len()), 300 * 16);
        }
        // Hence the same number of splits for both steps.
        let splits = |l: &AttentionLayout| num_splits(4, 32, max_row_positions(l, 4, kernel_metadata(&l.sequences, 16, Some(300)).len()), H100_SMS);
        assert_eq!(splits(&short), splits(&long));
    }

    #[test]
    fn unpadded_metadata_bounds_rows_by_the_widest_table_used() {
        // A prompt of 7 rows and two generation rows; tables cut to their contexts.
        let l = layout(&[(7, 7, 9), (1, 1000, 70), (1, 300, 30)], 16, None);
        let meta = kernel_metadata(&l.sequences, 16, None);
        assert_eq!(max_row_positions(&l, 9, meta.len()), 63 * 16);
        // One sequence: its table, exactly.
        let one = layout(&[(1, 4100, 300)], 16, None);
        assert_eq!(max_row_positions(&one, 1, kernel_metadata(&one.sequences, 16, None).len()), 257 * 16);
    }

    #[test]
    fn a_sliding_window_caps_the_bound() {
        let l = layout(&[(1, 4100, 300)], 16, Some(512));
        let meta = kernel_metadata(&l.sequences, 16, Some(300));
        assert_eq!(max_row_positions(&l, 1, meta.len()), 512);
        assert_eq!(num_splits(1, 32, 512, H100_SMS), 4);
    }
}
