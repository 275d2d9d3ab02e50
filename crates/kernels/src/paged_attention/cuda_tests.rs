//! Binds the CUDA paged-attention kernel to its reference twin on the GPU (F32/BF16/F16; mixed
//! prompt and generation rows, GQA, sliding windows, contexts longer than one chunk) and to the
//! CPU kernel; checks that the source compiles with NVRTC (no GPU needed). The split over the
//! sequence has its own tests in `split_tests.rs`.
//!
//! Without a usable GPU the device tests print why and pass, unless `HEARTH_REQUIRE_GPU=1`
//! makes the absence a failure (set it on GPU machines so a broken driver cannot hide).

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;

use super::tests::{make_case, max_abs_diff, Case};
use super::*;

pub(super) fn gpu() -> Option<Device> {
    crate::test_gpu()
}

/// Largest |fast - reference| allowed: the kernel and the reference both accumulate in F32
/// from the same inputs; the difference is the rounding of the output to `dtype`.
pub(super) fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 4e-2,
        DType::F16 => 4e-3,
        _ => 1e-4,
    }
}

/// Runs the CUDA op and the reference on `device` in `dtype`; returns the max abs difference.
fn gpu_vs_reference(case: &Case, device: &Device, dtype: DType) -> f32 {
    let gpu_case = case.to(device, dtype);
    let fast = paged_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
    let slow = paged_attention_reference(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
    assert_eq!(fast.dims(), gpu_case.q.dims());
    assert_eq!(fast.dtype(), dtype);
    max_abs_diff(&fast, &slow)
}

#[test]
fn nvrtc_compiles_the_kernel_source() {
    let ptx = cuda::MODULE.compile().unwrap_or_else(|e| panic!("NVRTC failed: {e:?}")).to_src();
    for suffix in ["f32", "bf16", "f16"] {
        let mut kernels = vec![format!("paged_attention_combine_{suffix}")];
        for dims_per_lane in [2, 4, 8, 16] {
            kernels.push(format!("paged_attention_{suffix}_d{dims_per_lane}"));
            kernels.push(format!("paged_attention_split_{suffix}_d{dims_per_lane}"));
        }
        for kernel in kernels {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "PTX lacks {kernel}");
        }
    }
}

#[test]
fn cuda_kernel_matches_reference_on_mixed_batches() {
    let Some(device) = gpu() else { return };
    // (num_query_tokens, context_len): prompts, chunks, single generated tokens, long contexts.
    let seqs = [(7, 7), (1, 19), (5, 12), (1, 1), (1, 300), (130, 200), (3, 517)];
    for (num_heads, num_kv_heads, head_dim, block_size) in [(8, 2, 64, 16), (4, 4, 128, 32), (6, 1, 256, 16), (2, 1, 80, 3), (2, 1, 512, 16)] {
        for window in [None, Some(5), Some(150)] {
            let case = make_case(&seqs, num_heads, num_kv_heads, head_dim, block_size, window);
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let diff = gpu_vs_reference(&case, &device, dtype);
                eprintln!("heads {num_heads}/{num_kv_heads} head_dim {head_dim} block {block_size} window {window:?} {dtype:?}: max abs diff {diff:e}");
                assert!(diff <= tolerance(dtype), "{dtype:?}: max abs diff {diff} > {}", tolerance(dtype));
            }
        }
    }
}

#[test]
fn cuda_kernel_matches_cpu_kernel_in_f32() {
    let Some(device) = gpu() else { return };
    let case = make_case(&[(9, 40), (1, 129), (1, 2)], 8, 2, 64, 16, Some(33));
    let cpu = paged_attention(&case.q, &case.k_cache, &case.v_cache, &case.layout).unwrap();
    let gpu_case = case.to(&device, DType::F32);
    let gpu = paged_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
    let diff = max_abs_diff(&cpu, &gpu.to_device(&Device::Cpu).unwrap());
    eprintln!("cuda vs cpu (f32): max abs diff {diff:e}");
    assert!(diff <= 1e-5, "max abs diff {diff} > 1e-5");
}

#[test]
fn device_metadata_with_fixed_table_width_matches_the_upload_path() {
    let Some(device) = gpu() else { return };
    let case = make_case(&[(1, 40), (1, 129), (1, 2), (1, 77)], 8, 2, 64, 16, None);
    let gpu_case = case.to(&device, DType::BF16);
    let uploaded = paged_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &gpu_case.layout).unwrap();
    let width = case.layout.sequences.iter().map(|s| s.block_table.len()).max().unwrap() + 3;
    let meta = kernel_metadata(&case.layout.sequences, case.layout.block_size, Some(width));
    let layout = AttentionLayout { device_metadata: Some(Tensor::new(meta.as_slice(), &device).unwrap()), ..gpu_case.layout.clone() };
    let precomputed = paged_attention(&gpu_case.q, &gpu_case.k_cache, &gpu_case.v_cache, &layout).unwrap();
    assert_eq!(max_abs_diff(&uploaded, &precomputed), 0.0);
}

#[test]
fn write_kv_on_cuda_matches_cpu() {
    let Some(device) = gpu() else { return };
    let (num_blocks, block_size, num_kv_heads, head_dim) = (5, 4, 2, 8);
    let shape = (num_blocks, block_size, num_kv_heads, head_dim);
    let k = Tensor::randn(0f32, 1.0, (6, num_kv_heads, head_dim), &Device::Cpu).unwrap();
    let v = Tensor::randn(0f32, 1.0, (6, num_kv_heads, head_dim), &Device::Cpu).unwrap();
    let slots = Tensor::new(&[17u32, 3, 4, 0, 19, 8], &Device::Cpu).unwrap();
    let write = |dev: &Device, dtype: DType| {
        let k_cache = Tensor::zeros(shape, dtype, dev).unwrap();
        let v_cache = Tensor::zeros(shape, dtype, dev).unwrap();
        let on = |t: &Tensor| t.to_device(dev).unwrap();
        write_kv(&k_cache, &v_cache, &on(&k), &on(&v), &on(&slots)).unwrap();
        (k_cache.to_device(&Device::Cpu).unwrap(), v_cache.to_device(&Device::Cpu).unwrap())
    };
    let (k_cpu, v_cpu) = write(&Device::Cpu, DType::F32);
    for dtype in [DType::F32, DType::BF16] {
        let (k_gpu, v_gpu) = write(&device, dtype);
        let diff = max_abs_diff(&k_cpu, &k_gpu).max(max_abs_diff(&v_cpu, &v_gpu));
        assert!(diff <= tolerance(dtype) / 2.0, "{dtype:?}: max abs diff {diff}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn cuda_kernel_matches_reference_on_random_batches(
        seqs in prop::collection::vec((1usize..40, 0usize..300), 1..5),
        kv_heads_pow in 0u32..2,
        group in 1usize..4,
        block_size in prop::sample::select(vec![1usize, 2, 16, 32]),
        window in prop::option::of(1usize..200),
        dtype in prop::sample::select(vec![DType::F32, DType::BF16, DType::F16]),
    ) {
        let Some(device) = gpu() else { return Ok(()) };
        let seqs: Vec<(usize, usize)> = seqs.into_iter().map(|(q, extra)| (q, q + extra)).collect();
        let num_kv_heads = 1 << kv_heads_pow;
        let case = make_case(&seqs, num_kv_heads * group, num_kv_heads, 64, block_size, window);
        let diff = gpu_vs_reference(&case, &device, dtype);
        prop_assert!(diff <= tolerance(dtype), "{:?}: max abs diff {} > {}", dtype, diff, tolerance(dtype));
    }
}
