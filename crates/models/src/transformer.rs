//! The decoder-only transformer all supported architectures instantiate. What differs between
//! architectures is described by [`ArchSpec`] (built by each file in `arch`), not by forks of
//! the forward pass.
//!
//! Block, Llama style:  h = x + attn(norm₁(x));            y = h + mlp(norm₂(h))
//! Block, Gemma style:  h = x + norm₂(attn(norm₁(x)));     y = h + norm₄(mlp(norm₃(h)))

use candle_core::{DType, Tensor};

use crate::attention::{Attention, QkvProj};
use crate::config::{LayerKind, ModelConfig};
use crate::forward_batch::ForwardBatch;
use crate::kv_cache::PagedKvCache;
use crate::layers::{Embedding, GateUp, Linear, Mlp, RmsNorm, Rope};
use crate::weights::{Bias, Weights};
use crate::{ModelError, Result};

/// How an architecture's weights are laid out and combined.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    pub qkv_bias: Bias,
    pub fused_qkv: bool,
    pub fused_gate_up: bool,
    pub qk_norm: bool,
    /// Gemma's four norms per block (post-attention and pre/post-MLP).
    pub sandwich_norms: bool,
    /// Multiply embeddings by sqrt(hidden_size) (Gemma).
    pub scale_embeddings: bool,
    /// Added to every RMSNorm weight at load (1.0 for Gemma's `1 + w` norms in HF files).
    pub norm_weight_offset: f64,
}

impl ArchSpec {
    pub const LLAMA: Self = Self {
        qkv_bias: Bias::None,
        fused_qkv: false,
        fused_gate_up: false,
        qk_norm: false,
        sandwich_norms: false,
        scale_embeddings: false,
        norm_weight_offset: 0.0,
    };
}

pub(crate) struct Block {
    pub(crate) input_norm: RmsNorm,
    pub(crate) attn: Attention,
    pub(crate) post_attn_norm: Option<RmsNorm>,
    pub(crate) pre_mlp_norm: RmsNorm,
    pub(crate) mlp: Mlp,
    pub(crate) post_mlp_norm: Option<RmsNorm>,
}

impl Block {
    /// One block on the residual stream. The stream arrives as `residual` plus the previous
    /// block's un-added output `delta` (None before the first block), so the add fuses into this
    /// block's first norm; returns the new `(delta, residual)` the same way.
    fn forward(
        &self,
        residual: &Tensor,
        delta: Option<&Tensor>,
        batch: &ForwardBatch,
        kv: &(Tensor, Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let (normed, residual) = match delta {
            Some(delta) => self.input_norm.forward_residual(delta, residual)?,
            None => (self.input_norm.forward(residual)?, residual.clone()),
        };
        let mut h = self.attn.forward(&normed, batch, &kv.0, &kv.1)?;
        if let Some(norm) = &self.post_attn_norm {
            h = norm.forward(&h)?;
        }
        let (normed, residual) = self.pre_mlp_norm.forward_residual(&h, &residual)?;
        let mut m = self.mlp.forward(&normed)?;
        if let Some(norm) = &self.post_mlp_norm {
            m = norm.forward(&m)?;
        }
        Ok((m, residual))
    }
}

pub struct Transformer {
    pub config: ModelConfig,
    pub(crate) embed: Embedding,
    pub(crate) embed_scale: Option<f64>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    /// The lm_head is the embedding table (tied), not a matrix of its own.
    pub(crate) lm_head_tied: bool,
    pub(crate) dtype: DType,
}

/// What the loaded weights occupy on their device, grouped by how a step reads them (the
/// bandwidth roofline of `hearth bench`). Bytes are as stored for compute: quantized blocks, or
/// dense elements in the compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightFootprint {
    /// Every block's matrices, biases and norms plus the final norm: read whole by every step.
    pub block_bytes: u64,
    /// Elements of the blocks' weight matrices (2 FLOPs each per token).
    pub block_matrix_weights: u64,
    /// The output projection, read whole by a step that computes logits. When tied it is the
    /// embedding table (same bytes, stored once).
    pub lm_head_bytes: u64,
    pub lm_head_weights: u64,
    pub lm_head_tied: bool,
    /// The token embedding table; looking up a token reads one row.
    pub embedding_bytes: u64,
    pub embedding_rows: u64,
}

impl Transformer {
    /// Builds the model from `weights`; every missing or misshapen tensor is reported together.
    pub fn load(config: ModelConfig, spec: ArchSpec, weights: Weights) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let device = weights.device().clone();
        let norm = |name: &str, dim: usize| -> Result<RmsNorm> {
            let w = weights.tensor(name, &[dim]);
            let w = if spec.norm_weight_offset != 0.0 { (w + spec.norm_weight_offset)? } else { w };
            Ok(RmsNorm::new(w, c.rms_norm_eps))
        };
        let freq_factors = weights.optional_tensor("rope_freqs.weight", &[c.head_dim / 2]);
        let global_rope = Rope::new(c, c.rope_theta, c.rope_scaling.as_ref(), freq_factors.as_ref(), &device)?;
        let local_rope = match c.rope_local_theta {
            Some(theta) => Rope::new(c, theta, None, None, &device)?,
            None => global_rope.clone(),
        };
        let embed = weights.embedding("model.embed_tokens.weight", c.vocab_size, c.hidden_size);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut blocks = Vec::with_capacity(c.num_layers);
        for (layer_idx, kind) in c.layer_kinds.iter().enumerate() {
            let p = format!("model.layers.{layer_idx}");
            let qkv = if spec.fused_qkv {
                QkvProj::Fused(weights.linear(&format!("{p}.self_attn.qkv_proj"), q_dim + 2 * kv_dim, c.hidden_size, spec.qkv_bias))
            } else {
                QkvProj::Separate {
                    q: weights.linear(&format!("{p}.self_attn.q_proj"), q_dim, c.hidden_size, spec.qkv_bias),
                    k: weights.linear(&format!("{p}.self_attn.k_proj"), kv_dim, c.hidden_size, spec.qkv_bias),
                    v: weights.linear(&format!("{p}.self_attn.v_proj"), kv_dim, c.hidden_size, spec.qkv_bias),
                }
            };
            let (rope, sliding_window) = match kind {
                LayerKind::Global => (global_rope.clone(), None),
                LayerKind::Sliding => (local_rope.clone(), c.sliding_window),
            };
            let attn = Attention {
                qkv,
                o: weights.linear(&format!("{p}.self_attn.o_proj"), c.hidden_size, q_dim, Bias::None),
                q_norm: spec.qk_norm.then(|| norm(&format!("{p}.self_attn.q_norm.weight"), c.head_dim)).transpose()?,
                k_norm: spec.qk_norm.then(|| norm(&format!("{p}.self_attn.k_norm.weight"), c.head_dim)).transpose()?,
                rope,
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                scale: c.attention_scale as f32,
                sliding_window,
            };
            let gate_up = if spec.fused_gate_up {
                GateUp::Fused(weights.linear(&format!("{p}.mlp.gate_up_proj"), 2 * c.intermediate_size, c.hidden_size, Bias::None))
            } else {
                GateUp::Separate {
                    gate: weights.linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, c.hidden_size, Bias::None),
                    up: weights.linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, c.hidden_size, Bias::None),
                }
            };
            let mlp = Mlp {
                gate_up,
                down: weights.linear(&format!("{p}.mlp.down_proj"), c.hidden_size, c.intermediate_size, Bias::None),
                activation: c.activation,
            };
            let (post_attn_norm, pre_mlp_norm, post_mlp_norm) = if spec.sandwich_norms {
                (
                    Some(norm(&format!("{p}.post_attention_layernorm.weight"), c.hidden_size)?),
                    norm(&format!("{p}.pre_feedforward_layernorm.weight"), c.hidden_size)?,
                    Some(norm(&format!("{p}.post_feedforward_layernorm.weight"), c.hidden_size)?),
                )
            } else {
                (None, norm(&format!("{p}.post_attention_layernorm.weight"), c.hidden_size)?, None)
            };
            blocks.push(Block {
                input_norm: norm(&format!("{p}.input_layernorm.weight"), c.hidden_size)?,
                attn,
                post_attn_norm,
                pre_mlp_norm,
                mlp,
                post_mlp_norm,
            });
        }
        let final_norm = norm("model.norm.weight", c.hidden_size)?;
        let lm_head_tied = c.tie_word_embeddings || !weights.contains("lm_head.weight");
        let lm_head = if lm_head_tied {
            embed.as_linear()?
        } else {
            weights.linear("lm_head", c.vocab_size, c.hidden_size, Bias::None)
        };
        let dtype = weights.dtype();
        weights.finish()?;
        Ok(Self {
            embed_scale: spec.scale_embeddings.then(|| (config.hidden_size as f64).sqrt()),
            config,
            embed,
            blocks,
            norm: final_norm,
            lm_head,
            lm_head_tied,
            dtype,
        })
    }

    /// The loaded weights' bytes and matrix sizes, by how a step reads them.
    pub fn weight_footprint(&self) -> WeightFootprint {
        let mut block_bytes = self.norm.stored_bytes();
        let mut block_matrix_weights = 0;
        for block in &self.blocks {
            let attn = &block.attn;
            let mut linears: Vec<&Linear> = match &attn.qkv {
                QkvProj::Separate { q, k, v } => vec![q, k, v],
                QkvProj::Fused(qkv) => vec![qkv],
            };
            linears.push(&attn.o);
            match &block.mlp.gate_up {
                GateUp::Separate { gate, up } => linears.extend([gate, up]),
                GateUp::Fused(gate_up) => linears.push(gate_up),
            }
            linears.push(&block.mlp.down);
            let norms = [Some(&block.input_norm), attn.q_norm.as_ref(), attn.k_norm.as_ref(), block.post_attn_norm.as_ref()]
                .into_iter()
                .chain([Some(&block.pre_mlp_norm), block.post_mlp_norm.as_ref()])
                .flatten();
            block_bytes += linears.iter().map(|l| l.stored_bytes()).sum::<u64>() + norms.map(RmsNorm::stored_bytes).sum::<u64>();
            block_matrix_weights += linears.iter().map(|l| l.num_weights()).sum::<u64>();
        }
        WeightFootprint {
            block_bytes,
            block_matrix_weights,
            lm_head_bytes: self.lm_head.stored_bytes(),
            lm_head_weights: self.lm_head.num_weights(),
            lm_head_tied: self.lm_head_tied,
            embedding_bytes: self.embed.stored_bytes(),
            embedding_rows: self.embed.num_rows() as u64,
        }
    }

    /// Runs one step. Returns F32 logits `[batch.num_logit_rows, vocab_size]`.
    pub fn forward(&self, batch: &ForwardBatch, kv_cache: &PagedKvCache) -> Result<Tensor> {
        if kv_cache.layers.len() != self.blocks.len() {
            return Err(ModelError::InvalidBatch(format!(
                "KV pool has {} layers, model has {}",
                kv_cache.layers.len(),
                self.blocks.len()
            )));
        }
        // [num_tokens, hidden]
        let mut residual = self.embed.forward(&batch.token_ids, self.dtype)?;
        if let Some(scale) = self.embed_scale {
            residual = (residual * scale)?;
        }
        let mut delta = None;
        for (block, kv) in self.blocks.iter().zip(&kv_cache.layers) {
            let (d, r) = block.forward(&residual, delta.as_ref(), batch, kv)?;
            (delta, residual) = (Some(d), r);
        }
        // Only rows that need logits go through the final norm and the vocabulary projection.
        // [num_logit_rows, hidden]
        let rows = |t: &Tensor| t.index_select(&batch.logit_rows, 0);
        let x = match &delta {
            Some(delta) => self.norm.forward_residual(&rows(delta)?, &rows(&residual)?)?.0,
            None => self.norm.forward(&rows(&residual)?)?,
        };
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}
