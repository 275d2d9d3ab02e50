//! Ollama-compatible API: generation (`generate.rs`: `/api/chat`, `/api/generate`) and the
//! model listing endpoints here (`/api/tags`, `/api/show`, `/api/version`).
//!
//! Owns: how the served model is described to Ollama clients (name with a `:latest` tag,
//! details, `model_info`). Errors on these routes use Ollama's `{"error":"..."}` shape
//! (`OllamaError`) with the same status codes as the OpenAI routes.

pub mod generate;
pub mod types;

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;

use crate::error::{OllamaError, ServerError};
use crate::json::ApiJson;
use crate::state::AppState;
use types::{
    rfc3339, ModelDetails, ModelEntry, ShowRequest, ShowResponse, TagList, VersionResponse,
};

/// The served name as Ollama lists it: with a tag (`:latest` unless it has one).
fn tagged_name(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// 135_000_000 → "135M", 7_240_000_000 → "7.2B".
fn parameter_size(num_parameters: u64) -> String {
    let n = num_parameters as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9).replace(".0B", "B")
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else {
        format!("{:.0}K", n / 1e3)
    }
}

fn details(state: &AppState) -> ModelDetails {
    let info = state.handle().model_info();
    ModelDetails {
        parent_model: String::new(),
        format: info.format.clone(),
        family: info.architecture.clone(),
        families: vec![info.architecture.clone()],
        parameter_size: parameter_size(info.num_parameters),
        quantization_level: info.quantization.clone(),
    }
}

fn modified_at(state: &AppState) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(state.handle().model_info().created))
}

/// `GET /api/tags`: the one served model.
pub async fn tags(State(state): State<AppState>) -> Json<TagList> {
    let name = tagged_name(state.model_name());
    let entry = ModelEntry {
        model: name.clone(),
        name,
        modified_at: modified_at(&state),
        size: state.handle().model_info().size_bytes,
        digest: String::new(),
        details: details(&state),
    };
    Json(TagList {
        models: vec![entry],
    })
}

/// `POST /api/show`: details, template and `model_info` of the served model.
pub async fn show(
    State(state): State<AppState>,
    body: Result<ApiJson<ShowRequest>, ServerError>,
) -> Result<Json<ShowResponse>, OllamaError> {
    let ApiJson(request) = body?;
    state.check_model(request.model.as_deref().or(request.name.as_deref()))?;
    let info = state.handle().model_info();
    let mut model_info = serde_json::Map::new();
    model_info.insert(
        "general.architecture".into(),
        info.architecture.clone().into(),
    );
    model_info.insert("general.parameter_count".into(), info.num_parameters.into());
    model_info.insert(
        format!("{}.context_length", info.architecture),
        state.handle().config().max_model_len.into(),
    );
    let template = state
        .handle()
        .tokenizer()
        .chat_template()
        .map(|t| t.source().to_string())
        .unwrap_or_default();
    Ok(Json(ShowResponse {
        modelfile: format!("# served by hearth\nFROM {}\n", info.name),
        parameters: String::new(),
        template,
        details: details(&state),
        model_info,
        capabilities: vec!["completion"],
        modified_at: modified_at(&state),
    }))
}

/// `GET /api/version`: hearth's version.
pub async fn version() -> Json<VersionResponse> {
    Json(VersionResponse {
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sizes_read_like_ollamas() {
        assert_eq!(parameter_size(134_515_008), "135M");
        assert_eq!(parameter_size(7_241_732_096), "7.2B");
        assert_eq!(parameter_size(8_000_000_000), "8B");
    }

    #[test]
    fn untagged_names_get_latest() {
        assert_eq!(tagged_name("smollm2"), "smollm2:latest");
        assert_eq!(tagged_name("qwen3:8b"), "qwen3:8b");
    }
}
