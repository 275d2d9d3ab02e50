//! Self-attention over the paged KV pool: project, (optionally) normalize q/k per head, rotate,
//! write K/V into the pool, attend through block tables, project out.
//!
//! There is no contiguous-cache path: prompts, chunks and single generated tokens all go
//! through `hearth_kernels::paged_attention`.

use candle_core::Tensor;
use hearth_kernels::fused::{self, RopeKvInputs};
use hearth_kernels::{paged_attention, prefill_attention, write_kv, AttentionLayout};

use crate::forward_batch::ForwardBatch;
use crate::layers::{Linear, RmsNorm, Rope};
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
    /// `x` `[num_tokens, hidden]` -> `[num_tokens, hidden]`; writes this step's K/V to the pool.
    pub fn forward(&self, x: &Tensor, batch: &ForwardBatch, k_cache: &Tensor, v_cache: &Tensor) -> Result<Tensor> {
        let num_tokens = x.dim(0)?;
        let (q_dim, kv_dim) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
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
        let layout = batch.attention_layout(self.scale, self.sliding_window);
        let q = q.contiguous()?;
        let attn = match prompt_heavy(&layout) {
            true => prefill_attention::prefill_attention(&q, k_cache, v_cache, &layout)?,
            false => paged_attention(&q, k_cache, v_cache, &layout)?,
        };
        // [num_tokens, num_heads * head_dim]
        self.o.forward(&attn.reshape((num_tokens, q_dim))?)
    }
}

/// Whether most of the step's query rows are prompt rows (sequences with more than one new
/// token): those steps take the tiled prefill kernel, which reads each K/V tile once for a
/// tile of rows; generation-heavy steps (and every replayed device graph: one row per
/// sequence) take the paged-attention kernel, which splits long contexts over the sequence.
/// Both compute the same attention (each is bound to the reference by GPU tests).
fn prompt_heavy(layout: &AttentionLayout) -> bool {
    let prompt_rows: usize = layout.sequences.iter().filter(|s| s.num_query_tokens > 1).map(|s| s.num_query_tokens).sum();
    let generation_rows = layout.sequences.iter().filter(|s| s.num_query_tokens == 1).count();
    prompt_rows > generation_rows
}
