//! Binds the tiled prefill kernel to `paged_attention_reference` on the GPU (prompts from zero
//! and after cached tokens, several sequences, generation rows mixed in, GQA, head_dim
//! 64/128/256, sliding windows, scrambled block tables, F32/BF16/F16), checks that the source
//! compiles with NVRTC (no GPU needed), and on the CPU that `prefill_attention` is
//! `paged_attention` and `supported` is false.
//!
//! Without a usable GPU the device tests print why and pass, unless `HEARTH_REQUIRE_GPU=1`
//! makes the absence a failure.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::paged_attention::{write_kv, SequenceSpan};

struct Case {
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    layout: AttentionLayout,
}

impl Case {
    /// The same case on `device` in `dtype`.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn to(&self, device: &Device, dtype: DType) -> Case {
        let move_to = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
        Case { q: move_to(&self.q), k_cache: move_to(&self.k_cache), v_cache: move_to(&self.v_cache), layout: self.layout.clone() }
    }
}

/// A pool with scrambled block tables and random K/V written through `write_kv` (CPU, F32).
fn make_case(
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
    // Hand blocks out in a scrambled order so tables are not contiguous (nor increasing).
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
    let layout = AttentionLayout {
        sequences,
        block_size,
        scale: (head_dim as f32).powf(-0.5),
        sliding_window,
        device_metadata: None,
    };
    let shape = (num_blocks, block_size, num_kv_heads, head_dim);
    let k_cache = Tensor::zeros(shape, DType::F32, &device).unwrap();
    let v_cache = Tensor::zeros(shape, DType::F32, &device).unwrap();
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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn on_the_cpu_prefill_attention_is_paged_attention() {
    let case = make_case(&[(7, 7), (1, 19), (5, 12)], 8, 2, 64, 4, Some(6));
    assert!(!supported(&case.q, &case.layout));
    let fast = prefill_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    let paged = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    assert_eq!(fast.dims(), case.q.dims());
    assert_eq!(max_abs_diff(&fast, &paged), 0.0);
    // Invalid layouts are errors, as for paged attention.
    let mut short_table = case.layout.clone();
    short_table.sequences[0].block_table.truncate(1);
    assert!(prefill_attention(&case.q, &case.k_cache, &case.v_cache, &short_table).is_err());
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    fn gpu() -> Option<Device> {
        crate::test_gpu()
    }

    /// Largest |fast - reference| allowed (as in paged attention's CUDA tests): both accumulate
    /// in F32 from the same inputs; the difference is the rounding of the output to `dtype`.
    fn tolerance(dtype: DType) -> f32 {
        match dtype {
            DType::BF16 => 4e-2,
            DType::F16 => 4e-3,
            _ => 1e-4,
        }
    }

    /// Runs the tiled kernel (asserting it is the path taken) and the reference on `device` in
    /// `dtype`; panics when they differ by more than the tolerance.
    fn check(case: &Case, device: &Device, dtype: DType, what: &str) {
        let gpu_case = case.to(device, dtype);
        assert!(supported(&gpu_case.q, &gpu_case.layout), "{what}: not supported");
        let fast = prefill_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        let slow = paged_attention_reference(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        assert_eq!(fast.dims(), gpu_case.q.dims());
        assert_eq!(fast.dtype(), dtype);
        let diff = max_abs_diff(&fast, &slow);
        eprintln!("{what} {dtype:?}: max abs diff {diff:e}");
        assert!(diff <= tolerance(dtype), "{what} {dtype:?}: max abs diff {diff} > {}", tolerance(dtype));
    }

    use crate::paged_attention_reference;

    #[test]
    fn nvrtc_compiles_the_prefill_kernel_source() {
        let ptx = cuda::MODULE.compile().unwrap_or_else(|e| panic!("NVRTC failed: {e:?}")).to_src();
        for head_dim in HEAD_DIMS {
            for suffix in ["f32", "bf16", "f16"] {
                let entry = format!(".entry prefill_attention_{head_dim}_{suffix}(");
                assert!(ptx.contains(&entry), "PTX lacks {entry}");
            }
        }
    }

    #[test]
    fn one_prompt_from_an_empty_cache() {
        let Some(device) = gpu() else { return };
        for rows in [1, 17, 512, 1000] {
            // One row is a generation row: not `supported`, so only check the fallback there.
            let case = make_case(&[(rows, rows)], 32, 8, 128, 16, None);
            if rows == 1 {
                let gpu_case = case.to(&device, DType::F32);
                assert!(!supported(&gpu_case.q, &gpu_case.layout));
                let fast = prefill_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
                let slow = paged_attention_reference(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
                assert!(max_abs_diff(&fast, &slow) <= tolerance(DType::F32));
                continue;
            }
            for dtype in [DType::F32, DType::BF16] {
                check(&case, &device, dtype, &format!("prompt of {rows}"));
            }
        }
    }

    #[test]
    fn prompt_chunk_after_cached_tokens() {
        let Some(device) = gpu() else { return };
        let case = make_case(&[(200, 500)], 32, 8, 128, 16, None);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            check(&case, &device, dtype, "200 new after 300 cached");
        }
    }

    #[test]
    fn several_sequences_and_generation_rows_in_one_batch() {
        let Some(device) = gpu() else { return };
        // Prompts, chunks, generation rows (1 query row), rows ending mid-block and mid-tile.
        let seqs = [(7, 7), (1, 19), (130, 200), (1, 1), (33, 33), (1, 300), (64, 517), (2, 2)];
        for (num_heads, num_kv_heads) in [(32, 8), (8, 8), (8, 1), (6, 2)] {
            for head_dim in [64, 128, 256] {
                let case = make_case(&seqs, num_heads, num_kv_heads, head_dim, 16, None);
                for dtype in [DType::F32, DType::BF16] {
                    check(&case, &device, dtype, &format!("mixed batch heads {num_heads}/{num_kv_heads} head_dim {head_dim}"));
                }
            }
        }
    }

    #[test]
    fn head_dims_and_gqa_on_long_prompts() {
        let Some(device) = gpu() else { return };
        for (num_heads, num_kv_heads) in [(32, 8), (8, 8)] {
            for head_dim in [64, 128, 256] {
                let case = make_case(&[(300, 300), (100, 250)], num_heads, num_kv_heads, head_dim, 16, None);
                check(&case, &device, DType::F32, &format!("heads {num_heads}/{num_kv_heads} head_dim {head_dim}"));
            }
        }
    }

    #[test]
    fn sliding_windows() {
        let Some(device) = gpu() else { return };
        let seqs = [(300, 300), (1, 90), (120, 400), (5, 5)];
        for window in [1, 5, 31, 32, 33, 150, 1000] {
            for head_dim in [64, 256] {
                let case = make_case(&seqs, 8, 4, head_dim, 16, Some(window));
                for dtype in [DType::F32, DType::BF16] {
                    check(&case, &device, dtype, &format!("window {window} head_dim {head_dim}"));
                }
            }
        }
    }

    #[test]
    fn block_sizes_and_block_tables() {
        let Some(device) = gpu() else { return };
        // Scrambled tables (make_case), blocks smaller than, equal to and larger than a tile.
        for block_size in [1, 3, 16, 32, 64] {
            let case = make_case(&[(45, 100), (70, 70)], 16, 4, 128, block_size, None);
            check(&case, &device, DType::F32, &format!("block size {block_size}"));
        }
    }

    #[test]
    fn matches_paged_attention_and_uses_device_metadata() {
        let Some(device) = gpu() else { return };
        let case = make_case(&[(40, 90), (1, 129), (17, 17)], 32, 8, 128, 16, Some(64));
        let gpu_case = case.to(&device, DType::BF16);
        let tiled = prefill_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        let paged = paged_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        assert!(max_abs_diff(&tiled, &paged) <= tolerance(DType::BF16));
        let width = case.layout.sequences.iter().map(|s| s.block_table.len()).max().unwrap() + 3;
        let meta = crate::kernel_metadata(&case.layout.sequences, case.layout.block_size, Some(width));
        let layout = AttentionLayout { device_metadata: Some(Tensor::new(meta.as_slice(), &device).unwrap()), ..gpu_case.layout.clone() };
        let with_meta = prefill_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &layout).unwrap();
        assert_eq!(max_abs_diff(&tiled, &with_meta), 0.0);
    }

    #[test]
    fn f32_queries_over_a_bf16_pool_come_back_in_f32() {
        let Some(device) = gpu() else { return };
        let case = make_case(&[(50, 80)], 8, 2, 64, 16, None);
        let gpu_case = case.to(&device, DType::BF16);
        let q = gpu_case.q.to_dtype(DType::F32).unwrap();
        let out = prefill_attention(&q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        let slow = paged_attention_reference(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        assert!(max_abs_diff(&out, &slow) <= tolerance(DType::BF16));
    }

    #[test]
    fn unsupported_head_dim_falls_back_to_paged_attention() {
        let Some(device) = gpu() else { return };
        let case = make_case(&[(20, 30)], 4, 2, 80, 16, None);
        let gpu_case = case.to(&device, DType::F32);
        assert!(!supported(&gpu_case.q, &gpu_case.layout));
        let out = prefill_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        let slow = paged_attention_reference(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
        assert!(max_abs_diff(&out, &slow) <= tolerance(DType::F32));
    }
}
