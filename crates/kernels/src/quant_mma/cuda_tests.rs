//! Binds the tensor-core kernels to the F32 product of the dequantized weights on the GPU
//! (Q4_K/Q6_K and dense, BF16/F16, one to several token tiles, ragged weight heights, one or more slices), checks that each
//! token's result does not depend on the batch around it, and that the source compiles with
//! NVRTC. Without a GPU the device tests print why and pass, unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::*;
use crate::quant_matvec::quant_matvec_reference;
use crate::relative_diff;

#[test]
fn nvrtc_compiles_the_mma_source() {
    let ptx = cuda::MODULE.compile().unwrap_or_else(|e| panic!("NVRTC failed: {e:?}")).to_src();
    for suffix in ["bf16", "f16"] {
        assert!(ptx.contains(&format!(".entry mma_reduce_{suffix}(")), "PTX lacks mma_reduce_{suffix}");
        for tiles in 1..=TOKENS_PER_TILE / 8 {
            let name = format!("mma_{suffix}_{tiles}");
            assert!(ptx.contains(&format!(".entry {name}(")), "PTX lacks {name}");
        }
    }
}

/// Activations with a large outlier in one group and an all-zero group (scales far apart and 0).
fn activations(rows: usize, k: usize, dtype: DType, device: &Device) -> Tensor {
    let mut values = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    values[0][5] = 40.0;
    if k >= 96 {
        values[rows - 1][64..96].fill(0.0);
    }
    Tensor::new(values, device).unwrap().to_dtype(dtype).unwrap()
}

#[test]
fn mma_matches_the_f32_reference() {
    let Some(device) = crate::test_gpu() else { return };
    // (n, k): heights that are not a multiple of a block's rows (32 or 64); one super-block (one slice),
    // 3, 16 and 9 super-blocks (2, 8 and 8 slices, the last uneven)
    for (n, k) in [(130, 256), (100, 768), (64, 4096), (256, 2304)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for format in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = QTensor::quantize_onto(&w, format, &device).unwrap();
            for dtype in [DType::BF16, DType::F16] {
                for rows in [1, 9, 16, 33, 64, 65, 127] {
                    let x = activations(rows, k, dtype, &device);
                    assert!(supported(&q, &x));
                    let fast = quant_mma(&q, &x).unwrap();
                    let slow = quant_matvec_reference(&q, &x).unwrap();
                    assert_eq!(fast.dims(), [rows, n]);
                    let diff = relative_diff(&fast, &slow);
                    // Each weight is rounded to the type once, but from a scale and a min that were
                    // rounded first (2^-9 in BF16): an error shared by a group's 32 weights, which
                    // the outlier above multiplies; 1.03 % of the largest output was seen in BF16.
                    let tolerance = if dtype == DType::BF16 { 2e-2 } else { 2e-3 };
                    assert!(diff <= tolerance, "{format:?} {n}x{k} {dtype:?} rows {rows}: relative diff {diff}");
                }
            }
        }
    }
}

/// A token's output is bit for bit the same alone, in a tile of another size, and in another
/// position of a larger batch.
#[test]
fn each_token_is_independent_of_its_batch() {
    let Some(device) = crate::test_gpu() else { return };
    let (n, k) = (96, 1024);
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    for format in [GgmlDType::Q4K, GgmlDType::Q6K] {
        let q = QTensor::quantize_onto(&w, format, &device).unwrap();
        // several 64-token tiles: batch-invariant mode sends prompt chunks here too
        let x = activations(200, k, DType::BF16, &device);
        let whole = quant_mma(&q, &x).unwrap();
        for (start, len) in [(0, 1), (17, 1), (70, 10), (5, 40), (150, 50), (3, 130)] {
            let part = quant_mma(&q, &x.narrow(0, start, len).unwrap()).unwrap();
            let same = whole.narrow(0, start, len).unwrap();
            assert_eq!(relative_diff(&part, &same), 0.0, "{format:?} rows {start}..{}", start + len);
        }
    }
}

/// Q, K, V-like groups (mixed Q4_K/Q6_K, different heights) in one launch equal one launch each
/// up to summation order (a group may be cut into other slices than its matrices alone), and
/// a token's results in a group do not depend on the batch either.
#[test]
fn a_group_equals_its_matrices_one_by_one() {
    let Some(device) = crate::test_gpu() else { return };
    let k = 1024;
    let matrix = |n: usize, format| {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize_onto(&w, format, &device).unwrap()
    };
    let (q, kk, v) = (matrix(256, GgmlDType::Q4K), matrix(64, GgmlDType::Q4K), matrix(61, GgmlDType::Q6K));
    for group in [vec![&q, &kk, &v], vec![&v, &q], vec![&kk]] {
        for rows in [9, 40, 100] {
            let x = activations(rows, k, DType::F16, &device);
            assert!(group_supported(&group, &x));
            let outputs = quant_mma_group(&group, &x).unwrap();
            assert_eq!(outputs.len(), group.len());
            for (w, out) in group.iter().zip(&outputs) {
                let single = quant_mma(w, &x).unwrap();
                assert_eq!(out.dims(), single.dims());
                let diff = relative_diff(out, &single);
                assert!(diff <= 2e-3, "{:?} rows {rows}: grouped differs from single by {diff}", w.dtype());
            }
            let first = quant_mma_group(&group, &x.narrow(0, 3, 1).unwrap()).unwrap();
            for (out, alone) in outputs.iter().zip(&first) {
                assert_eq!(relative_diff(&out.narrow(0, 3, 1).unwrap(), alone), 0.0, "token 3 alone vs in {rows} rows");
            }
        }
    }
}

/// Dense weights of the activations' type, widths that are and are not a multiple of 256
/// (zero-padded), against the F32 product on the host.
#[test]
fn dense_mma_matches_the_f32_product() {
    let Some(device) = crate::test_gpu() else { return };
    for (n, k) in [(130, 256), (100, 768), (64, 4096), (70, 64), (90, 640)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let w_dev = w.to_dtype(dtype).unwrap().to_device(&device).unwrap();
            for rows in [1, 9, 64, 65, 130] {
                let x = activations(rows, k, dtype, &device);
                assert!(dense_supported(&w_dev, &x));
                let fast = dense_mma(&w_dev, &x).unwrap();
                let f32_host = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
                let slow = f32_host(&x).matmul(&f32_host(&w_dev).t().unwrap()).unwrap();
                assert_eq!(fast.dims(), [rows, n]);
                let diff = relative_diff(&fast.to_device(&Device::Cpu).unwrap(), &slow);
                // the operands are exact; only the F32 sum's order and the output's rounding differ
                let tolerance = if dtype == DType::BF16 { 1e-2 } else { 2e-3 };
                assert!(diff <= tolerance, "dense {n}x{k} {dtype:?} rows {rows}: relative diff {diff}");
            }
        }
    }
}

#[test]
fn dense_tokens_are_independent_of_their_batch() {
    let Some(device) = crate::test_gpu() else { return };
    for k in [1024, 640] {
        let w = Tensor::randn(0f32, 1.0, (96, k), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap().to_device(&device).unwrap();
        let x = activations(200, k, DType::BF16, &device);
        let whole = dense_mma(&w, &x).unwrap();
        for (start, len) in [(0, 1), (17, 1), (70, 10), (150, 50), (3, 130)] {
            let part = dense_mma(&w, &x.narrow(0, start, len).unwrap()).unwrap();
            assert_eq!(relative_diff(&part, &whole.narrow(0, start, len).unwrap()), 0.0, "k {k} rows {start}..{}", start + len);
        }
    }
}

#[test]
fn unsupported_inputs_are_declined() {
    let Some(device) = crate::test_gpu() else { return };
    let w = Tensor::randn(0f32, 1.0, (64, 512), &Device::Cpu).unwrap();
    let q4 = QTensor::quantize_onto(&w, GgmlDType::Q4K, &device).unwrap();
    let x = |rows: usize, dtype: DType| Tensor::zeros((rows, 512), dtype, &device).unwrap();
    assert!(supported(&q4, &x(20, DType::BF16)));
    assert!(!supported(&q4, &x(20, DType::F32)), "F32 activations");
    let q8 = QTensor::quantize_onto(&w, GgmlDType::Q8_0, &device).unwrap();
    assert!(!supported(&q8, &x(20, DType::BF16)), "Q8_0 has no kernel");
    let dense = w.to_dtype(DType::BF16).unwrap().to_device(&device).unwrap();
    assert!(dense_supported(&dense, &x(20, DType::BF16)));
    assert!(!dense_supported(&dense, &x(20, DType::F16)), "weights of another type than the activations");
    let cpu = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
    assert!(!supported(&cpu, &Tensor::zeros((20, 512), DType::BF16, &Device::Cpu).unwrap()), "CPU tensors");
}
