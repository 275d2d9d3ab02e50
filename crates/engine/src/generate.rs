//! Single-sequence generation: prefill the prompt in chunks, then sample one token per step
//! until a stop token, the token limit or the end of the context; text is streamed through a
//! callback as soon as it forms whole UTF-8 characters.

use std::time::{Duration, Instant};

use hearth_tokenizer::{IncrementalDecoder, Tokenizer};

use crate::runner::{ModelRunner, Sequence};
use crate::sampling::{Sampler, SamplingParams, TokenHistory};
use crate::{EngineError, Result};

#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// `None`: until a stop token or the end of the context.
    pub max_new_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Tokens that end generation (not emitted).
    pub stop_token_ids: Vec<u32>,
    /// Most prompt tokens computed per step.
    pub prefill_chunk: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_new_tokens` were produced.
    Length,
    /// The context (model limit or KV pool) is full.
    ContextFull,
}

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub num_prompt_tokens: usize,
    /// Prompt tokens whose K/V were already cached (earlier chat turns).
    pub num_cached_tokens: usize,
    pub num_generated_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
}

impl GenerationStats {
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        (self.num_prompt_tokens - self.num_cached_tokens) as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    /// Rate of tokens produced after the first (the first comes from the prompt step).
    pub fn generation_tokens_per_sec(&self) -> f64 {
        self.num_generated_tokens.saturating_sub(1) as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

pub struct Generation {
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
    pub text: String,
}

/// Generates a continuation of `seq.token_ids` (its prompt); `seq` keeps the generated tokens
/// and their K/V so a later turn can extend it.
pub fn generate(
    runner: &mut ModelRunner,
    seq: &mut Sequence,
    tokenizer: &Tokenizer,
    params: &GenerateParams,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let num_prompt_tokens = seq.token_ids.len();
    if num_prompt_tokens == 0 {
        return Err(EngineError::Invalid("empty prompt".into()));
    }
    let context_length = runner.model.config.context_length.min(runner.capacity_tokens());
    let room = context_length.saturating_sub(num_prompt_tokens);
    if room == 0 || params.max_new_tokens.is_some_and(|n| n > room) {
        return Err(EngineError::ContextOverflow {
            num_prompt_tokens,
            max_new_tokens: params.max_new_tokens.unwrap_or(1),
            context_length,
        });
    }
    let max_new_tokens = params.max_new_tokens.unwrap_or(room);
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut history = TokenHistory::new(&seq.token_ids);
    let mut decoder = IncrementalDecoder::new(tokenizer);
    let mut stats = GenerationStats { num_prompt_tokens, num_cached_tokens: seq.num_computed_tokens, ..Default::default() };
    let mut text = String::new();
    let mut emit = |piece: Option<String>, text: &mut String| {
        if let Some(piece) = piece.filter(|p| !p.is_empty()) {
            on_text(&piece);
            text.push_str(&piece);
        }
    };

    let start = Instant::now();
    let mut logits = runner.compute(seq, params.prefill_chunk)?;
    stats.prompt_time = start.elapsed();
    let start = Instant::now();
    let finish_reason = loop {
        let logits_vec = logits.to_vec1::<f32>()?;
        let token = sampler.sample(&logits_vec, &history)?;
        stats.num_generated_tokens += 1;
        if params.stop_token_ids.contains(&token) {
            break FinishReason::Stop;
        }
        history.push(token);
        seq.token_ids.push(token);
        emit(decoder.push(token)?, &mut text);
        if stats.num_generated_tokens >= max_new_tokens {
            break if params.max_new_tokens.is_some() { FinishReason::Length } else { FinishReason::ContextFull };
        }
        logits = runner.compute(seq, 1)?;
    };
    emit(decoder.finish()?, &mut text);
    stats.generation_time = start.elapsed();
    Ok(Generation { finish_reason, stats, text })
}
