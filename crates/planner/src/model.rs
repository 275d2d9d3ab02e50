//! A model as the planner sees it: how many bytes each layer holds and reads per token, how many
//! parameters it multiplies (prompt FLOPs), and how much KV cache a token costs.
//!
//! Owns: [`ModelShape`], [`WeightBlock`], and building a shape from a tensor list
//! ([`ModelShape::from_tensors`]) whose roles the caller has decided ([`TensorRole`]: the
//! planner knows no file formats or tensor-naming conventions). Does not own quantization
//! what-ifs (`quant`) or any cost formula (`cost`).
//!
//! Invariants (checked by [`ModelShape::validate`]): 1..=[`MAX_LAYERS`] layers; hidden size,
//! attention width, KV bytes per token and both head counts positive; the attention heads are a
//! multiple of the KV heads; a layer's bytes are its stored size.

use serde::Serialize;

use crate::error::{PlanError, Result};

/// Most layers a shape may have (the search is quadratic in layers; real models have ≤ 128).
pub const MAX_LAYERS: usize = 512;

/// Parameters and stored bytes of a group of tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WeightBlock {
    pub num_params: u64,
    pub num_bytes: u64,
}

impl WeightBlock {
    fn add(&mut self, other: WeightBlock) {
        self.num_params = self.num_params.saturating_add(other.num_params);
        self.num_bytes = self.num_bytes.saturating_add(other.num_bytes);
    }
}

/// Everything the planner needs to know about a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    pub name: String,
    /// Per transformer layer, in order. Decode reads all of a layer's bytes once per token.
    pub layers: Vec<WeightBlock>,
    /// Token embedding table, held by the first stage. Decode reads one row per token
    /// (negligible, not counted).
    pub embedding: WeightBlock,
    /// Output projection, held and read in full every token by the last stage; `None` when
    /// tied to the embedding table (then the last stage reads — and, if it is not also the
    /// first stage, holds a copy of — the embedding table).
    pub head: Option<WeightBlock>,
    /// Small tensors outside the layers (final norm, RoPE factors): every stage keeps a copy.
    pub other: WeightBlock,
    pub hidden_size: u64,
    /// `num_heads * head_dim`: the width of attention's score and value products.
    pub attention_width: u64,
    /// Bytes of K and V one token adds to one layer (`2 * num_kv_heads * head_dim * element`).
    pub kv_bytes_per_token_per_layer: u64,
    /// Query heads per layer: tensor parallelism gives each rank a whole number of them.
    pub num_attention_heads: u64,
    /// Key/value heads per layer (fewer than the query heads with grouped-query attention):
    /// tensor parallelism gives each rank a whole number of them too.
    pub num_kv_heads: u64,
}

/// What a tensor is, decided by the caller from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Embedding,
    Head,
    /// Part of transformer layer `layer_idx`.
    Layer(usize),
    Other,
}

/// One tensor of a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorCost {
    pub role: TensorRole,
    pub num_params: u64,
    pub num_bytes: u64,
}

/// The dimensions [`ModelShape::from_tensors`] cannot read from tensor sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeDims {
    pub name: String,
    pub num_layers: usize,
    pub hidden_size: u64,
    pub attention_width: u64,
    pub kv_bytes_per_token_per_layer: u64,
    pub num_attention_heads: u64,
    pub num_kv_heads: u64,
}

impl ModelShape {
    /// Sums tensors into layers, embedding, head and the rest. Fails when a tensor names a layer
    /// past `num_layers`, a layer has no tensors, or there is no embedding table.
    pub fn from_tensors(
        dims: ShapeDims,
        tensors: impl IntoIterator<Item = TensorCost>,
    ) -> Result<Self> {
        let mut layers = vec![WeightBlock::default(); dims.num_layers];
        let mut seen = vec![false; dims.num_layers];
        let (mut embedding, mut head, mut other) = (
            None::<WeightBlock>,
            None::<WeightBlock>,
            WeightBlock::default(),
        );
        for tensor in tensors {
            let block = WeightBlock {
                num_params: tensor.num_params,
                num_bytes: tensor.num_bytes,
            };
            match tensor.role {
                TensorRole::Embedding => embedding
                    .get_or_insert_with(WeightBlock::default)
                    .add(block),
                TensorRole::Head => head.get_or_insert_with(WeightBlock::default).add(block),
                TensorRole::Layer(layer_idx) => {
                    let Some(layer) = layers.get_mut(layer_idx) else {
                        return Err(PlanError::InvalidModel {
                            model: dims.name,
                            reason: format!(
                                "a tensor of layer {layer_idx}, but the model has {} layers",
                                dims.num_layers
                            ),
                        });
                    };
                    layer.add(block);
                    seen[layer_idx] = true;
                }
                TensorRole::Other => other.add(block),
            }
        }
        let invalid = |reason: String| PlanError::InvalidModel {
            model: dims.name.clone(),
            reason,
        };
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(invalid(format!("layer {missing} has no tensors")));
        }
        let embedding = embedding.ok_or_else(|| invalid("no token embedding table".into()))?;
        let shape = Self {
            name: dims.name.clone(),
            layers,
            embedding,
            head,
            other,
            hidden_size: dims.hidden_size,
            attention_width: dims.attention_width,
            kv_bytes_per_token_per_layer: dims.kv_bytes_per_token_per_layer,
            num_attention_heads: dims.num_attention_heads,
            num_kv_heads: dims.num_kv_heads,
        };
        shape.validate()?;
        Ok(shape)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Rows of the embedding table (`[vocab, hidden]`): the width of a logits row.
    pub fn vocab_size(&self) -> u64 {
        self.embedding.num_params / self.hidden_size.max(1)
    }

    /// All stored weight bytes (the embedding table once, even when tied).
    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| l.num_bytes)
            .fold(0, u64::saturating_add);
        layers
            .saturating_add(self.embedding.num_bytes)
            .saturating_add(self.head.map_or(0, |h| h.num_bytes))
            .saturating_add(self.other.num_bytes)
    }

    /// All parameters (the embedding table once, even when tied).
    pub fn num_params(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| l.num_params)
            .fold(0, u64::saturating_add);
        layers
            .saturating_add(self.embedding.num_params)
            .saturating_add(self.head.map_or(0, |h| h.num_params))
            .saturating_add(self.other.num_params)
    }

    /// The output projection as it is read: the head, or the embedding table when tied.
    pub fn head_as_read(&self) -> WeightBlock {
        self.head.unwrap_or(self.embedding)
    }

    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token_per_layer
            .saturating_mul(self.layers.len() as u64)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(PlanError::InvalidModel {
                model: self.name.clone(),
                reason,
            })
        };
        if self.layers.is_empty() {
            return bad("no layers".into());
        }
        if self.layers.len() > MAX_LAYERS {
            return bad(format!(
                "{} layers is more than the planner handles ({MAX_LAYERS})",
                self.layers.len()
            ));
        }
        if self.hidden_size == 0 || self.attention_width == 0 {
            return bad("hidden size and attention width must be positive".into());
        }
        if self.kv_bytes_per_token_per_layer == 0 {
            return bad("KV bytes per token must be positive".into());
        }
        if self.num_attention_heads == 0
            || self.num_kv_heads == 0
            || self.num_attention_heads % self.num_kv_heads != 0
        {
            return bad(format!(
                "{} attention heads and {} KV heads: both must be positive, the first a multiple \
                 of the second",
                self.num_attention_heads, self.num_kv_heads
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(num_layers: usize) -> ShapeDims {
        ShapeDims {
            name: "m".into(),
            num_layers,
            hidden_size: 64,
            attention_width: 64,
            kv_bytes_per_token_per_layer: 128,
            num_attention_heads: 4,
            num_kv_heads: 2,
        }
    }

    fn tensor(role: TensorRole, num_params: u64) -> TensorCost {
        TensorCost {
            role,
            num_params,
            num_bytes: 2 * num_params,
        }
    }

    #[test]
    fn tensors_are_summed_by_role() {
        let tensors = [
            tensor(TensorRole::Embedding, 1000),
            tensor(TensorRole::Layer(0), 10),
            tensor(TensorRole::Layer(0), 5),
            tensor(TensorRole::Layer(1), 20),
            tensor(TensorRole::Other, 3),
        ];
        let shape = ModelShape::from_tensors(dims(2), tensors).unwrap();
        assert_eq!(
            shape.layers,
            vec![
                WeightBlock {
                    num_params: 15,
                    num_bytes: 30
                },
                WeightBlock {
                    num_params: 20,
                    num_bytes: 40
                }
            ]
        );
        assert_eq!(shape.head, None);
        assert_eq!(shape.head_as_read(), shape.embedding);
        assert_eq!(shape.weight_bytes(), 2 * (1000 + 15 + 20 + 3));
        assert_eq!(shape.kv_bytes_per_token(), 256);
    }

    #[test]
    fn missing_layers_and_embedding_are_reported() {
        let err = ModelShape::from_tensors(
            dims(2),
            [
                tensor(TensorRole::Embedding, 1),
                tensor(TensorRole::Layer(0), 1),
            ],
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("layer 1 has no tensors"));
        let err = ModelShape::from_tensors(dims(1), [tensor(TensorRole::Layer(0), 1)]);
        assert!(err.unwrap_err().to_string().contains("no token embedding"));
        let err = ModelShape::from_tensors(
            dims(1),
            [
                tensor(TensorRole::Embedding, 1),
                tensor(TensorRole::Layer(3), 1),
            ],
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("layer 3, but the model has 1 layers"));
        let err = ModelShape::from_tensors(dims(0), [tensor(TensorRole::Embedding, 1)]);
        assert!(err.unwrap_err().to_string().contains("no layers"));
    }
}
