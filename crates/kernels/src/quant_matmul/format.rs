//! ggml block formats of the weights (Q4_1, Q5_0, Q5_1, Q8_0) and of the quantized activations
//! they are dotted with (Q8_1, Q8_0), plus IEEE half-precision conversions.
//!
//! Owns: byte layouts, the per-block scalar dot products (ggml's `vec_dot_*` math, used as the
//! portable fallback and as the exact twin of the SIMD kernels), and f16 <-> f32.
//! Does not own: threading or tiling (see `mod.rs`), SIMD (see `avx2.rs`).
//!
//! Invariants: a block holds [`QK`] values; every weight block starts with its f16 scale `d`
//! (Q4_1/Q5_1 follow it with the f16 minimum `m`); bytes are little-endian exactly as in GGUF.
//! Decoded quants are `d · q + m` with `q` in 0..=31 (Q4_1, Q5_1), −16..=15 (Q5_0) or the full
//! i8 range −128..=127 (Q8_0: any byte is a valid quant, though ggml's quantizer writes only
//! −127..=127).

// On x86-64-v3 builds the scalar twins only serve the tests that bind the SIMD kernels to them.
#![cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"),
    allow(dead_code)
)]

use candle_core::quantized::GgmlDType;

/// Values per block, for every format here.
pub(crate) const QK: usize = 32;

/// Which activation quantization a weight format is dotted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActivationKind {
    /// Q8_0: `d`, 32 × i8 (`s = d · Σq`, a helper, see [`activation_sum`]).
    Q8_0,
    /// Q8_1: `d`, `s = d · Σq` (rounded through f16 as ggml does), 32 × i8.
    Q8_1,
}

/// A supported weight block format. Implemented by zero-sized marker types so the kernels are
/// monomorphized per format.
pub(crate) trait BlockFormat: Send + Sync + 'static {
    /// Bytes per block of [`QK`] values.
    const BLOCK_BYTES: usize;
    const ACTIVATION: ActivationKind;
    /// Whether decoded values carry a minimum term `m` (false only for Q8_0, whose `m` is 0 and
    /// whose dot product never touches the activation sums).
    const HAS_MIN: bool = true;

    /// Decodes one block into its 32 integer quants (in value order), `d` and `m` (0 when the
    /// format has no minimum). `block.len() >= BLOCK_BYTES`.
    fn decode(block: &[u8]) -> ([i8; QK], f32, f32);
}

pub(crate) struct Q4_1;
pub(crate) struct Q5_0;
pub(crate) struct Q5_1;
pub(crate) struct Q8_0;

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
}

impl BlockFormat for Q4_1 {
    const BLOCK_BYTES: usize = 20; // d: f16, m: f16, qs: [u8; 16]
    const ACTIVATION: ActivationKind = ActivationKind::Q8_1;

    fn decode(block: &[u8]) -> ([i8; QK], f32, f32) {
        let qs = &block[4..20];
        let mut q = [0i8; QK];
        for j in 0..QK / 2 {
            q[j] = (qs[j] & 0x0F) as i8;
            q[j + QK / 2] = (qs[j] >> 4) as i8;
        }
        (q, f16_to_f32(read_u16(block, 0)), f16_to_f32(read_u16(block, 2)))
    }
}

impl BlockFormat for Q5_0 {
    const BLOCK_BYTES: usize = 22; // d: f16, qh: [u8; 4], qs: [u8; 16]
    const ACTIVATION: ActivationKind = ActivationKind::Q8_0;

    fn decode(block: &[u8]) -> ([i8; QK], f32, f32) {
        let qh = read_u32(block, 2);
        let qs = &block[6..22];
        let mut q = [0i8; QK];
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((qs[j] & 0x0F) | h0) as i8 - 16;
            q[j + QK / 2] = ((qs[j] >> 4) | h1) as i8 - 16;
        }
        (q, f16_to_f32(read_u16(block, 0)), 0.0)
    }
}

impl BlockFormat for Q5_1 {
    const BLOCK_BYTES: usize = 24; // d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]
    const ACTIVATION: ActivationKind = ActivationKind::Q8_1;

    fn decode(block: &[u8]) -> ([i8; QK], f32, f32) {
        let qh = read_u32(block, 4);
        let qs = &block[8..24];
        let mut q = [0i8; QK];
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((qs[j] & 0x0F) | h0) as i8;
            q[j + QK / 2] = ((qs[j] >> 4) | h1) as i8;
        }
        (q, f16_to_f32(read_u16(block, 0)), f16_to_f32(read_u16(block, 2)))
    }
}

impl BlockFormat for Q8_0 {
    const BLOCK_BYTES: usize = 34; // d: f16, qs: [i8; 32]
    const ACTIVATION: ActivationKind = ActivationKind::Q8_0;
    const HAS_MIN: bool = false;

    fn decode(block: &[u8]) -> ([i8; QK], f32, f32) {
        let mut q = [0i8; QK];
        for (q, &b) in q.iter_mut().zip(&block[2..2 + QK]) {
            *q = b as i8;
        }
        (q, f16_to_f32(read_u16(block, 0)), 0.0)
    }
}

/// Bytes per block of `dtype`, when it is a supported weight format.
pub(crate) fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4_1 => Some(Q4_1::BLOCK_BYTES),
        GgmlDType::Q5_0 => Some(Q5_0::BLOCK_BYTES),
        GgmlDType::Q5_1 => Some(Q5_1::BLOCK_BYTES),
        GgmlDType::Q8_0 => Some(Q8_0::BLOCK_BYTES),
        _ => None,
    }
}

/// Scalar dot product of one weight row with one quantized activation row, block by block in
/// ggml's order: `Σ_b sumi_b · d_x · d_y + m_x · s_y` (for Q8_0, `m_x = 0`: ggml's and candle's
/// `vec_dot_q8_0_q8_0`, `Σ_b sumi_b · d_x · d_y`).
/// `row.len() == num_blocks * F::BLOCK_BYTES`, `qs.len() == num_blocks * QK`, `ds.len() == num_blocks`.
pub(crate) fn dot_row_scalar<F: BlockFormat>(row: &[u8], qs: &[i8], ds: &[[f32; 2]]) -> f32 {
    let mut sum = 0f32;
    let blocks = row.chunks_exact(F::BLOCK_BYTES).zip(qs.chunks_exact(QK)).zip(ds);
    for ((block, y), &[d_y, s_y]) in blocks {
        let (x, d_x, m_x) = F::decode(block);
        let sumi: i32 = x.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum();
        sum += if F::HAS_MIN { sumi as f32 * d_x * d_y + m_x * s_y } else { sumi as f32 * d_x * d_y };
    }
    sum
}

/// Quantizes one activation row to Q8_0/Q8_1 exactly as candle's scalar `from_float` does
/// (`d = amax / 127` stored as f16, `q = round(x / d)` half away from zero, `s = f16(Σq) · d`).
/// `xs.len() == num_blocks * QK`; writes `qs[..xs.len()]` and `ds[..num_blocks]`.
pub(crate) fn quantize_row_scalar(kind: ActivationKind, xs: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    for ((x, q), d_s) in xs.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(ds.iter_mut()) {
        let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        let d16 = f16_to_f32(f32_to_f16(d));
        *d_s = [d16, activation_sum(kind, sum, d16)];
    }
}

/// The `s` field of an activation block: `f16(f16(Σq) · d)` for Q8_1 (ggml's `block_q8_1.s`);
/// `d · Σq` in f32 for Q8_0, which has no such field in ggml (ggml's Q5_0 dot ignores it; the
/// SIMD kernel uses it to express Q5_0's −16 offset as a minimum).
pub(crate) fn activation_sum(kind: ActivationKind, sum: i32, d16: f32) -> f32 {
    match kind {
        ActivationKind::Q8_0 => d16 * sum as f32,
        ActivationKind::Q8_1 => f16_to_f32(f32_to_f16(f16_to_f32(f32_to_f16(sum as f32)) * d16)),
    }
}

/// IEEE binary16 bits to f32 (exact).
#[inline(always)]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    {
        use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
        // SAFETY: compiled only when F16C (and SSE2) are enabled for the whole build.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    {
        f16_to_f32_soft(bits)
    }
}

/// f32 to IEEE binary16 bits, rounding to nearest even (as `half::f16::from_f32`).
#[inline(always)]
pub(crate) fn f32_to_f16(value: f32) -> u16 {
    #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
    {
        use std::arch::x86_64::{_mm_cvtps_ph, _mm_cvtsi128_si32, _mm_set_ss, _MM_FROUND_TO_NEAREST_INT};
        // SAFETY: compiled only when F16C (and SSE2) are enabled for the whole build.
        unsafe { _mm_cvtsi128_si32(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(value))) as u16 }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
    {
        f32_to_f16_soft(value)
    }
}

/// Portable binary16 -> f32.
pub(crate) fn f16_to_f32_soft(bits: u16) -> f32 {
    let sign = ((bits & 0x8000) as u32) << 16;
    let exp = ((bits >> 10) & 0x1F) as u32;
    let man = (bits & 0x03FF) as u32;
    let out = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalize the mantissa.
            let shift = man.leading_zeros() - 21; // bring the top set bit to bit 10
            let man = (man << shift) & 0x03FF;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1F, 0) => sign | 0x7F80_0000,
        (0x1F, _) => sign | 0x7FC0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(out)
}

/// Portable f32 -> binary16, round to nearest even.
pub(crate) fn f32_to_f16_soft(value: f32) -> u16 {
    let x = value.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xFF) as i32;
    let man = x & 0x007F_FFFF;
    if exp == 0xFF {
        let nan_bit = if man == 0 { 0 } else { 0x0200 };
        return sign | 0x7C00 | nan_bit | (man >> 13) as u16;
    }
    let half_exp = exp - 127 + 15;
    if half_exp >= 0x1F {
        return sign | 0x7C00;
    }
    if half_exp <= 0 {
        if 14 - half_exp > 24 {
            return sign;
        }
        let man = man | 0x0080_0000;
        let shift = (14 - half_exp) as u32;
        let mut half_man = man >> shift;
        let round_bit = 1u32 << (shift - 1);
        if (man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0 {
            half_man += 1;
        }
        return sign | half_man as u16;
    }
    let half = ((half_exp as u32) << 10) | (man >> 13);
    let round_bit = 0x0000_1000u32;
    let rounded = if (man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0 { half + 1 } else { half };
    sign | rounded as u16
}
