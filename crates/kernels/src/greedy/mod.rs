//! Greedy token choice on the device: the argmax of each row of F32 logits, ties to the lowest
//! id — so a generation step can send `[rows]` token ids to the host instead of `[rows, vocab]`
//! logits. [`greedy_tokens`] runs a CUDA kernel (`greedy.cu`, one block per row) on CUDA
//! tensors and [`greedy_tokens_reference`] elsewhere; GPU tests bind the two.
//!
//! A row whose logits hold a NaN or +inf, or are all -inf, has no greedy token: its entry is
//! [`NO_TOKEN`], and the caller decides (the engine then samples that row on the host, which
//! reports the exact error).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;

use candle_core::{DType, Device, Tensor};

use crate::{KernelError, Result};

/// CUDA C source of the kernel.
pub const CUDA_SOURCE: &str = concat!(include_str!("../dtypes.cuh"), include_str!("greedy.cu"));

/// The entry of a row that has no greedy token (non-finite logits).
pub const NO_TOKEN: u32 = u32::MAX;

/// `[rows, vocab]` F32 logits -> `[rows]` u32 token ids (on the logits' device).
pub fn greedy_tokens(logits: &Tensor) -> Result<Tensor> {
    check(logits)?;
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return cuda::greedy_tokens(logits);
    }
    greedy_tokens_reference(logits)
}

fn check(logits: &Tensor) -> Result<()> {
    if logits.dtype() != DType::F32 || logits.rank() != 2 {
        return Err(KernelError::Candle(candle_core::Error::Msg(format!(
            "greedy_tokens: logits must be F32 [rows, vocab], got {:?} {:?}",
            logits.dtype(),
            logits.dims()
        ))));
    }
    Ok(())
}

/// The same choice on the host, row by row.
pub fn greedy_tokens_reference(logits: &Tensor) -> Result<Tensor> {
    check(logits)?;
    let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let ids: Vec<u32> = rows.iter().map(|row| greedy_token(row)).collect();
    Ok(Tensor::new(ids, &Device::Cpu)?.to_device(logits.device())?)
}

/// Argmax of one row, ties to the lowest id; [`NO_TOKEN`] for NaN, +inf or all -inf.
pub fn greedy_token(row: &[f32]) -> u32 {
    let mut best: Option<(f32, usize)> = None;
    for (id, &l) in row.iter().enumerate() {
        if l.is_nan() || l == f32::INFINITY {
            return NO_TOKEN;
        }
        if l > f32::NEG_INFINITY && best.is_none_or(|(b, _)| l > b) {
            best = Some((l, id));
        }
    }
    best.map_or(NO_TOKEN, |(_, id)| id as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lowest_id_and_non_finite_rows_have_no_token() {
        assert_eq!(greedy_token(&[1.0, 3.0, 3.0, -2.0]), 1);
        assert_eq!(greedy_token(&[f32::NEG_INFINITY, -5.0]), 1);
        assert_eq!(greedy_token(&[0.0, f32::NAN, 9.0]), NO_TOKEN);
        assert_eq!(greedy_token(&[0.0, f32::INFINITY]), NO_TOKEN);
        assert_eq!(greedy_token(&[f32::NEG_INFINITY; 3]), NO_TOKEN);
        assert_eq!(greedy_token(&[]), NO_TOKEN);
        let logits = Tensor::new(&[[0.5f32, 2.0, 2.0], [f32::NAN, 0.0, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(greedy_tokens(&logits).unwrap().to_vec1::<u32>().unwrap(), vec![1, NO_TOKEN]);
        assert!(greedy_tokens(&logits.to_dtype(DType::BF16).unwrap()).is_err());
    }
}
