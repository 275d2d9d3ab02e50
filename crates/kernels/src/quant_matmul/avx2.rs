//! AVX2/FMA/F16C kernels: activation quantization (Q8_0/Q8_1) and tiled dot products of weight
//! rows (Q4_1, Q5_0, Q5_1, Q8_0) against quantized activation rows.
//!
//! Owns: the SIMD decoding of weight blocks and the `R rows × T tokens` register tile.
//! Does not own: threading, tiling over the whole matrix, shape checks (see `mod.rs`).
//!
//! Invariants:
//! - the 4- and 5-bit weight blocks decode to *unsigned* quants `u` (0..15 or 0..31) plus
//!   `[d, m]`, so one `maddubs(u, y)` path serves them; Q5_0's signed quant `u − 16` is expressed
//!   as a minimum `m = −16·d`, paired with the activation's `s = d_y·Σq_y` (see `activations`).
//! - Q8_0 weights are signed i8 (`SimdFormat::SIGNED`) and have no minimum: the product takes
//!   ggml's sign trick, `maddubs(|w|, sign(y, w))`, which is exact (`w·y = |w|·(sign(w)·y)`, and
//!   `sign(w)·y` is 0 where w is 0), also for w = −128 (|w| = 128 read as unsigned).
//! - `maddubs` cannot saturate: activation quants lie in −127..=127, and a pair sums at most
//!   `2 · 31 · 127` (unsigned formats) or `2 · 128 · 127 = 32512` (Q8_0) `< i16::MAX`.
//! - results equal ggml's integer dot per block times `d_x·d_y`, plus `m_x·s_y`, up to f32
//!   rounding order.

use std::arch::x86_64::*;

use super::format::{ActivationKind, BlockFormat, Q4_1, Q5_0, Q5_1, Q8_0, QK};

/// SIMD block decoding, one implementation per weight format.
pub(crate) trait SimdFormat: BlockFormat {
    /// Whether `decode_simd` yields signed i8 quants (Q8_0) instead of unsigned ones.
    const SIGNED: bool = false;

    /// Decodes the block at `p` into 32 quants (value order; unsigned, or signed when
    /// [`SIGNED`](Self::SIGNED)) and `[d, m, 0, 0]`.
    ///
    /// # Safety
    /// `p` must point to `Self::BLOCK_BYTES` readable bytes.
    unsafe fn decode_simd(p: *const u8) -> (__m256i, __m128);
}

/// `[f16 at p, f16 at p + 2]` widened to `[d, m, 0, 0]`.
///
/// # Safety
/// `p` must point to 4 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_two_f16(p: *const u8) -> __m128 {
    // SAFETY: the caller guarantees 4 readable bytes; the read is unaligned.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u32) };
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// The 32 nibbles of 16 bytes, low nibbles first: byte `j` of the result is `p[j] & 15` for
/// `j < 16` and `p[j − 16] >> 4` otherwise (ggml's `bytes_from_nibbles_32`).
///
/// # Safety
/// `p` must point to 16 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes; `loadu` has no alignment requirement.
    let tmp = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let bytes = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(tmp), _mm_srli_epi16::<4>(tmp));
    _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F))
}

/// Byte `j` of the result is 0xFF when bit `j` of `bits` is set, else 0 (ggml's
/// `bytes_from_bits_32`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bytes_from_bits_32(bits: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
    let bit_mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
}

impl SimdFormat for Q4_1 {
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode_simd(p: *const u8) -> (__m256i, __m128) {
        // SAFETY: the block is 20 bytes: d, m at 0..4, nibbles at 4..20.
        unsafe { (bytes_from_nibbles_32(p.add(4)), load_two_f16(p)) }
    }
}

impl SimdFormat for Q5_1 {
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode_simd(p: *const u8) -> (__m256i, __m128) {
        // SAFETY: the block is 24 bytes: d, m at 0..4, qh at 4..8, nibbles at 8..24.
        unsafe {
            let qh = std::ptr::read_unaligned(p.add(4) as *const u32);
            let high = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
            (_mm256_or_si256(bytes_from_nibbles_32(p.add(8)), high), load_two_f16(p))
        }
    }
}

impl SimdFormat for Q5_0 {
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode_simd(p: *const u8) -> (__m256i, __m128) {
        // SAFETY: the block is 22 bytes: d at 0..2, qh at 2..6, nibbles at 6..22.
        unsafe {
            let d_bits = std::ptr::read_unaligned(p as *const u16);
            let qh = std::ptr::read_unaligned(p.add(2) as *const u32);
            let high = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
            let u = _mm256_or_si256(bytes_from_nibbles_32(p.add(6)), high);
            // [d, 0, 0, 0] · [1, −16, ..] = [d, −16·d]: x = d·(u − 16) = d·u + m with m = −16·d.
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(d_bits as i32));
            let dm = _mm_mul_ps(_mm_shuffle_ps::<0b0000_0000>(d, d), _mm_setr_ps(1.0, -16.0, 0.0, 0.0));
            (u, dm)
        }
    }
}

impl SimdFormat for Q8_0 {
    const SIGNED: bool = true;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn decode_simd(p: *const u8) -> (__m256i, __m128) {
        // SAFETY: the block is 34 bytes: d at 0..2, 32 signed quants at 2..34.
        unsafe {
            let d_bits = std::ptr::read_unaligned(p as *const u16);
            let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
            (q, _mm_cvtph_ps(_mm_cvtsi32_si128(d_bits as i32))) // [d, 0, 0, 0]
        }
    }
}

/// The signed `maddubs` operand for activation quants `y` against decoded weight quants `w`:
/// `y` itself for unsigned formats, `sign(y, w)` for signed ones (paired with
/// [`weight_operand`]'s `|w|`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn activation_operand<F: SimdFormat>(w: __m256i, y: __m256i) -> __m256i {
    if F::SIGNED {
        _mm256_sign_epi8(y, w)
    } else {
        y
    }
}

/// The unsigned `maddubs` operand of decoded weight quants: `w` itself, or `|w|` when signed.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn weight_operand<F: SimdFormat>(w: __m256i) -> __m256i {
    if F::SIGNED {
        _mm256_sign_epi8(w, w)
    } else {
        w
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_f32x8(x: __m256) -> f32 {
    let sum = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    let sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    _mm_cvtss_f32(sum)
}

/// A view of `R` consecutive weight rows and `T` consecutive quantized activation rows.
pub(crate) struct TileArgs<'a> {
    /// Weight bytes starting at the tile's first row; at least `R` rows of `row_bytes`.
    pub weights: &'a [u8],
    pub row_bytes: usize,
    /// Activation quants starting at the tile's first token; at least `T · num_blocks · QK`.
    pub act_qs: &'a [i8],
    /// Activation `[d, s]` starting at the tile's first token; at least `T · num_blocks`.
    pub act_ds: &'a [[f32; 2]],
    pub num_blocks: usize,
}

/// Dot products of `R` weight rows with `T` activation rows: `out[t][r]`.
///
/// Panics if the slices in `args` are shorter than the tile needs (an internal invariant of the
/// caller, checked once per tile, not per block).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn dot_tile<F: SimdFormat, const R: usize, const T: usize>(args: &TileArgs<'_>) -> [[f32; R]; T] {
    let nb = args.num_blocks;
    assert!(
        F::BLOCK_BYTES * nb <= args.row_bytes && args.weights.len() >= (R - 1) * args.row_bytes + F::BLOCK_BYTES * nb
    );
    assert!(args.act_qs.len() >= T * nb * QK && args.act_ds.len() >= T * nb);
    let w = args.weights.as_ptr();
    let qs = args.act_qs.as_ptr();
    let ds = args.act_ds.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); R]; T];
    let mut acc_min = [[_mm_setzero_ps(); R]; T];
    // The next tile's rows start right after this tile's; `PREFETCH_LINES` lines per block cover
    // them (two while R · BLOCK_BYTES ≤ 128, e.g. 4 · 24; three for 4 rows of Q8_0's 34 bytes).
    // A hint only: it never faults, also past the end of the weights. Without it the 2-core dev
    // machine streamed a decode step's weights from DRAM at 8 GB/s instead of 15–22 GB/s.
    let prefetch_lines = (R * F::BLOCK_BYTES).div_ceil(64).max(2);
    let next_tile = w.wrapping_add(R * args.row_bytes);
    for b in 0..nb {
        for line in 0..prefetch_lines {
            _mm_prefetch::<_MM_HINT_T0>(next_tile.wrapping_add(b * prefetch_lines * 64 + line * 64) as *const i8);
        }
        let mut wq = [_mm256_setzero_si256(); R];
        let mut wu = [_mm256_setzero_si256(); R];
        let mut wdm = [_mm_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: row r < R, block b < nb; the asserts above bound both inside `weights`.
            let (q, dm) = unsafe { F::decode_simd(w.add(r * args.row_bytes + b * F::BLOCK_BYTES)) };
            wq[r] = q;
            wu[r] = weight_operand::<F>(q);
            wdm[r] = dm;
        }
        for t in 0..T {
            let act_idx = t * nb + b;
            // SAFETY: act_idx < T·nb; the asserts above bound the 32 quants and the [d, s] pair.
            let (y, yds) = unsafe {
                (
                    _mm256_loadu_si256(qs.add(act_idx * QK) as *const __m256i),
                    // `[d, s]` is only 4-byte aligned: an unaligned 8-byte read, then movq.
                    _mm_castsi128_ps(_mm_cvtsi64_si128(std::ptr::read_unaligned(ds.add(act_idx) as *const i64))),
                )
            };
            for r in 0..R {
                let y = activation_operand::<F>(wq[r], y);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wu[r], y), ones);
                let scales = _mm_mul_ps(wdm[r], yds); // [d_x·d_y, m_x·s_y, 0, 0]
                acc[t][r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), _mm256_cvtepi32_ps(dot), acc[t][r]);
                if F::HAS_MIN {
                    acc_min[t][r] = _mm_add_ps(acc_min[t][r], scales);
                }
            }
        }
    }
    let mut out = [[0f32; R]; T];
    for t in 0..T {
        for r in 0..R {
            out[t][r] = if F::HAS_MIN {
                hsum_f32x8(acc[t][r]) + _mm_cvtss_f32(_mm_movehdup_ps(acc_min[t][r]))
            } else {
                hsum_f32x8(acc[t][r])
            };
        }
    }
    out
}

/// One weight row against a tile of `T` consecutive activation rows (prefill).
pub(crate) struct TokenTileArgs<'a> {
    /// The weight row: `num_blocks` blocks.
    pub row: &'a [u8],
    /// Activation quants starting at the tile's first token; at least `T · num_blocks · QK`.
    pub act_qs: &'a [i8],
    /// Activation `[d, s]` starting at the tile's first token; at least `T · num_blocks`.
    pub act_ds: &'a [[f32; 2]],
    /// Activation `s` transposed, `[num_blocks, num_tokens]`, starting at the tile's first
    /// token: block `b` of the tile's tokens is at `b · num_tokens ..`, `T` values.
    pub s_by_block: &'a [f32],
    pub num_tokens: usize,
    pub num_blocks: usize,
}

/// Dot products of one weight row with `T ∈ {4, 8}` activation rows. Each weight block is
/// decoded once for the whole tile; the `m·s` terms of all `T` tokens take one FMA per block
/// (none for Q8_0).
///
/// Panics if the slices in `args` are shorter than the tile needs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn dot_token_tile<F: SimdFormat, const T: usize>(args: &TokenTileArgs<'_>) -> [f32; T] {
    const { assert!(T == 4 || T == 8) };
    let nb = args.num_blocks;
    assert!(args.row.len() >= nb * F::BLOCK_BYTES);
    assert!(args.act_qs.len() >= T * nb * QK && args.act_ds.len() >= T * nb);
    assert!(nb == 0 || args.s_by_block.len() >= (nb - 1) * args.num_tokens + T);
    let w = args.row.as_ptr();
    let qs = args.act_qs.as_ptr();
    let ds = args.act_ds.as_ptr();
    let s_by_block = args.s_by_block.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut acc_min = _mm256_setzero_ps();
    // The next weight row (the next call's) follows this one; one line per block covers it.
    let next_row = w.wrapping_add(nb * F::BLOCK_BYTES);
    for b in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(next_row.wrapping_add(b * 64) as *const i8);
        // SAFETY: block b < nb lies inside `row` (asserted above).
        let (q, dm) = unsafe { F::decode_simd(w.add(b * F::BLOCK_BYTES)) };
        let q_u = weight_operand::<F>(q);
        let d_x = _mm256_broadcastss_ps(dm);
        if F::HAS_MIN {
            let m_x = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
            // SAFETY: b·num_tokens + T ≤ s_by_block.len() (asserted above); unaligned loads.
            let s = unsafe {
                if T == 8 {
                    _mm256_loadu_ps(s_by_block.add(b * args.num_tokens))
                } else {
                    _mm256_zextps128_ps256(_mm_loadu_ps(s_by_block.add(b * args.num_tokens)))
                }
            };
            acc_min = _mm256_fmadd_ps(m_x, s, acc_min);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let act_idx = t * nb + b;
            // SAFETY: act_idx < T·nb; the asserts above bound the 32 quants and the scale.
            let (y, d_y) = unsafe {
                (
                    _mm256_loadu_si256(qs.add(act_idx * QK) as *const __m256i),
                    _mm256_broadcast_ss(&(*ds.add(act_idx))[0]),
                )
            };
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q_u, activation_operand::<F>(q, y)), ones);
            *acc = _mm256_fmadd_ps(_mm256_mul_ps(d_x, d_y), _mm256_cvtepi32_ps(dot), *acc);
        }
    }
    let mut mins = [0f32; 8];
    // SAFETY: `mins` holds 8 floats; unaligned store.
    unsafe { _mm256_storeu_ps(mins.as_mut_ptr(), acc_min) };
    let mut out = [0f32; T];
    for t in 0..T {
        out[t] = if F::HAS_MIN { hsum_f32x8(acc[t]) + mins[t] } else { hsum_f32x8(acc[t]) };
    }
    out
}

/// Quantizes one activation row exactly like `format::quantize_row_scalar` (bit-identical).
/// `xs.len()` is a multiple of [`QK`]; `qs`, `ds` hold at least that many quants and blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_row(kind: ActivationKind, xs: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    let num_blocks = xs.len() / QK;
    assert!(qs.len() >= num_blocks * QK && ds.len() >= num_blocks);
    let sign_mask = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for ((x, q), d_s) in xs.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(ds.iter_mut()) {
        // SAFETY: `x` is a 32-float chunk; four unaligned 8-float loads stay inside it.
        let v = unsafe {
            [
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
                _mm256_loadu_ps(x.as_ptr().add(16)),
                _mm256_loadu_ps(x.as_ptr().add(24)),
            ]
        };
        let abs = v.map(|v| _mm256_andnot_ps(sign_mask, v));
        let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let max4 = _mm_max_ps(_mm256_extractf128_ps::<1>(max8), _mm256_castps256_ps128(max8));
        let max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
        let amax = _mm_cvtss_f32(_mm_max_ss(max4, _mm_movehdup_ps(max4)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let ints = v.map(|v| {
            let v = _mm256_mul_ps(v, id);
            // Round half away from zero (f32::round): truncate, then step one away from zero
            // when the dropped fraction is at least one half.
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(v, t));
            let step = _mm256_or_ps(_mm256_and_ps(v, sign_mask), one);
            let t = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), step));
            _mm256_cvtps_epi32(t)
        });
        let sum8 = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
        let sum4 = _mm_add_epi32(_mm256_extracti128_si256::<1>(sum8), _mm256_castsi256_si128(sum8));
        let sum4 = _mm_add_epi32(sum4, _mm_shuffle_epi32::<0b01_00_11_10>(sum4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum4, _mm_shuffle_epi32::<0b10_11_00_01>(sum4)));
        // packs interleave 128-bit lanes; the permute restores value order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
        let packed = _mm256_permutevar8x32_epi32(packed, order);
        // SAFETY: `q` is a 32-byte chunk; the store is unaligned.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, packed) };
        let d16 = super::format::f16_to_f32(super::format::f32_to_f16(d));
        *d_s = [d16, super::format::activation_sum(kind, sum, d16)];
    }
}
