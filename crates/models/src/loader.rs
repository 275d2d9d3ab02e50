//! Opening a model: a GGUF file or a Hugging Face directory (`config.json` + safetensors),
//! to a config (without reading weights, for `inspect`/`plan`) or to a ready [`Transformer`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::config::{Architecture, Metadata, ModelConfig};
use crate::transformer::{ArchSpec, Transformer};
use crate::weights::gguf::{GgufFile, GgufSource};
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::{TensorSource, Weights};
use crate::{arch, ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HfDirectory,
}

/// Quantization applied to dense weights while loading a Hugging Face directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeTo {
    Q4K,
    Q8_0,
}

impl QuantizeTo {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q4k" | "q4_k" => Some(Self::Q4K),
            "q8_0" | "q8" => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4K => GgmlDType::Q4K,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Activation and dense-weight dtype (F32 on CPU).
    pub dtype: DType,
    pub quantize: Option<QuantizeTo>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, quantize: None }
    }
}

/// Counts of parameters and bytes per storage type.
#[derive(Debug, Clone, Default)]
pub struct WeightSummary {
    pub num_params: u64,
    pub num_bytes: u64,
    /// storage type -> (tensors, parameters)
    pub by_type: BTreeMap<String, (usize, u64)>,
}

/// An opened model file: its config and weight layout, weights not yet read.
pub struct ModelFiles {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: ModelConfig,
    pub spec: ArchSpec,
    /// The GGUF file (its metadata carries the tokenizer and chat template).
    pub gguf: Option<GgufFile>,
    hf_dir: Option<PathBuf>,
}

pub struct LoadedModel {
    pub model: Transformer,
    pub files: ModelFiles,
}

impl ModelFiles {
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::open_hf_dir(path);
        }
        if !path.exists() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            });
        }
        let gguf = GgufFile::open(path)?;
        let arch_name = gguf.architecture()?;
        let arch = Architecture::parse(&arch_name)?;
        let meta = Metadata::Gguf { metadata: &gguf.content.metadata, arch: &arch_name };
        let (mut config, spec) = arch::describe(arch, &meta)?;
        if config.vocab_size == 0 {
            config.vocab_size = match gguf.content.tensor_infos.get("token_embd.weight") {
                Some(info) => info.shape.dims()[0],
                None => return Err(ModelError::TensorProblems(vec!["missing tensor `token_embd.weight`".into()])),
            };
        }
        Ok(Self { path: path.to_path_buf(), format: ModelFormat::Gguf, config, spec, gguf: Some(gguf), hf_dir: None })
    }

    fn open_hf_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::NotAModel(format!(
                "{} is a directory without config.json (expected a Hugging Face model directory)",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io { path: config_path.clone(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::BadConfig { path: config_path.clone(), reason: e.to_string() })?;
        // Multimodal Gemma 3 configs nest the language model under `text_config`.
        let json = json.get("text_config").cloned().unwrap_or(json);
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::BadConfig { path: config_path.clone(), reason: "no `model_type`".into() })?;
        let arch = Architecture::parse(model_type)?;
        let (config, spec) = arch::describe(arch, &Metadata::HfConfig(&json))?;
        Ok(Self {
            path: dir.to_path_buf(),
            format: ModelFormat::HfDirectory,
            config,
            spec,
            gguf: None,
            hf_dir: Some(dir.to_path_buf()),
        })
    }

    pub(crate) fn with_source<T>(&self, f: impl FnOnce(&dyn TensorSource) -> Result<T>) -> Result<T> {
        match (&self.gguf, &self.hf_dir) {
            (Some(gguf), _) => f(&GgufSource::new(gguf, self.config.arch, self.config.num_heads, self.config.num_kv_heads)),
            (None, Some(dir)) => f(&SafetensorsSource::open_dir(dir)?),
            (None, None) => Err(ModelError::NotAModel(self.path.display().to_string())),
        }
    }

    /// Parameter and byte counts per storage type, from tensor headers only.
    pub fn weight_summary(&self) -> Result<WeightSummary> {
        self.with_source(|source| {
            let mut summary = WeightSummary::default();
            for name in source.names() {
                let num_params: u64 = source.shape(&name).unwrap_or_default().iter().map(|&d| d as u64).product();
                let type_name = source.type_name(&name).unwrap_or_else(|| "?".into());
                summary.num_bytes += bytes_for(&type_name, num_params);
                summary.num_params += num_params;
                let entry = summary.by_type.entry(type_name).or_default();
                entry.0 += 1;
                entry.1 += num_params;
            }
            Ok(summary)
        })
    }

    /// Reads every weight and builds the model.
    pub fn load(self, options: &LoadOptions) -> Result<LoadedModel> {
        let quantize = self.load_quantization(options)?;
        let model = self.with_source(|source| {
            let weights = Weights::new(source, &options.device, options.dtype, quantize);
            Transformer::load(self.config.clone(), self.spec, weights)
        })?;
        Ok(LoadedModel { model, files: self })
    }
}

impl ModelFiles {
    /// The block type dense weights are quantized to while loading (`--quant`), refused for GGUF.
    pub(crate) fn load_quantization(&self, options: &LoadOptions) -> Result<Option<GgmlDType>> {
        match (self.format, options.quantize) {
            (ModelFormat::Gguf, Some(_)) => {
                Err(ModelError::Unsupported("--quant applies to Hugging Face directories; GGUF files are already quantized".into()))
            }
            (_, q) => Ok(q.map(QuantizeTo::ggml)),
        }
    }
}

/// Bytes of `num_params` elements stored as `type_name` (GGUF block types or dense dtypes).
fn bytes_for(type_name: &str, num_params: u64) -> u64 {
    let ggml = match type_name {
        "F32" => Some(GgmlDType::F32),
        "F16" => Some(GgmlDType::F16),
        "BF16" => Some(GgmlDType::BF16),
        "Q4_0" => Some(GgmlDType::Q4_0),
        "Q4_1" => Some(GgmlDType::Q4_1),
        "Q5_0" => Some(GgmlDType::Q5_0),
        "Q5_1" => Some(GgmlDType::Q5_1),
        "Q8_0" => Some(GgmlDType::Q8_0),
        "Q8_1" => Some(GgmlDType::Q8_1),
        "Q2K" => Some(GgmlDType::Q2K),
        "Q3K" => Some(GgmlDType::Q3K),
        "Q4K" => Some(GgmlDType::Q4K),
        "Q5K" => Some(GgmlDType::Q5K),
        "Q6K" => Some(GgmlDType::Q6K),
        "Q8K" => Some(GgmlDType::Q8K),
        _ => None,
    };
    match ggml {
        Some(t) => num_params / t.block_size() as u64 * t.type_size() as u64,
        None => num_params * 4,
    }
}

/// Opens and loads a model in one call.
pub fn load_model(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    ModelFiles::open(path)?.load(options)
}
