//! Self-attention over the paged KV pool: project, (optionally) normalize q/k per head, rotate,
//! write K/V into the pool, attend through block tables, project out.
//!
//! There is no contiguous-cache path: prompts, chunks and single generated tokens all go
//! through `hearth_kernels::paged_attention`.

use candle_core::Tensor;
use hearth_kernels::fused::{self, QkvRope, RopeKvInputs};
use hearth_kernels::paged_attention::{paged_attention_with, split::SplitChoice};
use hearth_kernels::quant_matvec::Int8Rows;
use hearth_kernels::{paged_attention, prefill_attention, write_kv, AttentionLayout, SequenceSpan};

use crate::forward_batch::ForwardBatch;
use crate::layers::{Linear, RmsNorm, Rope};
use crate::numerics;
use crate::Result;

/// Q, K and V projections, separate or fused in one matrix (Phi-3).
#[derive(Clone)]
pub enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Clone)]
pub struct Attention {
    pub qkv: QkvProj,
    pub o: Linear,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub rope: Rope,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub sliding_window: Option<usize>,
}

impl Attention {
    /// Whether the Q, K, V projections take [`Int8Rows`] (see `Linear::reads_int8_rows`).
    pub fn reads_int8_rows(&self) -> bool {
        matches!(&self.qkv, QkvProj::Separate { q, k, v } if q.reads_int8_rows() && k.reads_int8_rows() && v.reads_int8_rows())
    }

    /// `x` `[num_tokens, hidden]` -> `[num_tokens, hidden]`; writes this step's K/V to the pool.
    /// `int8`: `x` already quantized for the Q/K/V int8 launch (or `None`).
    pub fn forward(&self, x: &Tensor, int8: Option<&Int8Rows>, batch: &ForwardBatch, k_cache: &Tensor, v_cache: &Tensor) -> Result<Tensor> {
        let num_tokens = x.dim(0)?;
        let q = match self.qkv_rope_launch(x, int8, batch, k_cache, v_cache)? {
            Some(q) => q,
            None => self.project_rotate_write(x, int8, batch, k_cache, v_cache)?,
        };
        let layout = batch.attention_layout(self.scale, self.sliding_window);
        let attn = attend(&q.contiguous()?, k_cache, v_cache, &layout)?;
        // [num_tokens, num_heads * head_dim]
        self.o.forward(&attn.reshape((num_tokens, self.num_heads * self.head_dim))?)
    }

    /// A generation step's Q/K/V projections, rotation and pool writes in one launch
    /// (`Linear::qkv_rope`) where nothing comes between them (no per-head norms) on a GPU;
    /// `None` elsewhere.
    fn qkv_rope_launch(&self, x: &Tensor, int8: Option<&Int8Rows>, batch: &ForwardBatch, k_cache: &Tensor, v_cache: &Tensor) -> Result<Option<Tensor>> {
        let QkvProj::Separate { q, k, v } = &self.qkv else { return Ok(None) };
        if self.q_norm.is_some() || self.k_norm.is_some() || !x.device().is_cuda() {
            return Ok(None);
        }
        let (cos, sin) = self.rope.tables();
        let rope = RopeKvInputs { cos, sin, positions: &batch.positions, slot_mapping: &batch.slot_mapping };
        let target = QkvRope { rope: &rope, k_cache, v_cache, head_dim: self.head_dim };
        Linear::qkv_rope([q, k, v], x, int8, &target)
    }

    /// Q, K, V projected, normed (per head, where the model does), rotated, K and V written to
    /// the pool: q `[num_tokens, num_heads, head_dim]`.
    fn project_rotate_write(&self, x: &Tensor, int8: Option<&Int8Rows>, batch: &ForwardBatch, k_cache: &Tensor, v_cache: &Tensor) -> Result<Tensor> {
        let num_tokens = x.dim(0)?;
        let (q_dim, kv_dim) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => {
                let [q, k, v] = Linear::forward_many([q, k, v], x, int8)?;
                (q, k, v)
            }
            QkvProj::Fused(qkv) => {
                // [num_tokens, q_dim + 2 * kv_dim]
                let all = qkv.forward(x)?;
                (all.narrow(1, 0, q_dim)?, all.narrow(1, q_dim, kv_dim)?, all.narrow(1, q_dim + kv_dim, kv_dim)?)
            }
        };
        // [num_tokens, num_heads, head_dim] and [num_tokens, num_kv_heads, head_dim]
        let mut q = q.reshape((num_tokens, self.num_heads, self.head_dim))?;
        let mut k = k.reshape((num_tokens, self.num_kv_heads, self.head_dim))?;
        let v = v.reshape((num_tokens, self.num_kv_heads, self.head_dim))?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k)?;
        }
        let q = if q.device().is_cuda() {
            // One kernel: rotate q and k, write k and v to the pool.
            let (cos, sin) = self.rope.tables();
            let rope = RopeKvInputs { cos, sin, positions: &batch.positions, slot_mapping: &batch.slot_mapping };
            fused::rope_write_kv(&q, &k, &v, &rope, k_cache, v_cache)?
        } else {
            let q = self.rope.apply(&q, &batch.positions)?;
            let k = self.rope.apply(&k, &batch.positions)?;
            write_kv(k_cache, v_cache, &k, &v, &batch.slot_mapping)?;
            q
        };
        Ok(q)
    }
}

/// Attention of a step's rows, each kind through its kernel: prompt rows (sequences with more
/// than one new token) through the tiled prefill kernel, which reads each K/V tile once for a
/// tile of rows; generation rows through the paged-attention kernel, which splits long
/// contexts over the sequence. A mixed step (the scheduler's chunked prefill beside running
/// generations) gathers each kind's rows, runs both, and puts the rows back in order. Both
/// kernels compute the same attention (each is bound to the reference by GPU tests); on the CPU
/// both are the same op. Replayed device graphs hold only generation rows, so they run the
/// paged kernel alone, as recorded.
///
/// Batch-invariant mode ([`crate::numerics`]): every row through paged attention's one-block
/// path, so a row's result depends on its own context alone.
pub fn attend(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, layout: &AttentionLayout) -> Result<Tensor> {
    if q.device().is_cuda() && numerics::batch_invariant() {
        return Ok(paged_attention_with(q, k_cache, v_cache, layout, SplitChoice::Fixed(1))?);
    }
    let is_prompt = |s: &SequenceSpan| s.num_query_tokens > 1;
    let (prompts, generations): (Vec<&SequenceSpan>, Vec<&SequenceSpan>) = layout.sequences.iter().partition(|s| is_prompt(s));
    if prompts.is_empty() {
        return Ok(paged_attention(q, k_cache, v_cache, layout)?);
    }
    if generations.is_empty() {
        return Ok(prefill_attention::prefill_attention(q, k_cache, v_cache, layout)?);
    }
    // Each kind's rows, packed in batch order, and the sub-layout that addresses them.
    let part = |spans: &[&SequenceSpan]| -> Result<(Tensor, AttentionLayout, Vec<u32>)> {
        let mut rows = Vec::new();
        let sequences = spans
            .iter()
            .map(|s| {
                let start = rows.len();
                rows.extend((s.query_start_idx..s.query_start_idx + s.num_query_tokens).map(|r| r as u32));
                SequenceSpan { query_start_idx: start, ..(*s).clone() }
            })
            .collect();
        let index = Tensor::new(rows.as_slice(), q.device())?;
        let sub = AttentionLayout { sequences, device_metadata: None, ..layout.clone() };
        Ok((q.index_select(&index, 0)?, sub, rows))
    };
    let (q_prompt, prompt_layout, prompt_rows) = part(&prompts)?;
    let (q_generation, generation_layout, generation_rows) = part(&generations)?;
    let out_prompt = prefill_attention::prefill_attention(&q_prompt, k_cache, v_cache, &prompt_layout)?;
    let out_generation = paged_attention(&q_generation, k_cache, v_cache, &generation_layout)?;
    // Row r of the step is row `position[r]` of [prompt rows | generation rows].
    let mut position = vec![0u32; prompt_rows.len() + generation_rows.len()];
    for (i, &r) in prompt_rows.iter().chain(&generation_rows).enumerate() {
        position[r as usize] = i as u32;
    }
    let position = Tensor::new(position.as_slice(), q.device())?;
    Ok(Tensor::cat(&[&out_prompt, &out_generation], 0)?.index_select(&position, 0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    /// Generation and prompt rows interleaved in one step: gathering each kind, running its
    /// kernel and scattering back gives exactly the one-call result (on the CPU both kinds run
    /// the same op, so any difference would be a misplaced row).
    #[test]
    fn a_mixed_step_puts_every_row_back_in_place() {
        let (block_size, num_blocks, heads, kv_heads, dim) = (4, 12, 4, 2, 8);
        let pool = |seed: f64| (Tensor::randn(0f32, 1.0, (num_blocks, block_size, kv_heads, dim), &Device::Cpu).unwrap() + seed).unwrap();
        let (k_cache, v_cache) = (pool(0.0), pool(0.5));
        // (rows, context, blocks): decode, prompt chunk after cached tokens, decode, fresh prompt.
        let specs = [(1, 5, vec![3, 7]), (3, 7, vec![0, 9]), (1, 2, vec![5]), (2, 2, vec![11])];
        let mut start = 0;
        let sequences: Vec<SequenceSpan> = specs
            .iter()
            .map(|(rows, context, blocks)| {
                let span = SequenceSpan { query_start_idx: start, num_query_tokens: *rows, context_len: *context, block_table: blocks.clone() };
                start += rows;
                span
            })
            .collect();
        let layout = AttentionLayout { sequences, block_size, scale: 0.35, sliding_window: None, device_metadata: None };
        let q = Tensor::randn(0f32, 1.0, (start, heads, dim), &Device::Cpu).unwrap();
        let want = paged_attention(&q, &k_cache, &v_cache, &layout).unwrap();
        let got = attend(&q, &k_cache, &v_cache, &layout).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }
}
