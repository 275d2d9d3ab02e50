//! Binds the fast quantized matmul to candle's own `QMatMul::forward` (same Q8 activation
//! quantization: tight tolerance) and to the dequantize + f32 matmul reference (loose tolerance:
//! the Q8 rounding of activations), and checks the building blocks bit for bit: activation
//! quantization against candle's Q8_0/Q8_1 bytes, SIMD tiles against the scalar block dot,
//! software f16 conversions against F16C.
//!
//! Q8_0 is bound to candle's `vec_dot_q8_0_q8_0` (through `GgmlType::vec_dot`) rather than to
//! `QMatMul`: on AVX512-VNNI CPUs candle's `QMatMul` repacks Q8_0 matrices whose width is a
//! multiple of 256 and quantizes activations per 256 values (Q8K) instead, a different function.

use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use proptest::prelude::*;

use super::format::{self, ActivationKind, QK};
use super::*;

const FORMATS: [GgmlDType; 4] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0];
/// Max |fast − candle QMatMul| relative to max |candle output|: both quantize activations the
/// same way, so only f32 summation order differs.
const TOL_VS_CANDLE: f32 = 1e-4;
/// Max |fast − f32 reference| relative to max |reference output|: activations are rounded to
/// 8 bits per 32-value block (≈0.4 % per value), weights are identical.
const TOL_VS_REFERENCE: f32 = 2e-2;

/// Deterministic standard-normal-ish values (xorshift + sum of uniforms), so failures reproduce.
fn random_values(num_values: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..num_values).map(|_| (0..4).map(|_| uniform()).sum::<f32>() - 2.0).collect()
}

fn random_tensor(dims: &[usize], seed: u64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(random_values(n, seed), dims, &Device::Cpu).unwrap()
}

/// (max abs diff, max abs of `expected`, index of the max diff)
fn compare(actual: &Tensor, expected: &Tensor) -> (f32, f32, usize) {
    let a = actual.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let e = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), e.len());
    let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (idx, diff) = a.iter().zip(&e).map(|(x, y)| (x - y).abs()).enumerate().fold((0, 0f32), |best, (i, d)| {
        if d > best.1 || d.is_nan() {
            (i, d)
        } else {
            best
        }
    });
    (diff, scale, idx)
}

/// candle's own Q8_0 product, one output at a time: activations through `BlockQ8_0::from_float`,
/// each weight row through `BlockQ8_0::vec_dot` (`vec_dot_q8_0_q8_0`). `[num_tokens, num_rows]`.
fn candle_q8_0_vec_dot(q: &QTensor, x: &Tensor) -> Tensor {
    assert_eq!(q.dtype(), GgmlDType::Q8_0);
    let (num_rows, num_cols) = q.shape().dims2().unwrap();
    let bytes = q.data().unwrap();
    let num_blocks = num_cols / QK;
    let mut weights = vec![BlockQ8_0::zeros(); num_rows * num_blocks];
    assert_eq!(bytes.len(), weights.len() * std::mem::size_of::<BlockQ8_0>());
    // SAFETY: `BlockQ8_0` is `repr(C)` (f16 d, [i8; 32] qs; 34 bytes, asserted by candle), and the
    // destination holds exactly `bytes.len()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), weights.as_mut_ptr() as *mut u8, bytes.len()) };
    let x = x.flatten_to(x.rank() - 2).unwrap().to_vec2::<f32>().unwrap();
    let mut out = Vec::with_capacity(x.len() * num_rows);
    for row in &x {
        let mut acts = vec![BlockQ8_0::zeros(); num_blocks];
        BlockQ8_0::from_float(row, &mut acts);
        for w in weights.chunks_exact(num_blocks) {
            out.push(BlockQ8_0::vec_dot(num_cols, w, &acts));
        }
    }
    Tensor::from_vec(out, (x.len(), num_rows), &Device::Cpu).unwrap()
}

/// candle's product for `dtype`: `QMatMul::forward`, or for Q8_0 its `vec_dot` (see the module
/// docs).
fn candle_product(q: &Arc<QTensor>, x: &Tensor) -> Tensor {
    if q.dtype() == GgmlDType::Q8_0 {
        return candle_q8_0_vec_dot(q, x);
    }
    QMatMul::from_arc(q.clone()).unwrap().forward(x).unwrap()
}

#[test]
fn fast_matches_candle_qmatmul_and_f32_reference_for_every_format_and_shape() {
    let shapes = [(576, 1536), (1536, 576), (4096, 576)]; // [num_rows (out), num_cols (in)]
    let (mut worst_vs_candle, mut worst_vs_reference) = (0f32, 0f32);
    for (seed, &dtype) in FORMATS.iter().enumerate() {
        for &(num_rows, num_cols) in &shapes {
            let w = random_tensor(&[num_rows, num_cols], seed as u64 + 100);
            let q = QTensor::quantize(&w, dtype).unwrap();
            let fast = QuantizedMatrix::from_qtensor(&q).unwrap().unwrap();
            let candle = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            for num_tokens in [1, 3, 13, 17] {
                // 13 and 17 cover the 8- and 4-token tiles
                let x = random_tensor(&[num_tokens, num_cols], 7 * num_tokens as u64 + seed as u64);
                let y = fast.forward(&x).unwrap();
                assert_eq!(y.dims(), &[num_tokens, num_rows]);
                let case = format!("{dtype:?} [{num_rows}, {num_cols}] × {num_tokens} tokens");

                let expected =
                    if dtype == GgmlDType::Q8_0 { candle_q8_0_vec_dot(&q, &x) } else { candle.forward(&x).unwrap() };
                let (diff, scale, idx) = compare(&y, &expected);
                worst_vs_candle = worst_vs_candle.max(diff / scale);
                assert!(
                    diff <= TOL_VS_CANDLE * scale,
                    "{case}: vs candle QMatMul max abs diff {diff} at {idx} > {TOL_VS_CANDLE} × {scale}"
                );
                let (diff, scale, idx) = compare(&y, &forward_reference(&q, &x).unwrap());
                worst_vs_reference = worst_vs_reference.max(diff / scale);
                assert!(
                    diff <= TOL_VS_REFERENCE * scale,
                    "{case}: vs f32 reference max abs diff {diff} at {idx} > {TOL_VS_REFERENCE} × {scale}"
                );
            }
        }
    }
    println!("worst max|diff| / max|expected|: vs candle QMatMul {worst_vs_candle:e}, vs f32 reference {worst_vs_reference:e}");
}

#[test]
fn all_zero_and_tiny_activation_blocks_match_candle() {
    let (num_rows, num_cols) = (40, 128);
    for &dtype in &FORMATS {
        let w = random_tensor(&[num_rows, num_cols], 3);
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let fast = QuantizedMatrix::from_qtensor(&q).unwrap().unwrap();
        let mut x = random_values(5 * num_cols, 4);
        x[..2 * QK].iter_mut().for_each(|v| *v = 0.0); // token 0: two zero blocks (d = 0)
        x[num_cols..num_cols + QK].iter_mut().for_each(|v| *v *= 1e-6);
        x[2 * num_cols + 5] = 1e4; // one outlier dominating its block
        let x = Tensor::from_vec(x, (5, num_cols), &Device::Cpu).unwrap();
        let expected = candle_product(&q, &x);
        let (diff, scale, idx) = compare(&fast.forward(&x).unwrap(), &expected);
        assert!(diff <= TOL_VS_CANDLE * scale, "{dtype:?}: max abs diff {diff} at {idx} > {TOL_VS_CANDLE} × {scale}");
    }
}

#[test]
fn leading_dims_are_flattened_and_restored_and_dtype_is_kept() {
    let (num_rows, num_cols) = (48, 64);
    let w = random_tensor(&[num_rows, num_cols], 11);
    let fast = QuantizedMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
    let x = random_tensor(&[2, 3, num_cols], 12);
    let y = fast.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 3, num_rows]);
    let flat = fast.forward(&x.reshape((6, num_cols)).unwrap()).unwrap();
    let (diff, _, _) = compare(&y.reshape((6, num_rows)).unwrap(), &flat);
    assert_eq!(diff, 0.0);
    let one = fast.forward(&x.get(0).unwrap().get(0).unwrap()).unwrap(); // [num_cols] -> [num_rows]
    assert_eq!(one.dims(), &[num_rows]);
    let y16 = fast.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
    assert_eq!(y16.dtype(), DType::BF16);
    assert_eq!(y16.dims(), &[2, 3, num_rows]);
    // A transposed (non-contiguous) input gives the same result as its contiguous copy.
    let xt = random_tensor(&[num_cols, 4], 13).t().unwrap();
    let (diff, _, _) = compare(&fast.forward(&xt).unwrap(), &fast.forward(&xt.contiguous().unwrap()).unwrap());
    assert_eq!(diff, 0.0);
}

#[test]
fn unsupported_dtypes_return_none() {
    let w = random_tensor(&[8, 256], 5);
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::F32, GgmlDType::F16] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        assert!(!QuantizedMatrix::supports(dtype), "{dtype:?}");
        assert!(QuantizedMatrix::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
        assert!(QuantizedMatrix::from_shared_qtensor(Arc::new(q)).unwrap().is_none(), "{dtype:?}");
    }
    assert!(FORMATS.iter().all(|&d| QuantizedMatrix::supports(d)));
}

#[test]
fn mismatched_input_width_is_an_error_not_a_panic() {
    let w = random_tensor(&[16, 64], 6);
    let fast = QuantizedMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q5_1).unwrap()).unwrap().unwrap();
    let err = fast.forward(&random_tensor(&[2, 96], 7)).unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
    assert!(fast.forward(&Tensor::new(1f32, &Device::Cpu).unwrap()).is_err());
    let mut out = vec![0f32; 16];
    assert!(fast.forward_f32(&[0.0; 65], &mut out).is_err());
    assert!(fast.forward_f32(&[0.0; 128], &mut out).is_err()); // 2 tokens need 32 outputs
    assert!(fast.forward_f32(&[0.0; 64], &mut out).is_ok());
}

#[test]
fn weight_bytes_of_the_wrong_size_or_width_are_rejected() {
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q4_1, 2, 64, vec![0; 2 * 2 * 20]).is_ok());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q4_1, 2, 64, vec![0; 2 * 2 * 20 - 1]).is_err());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q5_0, 2, 48, vec![0; 66]).is_err());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q5_1, 0, 0, vec![]).is_err());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q8_0, 2, 64, vec![0; 2 * 2 * 34]).is_ok());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q8_0, 2, 64, vec![0; 2 * 2 * 34 + 1]).is_err());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q4_0, 2, 64, vec![0; 2 * 2 * 18]).is_err());
    assert!(QuantizedMatrix::from_bytes(GgmlDType::Q5_1, usize::MAX, 64, vec![]).is_err());
}

/// Parses candle's Q8_0 (`d, qs`) or Q8_1 (`d, s, qs`) blocks into (quants, [d, s]).
fn candle_activation_blocks(xs: &[f32], kind: ActivationKind) -> (Vec<i8>, Vec<[f32; 2]>) {
    let (dtype, header) = match kind {
        ActivationKind::Q8_0 => (GgmlDType::Q8_0, 2),
        ActivationKind::Q8_1 => (GgmlDType::Q8_1, 4),
    };
    let t = Tensor::from_vec(xs.to_vec(), (1, xs.len()), &Device::Cpu).unwrap();
    let bytes = QTensor::quantize(&t, dtype).unwrap().data().unwrap().into_owned();
    let mut qs = Vec::new();
    let mut ds = Vec::new();
    for block in bytes.chunks_exact(header + QK) {
        let d = format::f16_to_f32_soft(u16::from_le_bytes([block[0], block[1]]));
        let s = match kind {
            ActivationKind::Q8_0 => f32::NAN,
            ActivationKind::Q8_1 => format::f16_to_f32_soft(u16::from_le_bytes([block[2], block[3]])),
        };
        qs.extend(block[header..].iter().map(|&b| b as i8));
        ds.push([d, s]);
    }
    (qs, ds)
}

#[test]
fn activation_quantization_is_bit_identical_to_candle() {
    let mut xs = random_values(64 * QK, 21);
    xs[..QK].iter_mut().for_each(|v| *v = 0.0);
    // Exact ties after scaling: block amax 127 makes d = 1, so k + 0.5 rounds away from zero.
    for (j, v) in xs[QK..2 * QK].iter_mut().enumerate() {
        *v = if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 };
    }
    for kind in [ActivationKind::Q8_0, ActivationKind::Q8_1] {
        let (want_qs, want_ds) = candle_activation_blocks(&xs, kind);
        let num_tokens = 4;
        let acts = matmul::quantize_activations(kind, &xs, num_tokens, xs.len() / QK / num_tokens);
        assert_eq!(acts.qs, want_qs, "{kind:?} quants");
        let mut scalar_qs = vec![0i8; xs.len()];
        let mut scalar_ds = vec![[0f32; 2]; xs.len() / QK];
        format::quantize_row_scalar(kind, &xs, &mut scalar_qs, &mut scalar_ds);
        assert_eq!(acts.qs, scalar_qs, "{kind:?} quants, scalar twin");
        assert_eq!(acts.ds, scalar_ds, "{kind:?} scales, scalar twin");
        for (block_idx, (got, want)) in acts.ds.iter().zip(&want_ds).enumerate() {
            assert_eq!(got[0].to_bits(), want[0].to_bits(), "{kind:?} d of block {block_idx}");
            if kind == ActivationKind::Q8_1 {
                assert_eq!(got[1].to_bits(), want[1].to_bits(), "{kind:?} s of block {block_idx}");
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
#[test]
fn simd_tiles_match_the_scalar_block_dot_on_random_bytes() {
    use super::avx2::{dot_tile, dot_token_tile, SimdFormat, TileArgs, TokenTileArgs};
    use super::format::{dot_row_scalar, Q4_1, Q5_0, Q5_1, Q8_0};

    fn check<F: SimdFormat>() {
        let num_blocks = 7;
        let row_bytes = num_blocks * F::BLOCK_BYTES;
        // Random bytes exercise every nibble and high-bit pattern; scales are then overwritten
        // with sane f16 values (random bits would include NaN/inf).
        let mut weights: Vec<u8> = random_values(3 * row_bytes, 31).iter().map(|v| (v.to_bits() >> 7) as u8).collect();
        for (i, block) in weights.chunks_exact_mut(F::BLOCK_BYTES).enumerate() {
            block[..2].copy_from_slice(&format::f32_to_f16_soft(0.01 + i as f32 * 1e-3).to_le_bytes());
            if F::ACTIVATION == ActivationKind::Q8_1 {
                // Q4_1/Q5_1: the f16 minimum follows d.
                block[2..4].copy_from_slice(&format::f32_to_f16_soft(-0.1 - i as f32 * 1e-2).to_le_bytes());
            }
        }
        let num_tokens = 8;
        let mut xs = random_values(num_tokens * num_blocks * QK, 32);
        // Token 1, block 0: quants at ±127 (the extremes `maddubs` sees, with Q8_0's −128).
        xs[num_blocks * QK..num_blocks * QK + QK].iter_mut().enumerate().for_each(|(j, v)| {
            *v = if j % 2 == 0 { 3.0 } else { -3.0 };
        });
        let acts = matmul::quantize_activations(F::ACTIVATION, &xs, num_tokens, num_blocks);
        let scalar = |t: usize, r: usize| {
            dot_row_scalar::<F>(
                &weights[r * row_bytes..(r + 1) * row_bytes],
                &acts.qs[t * num_blocks * QK..(t + 1) * num_blocks * QK],
                &acts.ds[t * num_blocks..(t + 1) * num_blocks],
            )
        };
        let name = std::any::type_name::<F>();
        let args = TileArgs { weights: &weights, row_bytes, act_qs: &acts.qs, act_ds: &acts.ds, num_blocks };
        // SAFETY: this test only exists when AVX2, FMA and F16C are enabled for the whole build.
        let tile = unsafe { dot_tile::<F, 3, 2>(&args) };
        for (t, row) in tile.iter().enumerate() {
            for (r, &got) in row.iter().enumerate() {
                let want = scalar(t, r);
                let tol = 1e-5 * want.abs().max(1.0);
                assert!((got - want).abs() <= tol, "{name} token {t} row {r}: simd {got} vs scalar {want}");
            }
        }
        for r in 0..3 {
            let args = TokenTileArgs {
                row: &weights[r * row_bytes..(r + 1) * row_bytes],
                act_qs: &acts.qs,
                act_ds: &acts.ds,
                s_by_block: &acts.s_by_block,
                num_tokens,
                num_blocks,
            };
            // SAFETY: as above.
            let (eight, four) = unsafe { (dot_token_tile::<F, 8>(&args), dot_token_tile::<F, 4>(&args)) };
            for (t, &got) in eight.iter().chain(&four).enumerate() {
                let want = scalar(t % 8, r);
                let tol = 1e-5 * want.abs().max(1.0);
                assert!((got - want).abs() <= tol, "{name} token tile, token {t} row {r}: simd {got} vs scalar {want}");
            }
        }
    }
    check::<Q4_1>();
    check::<Q5_0>();
    check::<Q5_1>();
    check::<Q8_0>();
}

/// Q8_0 blocks holding the extreme quants (−128, −127, 127) against activations whose quants
/// are ±127: the SIMD sign trick must neither saturate nor lose the −128 (|−128| = 128 as an
/// unsigned byte), and agree with the scalar definition and with candle's `vec_dot_q8_0_q8_0`.
#[test]
fn q8_0_extreme_quants_match_the_scalar_definition_and_candle() {
    let (num_rows, num_cols) = (24, 5 * QK);
    let num_blocks = num_cols / QK;
    let mut bytes = Vec::new();
    for row in 0..num_rows {
        for block in 0..num_blocks {
            bytes.extend_from_slice(&format::f32_to_f16_soft(0.02 + 1e-3 * (row + block) as f32).to_le_bytes());
            for j in 0..QK {
                let q: i8 = match (row + j + block) % 4 {
                    0 => -128,
                    1 => 127,
                    2 => -127,
                    _ => (j as i8) - 16,
                };
                bytes.push(q as u8);
            }
        }
    }
    let q = candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &bytes, vec![num_rows, num_cols], &Device::Cpu)
        .unwrap();
    let fast = QuantizedMatrix::from_bytes(GgmlDType::Q8_0, num_rows, num_cols, bytes.clone()).unwrap();
    for num_tokens in [1, 4, 8, 13] {
        // Activations of one sign per row of blocks or alternating: quants ±127 in every block.
        let xs: Vec<f32> = (0..num_tokens * num_cols)
            .map(|i| match (i / num_cols) % 3 {
                0 => 1.5,
                1 => -2.0,
                _ => if i % 2 == 0 { 0.75 } else { -0.75 },
            })
            .collect();
        let acts = matmul::quantize_activations(ActivationKind::Q8_0, &xs, num_tokens, num_blocks);
        assert!(acts.qs.iter().all(|&v| v.abs() == 127));
        let mut out = vec![f32::NAN; num_tokens * num_rows];
        fast.forward_f32(&xs, &mut out).unwrap();
        let x = Tensor::from_vec(xs, (num_tokens, num_cols), &Device::Cpu).unwrap();
        let candle = candle_q8_0_vec_dot(&q, &x).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for t in 0..num_tokens {
            for r in 0..num_rows {
                let want = format::dot_row_scalar::<format::Q8_0>(
                    &bytes[r * num_blocks * 34..(r + 1) * num_blocks * 34],
                    &acts.qs[t * num_cols..(t + 1) * num_cols],
                    &acts.ds[t * num_blocks..(t + 1) * num_blocks],
                );
                let got = out[t * num_rows + r];
                let tol = 1e-5 * want.abs().max(1.0);
                assert!((got - want).abs() <= tol, "{num_tokens} tokens, token {t} row {r}: fast {got} vs scalar {want}");
                let c = candle[t * num_rows + r];
                assert!((c - want).abs() <= tol, "token {t} row {r}: candle {c} vs scalar {want}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random formats and shapes (ragged row and token tiles, widths of 1 to 40 blocks): the fast
    /// path agrees with candle, and a matrix sharing a `QTensor`'s bytes gives the same bits as
    /// one holding a copy.
    #[test]
    fn random_shapes_match_candle_and_shared_equals_owned(
        format_idx in 0..FORMATS.len(),
        num_rows in 1usize..80,
        num_blocks in 1usize..40,
        num_tokens in 1usize..20,
        seed in 0u64..1_000_000,
    ) {
        let dtype = FORMATS[format_idx];
        // candle's scalar Q4_1/Q5_0/Q5_1 dots debug-assert an even block count; Q8_0's does not.
        let num_blocks = if dtype == GgmlDType::Q8_0 { num_blocks } else { num_blocks.next_multiple_of(2) };
        let num_cols = num_blocks * QK;
        let w = random_tensor(&[num_rows, num_cols], seed);
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        let owned = QuantizedMatrix::from_qtensor(&q).unwrap().unwrap();
        let shared = QuantizedMatrix::from_shared_qtensor(q.clone()).unwrap().unwrap();
        prop_assert_eq!(shared.size_in_bytes(), owned.size_in_bytes());
        let x = random_tensor(&[num_tokens, num_cols], seed + 1);
        let y = owned.forward(&x).unwrap();
        let (diff, _, _) = compare(&shared.forward(&x).unwrap(), &y);
        prop_assert_eq!(diff, 0.0);
        let (diff, scale, idx) = compare(&y, &candle_product(&q, &x));
        prop_assert!(
            diff <= TOL_VS_CANDLE * scale,
            "{:?} [{}, {}] × {}: max abs diff {} at {} > {} × {}", dtype, num_rows, num_cols, num_tokens, diff, idx, TOL_VS_CANDLE, scale
        );
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
#[test]
fn software_f16_conversions_match_f16c() {
    for bits in 0..=u16::MAX {
        let (soft, hard) = (format::f16_to_f32_soft(bits), format::f16_to_f32(bits));
        assert!(
            soft.to_bits() == hard.to_bits() || (soft.is_nan() && hard.is_nan()),
            "f16 {bits:#06x}: {soft} vs {hard}"
        );
    }
    let mut state = 0x1234_5678u32;
    let specials = [0.0f32, -0.0, 65504.0, 65520.0, 1e-8, 2.98e-8, 5.96e-8, 6.1e-5, f32::INFINITY, f32::NAN];
    let randoms = (0..200_000).map(|_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // Biased f32 exponents 100..=145: f16 subnormals, normals and overflow.
        let exponent = 100 + (state >> 23) % 46;
        f32::from_bits((state & 0x8000_0000) | (exponent << 23) | (state & 0x007F_FFFF))
    });
    for value in specials.into_iter().chain(randoms) {
        let (soft, hard) = (format::f32_to_f16_soft(value), format::f32_to_f16(value));
        let both_nan = value.is_nan() && (soft & 0x7C00) == 0x7C00 && (hard & 0x7C00) == 0x7C00;
        assert!(
            soft == hard || both_nan,
            "f32 {value:e} ({:#010x}): soft {soft:#06x} vs f16c {hard:#06x}",
            value.to_bits()
        );
    }
}
