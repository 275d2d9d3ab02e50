//! API-neutral generation parameters: the sampling knobs both APIs share, their ranges, and
//! the `GenerationSpec` that becomes one `EngineRequest` per choice.
//!
//! Owns: range checks that name the parameter (`temperature must be in [0, 2]`), defaults
//! (`max_tokens` = the room left in the context), per-choice seeds. Does not own: JSON field
//! names (each API's `types` maps its own) or the engine's validation (context overflow,
//! vocabulary), which runs in `EngineHandle::add`.

use hearth_engine::sampling::SamplingParams;
use hearth_engine::serve::{EngineRequest, MAX_TOP_LOGPROBS};

use crate::error::ServerError;

/// Most choices (`n`) one request may ask for.
pub const MAX_CHOICES: usize = 8;

/// Sampling fields as a client sent them; `None` takes the API's default.
#[derive(Debug, Clone, Default)]
pub struct SamplingArgs {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or -1 = off.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// Validated `SamplingParams`, starting from `defaults` for absent fields. Each error
    /// names the parameter as the client spelled it (`names`).
    pub fn to_params(
        &self,
        defaults: &SamplingParams,
        names: &SamplingNames,
    ) -> Result<SamplingParams, ServerError> {
        let name = |field: &str| format!("{}{field}", names.prefix);
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        check(
            &name("temperature"),
            temperature,
            (0.0..=2.0).contains(&temperature),
            "in [0, 2]",
        )?;
        let top_p = self.top_p.unwrap_or(defaults.top_p);
        check(
            &name("top_p"),
            top_p,
            top_p > 0.0 && top_p <= 1.0,
            "in (0, 1]",
        )?;
        let min_p = self.min_p.unwrap_or(defaults.min_p);
        check(
            &name("min_p"),
            min_p,
            (0.0..=1.0).contains(&min_p),
            "in [0, 1]",
        )?;
        let presence_penalty = self.presence_penalty.unwrap_or(defaults.presence_penalty);
        check(
            &name("presence_penalty"),
            presence_penalty,
            (-2.0..=2.0).contains(&presence_penalty),
            "in [-2, 2]",
        )?;
        let frequency_penalty = self.frequency_penalty.unwrap_or(defaults.frequency_penalty);
        let frequency_ok = (-2.0..=2.0).contains(&frequency_penalty);
        check(
            &name("frequency_penalty"),
            frequency_penalty,
            frequency_ok,
            "in [-2, 2]",
        )?;
        let repetition_penalty = self
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty);
        let penalty_ok = repetition_penalty.is_finite() && repetition_penalty > 0.0;
        check(
            &name(names.repetition_penalty),
            repetition_penalty,
            penalty_ok,
            "finite and > 0",
        )?;
        let top_k = match self.top_k {
            None => defaults.top_k,
            Some(-1 | 0) => 0,
            Some(k) => usize::try_from(k).map_err(|_| {
                ServerError::invalid_param(
                    name("top_k"),
                    format!("{} must be >= 0 (or -1 for off), got {k}", name("top_k")),
                )
            })?,
        };
        Ok(SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed: self.seed.or(defaults.seed),
        })
    }
}

/// How an API spells the sampling parameters in error messages.
pub struct SamplingNames {
    /// Put before every name: `options.` for Ollama.
    pub prefix: &'static str,
    pub repetition_penalty: &'static str,
}

pub const OPENAI_NAMES: SamplingNames = SamplingNames {
    prefix: "",
    repetition_penalty: "repetition_penalty",
};
pub const OLLAMA_NAMES: SamplingNames = SamplingNames {
    prefix: "options.",
    repetition_penalty: "repeat_penalty",
};

/// `ok` is written so that NaN fails it.
fn check(param: &str, value: f32, ok: bool, expected: &str) -> Result<(), ServerError> {
    if ok {
        Ok(())
    } else {
        Err(ServerError::invalid_param(
            param,
            format!("{param} must be {expected}, got {value}"),
        ))
    }
}

/// Stop strings: each non-empty, at most `max_count` of them when the API limits it.
pub fn check_stop(
    stop: Vec<String>,
    param: &str,
    max_count: Option<usize>,
) -> Result<Vec<String>, ServerError> {
    if let Some(max_count) = max_count.filter(|&max| stop.len() > max) {
        return Err(ServerError::invalid_param(
            param,
            format!(
                "{param} takes at most {max_count} strings, got {}",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ServerError::invalid_param(
            param,
            format!("{param} strings must not be empty"),
        ));
    }
    Ok(stop)
}

/// `n`: 1..=MAX_CHOICES.
pub fn check_num_choices(n: Option<u64>) -> Result<usize, ServerError> {
    match n {
        None => Ok(1),
        Some(n) if (1..=MAX_CHOICES as u64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ServerError::invalid_param(
            "n",
            format!("n must be in [1, {MAX_CHOICES}], got {n}"),
        )),
    }
}

/// A logprobs alternative count: 0..=MAX_TOP_LOGPROBS.
pub fn check_top_logprobs(param: &str, k: u64) -> Result<usize, ServerError> {
    if k <= MAX_TOP_LOGPROBS as u64 {
        Ok(k as usize)
    } else {
        Err(ServerError::invalid_param(
            param,
            format!("{param} must be in [0, {MAX_TOP_LOGPROBS}], got {k}"),
        ))
    }
}

/// `max_tokens`: >= 1 when given.
pub fn check_max_tokens(
    param: &str,
    max_tokens: Option<u64>,
) -> Result<Option<usize>, ServerError> {
    match max_tokens {
        None => Ok(None),
        Some(0) => Err(ServerError::invalid_param(
            param,
            format!("{param} must be at least 1"),
        )),
        Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
    }
}

/// One generation request, API-neutral; `n` engine requests are made from it.
#[derive(Debug, Clone)]
pub struct GenerationSpec {
    pub prompt_token_ids: Vec<u32>,
    /// `None`: the room left in the context after the prompt.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop_strings: Vec<String>,
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
    pub num_choices: usize,
}

impl GenerationSpec {
    /// The engine request of each choice; a seeded request gives choice `i` seed `seed + i`.
    pub fn engine_requests(&self, max_model_len: usize) -> Vec<EngineRequest> {
        // A prompt that fills the context asks for 1 token so the engine reports the overflow.
        let room = max_model_len
            .saturating_sub(self.prompt_token_ids.len())
            .max(1);
        (0..self.num_choices)
            .map(|choice_idx| {
                let mut sampling = self.sampling.clone();
                sampling.seed = sampling
                    .seed
                    .map(|seed| seed.wrapping_add(choice_idx as u64));
                EngineRequest {
                    prompt_token_ids: self.prompt_token_ids.clone(),
                    max_tokens: self.max_tokens.unwrap_or(room),
                    sampling,
                    stop_strings: self.stop_strings.clone(),
                    stop_token_ids: Vec::new(),
                    ignore_eos: self.ignore_eos,
                    logprobs: self.logprobs,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_temperature_names_the_parameter() {
        let args = SamplingArgs {
            temperature: Some(2.5),
            ..Default::default()
        };
        let err = args
            .to_params(&SamplingParams::default(), &OPENAI_NAMES)
            .unwrap_err();
        assert_eq!(err.report().param.as_deref(), Some("temperature"));
        assert!(err.to_string().contains("[0, 2]"), "{err}");
    }

    #[test]
    fn nan_top_p_is_rejected() {
        let args = SamplingArgs {
            top_p: Some(f32::NAN),
            ..Default::default()
        };
        assert!(args
            .to_params(&SamplingParams::default(), &OPENAI_NAMES)
            .is_err());
    }

    #[test]
    fn minus_one_top_k_means_off() {
        let args = SamplingArgs {
            top_k: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            args.to_params(&SamplingParams::default(), &OPENAI_NAMES)
                .unwrap()
                .top_k,
            0
        );
        let args = SamplingArgs {
            top_k: Some(-2),
            ..Default::default()
        };
        assert!(args
            .to_params(&SamplingParams::default(), &OPENAI_NAMES)
            .is_err());
    }

    #[test]
    fn seeded_choices_get_consecutive_seeds_and_default_max_tokens_fill_the_context() {
        let spec = GenerationSpec {
            prompt_token_ids: vec![1, 2, 3],
            max_tokens: None,
            sampling: SamplingParams {
                seed: Some(7),
                ..SamplingParams::default()
            },
            stop_strings: vec![],
            ignore_eos: false,
            logprobs: None,
            num_choices: 3,
        };
        let requests = spec.engine_requests(10);
        let seeds: Vec<_> = requests.iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds, [Some(7), Some(8), Some(9)]);
        assert!(requests.iter().all(|r| r.max_tokens == 7));
    }
}
