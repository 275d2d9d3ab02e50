//! The planner's view of a model, from a model file's headers or from a named real shape.
//!
//! Owns: reading per-tensor sizes (GGUF tensor infos, safetensors headers) into a
//! [`ModelShape`], naming each tensor's role (llama.cpp and Hugging Face names), the named
//! shapes (`hearth bench-model`'s table plus Llama-3-70B and Llama-3.1-405B), and the
//! quantization what-ifs offered for them. Does not own any planning (`hearth-planner`).
//!
//! Invariants: no weight is read, only headers; dense float weights (F32, F16, BF16) and KV count
//! at 4 bytes per element when planning for this machine's CPU (hearth computes in F32 there)
//! and at 2 bytes (BF16) on described GPUs and Macs; block-quantized weights at their stored
//! size.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use hearth_models::bench::{plan_tensors, BenchQuant, BenchShape, Llama3RopeScaling, ShapeName};
use hearth_models::config::Architecture;
use hearth_models::weights::safetensors::SafetensorsSource;
use hearth_models::weights::TensorSource;
use hearth_models::ModelFiles;
use hearth_planner::{ModelShape, Quant, ShapeDims, TensorCost, TensorRole, WeightBlock};

/// Where the model will compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This machine's CPU: F32 compute, F32 KV.
    ThisMachineCpu,
    /// GPUs and Apple Silicon: weights as stored (BF16 for dense), BF16 KV.
    Accelerator,
}

impl Target {
    fn kv_bytes_per_element(self) -> u64 {
        match self {
            Target::ThisMachineCpu => 4,
            Target::Accelerator => 2,
        }
    }

    fn dense_name(self) -> &'static str {
        match self {
            Target::ThisMachineCpu => "F32 on the CPU",
            Target::Accelerator => "BF16 on GPUs and Macs",
        }
    }

    /// Bytes a dense float weight takes once loaded.
    fn dense_bytes(self) -> u64 {
        match self {
            Target::ThisMachineCpu => 4,
            Target::Accelerator => 2,
        }
    }
}

/// A model ready to plan, with how it is stored and its what-ifs.
#[derive(Debug)]
pub struct ModelSource {
    pub name: String,
    /// `file …` or `shape table`.
    pub origin: String,
    /// How the weights are stored: `Q4K 57%, Q6K 43%` or `q4_k_m (llama.cpp mix)`.
    pub storage: String,
    pub shape: ModelShape,
    pub context_length: usize,
    /// Best quality first: the shape at each quantization (exact where a tensor plan exists).
    pub what_ifs: Vec<(Quant, ModelShape)>,
    /// The quantization `shape` is in, when it is one of [`Quant`] (named shapes).
    pub quant: Option<Quant>,
}

/// Llama-3/3.1 shapes beyond the bench table, from the checkpoints' `config.json`.
fn extra_shape(name: &str) -> Option<BenchShape> {
    let base = ShapeName::Llama3_8b.shape();
    match name {
        // meta-llama/Meta-Llama-3-70B
        "llama3-70b" => Some(BenchShape {
            name: name.into(),
            hidden_size: 8192,
            intermediate_size: 28672,
            num_layers: 80,
            num_heads: 64,
            ..base
        }),
        // meta-llama/Llama-3.1-405B
        "llama3.1-405b" => Some(BenchShape {
            name: name.into(),
            hidden_size: 16384,
            intermediate_size: 53248,
            num_layers: 126,
            num_heads: 128,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192,
            }),
            context_length: 131_072,
            ..base
        }),
        _ => None,
    }
}

pub fn known_shape_names() -> String {
    let mut names: Vec<&str> = ShapeName::ALL.iter().map(|s| s.as_str()).collect();
    names.extend(["llama3-70b", "llama3.1-405b"]);
    names.join(", ")
}

/// The real checkpoint's vocabulary (the bench table leaves it to the tokenizer).
fn vocab_size(shape: &BenchShape) -> usize {
    match shape.arch {
        Architecture::Qwen2 => 152_064,
        _ => 128_256,
    }
}

/// A tensor's role from its llama.cpp or Hugging Face name.
fn tensor_role(name: &str) -> TensorRole {
    let layer_idx = |rest: &str| rest.split('.').next().and_then(|n| n.parse::<usize>().ok());
    if let Some(idx) = name.strip_prefix("blk.").and_then(layer_idx) {
        return TensorRole::Layer(idx);
    }
    if let Some(pos) = name.find("layers.") {
        let at_boundary = pos == 0 || name[..pos].ends_with('.');
        if let Some(idx) = layer_idx(&name[pos + "layers.".len()..]).filter(|_| at_boundary) {
            return TensorRole::Layer(idx);
        }
    }
    if name == "token_embd.weight" || name.ends_with("embed_tokens.weight") {
        return TensorRole::Embedding;
    }
    if name == "output.weight" || name == "lm_head.weight" || name.ends_with(".lm_head.weight") {
        return TensorRole::Head;
    }
    TensorRole::Other
}

fn ggml_bytes(dtype: GgmlDType, num_params: u64, target: Target) -> u64 {
    if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
        return num_params * target.dense_bytes();
    }
    num_params / dtype.block_size() as u64 * dtype.type_size() as u64
}

fn safetensors_bytes(name: &str, type_name: &str, num_params: u64, target: Target) -> Result<u64> {
    let per_element = match type_name {
        "F32" | "F16" | "BF16" => target.dense_bytes(),
        "U32" | "I32" => 4,
        "F64" | "U64" | "I64" => 8,
        "U8" | "I8" | "F8E4M3" | "F8E5M2" => 1,
        other => bail!("tensor `{name}` has storage type {other}, which the planner does not size"),
    };
    Ok(num_params * per_element)
}

/// Storage types by share of parameters: `Q4K 57%, Q6K 43%`.
fn storage_mix(types: &[(String, u64)]) -> String {
    let total: u64 = types.iter().map(|(_, p)| p).sum::<u64>().max(1);
    let mut by_type: Vec<(String, u64)> = Vec::new();
    for (name, params) in types {
        match by_type.iter_mut().find(|(n, _)| n == name) {
            Some((_, p)) => *p += params,
            None => by_type.push((name.clone(), *params)),
        }
    }
    by_type.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by_type
        .iter()
        .filter(|(_, p)| *p * 1000 >= total)
        .map(|(n, p)| format!("{n} {:.0}%", 100.0 * *p as f64 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What-ifs from parameter counts, with 16-bit doubled on the CPU.
fn generic_what_ifs(shape: &ModelShape, target: Target) -> Vec<(Quant, ModelShape)> {
    Quant::BEST_FIRST
        .iter()
        .map(|&q| (q, at_quant_for(shape, q, target)))
        .collect()
}

fn at_quant_for(shape: &ModelShape, quant: Quant, target: Target) -> ModelShape {
    let mut out = shape.at_quant(quant);
    if quant == Quant::Bf16 && target == Target::ThisMachineCpu {
        let double = |b: WeightBlock| WeightBlock {
            num_bytes: b.num_bytes * 2,
            ..b
        };
        out.layers.iter_mut().for_each(|l| *l = double(*l));
        out.embedding = double(out.embedding);
        out.head = out.head.map(double);
        out.other = double(out.other);
    }
    out
}

/// A model file (GGUF or Hugging Face directory), headers only.
pub fn from_file(path: &Path, name: String, target: Target) -> Result<ModelSource> {
    let files =
        ModelFiles::open(path).with_context(|| format!("opening model {}", path.display()))?;
    let config = &files.config;
    let mut tensors = Vec::new();
    let mut types = Vec::new();
    match &files.gguf {
        Some(gguf) => {
            for (tensor_name, info) in &gguf.content.tensor_infos {
                let num_params = info.shape.elem_count() as u64;
                let num_bytes = ggml_bytes(info.ggml_dtype, num_params, target);
                tensors.push(TensorCost {
                    role: tensor_role(tensor_name),
                    num_params,
                    num_bytes,
                });
                types.push((format!("{:?}", info.ggml_dtype), num_params));
            }
        }
        None => {
            let source = SafetensorsSource::open_dir(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for tensor_name in source.names() {
                let num_params: u64 = source
                    .shape(&tensor_name)
                    .unwrap_or_default()
                    .iter()
                    .map(|&d| d as u64)
                    .product();
                let type_name = source.type_name(&tensor_name).unwrap_or_default();
                let num_bytes = safetensors_bytes(&tensor_name, &type_name, num_params, target)?;
                tensors.push(TensorCost {
                    role: tensor_role(&tensor_name),
                    num_params,
                    num_bytes,
                });
                types.push((type_name, num_params));
            }
        }
    }
    let dims = ShapeDims {
        name: name.clone(),
        num_layers: config.num_layers,
        hidden_size: config.hidden_size as u64,
        attention_width: (config.num_heads * config.head_dim) as u64,
        kv_bytes_per_token_per_layer: (2 * config.num_kv_heads * config.head_dim) as u64
            * target.kv_bytes_per_element(),
        num_attention_heads: config.num_heads as u64,
        num_kv_heads: config.num_kv_heads as u64,
    };
    let shape = ModelShape::from_tensors(dims, tensors)?;
    let what_ifs = generic_what_ifs(&shape, target);
    Ok(ModelSource {
        name,
        origin: format!("file {}", path.display()),
        storage: format!(
            "{} (dense weights counted as loaded: {})",
            storage_mix(&types),
            target.dense_name()
        ),
        shape,
        context_length: config.context_length,
        what_ifs,
        quant: None,
    })
}

/// A named real shape at each quantization: exact tensor plans for llama.cpp's Q4_K_M, Q8_0 and
/// BF16 files (`hearth bench-model`'s), bits-per-weight estimates for Q5_K_M and Q6_K.
pub fn from_shape_name(shape_name: &str, target: Target) -> Result<ModelSource> {
    let bench = match ShapeName::parse(shape_name) {
        Ok(named) => named.shape(),
        Err(_) => match extra_shape(shape_name) {
            Some(shape) => shape,
            None => bail!(
                "unknown --shape `{shape_name}` (known: {})",
                known_shape_names()
            ),
        },
    };
    let vocab = vocab_size(&bench);
    let exact = |quant: BenchQuant| -> Result<ModelShape> {
        let mut tensors = Vec::new();
        for tensor in plan_tensors(&bench, vocab, quant)? {
            let num_params = tensor.num_elements() as u64;
            tensors.push(TensorCost {
                role: tensor_role(&tensor.name),
                num_params,
                num_bytes: ggml_bytes(tensor.dtype, num_params, target),
            });
        }
        let dims = ShapeDims {
            name: format!("{} @ {}", bench.name, quant.as_str()),
            num_layers: bench.num_layers,
            hidden_size: bench.hidden_size as u64,
            attention_width: (bench.num_heads * bench.head_dim) as u64,
            kv_bytes_per_token_per_layer: (2 * bench.num_kv_heads * bench.head_dim) as u64
                * target.kv_bytes_per_element(),
            num_attention_heads: bench.num_heads as u64,
            num_kv_heads: bench.num_kv_heads as u64,
        };
        Ok(ModelShape::from_tensors(dims, tensors)?)
    };
    let bf16 = exact(BenchQuant::Bf16)?;
    let mut what_ifs = Vec::new();
    for quant in Quant::BEST_FIRST {
        let shape = match quant {
            Quant::Bf16 => bf16.clone(),
            Quant::Q8_0 => exact(BenchQuant::Q8_0)?,
            Quant::Q4KM => exact(BenchQuant::Q4KM)?,
            Quant::Q6K | Quant::Q5KM => ModelShape {
                name: format!("{} @ {quant}", bench.name),
                ..at_quant_for(&bf16, quant, target)
            },
        };
        what_ifs.push((quant, shape));
    }
    Ok(ModelSource {
        name: bench.name.clone(),
        origin: format!(
            "shape table: {} layers, hidden {}, vocabulary {vocab}",
            bench.num_layers, bench.hidden_size
        ),
        storage: "bf16".into(),
        shape: bf16,
        context_length: bench.context_length,
        what_ifs,
        quant: Some(Quant::Bf16),
    })
}

impl ModelSource {
    /// The source at `quant` (a what-if).
    pub fn at(&self, quant: Quant) -> ModelShape {
        self.what_ifs
            .iter()
            .find(|(q, _)| *q == quant)
            .map_or_else(|| self.shape.at_quant(quant), |(_, s)| s.clone())
    }

    pub fn describe_storage(&self, quant: Quant) -> String {
        match quant {
            Quant::Q4KM | Quant::Q8_0 | Quant::Bf16 if self.quant.is_some() => {
                format!("{quant} (llama.cpp's tensor types)")
            }
            _ => format!("{quant} (≈{} bits per weight)", quant.bits_per_weight()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_roles_follow_both_naming_conventions() {
        assert_eq!(tensor_role("blk.12.ffn_down.weight"), TensorRole::Layer(12));
        assert_eq!(
            tensor_role("model.layers.3.self_attn.q_proj.weight"),
            TensorRole::Layer(3)
        );
        assert_eq!(
            tensor_role("language_model.model.layers.0.mlp.up_proj.weight"),
            TensorRole::Layer(0)
        );
        assert_eq!(tensor_role("token_embd.weight"), TensorRole::Embedding);
        assert_eq!(
            tensor_role("model.embed_tokens.weight"),
            TensorRole::Embedding
        );
        assert_eq!(tensor_role("output.weight"), TensorRole::Head);
        assert_eq!(tensor_role("lm_head.weight"), TensorRole::Head);
        assert_eq!(tensor_role("output_norm.weight"), TensorRole::Other);
        assert_eq!(tensor_role("model.norm.weight"), TensorRole::Other);
        assert_eq!(tensor_role("rope_freqs.weight"), TensorRole::Other);
        assert_eq!(tensor_role("vision.sublayers.1.weight"), TensorRole::Other);
    }

    #[test]
    fn named_shapes_match_the_bench_files() {
        // `hearth bench-model` writes llama3-8b q4_k_m with SmolLM2's 49,152-token vocabulary in
        // 4,466,639,616 bytes; with Llama 3's 128,256 tokens the two vocabulary tables grow by
        // 79,104 rows x 4096 at Q4_K (embedding) and Q6_K (head).
        let source = from_shape_name("llama3-8b", Target::Accelerator).unwrap();
        let q4 = source.at(Quant::Q4KM);
        let grown = 79_104u64 * 4096 / 256 * (144 + 210);
        let header_and_padding_max = 8 << 20;
        let bench_file = 4_466_639_616u64;
        assert!(
            q4.weight_bytes() + header_and_padding_max > bench_file + grown
                && q4.weight_bytes() < bench_file + grown
        );
        assert_eq!(q4.num_layers(), 32);
        let bf16 = source.at(Quant::Bf16);
        assert_eq!(
            bf16.num_params(),
            8_030_261_248,
            "Llama-3-8B's parameter count"
        );
        assert_eq!(bf16.kv_bytes_per_token(), 32 * 2 * 8 * 128 * 2);
        let on_cpu = from_shape_name("llama3-8b", Target::ThisMachineCpu).unwrap();
        assert_eq!(
            on_cpu.shape.weight_bytes(),
            2 * bf16.weight_bytes(),
            "CPU loads 16-bit weights as F32"
        );
        assert!(
            from_shape_name("llama3-70b", Target::Accelerator)
                .unwrap()
                .shape
                .num_params()
                > 70_000_000_000
        );
        assert!(from_shape_name("gpt-5", Target::Accelerator)
            .unwrap_err()
            .to_string()
            .contains("llama3-70b"));
    }
}
