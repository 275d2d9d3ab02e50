//! Binds the CUDA split-over-the-sequence path (split kernel + combine kernel) to the reference
//! twin: long and short contexts, batches of 1–8 generation rows, rows of very different lengths
//! with prompt rows among them, GQA, sliding windows, F32/BF16, scrambled block tables, fixed and
//! automatic split counts — and a recorded CUDA graph replayed with rewritten metadata, the way
//! decode steps run.
//!
//! Without a usable GPU the tests print why and pass, unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::{DType, Device, Tensor};

use super::cuda_tests::{gpu, tolerance};
use super::split::{SplitChoice, MAX_SPLITS};
use super::tests::{make_case, max_abs_diff, Case};
use super::*;

/// Split counts every case runs with: automatic, the one-block path, a few splits, more splits
/// than a short row can fill (their neutral partials must be ignored), the maximum.
const CHOICES: [SplitChoice; 5] =
    [SplitChoice::Auto, SplitChoice::Fixed(1), SplitChoice::Fixed(3), SplitChoice::Fixed(16), SplitChoice::Fixed(MAX_SPLITS)];

/// Runs `case` on `device` in `dtype` with every split choice; panics on the first mismatch
/// with the reference beyond the dtype's tolerance. `label` names the case in messages.
fn check_all_choices(case: &Case, device: &Device, dtype: DType, label: &str) {
    let gpu_case = case.to(device, dtype);
    let slow = paged_attention_reference(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
    for choice in CHOICES {
        let fast = paged_attention_with(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout, choice).unwrap();
        assert_eq!(fast.dims(), gpu_case.q.dims());
        assert_eq!(fast.dtype(), dtype);
        let diff = max_abs_diff(&fast, &slow);
        eprintln!("{label} {dtype:?} {choice:?}: max abs diff {diff:e}");
        assert!(diff <= tolerance(dtype), "{label} {dtype:?} {choice:?}: max abs diff {diff} > {}", tolerance(dtype));
    }
}

#[test]
fn split_path_matches_reference_for_generation_batches() {
    let Some(device) = gpu() else { return };
    for (num_heads, num_kv_heads, head_dim) in [(32, 8, 128), (32, 8, 64)] {
        for batch in [1, 3, 8] {
            for context in [1, 300, 1000, 4100] {
                let seqs = vec![(1, context); batch];
                let case = make_case(&seqs, num_heads, num_kv_heads, head_dim, 16, None);
                for dtype in [DType::F32, DType::BF16] {
                    let label = format!("heads {num_heads}/{num_kv_heads} head_dim {head_dim} batch {batch} context {context}");
                    check_all_choices(&case, &device, dtype, &label);
                }
            }
        }
    }
}

#[test]
fn split_path_matches_reference_with_sliding_windows() {
    let Some(device) = gpu() else { return };
    let seqs = [(1, 4100), (1, 1000), (1, 300), (1, 1)];
    for window in [1, 100, 700, 4096] {
        let case = make_case(&seqs, 32, 8, 128, 16, Some(window));
        for dtype in [DType::F32, DType::BF16] {
            check_all_choices(&case, &device, dtype, &format!("window {window}"));
        }
    }
}

#[test]
fn split_path_matches_reference_on_rows_of_very_different_lengths() {
    let Some(device) = gpu() else { return };
    // Generation rows from 1 to 4100 positions, with prompt rows (several queries per
    // sequence) among them; odd block sizes so ranges never align with blocks.
    let seqs = [(1, 1), (1, 4100), (1, 17), (5, 5), (1, 300), (12, 900), (1, 2600), (1, 257)];
    for (num_heads, num_kv_heads, head_dim, block_size) in [(32, 8, 128, 16), (8, 2, 64, 7), (4, 1, 80, 32)] {
        let case = make_case(&seqs, num_heads, num_kv_heads, head_dim, block_size, None);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let label = format!("mixed heads {num_heads}/{num_kv_heads} head_dim {head_dim} block {block_size}");
            check_all_choices(&case, &device, dtype, &label);
        }
    }
}

#[test]
fn split_path_matches_the_one_block_path_in_f32() {
    let Some(device) = gpu() else { return };
    let case = make_case(&[(1, 4100), (1, 1234), (1, 2)], 32, 8, 128, 16, None).to(&device, DType::F32);
    let run = |choice| paged_attention_with(&case.q, &case.k_cache, &case.v_cache, &case.layout, choice).unwrap();
    let one_block = run(SplitChoice::Fixed(1));
    for n in [2, 5, 17, MAX_SPLITS] {
        let diff = max_abs_diff(&one_block, &run(SplitChoice::Fixed(n)));
        assert!(diff <= 1e-5, "{n} splits: max abs diff {diff} > 1e-5");
    }
}

/// A decode step recorded as a CUDA graph with short contexts, then replayed after its metadata
/// was rewritten for much longer contexts (same padded table width): the recorded split count
/// and scratch stay valid and the result follows the new contexts.
#[test]
fn recorded_split_launch_follows_rewritten_metadata() {
    let Some(device) = gpu() else { return };
    let long_seqs = [(1, 4100), (1, 3000), (1, 700)];
    let case = make_case(&long_seqs, 32, 8, 128, 16, None).to(&device, DType::BF16);
    let long = case.layout.clone();
    let width = long.sequences.iter().map(|s| s.block_table.len()).max().unwrap();
    // The same sequences earlier in their lives: same tables, short contexts.
    let mut short = long.clone();
    for (seq, context_len) in short.sequences.iter_mut().zip([20, 1, 300]) {
        seq.context_len = context_len;
    }
    let meta_of = |layout: &AttentionLayout| kernel_metadata(&layout.sequences, layout.block_size, Some(width));
    assert_eq!(meta_of(&short).len(), meta_of(&long).len());
    let metadata = Tensor::new(meta_of(&short).as_slice(), &device).unwrap();
    let recorded = AttentionLayout { device_metadata: Some(metadata.clone()), ..short.clone() };
    // A fixed split count, so the split path is recorded whatever the GPU's SM count.
    let (graph, out) = crate::graph::capture(&device, || {
        paged_attention_with(&case.q, &case.k_cache, &case.v_cache, &recorded, SplitChoice::Fixed(17))
            .map_err(candle_core::Error::wrap)
    })
    .unwrap();
    for layout in [&short, &long, &short] {
        metadata.slice_set(&Tensor::new(meta_of(layout).as_slice(), &device).unwrap(), 0, 0).unwrap();
        graph.replay().unwrap();
        let slow = paged_attention_reference(&case.q, &case.k_cache, &case.v_cache, layout).unwrap();
        let contexts: Vec<usize> = layout.sequences.iter().map(|s| s.context_len).collect();
        let diff = max_abs_diff(&out, &slow);
        eprintln!("graph replay, contexts {contexts:?}: max abs diff {diff:e}");
        assert!(diff <= tolerance(DType::BF16), "contexts {contexts:?}: max abs diff {diff}");
    }
}

/// Rough timing of the one-block path (`Fixed(1)`), the automatic choice and a few fixed split
/// counts (not a benchmark: wall clock over 50 back-to-back calls, host launch overhead
/// included; PERF.md has a run). On a GPU: `--ignored --nocapture split_path_rough_timing`.
#[test]
#[ignore]
fn split_path_rough_timing() {
    let Some(device) = gpu() else { return };
    for context in [1024, 4096, 16384] {
        for batch in [1, 3, 8] {
            let case = make_case(&vec![(1, context); batch], 32, 8, 128, 16, None).to(&device, DType::BF16);
            let width = context.div_ceil(16);
            let meta = kernel_metadata(&case.layout.sequences, 16, Some(width));
            let layout = AttentionLayout { device_metadata: Some(Tensor::new(meta.as_slice(), &device).unwrap()), ..case.layout.clone() };
            let mut line = format!("context {context:>5} batch {batch}:");
            for choice in [SplitChoice::Fixed(1), SplitChoice::Auto, SplitChoice::Fixed(8), SplitChoice::Fixed(17), SplitChoice::Fixed(32), SplitChoice::Fixed(64)] {
                let run = || paged_attention_with(&case.q, &case.k_cache, &case.v_cache, &layout, choice).unwrap();
                drop(run());
                device.synchronize().unwrap();
                let start = std::time::Instant::now();
                for _ in 0..50 {
                    drop(run());
                }
                device.synchronize().unwrap();
                line += &format!("  {choice:?} {:.1} us", start.elapsed().as_secs_f64() * 1e6 / 50.0);
            }
            eprintln!("{line}");
        }
    }
}
