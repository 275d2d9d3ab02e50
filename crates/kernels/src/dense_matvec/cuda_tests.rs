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

/// The rotating Q/K/V launch gives the same rotated q, K pool and V pool as the grouped products
/// then `rope_write_kv`, bit for bit, for BF16 and F16 and 1, 2, 3 and 8 rows; shapes it cannot
/// rotate are declined and a pool of the wrong shape is refused.
#[test]
fn the_rotating_qkv_launch_equals_the_group_then_rope_write_kv() {
    use crate::fused::{self, QkvRope, RopeKvInputs};
    let Some(device) = crate::test_gpu() else { return };
    let (hidden, head_dim, heads, kv_heads, max_positions) = (512, 64, 4, 2, 64);
    let cos = Tensor::randn(0f32, 1.0, (max_positions, head_dim / 2), &device).unwrap();
    let sin = Tensor::randn(0f32, 1.0, (max_positions, head_dim / 2), &device).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let matrix = |n: usize| Tensor::randn(0f32, 0.05, (n, hidden), &device).unwrap().to_dtype(dtype).unwrap();
        let (q, k, v) = (matrix(heads * head_dim), matrix(kv_heads * head_dim), matrix(kv_heads * head_dim));
        for rows in [1, 2, 3, 8] {
            let what = format!("{dtype:?} rows {rows}");
            let x = Tensor::randn(0f32, 1.0, (rows, hidden), &device).unwrap().to_dtype(dtype).unwrap();
            let positions: Vec<u32> = (0..rows as u32).map(|r| (7 * r + 3) % max_positions as u32).collect();
            let slots: Vec<u32> = (0..rows as u32).map(|r| 5 * r + 1).collect();
            let (positions, slots) = (Tensor::new(positions, &device).unwrap(), Tensor::new(slots, &device).unwrap());
            let rope = RopeKvInputs { cos: &cos, sin: &sin, positions: &positions, slot_mapping: &slots };
            let pool = || Tensor::zeros((4, 16, kv_heads, head_dim), dtype, &device).unwrap();
            let (k_fused, v_fused, k_apart, v_apart) = (pool(), pool(), pool(), pool());

            let target = QkvRope { rope: &rope, k_cache: &k_fused, v_cache: &v_fused, head_dim };
            assert!(qkv_rope_supported([&q, &k, &v], &x, &target), "{what}");
            let fused_q = dense_matvec_qkv_rope([&q, &k, &v], &x, &target).unwrap();
            let [gq, gk, gv]: [Tensor; 3] = dense_matvec_group(&[&q, &k, &v], &x).unwrap().try_into().unwrap();
            let heads_of = |t: &Tensor, n: usize| t.reshape((rows, n, head_dim)).unwrap();
            let apart_q = fused::rope_write_kv(&heads_of(&gq, heads), &heads_of(&gk, kv_heads), &heads_of(&gv, kv_heads), &rope, &k_apart, &v_apart).unwrap();
            assert_eq!(fused_q.dims(), [rows, heads, head_dim]);
            assert_eq!(relative_diff(&fused_q, &apart_q), 0.0, "{what}: rotated q");
            assert_eq!(relative_diff(&k_fused, &k_apart), 0.0, "{what}: k in the pool");
            assert_eq!(relative_diff(&v_fused, &v_apart), 0.0, "{what}: v in the pool");
            let written = |t: &Tensor| t.abs().unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
            assert!(written(&k_fused) > 0.0 && written(&v_fused) > 0.0, "{what}: k and v written");
        }
        let x = Tensor::randn(0f32, 1.0, (1, hidden), &device).unwrap().to_dtype(dtype).unwrap();
        let (positions, slots) = (Tensor::new(&[0u32], &device).unwrap(), Tensor::new(&[0u32], &device).unwrap());
        let rope = RopeKvInputs { cos: &cos, sin: &sin, positions: &positions, slot_mapping: &slots };
        let pool = Tensor::zeros((4, 16, kv_heads, head_dim), dtype, &device).unwrap();
        let target = |head_dim| QkvRope { rope: &rope, k_cache: &pool, v_cache: &pool, head_dim };
        assert!(!qkv_rope_supported([&q, &k, &v], &x, &target(12)), "heads of a width that is not a multiple of 8");
        assert!(!qkv_rope_supported([&q, &k, &q], &x, &target(head_dim)), "K and V of different heights");
        let other_dtype = Tensor::zeros((4, 16, kv_heads, head_dim), DType::F32, &device).unwrap();
        let f32_pool = QkvRope { rope: &rope, k_cache: &other_dtype, v_cache: &other_dtype, head_dim };
        assert!(!qkv_rope_supported([&q, &k, &v], &x, &f32_pool), "a pool of another dtype");
        let wrong_pool = Tensor::zeros((4, 16, kv_heads, head_dim / 2), dtype, &device).unwrap();
        let wrong = QkvRope { rope: &rope, k_cache: &wrong_pool, v_cache: &wrong_pool, head_dim };
        let err = dense_matvec_qkv_rope([&q, &k, &v], &x, &wrong).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
