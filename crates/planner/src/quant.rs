//! Quantization what-ifs: a model's shape at another storage type, and the highest-quality
//! type that fits a cluster.
//!
//! Owns: [`Quant`] (llama.cpp's common file types with their average bits per weight),
//! [`ModelShape::at_quant`], [`choose_quantization`] and [`choose_among`]. Does not own how a
//! file is actually quantized (that is `hearth-models`).
//!
//! Safety margin: a quantization "fits" when [`crate::plan`] finds a placement, i.e. weights +
//! KV for the configured context and sequences fit within each node's memory less
//! [`crate::PlanOptions::memory_headroom`] (10 % by default).
//!
//! Invariant: bytes at a quantization are `ceil(params × bits per weight ÷ 8)` per block, for
//! every block alike (norms and biases are rounded in with the matrices: they are < 0.1 % of a
//! model).

use std::fmt;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::cost::PlanOptions;
use crate::error::{PlanError, Result};
use crate::model::{ModelShape, WeightBlock};
use crate::plan::{plan, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quant {
    Q4KM,
    Q5KM,
    Q6K,
    Q8_0,
    Bf16,
}

impl Quant {
    /// Highest quality first: the order [`choose_quantization`] tries.
    pub const BEST_FIRST: [Quant; 5] = [
        Quant::Bf16,
        Quant::Q8_0,
        Quant::Q6K,
        Quant::Q5KM,
        Quant::Q4KM,
    ];

    /// Average bits per weight of a whole model: llama.cpp's K-quant mixes as its quantize
    /// tool reports them for Llama-class models (Q4_K_M ≈ 4.85, Q5_K_M ≈ 5.69, Q6_K ≈ 6.56);
    /// Q8_0 is 34 bytes per 32 weights; BF16 is 16 bits.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Quant::Q4KM => 4.85,
            Quant::Q5KM => 5.69,
            Quant::Q6K => 6.56,
            Quant::Q8_0 => 8.5,
            Quant::Bf16 => 16.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4KM => "q4_k_m",
            Quant::Q5KM => "q5_k_m",
            Quant::Q6K => "q6_k",
            Quant::Q8_0 => "q8_0",
            Quant::Bf16 => "bf16",
        }
    }

    pub fn parse(text: &str) -> Result<Quant> {
        let lower = text.trim().to_ascii_lowercase();
        Quant::BEST_FIRST
            .into_iter()
            .find(|q| q.name() == lower)
            .ok_or_else(|| PlanError::Parse {
                what: "quantization",
                input: text.to_string(),
                reason: format!("known: {}", Quant::BEST_FIRST.map(Quant::name).join(", ")),
            })
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ModelShape {
    /// The same model stored as `quant` (parameters unchanged, bytes recomputed).
    pub fn at_quant(&self, quant: Quant) -> ModelShape {
        let requantize = |block: WeightBlock| WeightBlock {
            num_params: block.num_params,
            num_bytes: (block.num_params as f64 * quant.bits_per_weight() / 8.0).ceil() as u64,
        };
        ModelShape {
            name: format!("{} @ {}", self.name, quant.name()),
            layers: self.layers.iter().copied().map(requantize).collect(),
            embedding: requantize(self.embedding),
            head: self.head.map(requantize),
            other: requantize(self.other),
            ..self.clone()
        }
    }
}

/// One quantization's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantOption {
    pub quant: Quant,
    pub weight_bytes: u64,
    /// The plan, when the model fits at this quantization.
    pub plan: Option<Plan>,
    /// Why it does not fit, when it does not.
    pub refusal: Option<String>,
}

/// Every quantization tried, best quality first, and the best one that fits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantChoice {
    pub chosen: Option<Quant>,
    pub options: Vec<QuantOption>,
}

/// Plans `model` at every [`Quant`] (bytes from [`ModelShape::at_quant`]) and picks the highest
/// quality that fits. Input errors (invalid model, nodes, options) are errors; "does not fit" is
/// a refusal in the table.
pub fn choose_quantization(
    model: &ModelShape,
    cluster: &Cluster,
    options: &PlanOptions,
) -> Result<QuantChoice> {
    let candidates: Vec<(Quant, ModelShape)> = Quant::BEST_FIRST
        .iter()
        .map(|&q| (q, model.at_quant(q)))
        .collect();
    choose_among(&candidates, cluster, options)
}

/// Like [`choose_quantization`] over shapes the caller sized itself (e.g. exact tensor plans),
/// given best quality first.
pub fn choose_among(
    candidates: &[(Quant, ModelShape)],
    cluster: &Cluster,
    options: &PlanOptions,
) -> Result<QuantChoice> {
    let mut choice = QuantChoice {
        chosen: None,
        options: Vec::new(),
    };
    for (quant, shape) in candidates {
        let (plan, refusal) = match plan(shape, cluster, options) {
            Ok(plan) => (Some(plan), None),
            Err(err @ PlanError::DoesNotFit { .. }) => (None, Some(err.to_string())),
            Err(err) => return Err(err),
        };
        if plan.is_some() && choice.chosen.is_none() {
            choice.chosen = Some(*quant);
        }
        choice.options.push(QuantOption {
            quant: *quant,
            weight_bytes: shape.weight_bytes(),
            plan,
            refusal,
        });
    }
    Ok(choice)
}
