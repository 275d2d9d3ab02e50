//! Binds the quantized matvec kernels to the dequantize-and-multiply reference on the GPU, for
//! every block type, 1..=8 activation rows, BF16 and F16, and shapes of real models' products;
//! checks that the source compiles with NVRTC. Without a GPU the device tests print why and
//! pass, unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::*;
use crate::relative_diff;

fn gpu() -> Option<Device> {
    crate::test_gpu()
}

#[test]
fn nvrtc_compiles_the_matvec_source() {
    let ptx = cuda::MODULE.compile().unwrap_or_else(|e| panic!("NVRTC failed: {e:?}")).to_src();
    let int8_kernels = ["q8x_q4k", "q8x_q6k", "q8x_group", "q8x_gated"];
    for format in ["q4k", "q6k", "q8_0", "q4_0"].into_iter().chain(int8_kernels) {
        for suffix in ["bf16", "f16"] {
            for rows in 1..=MAX_ROWS {
                let name = format!("matvec_{format}_{suffix}_{rows}");
                assert!(ptx.contains(&format!(".entry {name}(")), "PTX lacks {name}");
            }
        }
    }
    for format in ["q4k", "q6k", "q8_0", "q5_0"] {
        for suffix in ["bf16", "f16"] {
            assert!(ptx.contains(&format!(".entry dequant_{format}_{suffix}(")), "PTX lacks dequant_{format}_{suffix}");
        }
    }
}

/// Every Q4_K/Q6_K/Q8_0/Q5_0 weight dequantized to BF16/F16 equals candle's F32 dequantization
/// rounded once (within one rounding of the output type, elementwise).
#[test]
fn dequantize_16bit_rounds_the_f32_dequantization() {
    let Some(device) = gpu() else { return };
    for (n, k) in [(3, 256), (37, 1024), (130, 2304)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for format in [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0, GgmlDType::Q5_0] {
            let q = QTensor::quantize_onto(&w, format, &device).unwrap();
            let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for (dtype, ulp) in [(DType::BF16, 2f32.powi(-8)), (DType::F16, 2f32.powi(-11))] {
                assert!(dequantize_supported(&q, dtype));
                let got = dequantize_16bit(&q, dtype).unwrap();
                assert_eq!(got.dims(), [n, k]);
                let got: Vec<f32> = got.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= w.abs() * ulp + 1e-6, "{format:?} {n}x{k} {dtype:?} weight {i}: {g} vs {w}");
                }
            }
        }
    }
}

/// Every format, dtype and row count against the F32 product. Q4_K/Q6_K round the activations
/// to int8 (relative error up to 1/254 per value; 1.2 % of the largest output was seen on
/// random inputs), so they get twice the BF16 tolerance; the exact binding of those kernels is
/// `int8_kernels_match_the_rounded_activation_reference`.
#[test]
fn every_format_matches_the_reference() {
    let Some(device) = gpu() else { return };
    let formats = [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0, GgmlDType::Q4_0];
    // (n, k): attention-, MLP- and odd-sized products; 14336 wide takes the int8 kernels with
    // more than 48 KiB of shared memory (the launch's opt-in) at 3..=5 rows, and the float
    // kernels from 6 rows on (the int8 rows no longer fit).
    for (n, k) in [(96, 512), (37, 1024), (256, 2304), (40, 14336)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for format in formats {
            let q = QTensor::quantize_onto(&w, format, &device).unwrap();
            for dtype in [DType::BF16, DType::F16] {
                for rows in 1..=MAX_ROWS {
                    let x = Tensor::randn(0f32, 1.0, (rows, k), &device).unwrap().to_dtype(dtype).unwrap();
                    assert!(supported(&q, &x));
                    let fast = quant_matvec(&q, &x).unwrap();
                    let slow = quant_matvec_reference(&q, &x).unwrap();
                    assert_eq!(fast.dims(), [rows, n]);
                    let diff = relative_diff(&fast, &slow);
                    let int8 = uses_int8_activations(format, rows, k);
                    let tolerance = match (int8, dtype) {
                        (true, _) => 2e-2,
                        (false, DType::BF16) => 1e-2,
                        (false, _) => 2e-3,
                    };
                    assert!(diff <= tolerance, "{format:?} {n}x{k} {dtype:?} rows {rows} int8 {int8}: relative diff {diff}");
                }
            }
        }
    }
}

/// The int8-activation kernels against the F32 product of the same int8-rounded activations:
/// only summation order and the output rounding differ.
#[test]
fn int8_kernels_match_the_rounded_activation_reference() {
    let Some(device) = gpu() else { return };
    // widths of a partial first batch of quantize_rows' loads (768), whole batches (4096) and a
    // partial last one (14,336, one and two rows: 7 and 14 pieces per thread)
    for (n, k) in [(64, 4096), (29, 768), (16, 14336)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for format in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = QTensor::quantize_onto(&w, format, &device).unwrap();
            for rows in [1, 2, 5, 8] {
                if !uses_int8_activations(format, rows, k) {
                    assert!(k > 4096 && rows > 2, "{k} x {rows} rows fit a block's shared memory");
                    continue;
                }
                // A large outlier in one group, zeros in another: scales from 0 to far apart.
                let mut values = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
                values[0][5] = 40.0;
                values[rows - 1][64..96].fill(0.0);
                let x = Tensor::new(values, &device).unwrap().to_dtype(DType::F16).unwrap();
                let fast = quant_matvec(&q, &x).unwrap();
                let rounded = int8_activations_reference(&x).unwrap();
                let slow = quant_matvec_reference(&q, &rounded).unwrap().to_dtype(DType::F16).unwrap();
                let diff = relative_diff(&fast, &slow);
                assert!(diff <= 2e-3, "{format:?} {n}x{k} rows {rows}: relative diff {diff}");
            }
        }
    }
}

/// Q, K, V-like groups (mixed Q4_K/Q6_K, different heights) in one launch equal one launch each.
#[test]
fn a_group_equals_its_matrices_one_by_one() {
    let Some(device) = gpu() else { return };
    let k = 1024;
    let matrix = |n: usize, format| {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize_onto(&w, format, &device).unwrap()
    };
    let (q, kk, v) = (matrix(256, GgmlDType::Q4K), matrix(64, GgmlDType::Q4K), matrix(61, GgmlDType::Q6K));
    for group in [vec![&q, &kk, &v], vec![&v, &q], vec![&kk]] {
        for rows in [1, 3, 8] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &device).unwrap().to_dtype(DType::BF16).unwrap();
            assert!(group_supported(&group, &x));
            let outputs = quant_matvec_group(&group, &x, None).unwrap();
            assert_eq!(outputs.len(), group.len());
            for (w, out) in group.iter().zip(&outputs) {
                let single = quant_matvec(w, &x).unwrap();
                assert_eq!(out.dims(), single.dims());
                let diff = relative_diff(out, &single);
                assert!(diff == 0.0, "{:?} rows {rows}: grouped differs from single by {diff}", w.dtype());
            }
        }
    }
}

/// Gate and up with the activation in one launch equal the grouped products followed by the
/// separate gated_act kernel (which sees the products rounded to the activations' dtype).
#[test]
fn the_gated_launch_equals_products_then_gated_act() {
    use crate::fused::{gated_act, GatedActivation};
    let Some(device) = gpu() else { return };
    let k = 2048;
    let matrix = |n: usize, format| {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize_onto(&w, format, &device).unwrap()
    };
    let (gate, up, up6) = (matrix(203, GgmlDType::Q4K), matrix(203, GgmlDType::Q4K), matrix(203, GgmlDType::Q6K));
    for (g, u) in [(&gate, &up), (&gate, &up6), (&up6, &gate)] {
        for act in [GatedActivation::Silu, GatedActivation::GeluTanh] {
            for dtype in [DType::BF16, DType::F16] {
                for rows in [1, 2, 5, 8] {
                    let x = Tensor::randn(0f32, 1.0, (rows, k), &device).unwrap().to_dtype(dtype).unwrap();
                    assert!(gated_supported(g, u, &x));
                    let fused = quant_matvec_gated(g, u, &x, act, None).unwrap();
                    let [gx, ux]: [Tensor; 2] = quant_matvec_group(&[g, u], &x, None).unwrap().try_into().unwrap();
                    let separate = gated_act(&gx, &ux, act).unwrap();
                    assert_eq!(fused.dims(), [rows, 203]);
                    let diff = relative_diff(&fused, &separate);
                    assert!(diff <= 1e-3, "{:?}/{:?} {act:?} {dtype:?} rows {rows}: relative diff {diff}", g.dtype(), u.dtype());
                }
            }
        }
    }
    let taller = matrix(204, GgmlDType::Q4K);
    let x = Tensor::randn(0f32, 1.0, (1, k), &device).unwrap().to_dtype(DType::BF16).unwrap();
    assert!(!gated_supported(&gate, &taller, &x), "gate and up of different heights");
}

#[test]
fn unsupported_inputs_are_declined() {
    let Some(device) = gpu() else { return };
    let w = Tensor::randn(0f32, 1.0, (64, 512), &Device::Cpu).unwrap();
    let q = QTensor::quantize_onto(&w, GgmlDType::Q4K, &device).unwrap();
    let x = |rows: usize, dtype: DType| Tensor::zeros((rows, 512), dtype, &device).unwrap();
    assert!(!supported(&q, &x(9, DType::BF16)), "more rows than kernels");
    assert!(!supported(&q, &x(1, DType::F32)), "F32 activations");
    let q5 = QTensor::quantize_onto(&w, GgmlDType::Q5K, &device).unwrap();
    assert!(!supported(&q5, &x(1, DType::BF16)), "Q5_K has no kernel");
}

/// The norm that also quantizes its rows (`fused::f32_stream_norm_int8`) returns the same normed
/// rows and sum as the plain norm kernels, and the grouped and gated products fed its int8 rows
/// equal those that quantize the normed rows themselves, bit for bit. Int8 rows of other
/// activations are refused.
#[test]
fn int8_rows_from_the_norm_give_the_same_products_as_quantizing_in_the_blocks() {
    use crate::fused::{self, GatedActivation};
    let Some(device) = gpu() else { return };
    let hidden = 2048;
    let matrix = |n: usize, format| {
        let w = Tensor::randn(0f32, 0.05, (n, hidden), &Device::Cpu).unwrap();
        QTensor::quantize_onto(&w, format, &device).unwrap()
    };
    let (q4, q6) = (matrix(203, GgmlDType::Q4K), matrix(203, GgmlDType::Q6K));
    for dtype in [DType::BF16, DType::F16] {
        let weight = (Tensor::randn(0f32, 0.2, hidden, &device).unwrap() + 1.0).unwrap().to_dtype(dtype).unwrap();
        for rows in [1, 2, 3, 8] {
            let stream = Tensor::randn(0f32, 2.0, (rows, hidden), &device).unwrap();
            let x = Tensor::randn(0f32, 1.0, (rows, hidden), &device).unwrap().to_dtype(dtype).unwrap();
            assert!(fused::int8_rows_supported(&stream, &weight));
            let (normed, sum, int8) = fused::f32_stream_norm_int8(Some(&x), &stream, &weight, 1e-5).unwrap();
            let (plain, plain_sum) = fused::add_rms_norm_f32_residual(&x, &stream, &weight, 1e-5).unwrap();
            assert_eq!(relative_diff(&normed, &plain), 0.0, "{dtype:?} rows {rows}: normed rows");
            assert_eq!(relative_diff(&sum.unwrap(), &plain_sum), 0.0, "{dtype:?} rows {rows}: sums");
            let (first, none, first_int8) = fused::f32_stream_norm_int8(None, &stream, &weight, 1e-5).unwrap();
            assert!(none.is_none());
            let plain_first = fused::rms_norm_f32_stream(&stream, &weight, 1e-5).unwrap();
            assert_eq!(relative_diff(&first, &plain_first), 0.0, "{dtype:?} rows {rows}: first norm");

            for (x, int8) in [(&normed, &int8), (&first, &first_int8)] {
                let with = quant_matvec_group(&[&q4, &q6], x, Some(int8)).unwrap();
                let without = quant_matvec_group(&[&q4, &q6], x, None).unwrap();
                for (a, b) in with.iter().zip(&without) {
                    assert_eq!(relative_diff(a, b), 0.0, "{dtype:?} rows {rows}: grouped products");
                }
                let act = GatedActivation::Silu;
                let with = quant_matvec_gated(&q4, &q6, x, act, Some(int8)).unwrap();
                let without = quant_matvec_gated(&q4, &q6, x, act, None).unwrap();
                assert_eq!(relative_diff(&with, &without), 0.0, "{dtype:?} rows {rows}: gated products");
            }
            let err = quant_matvec_group(&[&q4], &plain, Some(&int8)).unwrap_err().to_string();
            assert!(err.contains("int8 activation rows of tensor"), "{err}");
        }
    }
    let odd = Tensor::zeros((1, 2056), DType::F32, &device).unwrap();
    let odd_weight = Tensor::ones(2056, DType::BF16, &device).unwrap();
    assert!(!fused::int8_rows_supported(&odd, &odd_weight), "a width of partial 256-value blocks");
    assert!(fused::f32_stream_norm_int8(None, &odd, &odd_weight, 1e-5).is_err());
}

/// The rotating Q/K/V launch equals the grouped products then `rope_write_kv`, bit for bit
/// (`fused::qkv_rope_launch::tests::check_rotating_launch`), with Q4_K and Q6_K matrices.
#[test]
fn the_rotating_qkv_launch_equals_the_group_then_rope_write_kv() {
    use crate::fused::qkv_rope_launch::tests::{check_rotating_launch, SHAPE};
    let Some(device) = gpu() else { return };
    let matrix = |n: usize, format| {
        let w = Tensor::randn(0f32, 0.05, (n, SHAPE.hidden), &Device::Cpu).unwrap();
        QTensor::quantize_onto(&w, format, &device).unwrap()
    };
    let q = matrix(SHAPE.heads * SHAPE.head_dim, GgmlDType::Q4K);
    let (k, v) = (matrix(SHAPE.kv_heads * SHAPE.head_dim, GgmlDType::Q6K), matrix(SHAPE.kv_heads * SHAPE.head_dim, GgmlDType::Q4K));
    check_rotating_launch(
        &device,
        |x, target| qkv_rope_supported([&q, &k, &v], x, target),
        |x, target| quant_matvec_qkv_rope([&q, &k, &v], x, None, target),
        |x| quant_matvec_group(&[&q, &k, &v], x, None).unwrap().try_into().unwrap(),
    );
}
