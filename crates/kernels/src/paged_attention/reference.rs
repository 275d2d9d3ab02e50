//! Slow reference for paged attention: gather each sequence's K/V into contiguous tensors with
//! `index_select`, then textbook attention (matmul, mask, softmax, matmul). Obviously correct,
//! device-generic, and the twin the fast kernels are tested against.

use candle_core::{DType, Device, Tensor, D};

use super::AttentionLayout;
use crate::Result;

/// See [`super::paged_attention`]; same contract, computed the plain way (in F32).
pub fn paged_attention_reference(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    layout: &AttentionLayout,
) -> Result<Tensor> {
    let out_dtype = q.dtype();
    let (_, num_heads, head_dim) = q.dims3()?;
    let (num_blocks, block_size, num_kv_heads, _) = k_cache.dims4()?;
    let group = num_heads / num_kv_heads;
    let device = q.device();
    // [num_slots, num_kv_heads, head_dim]
    let k_slots = k_cache.reshape((num_blocks * block_size, num_kv_heads, head_dim))?;
    let v_slots = v_cache.reshape((num_blocks * block_size, num_kv_heads, head_dim))?;
    let mut outputs = Vec::with_capacity(layout.sequences.len());
    for seq in &layout.sequences {
        if seq.num_query_tokens == 0 {
            continue;
        }
        let slots: Vec<u32> = (0..seq.context_len)
            .map(|p| layout.slot(seq, p) as u32)
            .collect();
        let slots = Tensor::new(slots.as_slice(), device)?;
        // [context_len, num_kv_heads, head_dim] -> [num_heads, context_len, head_dim]
        let expand = |t: &Tensor| -> Result<Tensor> {
            let t = t.index_select(&slots, 0)?.to_dtype(DType::F32)?.transpose(0, 1)?;
            let t = t
                .unsqueeze(1)?
                .broadcast_as((num_kv_heads, group, seq.context_len, head_dim))?
                .reshape((num_heads, seq.context_len, head_dim))?;
            Ok(t.contiguous()?)
        };
        let k = expand(&k_slots)?;
        let v = expand(&v_slots)?;
        // [num_heads, num_query_tokens, head_dim]
        let q_seq = q
            .narrow(0, seq.query_start_idx, seq.num_query_tokens)?
            .to_dtype(DType::F32)?
            .transpose(0, 1)?
            .contiguous()?;
        let scores = (q_seq.matmul(&k.t()?)? * layout.scale as f64)?;
        let mask = visibility_mask(layout, seq.num_query_tokens, seq.context_len, device)?;
        let scores = scores.broadcast_add(&mask)?;
        let probs = candle_nn_free_softmax(&scores)?;
        // [num_query_tokens, num_heads, head_dim]
        outputs.push(probs.matmul(&v)?.transpose(0, 1)?);
    }
    Ok(Tensor::cat(&outputs, 0)?.to_dtype(out_dtype)?)
}

/// `[num_query_tokens, context_len]` with 0 where visible and -inf elsewhere.
fn visibility_mask(
    layout: &AttentionLayout,
    num_query_tokens: usize,
    context_len: usize,
    device: &Device,
) -> Result<Tensor> {
    let first_query_pos = context_len - num_query_tokens;
    let mut mask = vec![f32::NEG_INFINITY; num_query_tokens * context_len];
    for row in 0..num_query_tokens {
        let pos = first_query_pos + row;
        for col in layout.first_visible(pos)..=pos {
            mask[row * context_len + col] = 0.0;
        }
    }
    Ok(Tensor::from_vec(mask, (num_query_tokens, context_len), device)?)
}

/// Softmax over the last dimension written with core ops (the kernels crate does not depend on
/// candle-nn).
fn candle_nn_free_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}
