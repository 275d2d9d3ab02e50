//! The shapes and storage mixes of benchmark models.
//!
//! Owns: [`BenchShape`] (every number that fixes a model's tensors and GGUF metadata, taken from
//! the real checkpoints' `config.json`), the named real shapes ([`ShapeName`]), a tiny shape for
//! tests that goes through the same code, and [`BenchQuant`] (the llama.cpp file types we write).
//! Does not own: which tensor gets which type (`plan`) or any bytes (`generate`).
//!
//! Invariants: `num_heads % num_kv_heads == 0`, `head_dim` even; every matrix's row length
//! (hidden size, FFN size, `num_heads * head_dim`) is a multiple of 256, so every block type
//! fits without llama.cpp's fallbacks (checked by [`BenchShape::validate`]).

use crate::config::Architecture;
use crate::{ModelError, Result};

/// Llama 3.1/3.2's RoPE frequency scaling, written as the `rope_freqs` tensor (llama.cpp's
/// converter does the same; no `rope.scaling.*` keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: usize,
}

/// Everything that fixes a benchmark model's tensors and architecture metadata. The vocabulary
/// size is not here: it comes from the tokenizer the file carries.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchShape {
    /// Short name, used in `general.name` (`llama3-8b`).
    pub name: String,
    pub arch: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_norm_eps: f64,
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
}

/// The real models we benchmark against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeName {
    Llama3_8b,
    Llama32_1b,
    Qwen25_7b,
}

impl ShapeName {
    pub const ALL: [Self; 3] = [Self::Llama3_8b, Self::Llama32_1b, Self::Qwen25_7b];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama3_8b => "llama3-8b",
            Self::Llama32_1b => "llama3.2-1b",
            Self::Qwen25_7b => "qwen2.5-7b",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
            ModelError::Unsupported(format!("unknown bench shape `{name}` (known: {})", names.join(", ")))
        })
    }

    /// The shape, from the checkpoint's `config.json`.
    pub fn shape(self) -> BenchShape {
        let llama = BenchShape {
            name: self.as_str().to_string(),
            arch: Architecture::Llama,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            rope_theta: 500_000.0,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            context_length: 8192,
            tie_word_embeddings: false,
            qkv_bias: false,
        };
        match self {
            // meta-llama/Meta-Llama-3-8B
            Self::Llama3_8b => llama,
            // meta-llama/Llama-3.2-1B
            Self::Llama32_1b => BenchShape {
                hidden_size: 2048,
                intermediate_size: 8192,
                num_layers: 16,
                head_dim: 64,
                rope_scaling: Some(Llama3RopeScaling {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position: 8192,
                }),
                context_length: 131_072,
                tie_word_embeddings: true,
                ..llama
            },
            // Qwen/Qwen2.5-7B
            Self::Qwen25_7b => BenchShape {
                arch: Architecture::Qwen2,
                hidden_size: 3584,
                intermediate_size: 18944,
                num_layers: 28,
                num_heads: 28,
                num_kv_heads: 4,
                head_dim: 128,
                rope_theta: 1_000_000.0,
                rms_norm_eps: 1e-6,
                context_length: 32_768,
                qkv_bias: true,
                ..llama
            },
        }
    }
}

impl BenchShape {
    /// An 8-layer model small enough for unit tests, through the same code as the real shapes:
    /// for `Llama`, Llama-3.2-style (tied embeddings, llama3 RoPE scaling); for `Qwen2`,
    /// Qwen2.5-style (q/k/v biases, untied head).
    pub fn tiny(arch: Architecture) -> Self {
        let qwen = arch == Architecture::Qwen2;
        Self {
            name: format!("tiny-{}", arch.name()),
            arch,
            hidden_size: 256,
            intermediate_size: 512,
            num_layers: 8,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            rope_theta: 500_000.0,
            rope_scaling: (!qwen).then_some(Llama3RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192,
            }),
            rms_norm_eps: 1e-5,
            context_length: 2048,
            tie_word_embeddings: !qwen,
            qkv_bias: qwen,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Unsupported(format!("bench shape `{}`: {m}", self.name)));
        if !matches!(self.arch, Architecture::Llama | Architecture::Qwen2) {
            return bad(format!("architecture {} is not a bench architecture (llama, qwen2)", self.arch.name()));
        }
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 || self.head_dim % 2 != 0 {
            return bad(format!("{} heads / {} kv heads / head_dim {}", self.num_heads, self.num_kv_heads, self.head_dim));
        }
        for (what, dim) in [
            ("hidden size", self.hidden_size),
            ("FFN size", self.intermediate_size),
            ("attention width", self.num_heads * self.head_dim),
        ] {
            if dim == 0 || dim % 256 != 0 {
                return bad(format!("{what} {dim} is not a positive multiple of 256 (the K-quant block)"));
            }
        }
        Ok(())
    }

    /// llama.cpp's `rope_freqs` values: per frequency pair, the divisor of its frequency
    /// (`convert_hf_to_gguf.py`, `LlamaModel.generate_extra_tensors`, which computes in f32).
    pub fn rope_freq_factors(&self) -> Option<Vec<f32>> {
        let s = self.rope_scaling?;
        let (factor, low, high) = (s.factor as f32, s.low_freq_factor as f32, s.high_freq_factor as f32);
        let old_context = s.original_max_position as f32;
        let (low_freq_wavelen, high_freq_wavelen) = (old_context / low, old_context / high);
        let factors = (0..self.head_dim / 2)
            .map(|i| {
                let freq = 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / self.head_dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_freq_wavelen {
                    1.0
                } else if wavelen > low_freq_wavelen {
                    factor
                } else {
                    let smooth = (old_context / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect();
        Some(factors)
    }
}

/// The llama.cpp file types benchmark models are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchQuant {
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the output head and half the `attn_v` and
    /// `ffn_down` tensors.
    Q4KM,
    Q8_0,
    Bf16,
}

impl BenchQuant {
    pub const ALL: [Self; 3] = [Self::Q4KM, Self::Q8_0, Self::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q4KM => "q4_k_m",
            Self::Q8_0 => "q8_0",
            Self::Bf16 => "bf16",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        Self::ALL.into_iter().find(|q| q.as_str() == lower).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|q| q.as_str()).collect();
            ModelError::Unsupported(format!("unknown bench quantization `{name}` (known: {})", names.join(", ")))
        })
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::Q4KM => 15, // LLAMA_FTYPE_MOSTLY_Q4_K_M
            Self::Q8_0 => 7,  // LLAMA_FTYPE_MOSTLY_Q8_0
            Self::Bf16 => 32, // LLAMA_FTYPE_MOSTLY_BF16
        }
    }
}
