//! `POST /v1/chat/completions`: messages → chat template → engine requests (one per `n`) →
//! one `chat.completion` JSON, or SSE `chat.completion.chunk`s ending with `data: [DONE]`.
//!
//! Owns: chat request validation (roles, content parts, `logprobs`/`top_logprobs`,
//! `response_format`) and the chat response/chunk shapes. Does not own: sampling ranges
//! (`params`), templates (`prompt`), stream merging (`stream`).
//!
//! Stream order per request: one role chunk per choice, content chunks, one finish chunk per
//! choice, the usage chunk (empty `choices`) when `stream_options.include_usage`, `[DONE]`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_engine::sampling::SamplingParams;
use hearth_engine::serve::{Delta, Finish, TokenLogprob, Usage};
use hearth_tokenizer::ChatMessage;

use super::types::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatCompletionRequest, ChatLogprobs,
    ChatTokenLogprob, ChunkDelta, MessageContent, RequestMessage, ResponseFormat, ResponseMessage,
    TopLogprob,
};
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

/// Most stop strings OpenAI accepts.
const MAX_STOP_STRINGS: usize = 4;

pub async fn chat_completions(
    State(state): State<AppState>,
    Arrival(arrived): Arrival,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ServerError> {
    state.check_model(request.model.as_deref())?;
    let messages = template_messages(&request)?;
    let mut spec = generation_spec(&request)?;
    spec.prompt_token_ids = prompt::chat_prompt(state.handle().tokenizer(), &messages)?;
    let generation = Generation::start(&state, &spec, arrived)?;
    let ctx = ResponseContext::new(&state, "chatcmpl");
    let with_logprobs = spec.logprobs.is_some();
    if request.stream.unwrap_or(false) {
        let include_usage = request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let renderer = ChatRenderer {
            ctx,
            include_usage,
            with_logprobs,
        };
        return Ok(sse_response(drive(generation, renderer)));
    }
    let collected = collect(generation).await?;
    let choices = collected
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, choice)| ChatChoice {
            index,
            message: ResponseMessage {
                role: "assistant",
                content: choice.text,
            },
            logprobs: with_logprobs.then(|| chat_logprobs(&ctx, &choice.logprobs)),
            finish_reason: finish_reason_body(&choice.finish.reason),
        })
        .collect();
    let body = ChatCompletion {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        choices,
        usage: usage_body(&collected.usage),
    };
    Ok(Json(body).into_response())
}

/// The conversation as the template sees it, with the JSON instruction when asked for.
fn template_messages(request: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ServerError> {
    if request.messages.is_empty() {
        return Err(ServerError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(message_idx, message)| template_message(message_idx, message))
        .collect::<Result<Vec<_>, _>>()?;
    match request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            prompt::add_system_instruction(&mut messages, prompt::JSON_INSTRUCTION)
        }
        Some(ResponseFormat::JsonSchema {}) => {
            return Err(ServerError::invalid_param(
                "response_format.type",
                "response_format `json_schema` is not supported yet; use `json_object`",
            ))
        }
    }
    Ok(messages)
}

fn template_message(
    message_idx: usize,
    message: &RequestMessage,
) -> Result<ChatMessage, ServerError> {
    let content = match &message.content {
        None => String::new(),
        Some(MessageContent::Text(text)) => text.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (part_idx, part) in parts.iter().enumerate() {
                let param = format!("messages[{message_idx}].content[{part_idx}]");
                if part.kind != "text" {
                    let message = format!(
                        "content part type `{}` is not supported; only `text` is",
                        part.kind
                    );
                    return Err(ServerError::invalid_param(format!("{param}.type"), message));
                }
                let text = part.text.as_deref().ok_or_else(|| {
                    ServerError::invalid_param(
                        format!("{param}.text"),
                        "a text content part needs `text`",
                    )
                })?;
                texts.push(text);
            }
            texts.join("\n")
        }
    };
    Ok(ChatMessage::new(message.role.template_name(), content))
}

/// Everything but the prompt ids, which need the template.
fn generation_spec(request: &ChatCompletionRequest) -> Result<GenerationSpec, ServerError> {
    let max_tokens = match request.max_completion_tokens {
        Some(n) => params::check_max_tokens("max_completion_tokens", Some(n))?,
        None => params::check_max_tokens("max_tokens", request.max_tokens)?,
    };
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (true, top) => Some(params::check_top_logprobs(
            "top_logprobs",
            top.unwrap_or(0),
        )?),
        (false, None | Some(0)) => None,
        (false, Some(_)) => {
            return Err(ServerError::invalid_param(
                "top_logprobs",
                "top_logprobs requires `logprobs: true`",
            ));
        }
    };
    let stop = request
        .stop
        .as_ref()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    Ok(GenerationSpec {
        prompt_token_ids: Vec::new(),
        max_tokens,
        sampling: request
            .sampling_args()
            .to_params(&SamplingParams::default(), &OPENAI_NAMES)?,
        stop_strings: params::check_stop(stop, "stop", Some(MAX_STOP_STRINGS))?,
        ignore_eos: request.ignore_eos.unwrap_or(false),
        logprobs,
        num_choices: params::check_num_choices(request.n)?,
    })
}

fn chat_logprobs(ctx: &ResponseContext, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let entry = |token_id: u32, logprob: f32| {
        let token = ctx.token_text(token_id);
        (token.as_bytes().to_vec(), token, finite_logprob(logprob))
    };
    let content = logprobs
        .iter()
        .map(|lp| {
            let (bytes, token, logprob) = entry(lp.token_id, lp.logprob);
            let top_logprobs = lp
                .top
                .iter()
                .map(|&(id, alt)| {
                    let (bytes, token, logprob) = entry(id, alt);
                    TopLogprob {
                        token,
                        logprob,
                        bytes,
                    }
                })
                .collect();
            ChatTokenLogprob {
                token,
                logprob,
                bytes,
                top_logprobs,
            }
        })
        .collect();
    ChatLogprobs { content }
}

struct ChatRenderer {
    ctx: ResponseContext,
    include_usage: bool,
    with_logprobs: bool,
}

impl ChatRenderer {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        let chunk = ChatChunk {
            id: self.ctx.id.clone(),
            object: "chat.completion.chunk",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            choices,
            usage: self.include_usage.then(|| usage.as_ref().map(usage_body)),
        };
        to_json(&chunk)
    }
}

impl ChunkRenderer for ChatRenderer {
    fn start(&mut self, num_choices: usize) -> Vec<String> {
        (0..num_choices)
            .map(|index| {
                let delta = ChunkDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                self.chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    fn delta(&mut self, choice_idx: usize, delta: &Delta) -> Vec<String> {
        let with_logprobs = self.with_logprobs && !delta.logprobs.is_empty();
        if delta.text.is_empty() && !with_logprobs {
            return Vec::new();
        }
        let choice = ChatChunkChoice {
            index: choice_idx,
            delta: ChunkDelta {
                role: None,
                content: Some(delta.text.clone()),
            },
            logprobs: with_logprobs.then(|| chat_logprobs(&self.ctx, &delta.logprobs)),
            finish_reason: None,
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn finish(&mut self, choice_idx: usize, finish: &Finish) -> Vec<String> {
        let choice = ChatChunkChoice {
            index: choice_idx,
            delta: ChunkDelta::default(),
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
