//! Binds the dense matvec kernels to the F32 product on the GPU for BF16 and F16, 1..=8 rows and
//! real models' shapes; checks that the source compiles with NVRTC. Without a GPU the device
//! tests print why and pass, unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::relative_diff;

#[test]
fn nvrtc_compiles_the_dense_matvec_source() {
    let ptx = cuda::MODULE.compile().unwrap_or_else(|e| panic!("NVRTC failed: {e:?}")).to_src();
    for suffix in ["bf16", "f16"] {
        for rows in 1..=MAX_ROWS {
            for name in [format!("dense_matvec_{suffix}_{rows}"), format!("dense_matvec_group_{suffix}_{rows}")] {
                assert!(ptx.contains(&format!(".entry {name}(")), "PTX lacks {name}");
            }
        }
    }
}

#[test]
fn every_dtype_and_row_count_matches_the_reference() {
    let Some(device) = crate::test_gpu() else { return };
    // (n, k): odd heights, a width that is not a multiple of the 32 x 4 pieces a warp takes per
    // iteration, and an MLP-sized one.
    for (n, k) in [(37, 1000), (96, 512), (64, 14336)] {
        for dtype in [DType::BF16, DType::F16] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &device).unwrap().to_dtype(dtype).unwrap();
            for rows in 1..=MAX_ROWS {
                let x = Tensor::randn(0f32, 1.0, (rows, k), &device).unwrap().to_dtype(dtype).unwrap();
                assert!(supported(&w, &x));
                let fast = dense_matvec(&w, &x).unwrap();
                let slow = dense_matvec_reference(&w, &x).unwrap();
                assert_eq!(fast.dims(), [rows, n]);
                let diff = relative_diff(&fast, &slow);
                let tolerance = if dtype == DType::BF16 { 1e-2 } else { 2e-3 };
                assert!(diff <= tolerance, "{n}x{k} {dtype:?} rows {rows}: relative diff {diff}");
            }
        }
    }
}

#[test]
fn a_group_and_the_gated_launch_equal_the_single_products() {
    use crate::fused::{gated_act, GatedActivation};
    let Some(device) = crate::test_gpu() else { return };
    let k = 1000;
    for dtype in [DType::BF16, DType::F16] {
        let matrix = |n: usize| Tensor::randn(0f32, 0.05, (n, k), &device).unwrap().to_dtype(dtype).unwrap();
        let (q, kk, v) = (matrix(96), matrix(37), matrix(64));
        let (gate, up) = (matrix(77), matrix(77));
        for rows in 1..=MAX_ROWS {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &device).unwrap().to_dtype(dtype).unwrap();
            assert!(group_supported(&[&q, &kk, &v], &x));
            let grouped = dense_matvec_group(&[&q, &kk, &v], &x).unwrap();
            for (y, w) in grouped.iter().zip([&q, &kk, &v]) {
                let single = dense_matvec(w, &x).unwrap();
                assert_eq!(y.dims(), single.dims());
                assert_eq!(relative_diff(y, &single), 0.0, "{dtype:?} rows {rows}: {:?} in a group", w.dims());
            }
            for act in [GatedActivation::Silu, GatedActivation::GeluTanh] {
                assert!(gated_supported(&gate, &up, &x));
                let fused = dense_matvec_gated(&gate, &up, &x, act).unwrap();
                let separate = gated_act(&dense_matvec(&gate, &x).unwrap(), &dense_matvec(&up, &x).unwrap(), act).unwrap();
                assert_eq!(fused.dims(), [rows, 77]);
                assert_eq!(relative_diff(&fused, &separate), 0.0, "{dtype:?} rows {rows} {act:?}: gated launch");
            }
        }
        let x = Tensor::randn(0f32, 1.0, (1, k), &device).unwrap().to_dtype(dtype).unwrap();
        assert!(!gated_supported(&gate, &q, &x), "gate and up of different heights");
        assert!(!group_supported(&[&q, &kk, &v, &gate], &x), "more matrices than a launch takes");
        let narrow = Tensor::zeros((8, 512), dtype, &device).unwrap();
        assert!(!group_supported(&[&q, &narrow], &x), "matrices of different widths");
    }
}

#[test]
fn unsupported_inputs_are_declined() {
    let Some(device) = crate::test_gpu() else { return };
    let w = Tensor::zeros((64, 512), DType::BF16, &device).unwrap();
    let x = |rows: usize, dtype: DType| Tensor::zeros((rows, 512), dtype, &device).unwrap();
    assert!(!supported(&w, &x(9, DType::BF16)), "more rows than kernels");
    assert!(!supported(&w, &x(1, DType::F16)), "mixed dtypes");
    let offset = Tensor::zeros((1, 516), DType::BF16, &device).unwrap().narrow(1, 4, 512).unwrap();
    assert!(!supported(&w, &offset), "activations off a 16-byte boundary");
    assert!(!supported(&w, &x(1, DType::BF16).to_device(&Device::Cpu).unwrap()), "CPU activations");
}

/// The rotating Q/K/V launch equals the grouped products then `rope_write_kv`, bit for bit
/// (`fused::qkv_rope_launch::tests::check_rotating_launch`).
#[test]
fn the_rotating_qkv_launch_equals_the_group_then_rope_write_kv() {
    use crate::fused::qkv_rope_launch::tests::{check_rotating_launch, SHAPE};
    let Some(device) = crate::test_gpu() else { return };
    let matrices = |dtype: DType| {
        let matrix = |n: usize| Tensor::randn(0f32, 0.05, (n, SHAPE.hidden), &device).unwrap().to_dtype(dtype).unwrap();
        [matrix(SHAPE.heads * SHAPE.head_dim), matrix(SHAPE.kv_heads * SHAPE.head_dim), matrix(SHAPE.kv_heads * SHAPE.head_dim)]
    };
    let (bf16, f16) = (matrices(DType::BF16), matrices(DType::F16));
    let of = |x: &Tensor| if x.dtype() == DType::BF16 { &bf16 } else { &f16 };
    check_rotating_launch(
        &device,
        |x, target| {
            let [q, k, v] = of(x);
            qkv_rope_supported([q, k, v], x, target)
        },
        |x, target| {
            let [q, k, v] = of(x);
            dense_matvec_qkv_rope([q, k, v], x, target)
        },
        |x| {
            let [q, k, v] = of(x);
            dense_matvec_group(&[q, k, v], x).unwrap().try_into().unwrap()
        },
    );
}
