//! `POST /v1/completions` (legacy text completions): a prompt (text, one-element text array,
//! or token ids) → engine requests (one per `n`) → one `text_completion` JSON, or SSE chunks
//! ending with `data: [DONE]`.
//!
//! Owns: prompt forms, the legacy logprobs arrays (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`, offsets counted in characters of the generated text), and the completion
//! shapes. Does not own: sampling ranges (`params`), stream merging (`stream`).
//! Not supported (400): batched prompts, `echo`, `suffix`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_engine::sampling::SamplingParams;
use hearth_engine::serve::{Delta, Finish, TokenLogprob, Usage};
use hearth_tokenizer::Tokenizer;

use super::types::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Prompt};
use super::{
    finish_reason_body, finite_logprob, stream_end, stream_error, to_json, usage_body,
    ResponseContext,
};
use crate::error::ServerError;
use crate::json::ApiJson;
use crate::metrics::Arrival;
use crate::params::{self, GenerationSpec, OPENAI_NAMES};
use crate::prompt;
use crate::state::AppState;
use crate::stream::{collect, drive, sse_response, ChunkRenderer, Generation, Timings};

const MAX_STOP_STRINGS: usize = 4;

pub async fn completions(
    State(state): State<AppState>,
    Arrival(arrived): Arrival,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ServerError> {
    state.check_model(request.model.as_deref())?;
    let spec = generation_spec(&request, state.handle().tokenizer())?;
    let generation = Generation::start(&state, &spec, arrived)?;
    let ctx = ResponseContext::new(&state, "cmpl");
    let with_logprobs = spec.logprobs.is_some();
    if request.stream.unwrap_or(false) {
        let include_usage = request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let text_offsets = vec![0; generation.num_choices()];
        let renderer = CompletionRenderer {
            ctx,
            include_usage,
            with_logprobs,
            text_offsets,
        };
        return Ok(sse_response(drive(generation, renderer)));
    }
    let collected = collect(generation).await?;
    let choices = collected
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, choice)| CompletionChoice {
            index,
            logprobs: with_logprobs.then(|| completion_logprobs(&ctx, &choice.logprobs, &mut 0)),
            text: choice.text,
            finish_reason: Some(finish_reason_body(&choice.finish.reason)),
        })
        .collect();
    let body = Completion {
        id: ctx.id,
        object: "text_completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: Some(Some(usage_body(&collected.usage))),
    };
    Ok(Json(body).into_response())
}

fn generation_spec(
    request: &CompletionRequest,
    tokenizer: &Tokenizer,
) -> Result<GenerationSpec, ServerError> {
    if request.echo.unwrap_or(false) {
        return Err(ServerError::invalid_param("echo", "echo is not supported"));
    }
    if request
        .suffix
        .as_deref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(ServerError::invalid_param(
            "suffix",
            "suffix is not supported",
        ));
    }
    let logprobs = request
        .logprobs
        .map(|k| params::check_top_logprobs("logprobs", k))
        .transpose()?;
    let stop = request
        .stop
        .as_ref()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    Ok(GenerationSpec {
        prompt_token_ids: prompt_token_ids(&request.prompt, tokenizer)?,
        max_tokens: params::check_max_tokens("max_tokens", request.max_tokens)?,
        sampling: request
            .sampling_args()
            .to_params(&SamplingParams::default(), &OPENAI_NAMES)?,
        stop_strings: params::check_stop(stop, "stop", Some(MAX_STOP_STRINGS))?,
        ignore_eos: request.ignore_eos.unwrap_or(false),
        logprobs,
        num_choices: params::check_num_choices(request.n)?,
    })
}

fn prompt_token_ids(prompt: &Prompt, tokenizer: &Tokenizer) -> Result<Vec<u32>, ServerError> {
    let batched = || {
        ServerError::invalid_param(
            "prompt",
            "batched prompts are not supported; send one prompt per request",
        )
    };
    match prompt {
        Prompt::Text(text) => prompt::text_prompt(tokenizer, text),
        Prompt::TokenIds(ids) => Ok(ids.clone()),
        Prompt::Texts(texts) => match texts.as_slice() {
            [text] => prompt::text_prompt(tokenizer, text),
            _ => Err(batched()),
        },
        Prompt::TokenIdBatches(batches) => match batches.as_slice() {
            [ids] => Ok(ids.clone()),
            _ => Err(batched()),
        },
    }
}

/// The legacy arrays for `logprobs`; `text_offset` continues from `*offset` (in characters).
fn completion_logprobs(
    ctx: &ResponseContext,
    logprobs: &[TokenLogprob],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for lp in logprobs {
        let token = ctx.token_text(lp.token_id);
        out.text_offset.push(*offset);
        *offset += token.chars().count();
        out.tokens.push(token);
        out.token_logprobs.push(finite_logprob(lp.logprob));
        let top: BTreeMap<String, f32> = lp
            .top
            .iter()
            .map(|&(id, alt)| (ctx.token_text(id), finite_logprob(alt)))
            .collect();
        out.top_logprobs.push(top);
    }
    out
}

struct CompletionRenderer {
    ctx: ResponseContext,
    include_usage: bool,
    with_logprobs: bool,
    /// Per choice: characters of token text reported so far.
    text_offsets: Vec<usize>,
}

impl CompletionRenderer {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        let chunk = Completion {
            id: self.ctx.id.clone(),
            object: "text_completion",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage: self.include_usage.then(|| usage.as_ref().map(usage_body)),
        };
        to_json(&chunk)
    }
}

impl ChunkRenderer for CompletionRenderer {
    fn start(&mut self, _num_choices: usize) -> Vec<String> {
        Vec::new()
    }

    fn delta(&mut self, choice_idx: usize, delta: &Delta) -> Vec<String> {
        let with_logprobs = self.with_logprobs && !delta.logprobs.is_empty();
        if delta.text.is_empty() && !with_logprobs {
            return Vec::new();
        }
        let logprobs = match self.text_offsets.get_mut(choice_idx) {
            Some(offset) if with_logprobs => {
                Some(completion_logprobs(&self.ctx, &delta.logprobs, offset))
            }
            _ => None,
        };
        let choice = CompletionChoice {
            index: choice_idx,
            text: delta.text.clone(),
            logprobs,
            finish_reason: None,
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn finish(&mut self, choice_idx: usize, finish: &Finish) -> Vec<String> {
        let choice = CompletionChoice {
            index: choice_idx,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(finish_reason_body(&finish.reason)),
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn end(&mut self, usage: &Usage, _timings: &Timings) -> Vec<String> {
        stream_end(
            self.include_usage
                .then(|| self.chunk(Vec::new(), Some(*usage))),
        )
    }

    fn error(&mut self, err: &ServerError) -> Vec<String> {
        stream_error(err)
    }
}
