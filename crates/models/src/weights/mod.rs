//! Weight files behind one interface, and a loader that collects every problem before failing.
//!
//! [`TensorSource`] serves tensors by their Hugging Face names whatever the file format
//! (`gguf` maps llama.cpp names and undoes its Q/K row permutation; `safetensors` reads single
//! or sharded files). [`Weights`] is what model builders call: each getter checks presence and
//! shape, records a problem instead of failing, and returns a placeholder so building goes on;
//! [`Weights::finish`] then reports every missing, misshapen and unexpected tensor at once.

pub mod gguf;
pub mod names;
pub mod safetensors;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::layers::{Embedding, Linear, LinearWeight};
use crate::{ModelError, Result};

/// A tensor as stored: quantized blocks, or a dense tensor.
pub enum RawTensor {
    Quantized(QTensor),
    Dense(Tensor),
}

/// A file (or set of files) of named tensors, addressed by Hugging Face names.
pub trait TensorSource {
    /// Every tensor name in the source (Hugging Face convention where a mapping exists).
    fn names(&self) -> Vec<String>;
    /// Shape in row-major (PyTorch) order.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Storage type of the tensor, e.g. "Q4_K" or "BF16".
    fn type_name(&self, name: &str) -> Option<String>;
    fn load(&self, name: &str, device: &Device) -> Result<RawTensor>;
}

/// Whether a linear layer has a bias vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    None,
    Required,
    /// Loaded when the file has it (Llama's optional `attention_bias`).
    IfPresent,
}

pub struct Weights<'a> {
    source: &'a dyn TensorSource,
    device: Device,
    /// Dense compute dtype for activations, norms and unquantized weights.
    dtype: DType,
    /// Quantize dense 2-D weights to this type while loading.
    quantize: Option<GgmlDType>,
    problems: RefCell<Vec<String>>,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a dyn TensorSource, device: &Device, dtype: DType, quantize: Option<GgmlDType>) -> Self {
        Self {
            source,
            device: device.clone(),
            dtype,
            quantize,
            problems: RefCell::default(),
            used: RefCell::default(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.shape(name).is_some()
    }

    /// Loads `name`, checking its shape; on any problem records it and returns `None`.
    fn fetch(&self, name: &str, shape: &[usize]) -> Option<RawTensor> {
        self.used.borrow_mut().insert(name.to_string());
        let problem = match self.source.shape(name) {
            None => format!("missing tensor `{name}` (expected shape {shape:?})"),
            Some(found) if found != shape => {
                format!("tensor `{name}` has shape {found:?}, expected {shape:?}")
            }
            Some(_) => match self.source.load(name, &self.device) {
                Ok(raw) => return Some(raw),
                Err(e) => format!("tensor `{name}`: {e}"),
            },
        };
        self.problems.borrow_mut().push(problem);
        None
    }

    fn placeholder(&self, shape: &[usize]) -> Tensor {
        // Never computed with: `finish` fails when any placeholder was handed out.
        // A broadcast scalar costs no memory whatever the shape.
        Tensor::zeros((), self.dtype, &self.device)
            .and_then(|z| z.broadcast_as(shape))
            .unwrap_or_else(|_| Tensor::zeros((), self.dtype, &self.device).expect("scalar zero"))
    }

    fn record(&self, problem: String) {
        self.problems.borrow_mut().push(problem);
    }

    /// A dense tensor in the compute dtype (norm weights, biases).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Tensor {
        self.to_dense(name, shape, self.fetch(name, shape))
    }

    /// `raw` dequantized and cast to the compute dtype; a placeholder (and a recorded problem)
    /// when it is absent or cannot be converted.
    fn to_dense(&self, name: &str, shape: &[usize], raw: Option<RawTensor>) -> Tensor {
        let dense = match raw {
            Some(RawTensor::Dense(t)) => Ok(t),
            Some(RawTensor::Quantized(q)) => q.dequantize(&self.device),
            None => return self.placeholder(shape),
        };
        dense.and_then(|t| t.to_dtype(self.dtype)).unwrap_or_else(|e| {
            self.record(format!("tensor `{name}`: {e}"));
            self.placeholder(shape)
        })
    }

    /// A tensor that may be absent (e.g. GGUF `rope_freqs`).
    pub fn optional_tensor(&self, name: &str, shape: &[usize]) -> Option<Tensor> {
        self.contains(name).then(|| self.tensor(name, shape))
    }

    /// `[out_dim, in_dim]` weight (quantized or dense) with an optional `[out_dim]` bias.
    pub fn linear(&self, prefix: &str, out_dim: usize, in_dim: usize, bias: Bias) -> Linear {
        let weight = self.matmul_weight(&format!("{prefix}.weight"), out_dim, in_dim);
        let bias_name = format!("{prefix}.bias");
        let bias = match bias {
            Bias::None => None,
            Bias::Required => Some(self.tensor(&bias_name, &[out_dim])),
            Bias::IfPresent => self.optional_tensor(&bias_name, &[out_dim]),
        };
        Linear::new(weight, bias)
    }

    fn matmul_weight(&self, name: &str, out_dim: usize, in_dim: usize) -> LinearWeight {
        let result = match self.fetch(name, &[out_dim, in_dim]) {
            Some(RawTensor::Quantized(q)) => LinearWeight::from_qtensor(q, self.dtype),
            Some(RawTensor::Dense(t)) => self.dense_matmul_weight(t, in_dim),
            None => return LinearWeight::Candle(QMatMul::Tensor(self.placeholder(&[out_dim, in_dim]))),
        };
        result.unwrap_or_else(|e| {
            self.record(format!("tensor `{name}`: {e}"));
            LinearWeight::Candle(QMatMul::Tensor(self.placeholder(&[out_dim, in_dim])))
        })
    }

    fn dense_matmul_weight(&self, t: Tensor, in_dim: usize) -> Result<LinearWeight> {
        match self.quantize {
            Some(q) if in_dim % q.block_size() == 0 => {
                LinearWeight::from_qtensor(QTensor::quantize(&t.to_dtype(DType::F32)?, q)?, self.dtype)
            }
            _ => Ok(LinearWeight::Candle(QMatMul::Tensor(t.to_dtype(self.dtype)?))),
        }
    }

    /// Token embedding table `[vocab, hidden]`, kept quantized when stored in a block type.
    pub fn embedding(&self, name: &str, vocab: usize, hidden: usize) -> Embedding {
        let shape = [vocab, hidden];
        match self.fetch(name, &shape) {
            Some(RawTensor::Quantized(q)) if !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) => {
                Embedding::Quantized(Arc::new(q))
            }
            raw => Embedding::Dense(self.to_dense(name, &shape, raw)),
        }
    }

    /// Fails with every problem seen, plus tensors in the file that nothing asked for.
    pub fn finish(self) -> Result<()> {
        self.finish_except(|_| false)
    }

    /// Like [`Weights::finish`], for a part of a model (a pipeline stage): tensors for which
    /// `owned_elsewhere` is true belong to another part and are not unexpected here.
    pub fn finish_except(self, owned_elsewhere: impl Fn(&str) -> bool) -> Result<()> {
        let used = self.used.into_inner();
        let mut problems = self.problems.into_inner();
        let mut unexpected: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| !used.contains(n) && !names::is_ignorable(n) && !owned_elsewhere(n))
            .collect();
        unexpected.sort();
        problems.extend(unexpected.into_iter().map(|n| format!("unexpected tensor `{n}`")));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::TensorProblems(problems))
        }
    }
}
