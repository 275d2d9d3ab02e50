//! OpenAI-compatible API: `/v1/chat/completions` (`chat`), `/v1/completions` (`completions`),
//! `/v1/models` (here), and what those share: the response context (id, created, model),
//! usage and finish-reason bodies, and token texts for logprobs.
//!
//! Does not own: the generic streaming machinery (`crate::stream`) or prompts (`crate::prompt`).

pub mod chat;
pub mod completions;
pub mod types;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use hearth_engine::serve::{FinishReason, Usage};
use hearth_tokenizer::{SkipSpecial, Tokenizer};
use serde::Serialize;

use crate::error::ServerError;
use crate::state::{unix_now, AppState};
use types::{FinishReasonBody, ModelCard, ModelList, PromptTokensDetails, UsageBody};

/// What every response and chunk of one request repeats.
pub struct ResponseContext {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub tokenizer: Arc<Tokenizer>,
}

impl ResponseContext {
    pub fn new(state: &AppState, id_prefix: &str) -> Self {
        Self {
            id: state.response_id(id_prefix),
            created: unix_now(),
            model: state.model_name().to_string(),
            tokenizer: state.handle().tokenizer().clone(),
        }
    }

    /// A token's text as the client should see it (special tokens included).
    pub fn token_text(&self, token_id: u32) -> String {
        self.tokenizer
            .decode(&[token_id], SkipSpecial::No)
            .unwrap_or_else(|_| {
                self.tokenizer
                    .token_str(token_id)
                    .unwrap_or_default()
                    .to_string()
            })
    }
}

/// OpenAI writes `-9999.0` for a log-probability of `-inf`; JSON has no infinities.
pub fn finite_logprob(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        -9999.0
    }
}

pub fn usage_body(usage: &Usage) -> UsageBody {
    UsageBody {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: usage.cached_tokens,
        },
    }
}

/// `Error` never reaches a response body as a finish reason (it becomes an error).
pub fn finish_reason_body(reason: &FinishReason) -> FinishReasonBody {
    match reason {
        FinishReason::Length => FinishReasonBody::Length,
        FinishReason::Stop | FinishReason::Error(_) => FinishReasonBody::Stop,
    }
}

/// The end of an OpenAI stream: the usage chunk when the client asked for one, then `[DONE]`.
pub fn stream_end(usage_chunk: Option<String>) -> Vec<String> {
    usage_chunk
        .into_iter()
        .chain(["[DONE]".to_string()])
        .collect()
}

/// A failed OpenAI stream: the error object, then `[DONE]`.
pub fn stream_error(err: &ServerError) -> Vec<String> {
    vec![err.report().openai_json().to_string(), "[DONE]".to_string()]
}

/// Serializes a chunk; these types always serialize, but an error still yields valid JSON.
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| {
        serde_json::json!({ "error": { "message": format!("serializing a response failed: {err}") } }).to_string()
    })
}

fn model_card(state: &AppState) -> ModelCard {
    let info = state.handle().model_info();
    ModelCard {
        id: info.name.clone(),
        object: "model",
        created: info.created,
        owned_by: "hearth",
        max_model_len: state.handle().config().max_model_len,
    }
}

/// `GET /v1/models`.
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![model_card(&state)],
    })
}

/// `GET /v1/models/{model}`.
pub async fn get_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelCard>, ServerError> {
    state.check_model(Some(&model))?;
    Ok(Json(model_card(&state)))
}
