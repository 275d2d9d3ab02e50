//! Shard specs: how a model's weights are divided among the ranks of a tensor-parallel group,
//! derived from the single-device description (`ModelConfig` + [`WeightLayout`]), so the model
//! files do not fork.
//!
//! The scheme (Megatron-style): q/k/v and gate/up are column-parallel (each rank keeps a
//! contiguous range of output rows: whole attention heads, whole KV heads, a slice of the
//! intermediate features); o_proj and down_proj are row-parallel (each rank keeps the matching
//! input columns and produces a partial sum, all-reduced after the projection); the vocabulary
//! projection is split by vocabulary rows and gathered (replicated when the vocabulary does not
//! divide); embeddings and norms are replicated.
//!
//! Owns: the per-weight split, validation (refusals name the model and the numbers), the
//! coverage check, and slicing a full tensor into a rank's part. Does not own: building or
//! running a rank's model (`sharded`).
//!
//! Invariants (checked by [`ShardSpec::check_coverage`]): a sharded weight's split axis is the
//! concatenation of its segments (fused q|k|v, gate|up); every segment divides evenly; over all
//! ranks, every index along the axis is owned by exactly one rank. Replicated weights are held
//! whole by every rank.

use std::ops::Range;

use candle_core::Tensor;

use crate::config::ModelConfig;
use crate::layers::QuantizedBlocks;
use crate::{ModelError, Result};

/// How one weight is divided among the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// Every rank holds the whole tensor.
    Replicated,
    /// Divided along `axis`, which is the concatenation of `segments` (one segment for a plain
    /// weight; q|k|v or gate|up for fused ones). Each segment is cut into `world_size` equal
    /// pieces; a rank's part is its piece of every segment, concatenated in segment order.
    Sharded { axis: usize, segments: Vec<usize> },
}

/// One weight (by Hugging Face name), its full shape and its split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightShard {
    pub name: String,
    pub shape: Vec<usize>,
    pub split: Split,
}

impl WeightShard {
    fn replicated(name: String, shape: &[usize]) -> Self {
        Self { name, shape: shape.to_vec(), split: Split::Replicated }
    }

    fn sharded(name: String, shape: &[usize], axis: usize, segments: &[usize]) -> Self {
        Self { name, shape: shape.to_vec(), split: Split::Sharded { axis, segments: segments.to_vec() } }
    }

    /// The index ranges along the split axis that `rank` owns (the whole tensor when replicated:
    /// one range over axis 0).
    pub fn rank_ranges(&self, rank: usize, world_size: usize) -> Vec<Range<usize>> {
        match &self.split {
            Split::Replicated => {
                let whole_axis = 0..self.shape.first().copied().unwrap_or(1);
                vec![whole_axis]
            }
            Split::Sharded { segments, .. } => {
                let mut start = 0;
                segments
                    .iter()
                    .map(|&len| {
                        let piece = len / world_size;
                        let range = start + rank * piece..start + (rank + 1) * piece;
                        start += len;
                        range
                    })
                    .collect()
            }
        }
    }

    /// Shape of `rank`'s part.
    pub fn rank_shape(&self, rank: usize, world_size: usize) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if let Split::Sharded { axis, .. } = &self.split {
            shape[*axis] = self.rank_ranges(rank, world_size).iter().map(|r| r.len()).sum();
        }
        shape
    }

    /// `rank`'s part of `full` (which must have this weight's full shape).
    pub fn take(&self, full: &Tensor, rank: usize, world_size: usize) -> Result<Tensor> {
        if full.dims() != self.shape.as_slice() {
            return Err(ModelError::TensorParallel(format!(
                "tensor `{}` has shape {:?}, the shard spec expects {:?}",
                self.name,
                full.dims(),
                self.shape
            )));
        }
        let Split::Sharded { axis, .. } = &self.split else { return Ok(full.clone()) };
        let pieces = self
            .rank_ranges(rank, world_size)
            .into_iter()
            .map(|r| full.narrow(*axis, r.start, r.len()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(match pieces.as_slice() {
            [one] => one.contiguous()?,
            many => Tensor::cat(many, *axis)?,
        })
    }

    /// Rank `rank`'s part of a quantized 2-D weight, cut from its raw GGUF blocks: whole rows
    /// for a row split; for a column split, each row's blocks in the rank's column ranges
    /// (which must fall on block boundaries). The blocks are copied, never requantized, so a
    /// rank computes exactly the products the full weight would for its part.
    pub fn take_blocks(&self, full: &QuantizedBlocks, rank: usize, world_size: usize) -> Result<QuantizedBlocks> {
        let refuse = |why: String| ModelError::TensorParallel(format!("tensor `{}` ({:?}): {why}", self.name, full.dtype));
        if full.dims != self.shape {
            return Err(refuse(format!("has shape {:?}, the shard spec expects {:?}", full.dims, self.shape)));
        }
        let Split::Sharded { axis, .. } = &self.split else {
            return Ok(QuantizedBlocks { dtype: full.dtype, dims: full.dims.clone(), bytes: full.bytes.clone() });
        };
        let &[num_rows, num_cols] = full.dims.as_slice() else {
            return Err(refuse("only 2-D quantized weights can be sliced".into()));
        };
        let (block_len, block_bytes) = (full.dtype.block_size(), full.dtype.type_size());
        let row_bytes = num_cols / block_len * block_bytes;
        if num_cols % block_len != 0 || full.bytes.len() != num_rows * row_bytes {
            return Err(refuse(format!("{} bytes do not hold {num_rows} rows of {num_cols} columns", full.bytes.len())));
        }
        let ranges = self.rank_ranges(rank, world_size);
        let mut bytes = Vec::with_capacity(full.bytes.len() / world_size);
        match axis {
            0 => ranges.iter().for_each(|r| bytes.extend_from_slice(&full.bytes[r.start * row_bytes..r.end * row_bytes])),
            _ => {
                if let Some(r) = ranges.iter().find(|r| r.start % block_len != 0 || r.len() % block_len != 0) {
                    return Err(refuse(format!(
                        "rank {rank}'s columns {r:?} do not fall on the {block_len}-column quantization blocks; \
                         use fewer ranks or a model with a block-aligned size"
                    )));
                }
                for row in full.bytes.chunks_exact(row_bytes) {
                    for r in &ranges {
                        bytes.extend_from_slice(&row[r.start / block_len * block_bytes..r.end / block_len * block_bytes]);
                    }
                }
            }
        }
        Ok(QuantizedBlocks { dtype: full.dtype, dims: self.rank_shape(rank, world_size), bytes })
    }
}

/// Which weights a model has, beyond what its config says (read from the loaded model, see
/// `sharded::weight_layout`, or from `ArchSpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightLayout {
    /// One `qkv_proj` matrix (Phi-3) instead of q/k/v.
    pub fused_qkv: bool,
    /// One `gate_up_proj` matrix (Phi-3) instead of gate/up.
    pub fused_gate_up: bool,
    /// q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// Per-head q/k norms (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma's post-attention and pre/post-feed-forward norms.
    pub sandwich_norms: bool,
    /// The vocabulary projection is the embedding table.
    pub lm_head_tied: bool,
}

/// What one rank computes: its share of heads, KV heads, MLP features and vocabulary rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    /// Rows of the vocabulary projection per rank (the whole vocabulary when replicated).
    pub vocab_rows: usize,
}

/// The split of every weight of one model over `world_size` ranks.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub model_name: &'static str,
    pub world_size: usize,
    /// Every tensor the model reads, in load order (Hugging Face names).
    pub weights: Vec<WeightShard>,
    /// The vocabulary projection: `lm_head.weight`, or `model.embed_tokens.weight` when tied (the
    /// embedding lookup then uses the replicated table, the projection this split of it).
    pub lm_head: WeightShard,
    pub rank_shape: RankShape,
}

impl ShardSpec {
    /// The spec for `config` over `world_size` ranks; refuses shapes whose heads, KV heads or
    /// MLP width do not divide, listing every problem.
    pub fn new(config: &ModelConfig, layout: WeightLayout, world_size: usize) -> Result<Self> {
        let c = config;
        let model_name = c.arch.name();
        if world_size == 0 {
            return Err(ModelError::TensorParallel(format!("cannot split {model_name} across 0 ranks")));
        }
        let mut problems = Vec::new();
        if !c.num_heads.is_multiple_of(world_size) {
            problems.push(format!("its {} attention heads are not divisible by {world_size}", c.num_heads));
        }
        if !c.num_kv_heads.is_multiple_of(world_size) {
            problems
                .push(format!("its {} key/value heads are not divisible by {world_size} (each rank holds whole KV heads)", c.num_kv_heads));
        }
        if !c.intermediate_size.is_multiple_of(world_size) {
            problems.push(format!("its MLP intermediate size {} is not divisible by {world_size}", c.intermediate_size));
        }
        if !problems.is_empty() {
            return Err(ModelError::TensorParallel(format!(
                "cannot split {model_name} across {world_size} tensor-parallel ranks: {}",
                problems.join("; ")
            )));
        }
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut weights = vec![WeightShard::replicated("model.embed_tokens.weight".into(), &[c.vocab_size, hidden])];
        for layer_idx in 0..c.num_layers {
            let p = format!("model.layers.{layer_idx}");
            let attn = format!("{p}.self_attn");
            // Column-parallel: output rows, whole heads per rank.
            let projections: Vec<(String, Vec<usize>)> = if layout.fused_qkv {
                vec![(format!("{attn}.qkv_proj"), vec![q_dim, kv_dim, kv_dim])]
            } else {
                vec![
                    (format!("{attn}.q_proj"), vec![q_dim]),
                    (format!("{attn}.k_proj"), vec![kv_dim]),
                    (format!("{attn}.v_proj"), vec![kv_dim]),
                ]
            };
            for (prefix, segments) in projections {
                let rows: usize = segments.iter().sum();
                weights.push(WeightShard::sharded(format!("{prefix}.weight"), &[rows, hidden], 0, &segments));
                if layout.qkv_bias {
                    weights.push(WeightShard::sharded(format!("{prefix}.bias"), &[rows], 0, &segments));
                }
            }
            // Row-parallel: input columns; the partial sums are all-reduced.
            weights.push(WeightShard::sharded(format!("{attn}.o_proj.weight"), &[hidden, q_dim], 1, &[q_dim]));
            if layout.qk_norm {
                weights.push(WeightShard::replicated(format!("{attn}.q_norm.weight"), &[c.head_dim]));
                weights.push(WeightShard::replicated(format!("{attn}.k_norm.weight"), &[c.head_dim]));
            }
            if layout.fused_gate_up {
                weights.push(WeightShard::sharded(format!("{p}.mlp.gate_up_proj.weight"), &[2 * inter, hidden], 0, &[inter, inter]));
            } else {
                weights.push(WeightShard::sharded(format!("{p}.mlp.gate_proj.weight"), &[inter, hidden], 0, &[inter]));
                weights.push(WeightShard::sharded(format!("{p}.mlp.up_proj.weight"), &[inter, hidden], 0, &[inter]));
            }
            weights.push(WeightShard::sharded(format!("{p}.mlp.down_proj.weight"), &[hidden, inter], 1, &[inter]));
            let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
            if layout.sandwich_norms {
                norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
            }
            for norm in norms {
                weights.push(WeightShard::replicated(format!("{p}.{norm}.weight"), &[hidden]));
            }
        }
        weights.push(WeightShard::replicated("model.norm.weight".into(), &[hidden]));
        let lm_head_name = if layout.lm_head_tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let vocab_sharded = c.vocab_size.is_multiple_of(world_size);
        let lm_head = match vocab_sharded {
            true => WeightShard::sharded(lm_head_name.into(), &[c.vocab_size, hidden], 0, &[c.vocab_size]),
            false => WeightShard::replicated(lm_head_name.into(), &[c.vocab_size, hidden]),
        };
        if !layout.lm_head_tied {
            weights.push(lm_head.clone());
        }
        let spec = Self {
            model_name,
            world_size,
            weights,
            lm_head,
            rank_shape: RankShape {
                num_heads: c.num_heads / world_size,
                num_kv_heads: c.num_kv_heads / world_size,
                intermediate_size: inter / world_size,
                vocab_rows: if vocab_sharded { c.vocab_size / world_size } else { c.vocab_size },
            },
        };
        spec.check_coverage()?;
        Ok(spec)
    }

    /// Whether the vocabulary projection is split (and its logits gathered).
    pub fn vocab_sharded(&self) -> bool {
        matches!(self.lm_head.split, Split::Sharded { .. })
    }

    /// The entry for `name`, or an error naming it.
    pub fn weight(&self, name: &str) -> Result<&WeightShard> {
        self.weights
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| ModelError::TensorParallel(format!("the {} shard spec has no entry for tensor `{name}`", self.model_name)))
    }

    /// Checks that every sharded weight's axis is exactly covered: each index owned by one rank.
    pub fn check_coverage(&self) -> Result<()> {
        let mut problems = Vec::new();
        for weight in self.weights.iter().chain([&self.lm_head]) {
            let Split::Sharded { axis, segments } = &weight.split else { continue };
            let Some(&axis_len) = weight.shape.get(*axis) else {
                problems.push(format!("`{}`: split axis {axis} of a {}-d tensor", weight.name, weight.shape.len()));
                continue;
            };
            if segments.iter().sum::<usize>() != axis_len {
                problems.push(format!("`{}`: segments {segments:?} do not add up to axis length {axis_len}", weight.name));
                continue;
            }
            if let Some(bad) = segments.iter().find(|&&s| !s.is_multiple_of(self.world_size)) {
                problems.push(format!("`{}`: segment of {bad} does not divide over {} ranks", weight.name, self.world_size));
                continue;
            }
            let mut owners = vec![0u32; axis_len];
            for rank in 0..self.world_size {
                for range in weight.rank_ranges(rank, self.world_size) {
                    owners[range].iter_mut().for_each(|n| *n += 1);
                }
            }
            if let Some(idx) = owners.iter().position(|&n| n != 1) {
                problems.push(format!("`{}`: index {idx} of axis {axis} is owned by {} ranks", weight.name, owners[idx]));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ModelError::TensorParallel(format!("bad shard spec for {}: {}", self.model_name, problems.join("; ")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Activation, Architecture, LayerKind};
    use candle_core::Device;

    fn config(num_heads: usize, num_kv_heads: usize, intermediate_size: usize, vocab_size: usize) -> ModelConfig {
        ModelConfig {
            arch: Architecture::Llama,
            vocab_size,
            hidden_size: 16,
            intermediate_size,
            num_layers: 2,
            num_heads,
            num_kv_heads,
            head_dim: 4,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_local_theta: None,
            rope_scaling: None,
            context_length: 64,
            tie_word_embeddings: false,
            sliding_window: None,
            layer_kinds: vec![LayerKind::Global; 2],
            attention_scale: 0.5,
            activation: Activation::Silu,
        }
    }

    const FUSED: WeightLayout =
        WeightLayout { fused_qkv: true, fused_gate_up: true, qkv_bias: true, qk_norm: false, sandwich_norms: false, lm_head_tied: false };

    #[test]
    fn fused_qkv_rank_parts_take_each_segments_piece() {
        let spec = ShardSpec::new(&config(4, 2, 8, 10), FUSED, 2).unwrap();
        let qkv = spec.weight("model.layers.0.self_attn.qkv_proj.weight").unwrap();
        // q: 16 rows, k: 8, v: 8; rank 1 takes q heads 2..4, kv head 1 of k and of v.
        assert_eq!(qkv.rank_ranges(1, 2), vec![8..16, 20..24, 28..32]);
        assert_eq!(qkv.rank_shape(1, 2), vec![16, 16]);
        let full = Tensor::arange(0f32, 32.0, &Device::Cpu).unwrap().reshape((32, 1)).unwrap();
        let full = full.broadcast_as((32, 16)).unwrap().contiguous().unwrap();
        let rows: Vec<f32> = qkv.take(&full, 1, 2).unwrap().narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = (8..16).chain(20..24).chain(28..32).map(|i| i as f32).collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn an_indivisible_vocabulary_is_replicated() {
        let spec = ShardSpec::new(&config(4, 2, 8, 11), FUSED, 2).unwrap();
        assert!(!spec.vocab_sharded());
        assert_eq!(spec.rank_shape.vocab_rows, 11);
        assert!(ShardSpec::new(&config(4, 2, 8, 10), FUSED, 2).unwrap().vocab_sharded());
    }

    #[test]
    fn refusals_name_the_model_and_every_number() {
        let message = ShardSpec::new(&config(6, 3, 10, 10), FUSED, 4).unwrap_err().to_string();
        for part in ["llama", "4 tensor-parallel ranks", "6 attention heads", "3 key/value heads", "intermediate size 10"] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
        assert!(ShardSpec::new(&config(4, 2, 8, 10), FUSED, 0).is_err());
    }

    #[test]
    fn coverage_check_catches_a_hand_broken_spec() {
        let mut spec = ShardSpec::new(&config(4, 2, 8, 10), FUSED, 2).unwrap();
        spec.weights[1].split = Split::Sharded { axis: 0, segments: vec![16, 8] };
        let message = spec.check_coverage().unwrap_err().to_string();
        assert!(message.contains("qkv_proj.weight") && message.contains("do not add up"), "{message}");
    }

    #[test]
    fn take_rejects_a_tensor_of_the_wrong_shape() {
        let spec = ShardSpec::new(&config(4, 2, 8, 10), FUSED, 2).unwrap();
        let wrong = Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let message = spec.weight("model.norm.weight").unwrap().take(&wrong, 0, 2).unwrap_err().to_string();
        assert!(message.contains("model.norm.weight") && message.contains("[16]"), "{message}");
    }

    /// Cutting raw blocks equals cutting the dequantized matrix, for both axes and a fused
    /// (two-segment) weight; a column cut inside a block is refused.
    #[test]
    fn quantized_blocks_slice_like_the_dense_matrix() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (rows, cols) = (8, 1024);
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let dense = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = QTensor::quantize(&dense, dtype).unwrap();
            let full = QuantizedBlocks::of_qtensor(&q).unwrap();
            let dequantized = q.dequantize(&Device::Cpu).unwrap();
            for (axis, segments) in [(0, vec![rows]), (0, vec![rows / 2, rows / 2]), (1, vec![cols]), (1, vec![cols / 2, cols / 2])] {
                let shard = WeightShard { name: "w".into(), shape: vec![rows, cols], split: Split::Sharded { axis, segments } };
                for rank in 0..2 {
                    let part = shard.take_blocks(&full, rank, 2).unwrap().to_qtensor(&Device::Cpu).unwrap();
                    let got = part.dequantize(&Device::Cpu).unwrap();
                    let want = shard.take(&dequantized, rank, 2).unwrap();
                    assert_eq!(got.dims(), want.dims(), "{dtype:?} axis {axis}");
                    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert_eq!(diff, 0.0, "{dtype:?} axis {axis} rank {rank}");
                }
            }
            let misaligned = WeightShard { name: "w".into(), shape: vec![rows, cols], split: Split::Sharded { axis: 1, segments: vec![cols] } };
            // 8 ranks of 128 columns: whole Q8_0 blocks (32), but inside K-quant blocks (256).
            match misaligned.take_blocks(&full, 0, 8) {
                Ok(_) => assert_eq!(dtype, GgmlDType::Q8_0),
                Err(e) => assert!(dtype != GgmlDType::Q8_0 && e.to_string().contains("quantization blocks"), "{e}"),
            }
        }
    }
}
