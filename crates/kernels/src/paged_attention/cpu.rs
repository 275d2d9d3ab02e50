//! CPU fast path of paged attention: one task per (query row, head), online softmax over the
//! visible positions read straight from the pool through the block table (no gather, no mask
//! tensor). F32 only; other dtypes take the reference path.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

use super::AttentionLayout;

pub(super) struct PagedAttentionOp {
    pub layout: AttentionLayout,
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data,
        _ => candle_core::bail!("paged attention: {what} must be f32"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("paged attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for PagedAttentionOp {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(q_storage, q_layout, "q")?;
        let k_cache = contiguous_f32(k_storage, k_layout, "k_cache")?;
        let v_cache = contiguous_f32(v_storage, v_layout, "v_cache")?;
        let (num_tokens, num_heads, head_dim) = q_layout.shape().dims3()?;
        let (_, _, num_kv_heads, _) = k_layout.shape().dims4()?;
        let group = num_heads / num_kv_heads;
        let layout = &self.layout;

        // Row index -> (sequence, position of that row's token).
        let mut row_info = Vec::with_capacity(num_tokens);
        for seq in &layout.sequences {
            let first_pos = seq.context_len - seq.num_query_tokens;
            row_info.extend((0..seq.num_query_tokens).map(|i| (seq, first_pos + i)));
        }

        let mut out = vec![0f32; num_tokens * num_heads * head_dim];
        out.par_chunks_mut(head_dim)
            .enumerate()
            .for_each(|(row_head_idx, out_row)| {
                let row_idx = row_head_idx / num_heads;
                let head_idx = row_head_idx % num_heads;
                let kv_head_idx = head_idx / group;
                let (seq, pos) = row_info[row_idx];
                let q_row = &q[row_head_idx * head_dim..(row_head_idx + 1) * head_dim];
                let mut running_max = f32::NEG_INFINITY;
                let mut running_sum = 0f32;
                for p in layout.first_visible(pos)..=pos {
                    let base = (layout.slot(seq, p) * num_kv_heads + kv_head_idx) * head_dim;
                    let k_row = &k_cache[base..base + head_dim];
                    let score = dot(q_row, k_row) * layout.scale;
                    let v_row = &v_cache[base..base + head_dim];
                    // Online softmax: rescale what was accumulated when the max grows.
                    if score > running_max {
                        let correction = (running_max - score).exp();
                        running_sum *= correction;
                        out_row.iter_mut().for_each(|o| *o *= correction);
                        running_max = score;
                    }
                    let weight = (score - running_max).exp();
                    running_sum += weight;
                    out_row
                        .iter_mut()
                        .zip(v_row)
                        .for_each(|(o, &v)| *o += weight * v);
                }
                let inv = 1.0 / running_sum;
                out_row.iter_mut().for_each(|o| *o *= inv);
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((num_tokens, num_heads, head_dim)),
        ))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorize the reduction.
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4 * 4;
    for i in (0..chunks).step_by(4) {
        for lane in 0..4 {
            acc[lane] += a[i + lane] * b[i + lane];
        }
    }
    let mut sum = acc[0] + acc[1] + acc[2] + acc[3];
    for i in chunks..a.len() {
        sum += a[i] * b[i];
    }
    sum
}
