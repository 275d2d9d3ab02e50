//! `POST /api/chat` and `POST /api/generate`: Ollama's generation endpoints. Streaming NDJSON
//! by default (one object per piece of text, then a final object with `done: true`,
//! `done_reason` and the counts and durations); `"stream": false` gives one object.
//!
//! Owns: Ollama defaults (temperature 0.8, top_k 40, top_p 0.9; repeat_penalty 1.0 because
//! hearth's penalty covers the whole history, not the last 64 tokens), `options` mapping,
//! `format` (honored by instruction), `/api/generate`'s prompt forms (`system`, `raw`), and
//! the empty "load the model" request. Not supported (400): images, `context`, `suffix`.
//! Durations: `prompt_eval_duration` = arrival → first token, `eval_duration` = first token →
//! last, `total_duration` = arrival → last; `load_duration` is 0 (the model is loaded).

use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_engine::sampling::SamplingParams;
use hearth_engine::serve::{Delta, Finish, FinishReason, Usage};
use hearth_tokenizer::ChatMessage;
use serde::Serialize;

use super::types::rfc3339;
use super::types::{
    ChatRequest, ChatResponse, DoneReason, FinalStats, GenerateRequest, GenerateResponse, Options,
    ResponseMessage,
};
use crate::error::{OllamaError, ServerError};
use crate::json::ApiJson;
use crate::metrics::Arrival;
use crate::openai::to_json;
use crate::params::{self, GenerationSpec, SamplingArgs, OLLAMA_NAMES};
use crate::prompt;
use crate::state::AppState;
use crate::stream::{collect, drive, ndjson_response, ChunkRenderer, Generation, Timings};

fn ollama_defaults() -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.9,
        ..SamplingParams::default()
    }
}

/// Which endpoint's shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Generate,
}

pub async fn chat(
    State(state): State<AppState>,
    Arrival(arrived): Arrival,
    body: Result<ApiJson<ChatRequest>, ServerError>,
) -> Result<Response, OllamaError> {
    let ApiJson(request) = body?;
    state.check_model(request.model.as_deref())?;
    let model = request.model.clone().unwrap_or_default();
    if request.messages.is_empty() {
        return Ok(Json(load_response(Endpoint::Chat, model)).into_response());
    }
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    for (message_idx, message) in request.messages.iter().enumerate() {
        if message
            .images
            .as_ref()
            .is_some_and(|images| !images.is_empty())
        {
            let param = format!("messages[{message_idx}].images");
            return Err(ServerError::invalid_param(param, "images are not supported").into());
        }
        messages.push(ChatMessage::new(
            message.role.template_name(),
            message.content.clone(),
        ));
    }
    if let Some(instruction) = format_instruction(request.format.as_ref())? {
        prompt::add_system_instruction(&mut messages, &instruction);
    }
    let mut spec = generation_spec(request.options.as_ref())?;
    spec.prompt_token_ids = prompt::chat_prompt(state.handle().tokenizer(), &messages)?;
    respond(
        &state,
        Endpoint::Chat,
        model,
        &spec,
        request.stream.unwrap_or(true),
        arrived,
    )
    .await
}

pub async fn generate(
    State(state): State<AppState>,
    Arrival(arrived): Arrival,
    body: Result<ApiJson<GenerateRequest>, ServerError>,
) -> Result<Response, OllamaError> {
    let ApiJson(request) = body?;
    state.check_model(request.model.as_deref())?;
    let model = request.model.clone().unwrap_or_default();
    for (param, unsupported) in [
        (
            "images",
            request
                .images
                .as_ref()
                .is_some_and(|images| !images.is_empty()),
        ),
        (
            "context",
            request
                .context
                .as_ref()
                .is_some_and(|context| !context.is_empty()),
        ),
        (
            "suffix",
            request
                .suffix
                .as_ref()
                .is_some_and(|suffix| !suffix.is_empty()),
        ),
    ] {
        if unsupported {
            return Err(ServerError::invalid_param(
                param,
                format!("`{param}` is not supported; use /api/chat"),
            )
            .into());
        }
    }
    let text = request.prompt.unwrap_or_default();
    if text.is_empty() {
        return Ok(Json(load_response(Endpoint::Generate, model)).into_response());
    }
    let tokenizer = state.handle().tokenizer();
    let system = request.system.filter(|system| !system.is_empty());
    let instruction = format_instruction(request.format.as_ref())?;
    let prompt_token_ids = if request.raw.unwrap_or(false) || tokenizer.chat_template().is_none() {
        let text = [instruction, system, Some(text)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("\n\n");
        prompt::text_prompt(tokenizer, &text)?
    } else {
        let mut messages: Vec<ChatMessage> = system
            .map(|system| ChatMessage::new("system", system))
            .into_iter()
            .collect();
        messages.push(ChatMessage::new("user", text));
        if let Some(instruction) = instruction {
            prompt::add_system_instruction(&mut messages, &instruction);
        }
        prompt::chat_prompt(tokenizer, &messages)?
    };
    let mut spec = generation_spec(request.options.as_ref())?;
    spec.prompt_token_ids = prompt_token_ids;
    respond(
        &state,
        Endpoint::Generate,
        model,
        &spec,
        request.stream.unwrap_or(true),
        arrived,
    )
    .await
}

/// `format`: `"json"`, a JSON schema object, or empty.
fn format_instruction(format: Option<&serde_json::Value>) -> Result<Option<String>, ServerError> {
    match format {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(format)) if format.is_empty() => Ok(None),
        Some(serde_json::Value::String(format)) if format == "json" => {
            Ok(Some(prompt::json_instruction(None)))
        }
        Some(schema @ serde_json::Value::Object(_)) => {
            Ok(Some(prompt::json_instruction(Some(schema))))
        }
        Some(other) => Err(ServerError::invalid_param(
            "format",
            format!("format must be \"json\" or a JSON schema, got {other}"),
        )),
    }
}

fn generation_spec(options: Option<&Options>) -> Result<GenerationSpec, ServerError> {
    let default_options = Options::default();
    let options = options.unwrap_or(&default_options);
    let max_tokens = match options.num_predict {
        None | Some(-1 | -2) => None,
        Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            let message = format!("options.num_predict must be >= 1 (or -1 for no limit), got {n}");
            return Err(ServerError::invalid_param("options.num_predict", message));
        }
    };
    let args = SamplingArgs {
        temperature: options.temperature,
        top_p: options.top_p,
        top_k: options.top_k,
        min_p: options.min_p,
        presence_penalty: options.presence_penalty,
        frequency_penalty: options.frequency_penalty,
        repetition_penalty: options.repeat_penalty,
        seed: options.seed.and_then(|seed| u64::try_from(seed).ok()),
    };
    let stop = options
        .stop
        .as_ref()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    Ok(GenerationSpec {
        prompt_token_ids: Vec::new(),
        max_tokens,
        sampling: args.to_params(&ollama_defaults(), &OLLAMA_NAMES)?,
        stop_strings: params::check_stop(stop, "options.stop", None)?,
        ignore_eos: false,
        logprobs: None,
        num_choices: 1,
    })
}

async fn respond(
    state: &AppState,
    endpoint: Endpoint,
    model: String,
    spec: &GenerationSpec,
    stream: bool,
    arrived: Instant,
) -> Result<Response, OllamaError> {
    let generation = Generation::start(state, spec, arrived)?;
    let mut renderer = OllamaRenderer {
        endpoint,
        model,
        done_reason: DoneReason::Stop,
    };
    if stream {
        return Ok(ndjson_response(drive(generation, renderer)));
    }
    let collected = collect(generation).await?;
    let Some(choice) = collected.choices.into_iter().next() else {
        return Err(ServerError::Generation("the engine returned no output".into()).into());
    };
    renderer.finish(0, &choice.finish);
    let stats = final_stats(renderer.done_reason, &collected.usage, &collected.timings);
    Ok(Json(renderer.object(choice.text, Some(stats))).into_response())
}

fn final_stats(done_reason: DoneReason, usage: &Usage, timings: &Timings) -> FinalStats {
    let now = Instant::now();
    let first_token_at = timings.first_token_at.unwrap_or(now);
    let nanos = |from: Instant, to: Instant| to.saturating_duration_since(from).as_nanos() as u64;
    FinalStats {
        done_reason,
        total_duration: Some(nanos(timings.arrived, now)),
        load_duration: Some(0),
        prompt_eval_count: Some(usage.prompt_tokens),
        prompt_eval_duration: Some(nanos(timings.arrived, first_token_at)),
        eval_count: Some(usage.completion_tokens),
        eval_duration: Some(nanos(first_token_at, now)),
    }
}

/// What Ollama answers to a request with no prompt: the model is loaded, nothing generated.
fn load_response(endpoint: Endpoint, model: String) -> OllamaObject {
    let renderer = OllamaRenderer {
        endpoint,
        model,
        done_reason: DoneReason::Load,
    };
    let stats = FinalStats {
        done_reason: DoneReason::Load,
        total_duration: None,
        load_duration: None,
        prompt_eval_count: None,
        prompt_eval_duration: None,
        eval_count: None,
        eval_duration: None,
    };
    renderer.object(String::new(), Some(stats))
}

struct OllamaRenderer {
    endpoint: Endpoint,
    model: String,
    done_reason: DoneReason,
}

/// One response object of either endpoint.
#[derive(Serialize)]
#[serde(untagged)]
enum OllamaObject {
    Chat(ChatResponse),
    Generate(GenerateResponse),
}

impl OllamaRenderer {
    fn object(&self, text: String, stats: Option<FinalStats>) -> OllamaObject {
        let (model, created_at, done) = (
            self.model.clone(),
            rfc3339(SystemTime::now()),
            stats.is_some(),
        );
        match self.endpoint {
            Endpoint::Chat => OllamaObject::Chat(ChatResponse {
                model,
                created_at,
                message: ResponseMessage {
                    role: "assistant",
                    content: text,
                },
                done,
                stats,
            }),
            Endpoint::Generate => OllamaObject::Generate(GenerateResponse {
                model,
                created_at,
                response: text,
                done,
                stats,
            }),
        }
    }
}

impl ChunkRenderer for OllamaRenderer {
    fn start(&mut self, _num_choices: usize) -> Vec<String> {
        Vec::new()
    }

    fn delta(&mut self, _choice_idx: usize, delta: &Delta) -> Vec<String> {
        if delta.text.is_empty() {
            return Vec::new();
        }
        vec![to_json(&self.object(delta.text.clone(), None))]
    }

    fn finish(&mut self, _choice_idx: usize, finish: &Finish) -> Vec<String> {
        self.done_reason = match finish.reason {
            FinishReason::Length => DoneReason::Length,
            FinishReason::Stop | FinishReason::Error(_) => DoneReason::Stop,
        };
        Vec::new()
    }

    fn end(&mut self, usage: &Usage, timings: &Timings) -> Vec<String> {
        let stats = final_stats(self.done_reason, usage, timings);
        vec![to_json(&self.object(String::new(), Some(stats)))]
    }

    fn error(&mut self, err: &ServerError) -> Vec<String> {
        vec![serde_json::json!({ "error": err.to_string() }).to_string()]
    }
}
