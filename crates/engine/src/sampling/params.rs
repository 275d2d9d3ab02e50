//! `SamplingParams` (what a request asks for), their validation, and `SamplingError`.
//!
//! Owns: parameter meaning, ranges and the error messages that name a bad parameter and its
//! value. Does not own: applying them (`fast`, `reference`) or defaults of any HTTP API.
//! Invariant: a `SamplingParams` that passed `validate` never makes sampling fail; sampling
//! can still fail on bad logits or history (`SamplingError::{EmptyLogits, NonFiniteLogit, ..}`).

use thiserror::Error;

/// Per-request sampling settings. Off values: `top_k = 0`, `top_p = 1`, `min_p = 0`,
/// `repetition_penalty = 1`, `presence_penalty = frequency_penalty = 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax, ties to the lowest id); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 (or >= vocabulary) = off.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability reaches `top_p`; 1 = off.
    pub top_p: f32,
    /// Drop tokens with probability below `min_p * p_max`; 0 = off.
    pub min_p: f32,
    /// HF/llama.cpp: a seen token's logit `l` becomes `l / p` if `l > 0`, else `l * p`.
    pub repetition_penalty: f32,
    /// OpenAI: subtracted once from every token generated at least once.
    pub presence_penalty: f32,
    /// OpenAI: subtracted once per occurrence among generated tokens.
    pub frequency_penalty: f32,
    /// Same seed, same logits => same tokens. `None` seeds from OS entropy.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// Plain sampling from the model's distribution (temperature 1, every filter off).
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding with no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every range; the error names the first bad parameter and its value.
    pub fn validate(&self) -> Result<(), SamplingError> {
        check(
            "temperature",
            self.temperature,
            self.temperature.is_finite() && self.temperature >= 0.0,
            "finite and >= 0",
        )?;
        check(
            "top_p",
            self.top_p,
            self.top_p > 0.0 && self.top_p <= 1.0,
            "in (0, 1]",
        )?;
        check(
            "min_p",
            self.min_p,
            (0.0..=1.0).contains(&self.min_p),
            "in [0, 1]",
        )?;
        check(
            "repetition_penalty",
            self.repetition_penalty,
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            "finite and > 0",
        )?;
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            check(name, value, (-2.0..=2.0).contains(&value), "in [-2, 2]")?;
        }
        Ok(())
    }

    /// True when sampling reduces to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// True when any penalty changes logits of tokens in the history.
    pub(crate) fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// `ok` is false for NaN too, since every range test is written so NaN fails it.
fn check(
    name: &'static str,
    value: f32,
    ok: bool,
    expected: &'static str,
) -> Result<(), SamplingError> {
    if ok {
        Ok(())
    } else {
        Err(SamplingError::InvalidParam {
            name,
            value,
            expected,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplingError {
    #[error("invalid sampling parameter {name} = {value}: must be {expected}")]
    InvalidParam {
        name: &'static str,
        value: f32,
        expected: &'static str,
    },

    #[error("cannot sample from empty logits")]
    EmptyLogits,

    #[error("vocabulary of {num_logits} logits is larger than u32 token ids allow")]
    VocabTooLarge { num_logits: usize },

    /// NaN or +inf: the model produced garbage. (-inf is allowed: a masked token.)
    #[error("logit of token {token_id} is {value}; logits must be finite or -inf")]
    NonFiniteLogit { token_id: u32, value: f32 },

    #[error("every logit is -inf (after penalties); no token can be sampled")]
    AllLogitsMasked,

    #[error("token {token_id} in the history is outside the vocabulary of {num_logits} logits")]
    TokenOutOfVocab { token_id: u32, num_logits: usize },

    #[error("could not seed the sampler from OS entropy: {0}")]
    Entropy(String),
}
