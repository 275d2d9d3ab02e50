//! What a benchmark GGUF file holds: the tensor list (llama.cpp names, shapes, storage types,
//! how each is filled) and the metadata keys, as llama.cpp's converter and `llama-quantize`
//! would write them for the real model.
//!
//! Owns: llama.cpp's Q4_K_M type rule (`llama-quant.cpp`, `llama_tensor_get_type_impl`) for
//! dense Llama/Qwen2 models, and the architecture keys. Does not own: bytes (`generate`) or the
//! file layout (`gguf_writer`). The tokenizer keys are passed through untouched.
//!
//! Invariants: 1-D tensors (norms, biases, `rope_freqs`) are F32; every 2-D weight has the
//! quant's type or, for Q4_K_M, Q6_K where llama.cpp would put it; tensors are listed in layer
//! order (llama.cpp's `use_more_bits` counts `attn_v` tensors in file order).

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use super::gguf_writer::tensor_num_bytes;
use super::shapes::{BenchQuant, BenchShape};
use crate::config::Architecture;
use crate::{ModelError, Result};

/// Standard deviation of every random weight: keeps activations O(1) through RMSNorm'd blocks.
pub const WEIGHT_STD: f32 = 0.02;

/// How a tensor's values are made.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Independent normal(0, [`WEIGHT_STD`]) values from the seed.
    Random,
    /// All ones (RMSNorm weights).
    Ones,
    /// These exact values (`rope_freqs`).
    Values(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// llama.cpp name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major (PyTorch) order: `[rows, cols]` for matrices, `[n]` for vectors.
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    pub init: Init,
}

impl PlannedTensor {
    pub fn num_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Bytes of the stored data (before alignment padding).
    pub fn num_bytes(&self) -> Result<u64> {
        tensor_num_bytes(&self.name, &self.dims, self.dtype)
    }
}

/// Where a matrix sits in the model; llama.cpp picks Q4_K_M types by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    TokenEmbedding,
    Output,
    AttnV,
    FfnDown,
    /// q, k, o, gate, up: the quant's base type.
    Other,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// between them.
pub fn use_more_bits(layer_idx: usize, num_layers: usize) -> bool {
    layer_idx < num_layers / 8 || layer_idx >= 7 * num_layers / 8 || (layer_idx - num_layers / 8) % 3 == 2
}

fn matrix_type(quant: BenchQuant, role: Role, layer_idx: usize, shape: &BenchShape) -> GgmlDType {
    match quant {
        BenchQuant::Q8_0 => GgmlDType::Q8_0,
        BenchQuant::Bf16 => GgmlDType::BF16,
        // With tied embeddings llama.cpp quantizes token_embd as the output head.
        BenchQuant::Q4KM => match role {
            Role::Output => GgmlDType::Q6K,
            Role::TokenEmbedding if shape.tie_word_embeddings => GgmlDType::Q6K,
            Role::AttnV | Role::FfnDown if use_more_bits(layer_idx, shape.num_layers) => GgmlDType::Q6K,
            _ => GgmlDType::Q4K,
        },
    }
}

/// Every tensor of the file, in write order.
pub fn plan_tensors(shape: &BenchShape, vocab_size: usize, quant: BenchQuant) -> Result<Vec<PlannedTensor>> {
    shape.validate()?;
    if vocab_size == 0 {
        return Err(ModelError::Unsupported("a bench model needs a non-empty vocabulary".into()));
    }
    let (hidden, ffn) = (shape.hidden_size, shape.intermediate_size);
    let (q_dim, kv_dim) = (shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim);
    let mut tensors = Vec::new();
    let vector = |name: String, n: usize, init: Init| PlannedTensor { name, dims: vec![n], dtype: GgmlDType::F32, init };
    let matrix = |name: String, rows: usize, cols: usize, role: Role, layer_idx: usize| PlannedTensor {
        name,
        dims: vec![rows, cols],
        dtype: matrix_type(quant, role, layer_idx, shape),
        init: Init::Random,
    };
    if let Some(factors) = shape.rope_freq_factors() {
        tensors.push(vector("rope_freqs.weight".into(), factors.len(), Init::Values(factors)));
    }
    tensors.push(matrix("token_embd.weight".into(), vocab_size, hidden, Role::TokenEmbedding, 0));
    for layer_idx in 0..shape.num_layers {
        let p = |stem: &str| format!("blk.{layer_idx}.{stem}");
        tensors.push(vector(p("attn_norm.weight"), hidden, Init::Ones));
        for (stem, rows, role) in [("attn_q", q_dim, Role::Other), ("attn_k", kv_dim, Role::Other), ("attn_v", kv_dim, Role::AttnV)] {
            tensors.push(matrix(p(&format!("{stem}.weight")), rows, hidden, role, layer_idx));
            if shape.qkv_bias {
                tensors.push(vector(p(&format!("{stem}.bias")), rows, Init::Random));
            }
        }
        tensors.push(matrix(p("attn_output.weight"), hidden, q_dim, Role::Other, layer_idx));
        tensors.push(vector(p("ffn_norm.weight"), hidden, Init::Ones));
        tensors.push(matrix(p("ffn_gate.weight"), ffn, hidden, Role::Other, layer_idx));
        tensors.push(matrix(p("ffn_up.weight"), ffn, hidden, Role::Other, layer_idx));
        tensors.push(matrix(p("ffn_down.weight"), hidden, ffn, Role::FfnDown, layer_idx));
    }
    tensors.push(vector("output_norm.weight".into(), hidden, Init::Ones));
    if !shape.tie_word_embeddings {
        tensors.push(matrix("output.weight".into(), vocab_size, hidden, Role::Output, 0));
    }
    Ok(tensors)
}

/// The file's metadata: `general.*`, the architecture keys llama.cpp reads, then `tokenizer`
/// (the `tokenizer.*` keys of the vocabulary source, unchanged).
pub fn bench_metadata(
    shape: &BenchShape,
    quant: BenchQuant,
    vocab_size: usize,
    tokenizer: Vec<(String, Value)>,
) -> Result<Vec<(String, Value)>> {
    let arch = shape.arch.name();
    let count = |n: usize| {
        u32::try_from(n).map(Value::U32).map_err(|_| ModelError::Unsupported(format!("{n} does not fit GGUF's u32")))
    };
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(format!("hearth bench {} {} (random weights)", shape.name, quant.as_str()))),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let arch_keys = [
        ("block_count", count(shape.num_layers)?),
        ("context_length", count(shape.context_length)?),
        ("embedding_length", count(shape.hidden_size)?),
        ("feed_forward_length", count(shape.intermediate_size)?),
        ("attention.head_count", count(shape.num_heads)?),
        ("attention.head_count_kv", count(shape.num_kv_heads)?),
        ("attention.key_length", count(shape.head_dim)?),
        ("attention.value_length", count(shape.head_dim)?),
        ("rope.freq_base", Value::F32(shape.rope_theta as f32)),
        ("attention.layer_norm_rms_epsilon", Value::F32(shape.rms_norm_eps as f32)),
    ];
    meta.extend(arch_keys.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    if shape.arch == Architecture::Llama {
        // Written by llama.cpp's LlamaModel converter only.
        meta.push((format!("{arch}.vocab_size"), count(vocab_size)?));
        meta.push((format!("{arch}.rope.dimension_count"), count(shape.head_dim)?));
    }
    for (key, value) in tokenizer {
        if !key.starts_with("tokenizer.") {
            return Err(ModelError::Unsupported(format!("tokenizer metadata key `{key}` is outside `tokenizer.*`")));
        }
        meta.push((key, value));
    }
    Ok(meta)
}
