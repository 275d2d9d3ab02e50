//! One rank's model in a tensor-parallel group, built from the loaded single-device
//! [`Transformer`] by slicing its weights per the [`ShardSpec`], and its forward pass.
//!
//! Each rank holds its share of attention heads (q/k/v rows, o_proj columns), of KV heads (its
//! KV pool holds only those heads) and of MLP features (gate/up rows, down_proj columns), the
//! replicated embeddings and norms, and its vocabulary rows of the output projection. Per block
//! the forward issues two all-reduces (sum): after attention's o-projection and after the MLP's
//! down projection, before the (Gemma) post-norms and the residual add; then one all-gather of
//! the vocabulary-sharded logits. The blocks reuse `Attention` and `Mlp` unchanged: with a
//! rank's head counts and sliced weights they compute the rank's partial sums.
//!
//! Owns: slicing onto the rank's device (dense weights narrowed; quantized weights cut from
//! their raw blocks, never requantized), the rank forward. Does not own: the split itself
//! (`shard_spec`), the transport (`collective`, `nccl`), running the ranks (`group`).
//!
//! Invariants: every rank runs this same code, so collectives are issued in the same order
//! (`CollectiveTag`s are checked by the collective); the replicated residual stream is
//! identical on every rank because every rank receives the same reduced tensor.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::collective::{Collective, CollectiveTag};
use super::shard_spec::{ShardSpec, WeightLayout, WeightShard};
use crate::attention::{Attention, QkvProj};
use crate::config::ModelConfig;
use crate::forward_batch::ForwardBatch;
use crate::kv_cache::PagedKvCache;
use crate::layers::{Embedding, GateUp, Linear, LinearWeight, Mlp, RmsNorm};
use crate::transformer::Transformer;
use crate::{ModelError, Result};

/// The weight layout of a loaded model, read from its structure.
pub fn weight_layout(model: &Transformer) -> WeightLayout {
    let first = model.blocks.first();
    let qkv_bias = first.is_some_and(|b| match &b.attn.qkv {
        QkvProj::Separate { q, .. } => q.bias.is_some(),
        QkvProj::Fused(qkv) => qkv.bias.is_some(),
    });
    WeightLayout {
        fused_qkv: first.is_some_and(|b| matches!(b.attn.qkv, QkvProj::Fused(_))),
        fused_gate_up: first.is_some_and(|b| matches!(b.mlp.gate_up, GateUp::Fused(_))),
        qkv_bias,
        qk_norm: first.is_some_and(|b| b.attn.q_norm.is_some()),
        sandwich_norms: first.is_some_and(|b| b.post_attn_norm.is_some()),
        lm_head_tied: model.lm_head_tied,
    }
}

/// The shard spec of a loaded model over `world_size` ranks (refuses shapes that do not divide).
pub fn shard_spec(model: &Transformer, world_size: usize) -> Result<ShardSpec> {
    ShardSpec::new(&model.config, weight_layout(model), world_size)
}

struct ShardedBlock {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: Option<RmsNorm>,
    pre_mlp_norm: RmsNorm,
    mlp: Mlp,
    post_mlp_norm: Option<RmsNorm>,
}

/// One rank's part of a model.
pub struct ShardedTransformer {
    rank: usize,
    world_size: usize,
    /// The full model's config with this rank's head, KV head and MLP counts (the KV pool's
    /// shape).
    rank_config: ModelConfig,
    embed: Embedding,
    embed_scale: Option<f64>,
    blocks: Vec<ShardedBlock>,
    norm: RmsNorm,
    /// This rank's vocabulary rows (all of them when the spec replicates the projection).
    lm_head: Linear,
    vocab_sharded: bool,
    dtype: DType,
}

/// Builds a rank's slice of the linear layer `prefix` (`{prefix}.weight`, `{prefix}.bias`) on
/// `device`: dense weights are narrowed, quantized ones cut from their raw blocks.
fn shard_linear(linear: &Linear, prefix: &str, spec: &ShardSpec, rank: usize, device: &Device) -> Result<Linear> {
    let bias_shard = match &linear.bias {
        Some(_) => Some(spec.weight(&format!("{prefix}.bias"))?),
        None => None,
    };
    slice_linear(linear, spec.weight(&format!("{prefix}.weight"))?, bias_shard, rank, spec.world_size, device)
}

/// `linear` cut per `shard` (and its bias per `bias_shard`) for `rank`, on `device`.
fn slice_linear(
    linear: &Linear,
    shard: &WeightShard,
    bias_shard: Option<&WeightShard>,
    rank: usize,
    world_size: usize,
    device: &Device,
) -> Result<Linear> {
    let weight = match (&linear.weight, linear.weight.quantized_blocks()?) {
        (_, Some(blocks)) => {
            let part = shard.take_blocks(&blocks, rank, world_size)?.to_qtensor(device)?;
            LinearWeight::from_arc(std::sync::Arc::new(part))?
        }
        (LinearWeight::Candle(QMatMul::TensorF16(t)), None) => {
            LinearWeight::Candle(QMatMul::TensorF16(shard.take(t, rank, world_size)?.to_device(device)?))
        }
        (LinearWeight::Candle(QMatMul::Tensor(t)), None) => {
            LinearWeight::Candle(QMatMul::Tensor(shard.take(t, rank, world_size)?.to_device(device)?))
        }
        _ => return Err(ModelError::TensorParallel(format!("tensor `{}` has an unknown storage", shard.name))),
    };
    let bias = match (&linear.bias, bias_shard) {
        (Some(bias), Some(bias_shard)) => Some(bias_shard.take(bias, rank, world_size)?.to_device(device)?),
        (Some(_), None) => return Err(ModelError::TensorParallel(format!("`{}` has a bias the shard spec lacks", shard.name))),
        (None, _) => None,
    };
    Ok(Linear::new(weight, bias))
}

impl ShardedTransformer {
    /// Rank `rank`'s model on `device`: `model`'s weights (on the CPU, or already on `device`)
    /// sliced per `spec` (from [`shard_spec`]); replicated weights are copied to `device`.
    pub fn from_full(model: &Transformer, spec: &ShardSpec, rank: usize, device: &Device) -> Result<Self> {
        if rank >= spec.world_size {
            return Err(ModelError::TensorParallel(format!("rank {rank} of a {}-rank group", spec.world_size)));
        }
        let local = spec.rank_shape;
        let mut blocks = Vec::with_capacity(model.blocks.len());
        for (layer_idx, block) in model.blocks.iter().enumerate() {
            let p = format!("model.layers.{layer_idx}");
            let attn = &block.attn;
            let qkv = match &attn.qkv {
                QkvProj::Separate { q, k, v } => QkvProj::Separate {
                    q: shard_linear(q, &format!("{p}.self_attn.q_proj"), spec, rank, device)?,
                    k: shard_linear(k, &format!("{p}.self_attn.k_proj"), spec, rank, device)?,
                    v: shard_linear(v, &format!("{p}.self_attn.v_proj"), spec, rank, device)?,
                },
                QkvProj::Fused(qkv) => QkvProj::Fused(shard_linear(qkv, &format!("{p}.self_attn.qkv_proj"), spec, rank, device)?),
            };
            let gate_up = match &block.mlp.gate_up {
                GateUp::Separate { gate, up } => GateUp::Separate {
                    gate: shard_linear(gate, &format!("{p}.mlp.gate_proj"), spec, rank, device)?,
                    up: shard_linear(up, &format!("{p}.mlp.up_proj"), spec, rank, device)?,
                },
                GateUp::Fused(gate_up) => GateUp::Fused(shard_linear(gate_up, &format!("{p}.mlp.gate_up_proj"), spec, rank, device)?),
            };
            blocks.push(ShardedBlock {
                input_norm: block.input_norm.to_device(device)?,
                attn: Attention {
                    qkv,
                    o: shard_linear(&attn.o, &format!("{p}.self_attn.o_proj"), spec, rank, device)?,
                    q_norm: attn.q_norm.as_ref().map(|n| n.to_device(device)).transpose()?,
                    k_norm: attn.k_norm.as_ref().map(|n| n.to_device(device)).transpose()?,
                    rope: attn.rope.to_device(device)?,
                    num_heads: local.num_heads,
                    num_kv_heads: local.num_kv_heads,
                    head_dim: attn.head_dim,
                    scale: attn.scale,
                    sliding_window: attn.sliding_window,
                },
                post_attn_norm: block.post_attn_norm.as_ref().map(|n| n.to_device(device)).transpose()?,
                pre_mlp_norm: block.pre_mlp_norm.to_device(device)?,
                mlp: Mlp {
                    gate_up,
                    down: shard_linear(&block.mlp.down, &format!("{p}.mlp.down_proj"), spec, rank, device)?,
                    activation: block.mlp.activation,
                },
                post_mlp_norm: block.post_mlp_norm.as_ref().map(|n| n.to_device(device)).transpose()?,
            });
        }
        let lm_head = slice_linear(&model.lm_head, &spec.lm_head, None, rank, spec.world_size, device)?;
        let mut rank_config = model.config.clone();
        rank_config.num_heads = local.num_heads;
        rank_config.num_kv_heads = local.num_kv_heads;
        rank_config.intermediate_size = local.intermediate_size;
        Ok(Self {
            rank,
            world_size: spec.world_size,
            rank_config,
            embed: model.embed.to_device(device)?,
            embed_scale: model.embed_scale,
            blocks,
            norm: model.norm.to_device(device)?,
            lm_head,
            vocab_sharded: spec.vocab_sharded(),
            dtype: model.dtype,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The model's config with this rank's head, KV head and MLP counts.
    pub fn rank_config(&self) -> &ModelConfig {
        &self.rank_config
    }

    /// A KV pool for this rank: its KV heads only.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize, dtype: DType, device: &Device) -> Result<PagedKvCache> {
        PagedKvCache::new(&self.rank_config, num_blocks, block_size, dtype, device)
    }

    /// Runs this rank's part of one step; every rank of the group must call it with the same
    /// batch. Returns the full F32 logits `[batch.num_logit_rows, vocab_size]` on every rank.
    pub fn forward(&self, batch: &ForwardBatch, kv_cache: &PagedKvCache, comm: &dyn Collective) -> Result<Tensor> {
        if comm.rank() != self.rank || comm.world_size() != self.world_size {
            return Err(ModelError::TensorParallel(format!(
                "rank {} of {} was given the collective of rank {} of {}",
                self.rank,
                self.world_size,
                comm.rank(),
                comm.world_size()
            )));
        }
        if kv_cache.layers.len() != self.blocks.len() {
            return Err(ModelError::InvalidBatch(format!("KV pool has {} layers, model has {}", kv_cache.layers.len(), self.blocks.len())));
        }
        // [num_tokens, hidden], replicated on every rank
        let mut residual = self.embed.forward(&batch.token_ids, self.dtype)?;
        if let Some(scale) = self.embed_scale {
            residual = (residual * scale)?;
        }
        for (layer_idx, (block, (k_cache, v_cache))) in self.blocks.iter().zip(&kv_cache.layers).enumerate() {
            let normed = block.input_norm.forward(&residual)?;
            // [num_tokens, hidden]: this rank's heads' share of the o-projection
            let partial = block.attn.forward(&normed, None, batch, k_cache, v_cache)?;
            let mut h = comm.all_reduce_sum(&partial, CollectiveTag::AttentionOutput { layer_idx })?;
            if let Some(norm) = &block.post_attn_norm {
                h = norm.forward(&h)?;
            }
            residual = (h + residual)?;
            let normed = block.pre_mlp_norm.forward(&residual)?;
            // [num_tokens, hidden]: this rank's features' share of the down projection
            let partial = block.mlp.forward(&normed, None)?;
            let mut m = comm.all_reduce_sum(&partial, CollectiveTag::MlpOutput { layer_idx })?;
            if let Some(norm) = &block.post_mlp_norm {
                m = norm.forward(&m)?;
            }
            residual = (m + residual)?;
        }
        if batch.num_logit_rows == 0 {
            // No collective follows, on any rank: every rank sees the same batch.
            return Ok(Tensor::zeros((0, self.rank_config.vocab_size), DType::F32, &Device::Cpu)?);
        }
        // [num_logit_rows, hidden]
        let x = self.norm.forward(&residual.index_select(&batch.logit_rows, 0)?)?;
        // [num_logit_rows, vocab_rows] -> [num_logit_rows, vocab]
        let logits = self.lm_head.forward(&x)?;
        let logits = match self.vocab_sharded {
            true => comm.all_gather(&logits, 1, CollectiveTag::Logits)?,
            false => logits,
        };
        Ok(logits.to_dtype(DType::F32)?)
    }
}
