//! `OutputProcessor`: one request's generated tokens → text deltas, with stop conditions.
//!
//! Owns: incremental detokenization, stop tokens (EOS unless ignored, plus the request's own),
//! stop strings matched across token boundaries, the `max_tokens` limit, and the usage
//! counts. Does not own: sampling or scheduling.
//!
//! Invariant: text is emitted only once it cannot be the start of a stop string, so a stop
//! string is never partly sent; the concatenated emitted text is the output up to (not
//! including) the first stop string, or all of it when generation ended otherwise.

use std::sync::Arc;

use hearth_tokenizer::{IncrementalDecoder, Tokenizer};

use super::request::{Delta, EngineRequest, Finish, FinishReason, TokenLogprob, Usage};
use crate::Result;

pub(crate) struct OutputProcessor {
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    stop_token_ids: Vec<u32>,
    stop_strings: Vec<String>,
    max_tokens: usize,
    /// Decoded text not yet emitted because it may begin a stop string.
    held_text: String,
    usage: Usage,
}

impl OutputProcessor {
    pub fn new(tokenizer: Arc<Tokenizer>, request: &EngineRequest) -> Self {
        let mut stop_token_ids = request.stop_token_ids.clone();
        if !request.ignore_eos {
            stop_token_ids.extend_from_slice(tokenizer.eos_ids());
        }
        Self {
            decoder: IncrementalDecoder::new(tokenizer),
            stop_token_ids,
            stop_strings: request.stop_strings.clone(),
            max_tokens: request.max_tokens,
            held_text: String::new(),
            usage: Usage { prompt_tokens: request.prompt_token_ids.len(), ..Usage::default() },
        }
    }

    pub fn set_cached_tokens(&mut self, num_cached_tokens: usize) {
        self.usage.cached_tokens = num_cached_tokens;
    }

    /// Takes one sampled token; returns the delta to send (its `finish` is set when the
    /// request is done).
    pub fn push(&mut self, token_id: u32, logprob: Option<TokenLogprob>) -> Result<Delta> {
        self.usage.completion_tokens += 1;
        if self.stop_token_ids.contains(&token_id) {
            return self.finish(Delta::empty(), FinishReason::Stop);
        }
        let mut delta = Delta::empty();
        delta.token_ids.push(token_id);
        delta.logprobs.extend(logprob);
        if let Some(piece) = self.decoder.push(token_id)? {
            self.held_text.push_str(&piece);
        }
        if let Some(stop_idx) = self.first_stop_string_idx() {
            self.held_text.truncate(stop_idx);
            delta.text = std::mem::take(&mut self.held_text);
            return Ok(self.finished(delta, FinishReason::Stop));
        }
        if self.usage.completion_tokens >= self.max_tokens {
            return self.finish(delta, FinishReason::Length);
        }
        let num_safe_bytes = self.held_text.len() - self.longest_stop_prefix_suffix();
        delta.text = self.held_text.drain(..num_safe_bytes).collect();
        Ok(delta)
    }

    /// Ends the request: flushes held and undecoded text (unless a stop string is in it).
    fn finish(&mut self, mut delta: Delta, reason: FinishReason) -> Result<Delta> {
        if let Some(rest) = self.decoder.finish()? {
            self.held_text.push_str(&rest);
        }
        if let Some(stop_idx) = self.first_stop_string_idx() {
            self.held_text.truncate(stop_idx);
            delta.text = std::mem::take(&mut self.held_text);
            return Ok(self.finished(delta, FinishReason::Stop));
        }
        delta.text = std::mem::take(&mut self.held_text);
        Ok(self.finished(delta, reason))
    }

    fn finished(&self, mut delta: Delta, reason: FinishReason) -> Delta {
        delta.finish = Some(Finish { reason, usage: self.usage });
        delta
    }

    pub fn failed(&self, message: String) -> Delta {
        self.finished(Delta::empty(), FinishReason::Error(message))
    }

    /// Byte index of the earliest stop string in the held text.
    fn first_stop_string_idx(&self) -> Option<usize> {
        self.stop_strings.iter().filter_map(|stop| self.held_text.find(stop.as_str())).min()
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let text = &self.held_text;
        self.stop_strings
            .iter()
            .map(|stop| {
                let max_len = (stop.len() - 1).min(text.len());
                (1..=max_len)
                    .rev()
                    .find(|&len| text.is_char_boundary(text.len() - len) && stop.starts_with(&text[text.len() - len..]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

impl Delta {
    pub(crate) fn empty() -> Self {
        Self { text: String::new(), token_ids: Vec::new(), logprobs: Vec::new(), finish: None }
    }
}
