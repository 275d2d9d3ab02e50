//! Binds the fused CUDA kernels to their references on the GPU (F32/BF16/F16) and checks that
//! the source compiles with NVRTC. Without a GPU the device tests print why and pass, unless
//! `HEARTH_REQUIRE_GPU=1`.

use candle_core::{DType, Device, Tensor};

use super::*;

fn gpu() -> Option<Device> {
    crate::test_gpu()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Both paths compute in F32 from the same inputs; the difference is one rounding to `dtype`
/// (relative to values of magnitude up to ~4 here).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 3e-2,
        DType::F16 => 4e-3,
        _ => 1e-5,
    }
}

fn randn(shape: &[usize], device: &Device, dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, device).unwrap().to_dtype(dtype).unwrap()
}

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

#[test]
fn nvrtc_compiles_the_fused_source() {
    let ptx = cuda::MODULE.compile().unwrap_or_else(|e| panic!("NVRTC failed: {e:?}")).to_src();
    for kernel in ["add_rms_norm", "rope_write_kv", "gated_act"] {
        for suffix in ["f32", "bf16", "f16"] {
            assert!(ptx.contains(&format!(".entry {kernel}_{suffix}(")), "PTX lacks {kernel}_{suffix}");
        }
    }
    for suffix in ["bf16", "f16"] {
        for kernel in ["add_rms_norm8", "add_rms_norm_f32_residual", "rms_norm_f32_stream"] {
            assert!(ptx.contains(&format!(".entry {kernel}_{suffix}(")), "PTX lacks {kernel}_{suffix}");
        }
    }
}

/// Rows of the F32-stream norm tests: one to four chunks per thread (640: Gemma 3 270M; 12288
/// and 8200: more than one).
const F32_STREAM_ROWS: [(usize, usize); 4] = [(1, 640), (5, 4096), (2, 12288), (3, 8200)];

/// The F32 residual stream: the sum is the exact F32 sum (the same bits as the reference's F32
/// add), the norm one rounding to the activations' type away from the reference.
#[test]
fn add_rms_norm_f32_residual_matches_reference() {
    let Some(device) = gpu() else { return };
    for dtype in [DType::BF16, DType::F16] {
        for (rows, hidden) in F32_STREAM_ROWS {
            let x = randn(&[rows, hidden], &device, dtype);
            let r = (randn(&[rows, hidden], &device, DType::F32) * 30.0).unwrap();
            let w = randn(&[hidden], &device, dtype);
            let (fast, fast_sum) = add_rms_norm_f32_residual(&x, &r, &w, 1e-6).unwrap();
            let (slow, slow_sum) = add_rms_norm_f32_residual_reference(&x, &r, &w, 1e-6).unwrap();
            assert_eq!((fast.dtype(), fast_sum.dtype()), (dtype, DType::F32));
            assert_eq!(max_abs_diff(&fast_sum, &slow_sum), 0.0, "{dtype:?} {rows}x{hidden} sum");
            let diff = max_abs_diff(&fast, &slow);
            assert!(diff <= tolerance(dtype), "{dtype:?} {rows}x{hidden}: {diff}");
        }
    }
}

/// The first block's norm of the F32 stream: one rounding to the weight's type away from the
/// reference.
#[test]
fn rms_norm_f32_stream_matches_reference() {
    let Some(device) = gpu() else { return };
    for dtype in [DType::BF16, DType::F16] {
        for (rows, hidden) in F32_STREAM_ROWS {
            let stream = (randn(&[rows, hidden], &device, DType::F32) * 30.0).unwrap();
            let w = randn(&[hidden], &device, dtype);
            let fast = rms_norm_f32_stream(&stream, &w, 1e-6).unwrap();
            let slow = rms_norm_f32_stream_reference(&stream, &w, 1e-6).unwrap();
            assert_eq!(fast.dtype(), dtype);
            let diff = max_abs_diff(&fast, &slow);
            assert!(diff <= tolerance(dtype), "{dtype:?} {rows}x{hidden}: {diff}");
        }
    }
}

#[test]
fn add_rms_norm_matches_reference() {
    let Some(device) = gpu() else { return };
    for dtype in DTYPES {
        // 8-element rows take add_rms_norm8 in BF16/F16 (one chunk per thread up to 8192, more
        // beyond), the others the scalar kernel.
        for (rows, hidden) in [(1, 64), (7, 576), (3, 4096), (2, 33), (1, 12288), (2, 8200)] {
            let x = randn(&[rows, hidden], &device, dtype);
            let r = randn(&[rows, hidden], &device, dtype);
            let w = randn(&[hidden], &device, dtype);
            let (fast, fast_sum) = add_rms_norm(&x, &r, &w, 1e-5).unwrap();
            let (slow, slow_sum) = add_rms_norm_reference(&x, &r, &w, 1e-5).unwrap();
            assert_eq!(max_abs_diff(&fast_sum, &slow_sum), 0.0, "{dtype:?} sum");
            let diff = max_abs_diff(&fast, &slow);
            assert!(diff <= tolerance(dtype), "{dtype:?} {rows}x{hidden}: {diff}");
        }
    }
}

#[test]
fn rope_write_kv_matches_reference() {
    let Some(device) = gpu() else { return };
    let (num_blocks, block_size) = (6, 4);
    for dtype in DTYPES {
        for (heads, kv_heads, head_dim) in [(8, 2, 64), (4, 4, 128), (3, 1, 256)] {
            let tokens = 5;
            let q = randn(&[tokens, heads, head_dim], &device, dtype);
            let k = randn(&[tokens, kv_heads, head_dim], &device, dtype);
            let v = randn(&[tokens, kv_heads, head_dim], &device, dtype);
            let angles = Tensor::arange(0f32, (40 * head_dim / 2) as f32, &device).unwrap().affine(0.013, 0.0).unwrap();
            let angles = angles.reshape((40, head_dim / 2)).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let positions = Tensor::new(&[0u32, 7, 8, 39, 3], &device).unwrap();
            let slots = Tensor::new(&[5u32, 0, 23, 12, 6], &device).unwrap();
            let rope = RopeKvInputs { cos: &cos, sin: &sin, positions: &positions, slot_mapping: &slots };
            let pool = || Tensor::zeros((num_blocks, block_size, kv_heads, head_dim), dtype, &device).unwrap();
            let (fast_k, fast_v, slow_k, slow_v) = (pool(), pool(), pool(), pool());
            let fast = rope_write_kv(&q, &k, &v, &rope, &fast_k, &fast_v).unwrap();
            let slow = rope_write_kv_reference(&q, &k, &v, &rope, &slow_k, &slow_v).unwrap();
            let diffs = [max_abs_diff(&fast, &slow), max_abs_diff(&fast_k, &slow_k), max_abs_diff(&fast_v, &slow_v)];
            assert!(diffs.iter().all(|&d| d <= tolerance(dtype)), "{dtype:?} {heads}/{kv_heads}x{head_dim}: {diffs:?}");
            assert!(max_abs_diff(&fast_k, &pool()) > 0.0, "nothing was written");
        }
    }
}

#[test]
fn gated_act_matches_reference_on_strided_rows() {
    let Some(device) = gpu() else { return };
    for dtype in DTYPES {
        for act in [GatedActivation::Silu, GatedActivation::GeluTanh] {
            // Views of one fused [rows, 2 * width] matrix, as Phi-3's gate_up gives.
            let both = randn(&[3, 2 * 1000], &device, dtype);
            let (gate, up) = (both.narrow(1, 0, 1000).unwrap(), both.narrow(1, 1000, 1000).unwrap());
            let diff = max_abs_diff(&gated_act(&gate, &up, act).unwrap(), &gated_act_reference(&gate, &up, act).unwrap());
            assert!(diff <= tolerance(dtype), "{dtype:?} {act:?}: {diff}");
        }
    }
}
