//! The decoder-only transformer all supported architectures instantiate. What differs between
//! architectures is described by [`ArchSpec`] (built by each file in `arch`), not by forks of
//! the forward pass.
//!
//! Block, Llama style:  h = x + attn(norm₁(x));            y = h + mlp(norm₂(h))
//! Block, Gemma style:  h = x + norm₂(attn(norm₁(x)));     y = h + norm₄(mlp(norm₃(h)))

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

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
    pub(crate) fn forward(
        &self,
        residual: &Tensor,
        delta: Option<&Tensor>,
        batch: &ForwardBatch,
        kv: &(Tensor, Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let (normed, residual, int8) = self.input_norm.forward_for_int8_products(delta, residual, self.attn.reads_int8_rows())?;
        let mut h = self.attn.forward(&normed, int8.as_ref(), batch, &kv.0, &kv.1)?;
        if let Some(norm) = &self.post_attn_norm {
            h = norm.forward(&h)?;
        }
        let (normed, residual, int8) = self.pre_mlp_norm.forward_for_int8_products(Some(&h), &residual, self.mlp.reads_int8_rows())?;
        let mut m = self.mlp.forward(&normed, int8.as_ref())?;
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
        let whole = ModelPart { layers: 0..config.num_layers, embedding: true, head: true };
        let parts = load_parts(&config, spec, &weights, &whole)?;
        weights.finish()?;
        let (Some(embed), Some(head)) = (parts.embed, parts.head) else {
            return Err(ModelError::Unsupported("a whole model needs its embedding and head".into()));
        };
        Ok(Self {
            embed_scale: parts.embed_scale,
            config,
            embed,
            blocks: parts.blocks,
            norm: head.norm,
            lm_head: head.lm_head,
            lm_head_tied: head.tied,
            dtype: parts.dtype,
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
        check_kv_layers(kv_cache, self.blocks.len())?;
        let embedded = embed_tokens(&self.embed, self.embed_scale, batch, self.dtype)?;
        let stream = ResidualStream::start(embedded)?.through_blocks(&self.blocks, batch, &kv_cache.layers)?;
        stream.logits(&self.norm, &self.lm_head, batch)
    }
}

/// Which part of a model to build: a contiguous layer range, and whether the token embedding
/// (first stage) and the final norm + output projection (last stage) come with it.
pub(crate) struct ModelPart {
    pub(crate) layers: Range<usize>,
    pub(crate) embedding: bool,
    pub(crate) head: bool,
}

/// The final norm and the vocabulary projection.
pub(crate) struct Head {
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    /// The lm_head is the embedding table (tied), not a matrix of its own.
    pub(crate) tied: bool,
}

/// The weights of a [`ModelPart`], built; the caller decides how to `finish` the weights.
pub(crate) struct LoadedParts {
    pub(crate) embed: Option<Embedding>,
    pub(crate) embed_scale: Option<f64>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) head: Option<Head>,
    pub(crate) dtype: DType,
}

/// Builds `part` of the model from `weights`, reading only the tensors that part needs (a
/// tied head reads the embedding table even when the part has no embedding).
pub(crate) fn load_parts(config: &ModelConfig, spec: ArchSpec, weights: &Weights, part: &ModelPart) -> Result<LoadedParts> {
    config.validate()?;
    if part.layers.start > part.layers.end || part.layers.end > config.num_layers {
        return Err(ModelError::Unsupported(format!(
            "layer range {}..{} is not within the model's {} layers",
            part.layers.start, part.layers.end, config.num_layers
        )));
    }
    let c = config;
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
    let lm_head_tied = c.tie_word_embeddings || !weights.contains("lm_head.weight");
    let needs_table = part.embedding || (part.head && lm_head_tied);
    let table = needs_table.then(|| weights.embedding("model.embed_tokens.weight", c.vocab_size, c.hidden_size));
    let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut blocks = Vec::with_capacity(part.layers.len());
    for layer_idx in part.layers.clone() {
        let kind = c.layer_kinds.get(layer_idx).copied().unwrap_or(LayerKind::Global);
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
    let head = if part.head {
        let lm_head = match (&table, lm_head_tied) {
            (Some(table), true) => table.as_linear()?,
            _ => weights.linear("lm_head", c.vocab_size, c.hidden_size, Bias::None),
        };
        Some(Head { norm: norm("model.norm.weight", c.hidden_size)?, lm_head, tied: lm_head_tied })
    } else {
        None
    };
    Ok(LoadedParts {
        embed: if part.embedding { table } else { None },
        embed_scale: spec.scale_embeddings.then(|| (c.hidden_size as f64).sqrt()),
        blocks,
        head,
        dtype: weights.dtype(),
    })
}

/// Fails unless the KV pool holds exactly one layer per block about to run.
pub(crate) fn check_kv_layers(kv_cache: &PagedKvCache, num_blocks: usize) -> Result<()> {
    if kv_cache.layers.len() != num_blocks {
        return Err(ModelError::InvalidBatch(format!("KV pool has {} layers, model has {num_blocks}", kv_cache.layers.len())));
    }
    Ok(())
}

/// The batch's token ids embedded (and scaled, Gemma) in the residual stream's dtype for
/// activations of `dtype`. `[num_tokens, hidden]`
pub(crate) fn embed_tokens(embed: &Embedding, scale: Option<f64>, batch: &ForwardBatch, dtype: DType) -> Result<Tensor> {
    let embedded = embed.forward(&batch.token_ids, ResidualStream::dtype(dtype, batch.token_ids.device()))?;
    Ok(match scale {
        Some(scale) => (embedded * scale)?,
        None => embedded,
    })
}

/// The residual stream between blocks: `residual` plus the last block's un-added output
/// `delta` (None before the first block, or after [`ResidualStream::materialize`]).
///
/// On a GPU whose activations are BF16/F16 the stream itself is F32 (as on the CPU): each
/// block's output is added to it in F32 by its next norm (`RmsNorm::forward_residual`), so the
/// sum of many layers is not rounded to 8 bits of mantissa after every block.
pub(crate) struct ResidualStream {
    /// `[num_tokens, hidden]`
    residual: Tensor,
    delta: Option<Tensor>,
}

impl ResidualStream {
    /// The stream's dtype for activations of `dtype` on `device`: F32 for BF16/F16 on a GPU.
    /// (Embeddings are looked up in it directly, so quantized rows are not rounded on the way.)
    pub(crate) fn dtype(dtype: DType, device: &Device) -> DType {
        match dtype {
            DType::BF16 | DType::F16 if device.is_cuda() => DType::F32,
            other => other,
        }
    }

    /// A stream that starts from a whole hidden state (embeddings, or a previous stage's output).
    pub(crate) fn start(hidden: Tensor) -> Result<Self> {
        let residual = hidden.to_dtype(Self::dtype(hidden.dtype(), hidden.device()))?;
        Ok(Self { residual, delta: None })
    }

    /// Runs `blocks` in order, block `i` on `kv_layers[i]`.
    pub(crate) fn through_blocks(self, blocks: &[Block], batch: &ForwardBatch, kv_layers: &[(Tensor, Tensor)]) -> Result<Self> {
        let Self { mut residual, mut delta } = self;
        for (block, kv) in blocks.iter().zip(kv_layers) {
            let (d, r) = block.forward(&residual, delta.as_ref(), batch, kv)?;
            (delta, residual) = (Some(d), r);
        }
        Ok(Self { residual, delta })
    }

    /// The hidden state with the pending delta added — the same sum the next block's first
    /// norm would form — in the activations' dtype `[num_tokens, hidden]`. On a GPU that rounds
    /// the F32 stream once to BF16/F16 (a stage boundary's only change of value); elsewhere it
    /// changes nothing.
    pub(crate) fn materialize(self, dtype: DType) -> Result<Tensor> {
        let sum = match &self.delta {
            Some(delta) => (delta.to_dtype(self.residual.dtype())? + &self.residual)?,
            None => self.residual,
        };
        Ok(sum.to_dtype(dtype)?)
    }

    /// Only rows that need logits go through the final norm and the vocabulary projection.
    /// F32 `[num_logit_rows, vocab]`
    pub(crate) fn logits(self, norm: &RmsNorm, lm_head: &Linear, batch: &ForwardBatch) -> Result<Tensor> {
        // [num_logit_rows, hidden]; logit rows ascend and name each row at most once, so as many
        // as there are rows means all of them, in order (every generation step).
        let rows = |t: &Tensor| {
            if batch.num_logit_rows == t.dim(0)? {
                Ok(t.clone())
            } else {
                t.index_select(&batch.logit_rows, 0)
            }
        };
        let normed = || match &self.delta {
            Some(delta) => Ok(norm.forward_residual(&rows(delta)?, &rows(&self.residual)?)?.0),
            None => norm.forward(&rows(&self.residual)?),
        };
        lm_head.forward_rows_f32(normed, batch.num_logit_rows)
    }
}
