//! Binds the CPU paged-attention kernel to its reference twin on random pools, several
//! sequences of different lengths, GQA, and sliding windows.

use candle_core::{Device, Tensor};
use proptest::prelude::*;

use super::*;

pub(super) struct Case {
    pub q: Tensor,
    pub k_cache: Tensor,
    pub v_cache: Tensor,
    pub layout: AttentionLayout,
}

#[cfg(feature = "cuda")]
impl Case {
    /// The same case on `device` in `dtype`.
    pub fn to(&self, device: &Device, dtype: candle_core::DType) -> Case {
        let move_to = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
        Case {
            q: move_to(&self.q),
            k_cache: move_to(&self.k_cache),
            v_cache: move_to(&self.v_cache),
            layout: self.layout.clone(),
        }
    }
}

/// Builds a pool with shuffled block tables and random K/V written through `write_kv`.
pub(super) fn make_case(
    seqs: &[(usize, usize)], // (num_query_tokens, context_len)
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    sliding_window: Option<usize>,
) -> Case {
    let device = Device::Cpu;
    let num_blocks_needed: usize = seqs.iter().map(|&(_, c)| c.div_ceil(block_size)).sum();
    let num_blocks = num_blocks_needed + 3;
    // Hand blocks out in a scrambled order so tables are not contiguous.
    let mut free: Vec<u32> = (0..num_blocks as u32).rev().collect();
    free.rotate_left(num_blocks / 2);
    let mut sequences = Vec::new();
    let mut start = 0;
    for &(num_query_tokens, context_len) in seqs {
        let n = context_len.div_ceil(block_size);
        let block_table: Vec<u32> = (0..n).map(|_| free.pop().unwrap()).collect();
        sequences.push(SequenceSpan { query_start_idx: start, num_query_tokens, context_len, block_table });
        start += num_query_tokens;
    }
    let layout = AttentionLayout { sequences, block_size, scale: (head_dim as f32).powf(-0.5), sliding_window, device_metadata: None };
    let shape = (num_blocks, block_size, num_kv_heads, head_dim);
    let k_cache = Tensor::zeros(shape, candle_core::DType::F32, &device).unwrap();
    let v_cache = Tensor::zeros(shape, candle_core::DType::F32, &device).unwrap();
    for seq in &layout.sequences {
        let slots: Vec<u32> = (0..seq.context_len).map(|p| layout.slot(seq, p) as u32).collect();
        let slots = Tensor::new(slots.as_slice(), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (seq.context_len, num_kv_heads, head_dim), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (seq.context_len, num_kv_heads, head_dim), &device).unwrap();
        write_kv(&k_cache, &v_cache, &k, &v, &slots).unwrap();
    }
    let q = Tensor::randn(0f32, 1.0, (start, num_heads, head_dim), &device).unwrap();
    Case { q, k_cache, v_cache, layout }
}

pub(super) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_dtype(candle_core::DType::F32).unwrap(), b.to_dtype(candle_core::DType::F32).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn cpu_kernel_matches_reference_on_mixed_prefill_and_decode_batch() {
    let case = make_case(&[(7, 7), (1, 19), (5, 12), (1, 1)], 8, 2, 16, 4, None);
    let fast = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    let slow = paged_attention_reference(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    assert_eq!(fast.dims(), &[14, 8, 16]);
    let diff = max_abs_diff(&fast, &slow);
    assert!(diff <= 1e-5, "max abs diff {diff} > 1e-5");
}

#[test]
fn sliding_window_hides_old_positions() {
    let case = make_case(&[(6, 10)], 4, 4, 8, 4, Some(3));
    let fast = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    let slow = paged_attention_reference(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    let diff = max_abs_diff(&fast, &slow);
    assert!(diff <= 1e-5, "max abs diff {diff} > 1e-5");
    // With a window of 1 every query sees only itself: output equals its own V row.
    let mut one = make_case(&[(3, 3)], 2, 2, 8, 4, Some(1));
    one.layout.sliding_window = Some(1);
    let out = paged_attention(&one.q, &one.k_cache, &one.v_cache, &one.layout).unwrap();
    let v = one.v_cache.reshape((one.k_cache.dim(0).unwrap() * 4, 2, 8)).unwrap();
    let slots: Vec<u32> = (0..3).map(|p| one.layout.slot(&one.layout.sequences[0], p) as u32).collect();
    let v_rows = v.index_select(&Tensor::new(slots.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
    assert!(max_abs_diff(&out, &v_rows) <= 1e-6);
}

#[test]
fn invalid_layout_is_an_error_not_a_panic() {
    let case = make_case(&[(2, 5)], 2, 1, 8, 4, None);
    let mut short_table = case.layout.clone();
    short_table.sequences[0].block_table.truncate(1);
    let err = paged_attention(&case.q, &case.k_cache, &case.v_cache, &short_table).unwrap_err();
    assert!(err.to_string().contains("needs 2 blocks"), "{err}");

    let mut too_many_queries = case.layout.clone();
    too_many_queries.sequences[0].num_query_tokens = 6;
    let err = paged_attention(&case.q, &case.k_cache, &case.v_cache, &too_many_queries).unwrap_err();
    assert!(err.to_string().contains("query tokens"), "{err}");

    let mut out_of_pool = case.layout.clone();
    out_of_pool.sequences[0].block_table[0] = 999;
    let err = paged_attention(&case.q, &case.k_cache, &case.v_cache, &out_of_pool).unwrap_err();
    assert!(err.to_string().contains("block 999"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn cpu_kernel_matches_reference_on_random_batches(
        seqs in prop::collection::vec((1usize..6, 0usize..20), 1..4),
        kv_heads_pow in 0u32..2,
        group in 1usize..4,
        block_size in prop::sample::select(vec![1usize, 2, 4, 16]),
        window in prop::option::of(1usize..8),
    ) {
        let seqs: Vec<(usize, usize)> = seqs.into_iter().map(|(q, extra)| (q, q + extra)).collect();
        let num_kv_heads = 1 << kv_heads_pow;
        let case = make_case(&seqs, num_kv_heads * group, num_kv_heads, 8, block_size, window);
        let fast = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
        let slow = paged_attention_reference(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
        let diff = max_abs_diff(&fast, &slow);
        prop_assert!(diff <= 1e-5, "max abs diff {} > 1e-5", diff);
    }
}
