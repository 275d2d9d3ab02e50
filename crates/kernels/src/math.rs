//! Scalar math shared by kernels and the sampler where exact, reproducible bits matter.
//!
//! Owns: `exp_nonpositive`, the branch-free `exp` that paged attention's softmax (CPU) and the
//! sampler's weights both use (the attention kernel's 8-lane AVX2 twin follows its polynomial
//! and edges). Does not own: anything with tensors.
//!
//! Invariant: `exp_nonpositive` is exactly 1 at 0 and exactly 0 below -87 and at -inf; callers
//! (sampling's fast path and reference) rely on it being one function so they agree bit for bit.

/// `exp(x)` for `x <= 0` (larger `x` is treated as 0): exactly 1 at 0, exactly 0 below -87
/// (no subnormals), within a few ulp elsewhere (Cephes polynomial with Cody-Waite range
/// reduction). Branch-free, so loops over it vectorize, unlike calls to libm's `expf`.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // exactly 355/512 as f32
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 * 2^23: adding then subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-88.0, 0.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    // n is an integer in [-127, 0] and `shifted`'s low mantissa bits hold it (offset by
    // ROUND's bits); 2^n is built from exponent bits `n + 127` (n = -127 gives 0.0). Integer
    // bit arithmetic instead of `n as i32`, whose saturation blocks vectorization.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpositive_is_within_a_few_ulp_of_exp() {
        let mut max_rel_err = 0.0f64;
        let mut worst_x = 0.0f32;
        for i in 0..=2_000_000u32 {
            let x = -87.0 * i as f32 / 2_000_000.0;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            let rel_err = (got - want).abs() / want;
            if rel_err > max_rel_err {
                (max_rel_err, worst_x) = (rel_err, x);
            }
        }
        // 4 ulp of f32 at the low end of a binade.
        assert!(
            max_rel_err < 4.0 * f32::EPSILON as f64,
            "max rel err {max_rel_err:e} at {worst_x}"
        );
    }

    #[test]
    fn exp_nonpositive_edges_are_exact() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-87.5), 0.0);
        assert!(exp_nonpositive(-87.0) > 0.0);
        assert_eq!(exp_nonpositive(3.0), 1.0);
    }
}
