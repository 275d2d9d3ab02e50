//! What a caller (the HTTP server, a benchmark, a test) hands the serving engine, and what it
//! gets back: `EngineRequest` in, a stream of `Delta`s out, the last one carrying `Finish`.
//!
//! Owns: the request/response vocabulary of the engine's async face. Does not own: HTTP JSON
//! shapes (the server maps them), chat templates or tokenization of prompts (the server does
//! those; the engine takes token ids), scheduling.
//!
//! Invariants: a stream yields zero or more deltas with `finish == None`, then exactly one with
//! `finish == Some(..)`, then ends. Concatenating every delta's `text` gives the request's
//! whole output text (stop strings excluded); `token_ids` likewise.

use crate::sampling::SamplingParams;

/// Everything the engine needs to serve one generation.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// The rendered, tokenized prompt (BOS included where the model wants it). Not empty.
    pub prompt_token_ids: Vec<u32>,
    /// Most tokens to generate (>= 1). Prompt + `max_tokens` must fit the model's context;
    /// the engine rejects the request otherwise (it never truncates).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the output text contains one of these; the text from the stop
    /// string on is not returned. Matched across token boundaries.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation besides the model's EOS ids (not returned).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through EOS (until `max_tokens` or a stop string).
    pub ignore_eos: bool,
    /// `Some(k)`: report each generated token's log-probability and the `k` most likely
    /// alternatives (0 <= k <= `MAX_TOP_LOGPROBS`).
    pub logprobs: Option<usize>,
}

/// Most alternatives `EngineRequest::logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl EngineRequest {
    /// A greedy request with no stop strings and no logprobs.
    pub fn greedy(prompt_token_ids: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt_token_ids,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

/// Log-probability of one generated token under the model's distribution (natural-log softmax
/// of the raw logits: before penalties, temperature and filters), and the most likely
/// alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// Most likely tokens, descending; `k` entries as the request asked.
    pub top: Vec<(u32, f32)>,
}

/// One piece of a request's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// New output text (whole UTF-8 characters; may be empty while a character or a possible
    /// stop string is still being held back).
    pub text: String,
    /// Generated token ids this delta covers (stop tokens excluded).
    pub token_ids: Vec<u32>,
    /// One entry per `token_ids` entry when the request asked for logprobs.
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the last delta only.
    pub finish: Option<Finish>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` tokens were generated.
    Length,
    /// The engine failed while running this request (the message says why); other requests
    /// may continue.
    Error(String),
}

/// Token counts for one request, as OpenAI's `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
}

/// What the server reports about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name clients use in `model` fields.
    pub name: String,
    /// e.g. "llama", "gemma3".
    pub architecture: String,
    pub context_length: usize,
    /// e.g. "Q4_1", "BF16".
    pub quantization: String,
    pub num_parameters: u64,
    /// File format: "gguf" or "safetensors".
    pub format: String,
    /// Bytes of weights on disk.
    pub size_bytes: u64,
    /// Seconds since the Unix epoch when the engine started (OpenAI `created`).
    pub created: u64,
}

/// A snapshot of the engine's state, for `/metrics` and `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Blocks referenced by requests (cached-but-free blocks count as free).
    pub num_kv_blocks_used: usize,
    pub num_kv_blocks_total: usize,
    /// Prompt tokens looked up in the prefix cache, and how many were found, since start.
    pub num_prefix_query_tokens: u64,
    pub num_prefix_hit_tokens: u64,
    pub num_preemptions: u64,
}
