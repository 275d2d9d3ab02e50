//! `ServerError`: the crate's one error type, and how each error becomes an HTTP response.
//!
//! Owns: the status code, `type`, `code` and `param` of every failure, written in OpenAI's shape
//! `{"error":{"message","type","param","code"}}`; `OllamaError` writes the same failure in
//! Ollama's shape `{"error":"message"}` for `/api/*`. Does not own: deciding what is invalid
//! (handlers, `params`, and the engine's own validation do that).
//!
//! Invariants: input problems are 4xx and name the parameter where there is one; only engine
//! failures are 5xx; the message is the engine's own where the engine refused the request.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_engine::sampling::SamplingError;
use hearth_engine::EngineError;
use hearth_tokenizer::TokenizerError;
use serde::Serialize;

use ErrorKind as K;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The body is not syntactically valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A parameter is missing, has the wrong type, or is out of range.
    #[error("{message}")]
    InvalidParam {
        param: Option<String>,
        message: String,
    },
    /// The `model` field names a model this server does not serve.
    #[error("the model `{requested}` does not exist; this server serves `{served}`")]
    ModelNotFound { requested: String, served: String },
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("the request body exceeds the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{path} does not accept {method}")]
    MethodNotAllowed { method: String, path: String },
    /// The engine refused the request (validation) or cannot take it (shutting down).
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The engine failed while generating (`FinishReason::Error`) or stopped mid-request.
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
}

/// OpenAI's error categories (`error.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequestError,
    AuthenticationError,
    NotFoundError,
    ServerError,
    ServiceUnavailable,
}

/// The parts of an error response, independent of the API's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub message: String,
}

impl ServerError {
    /// A bad value for `param`.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidParam {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    pub fn report(&self) -> ErrorReport {
        let (status, kind, param, code): (
            StatusCode,
            ErrorKind,
            Option<String>,
            Option<&'static str>,
        ) = match self {
            Self::MalformedJson(_) => (
                StatusCode::BAD_REQUEST,
                K::InvalidRequestError,
                None,
                Some("invalid_json"),
            ),
            Self::InvalidParam { param, .. } => (
                StatusCode::BAD_REQUEST,
                K::InvalidRequestError,
                param.clone(),
                None,
            ),
            Self::ModelNotFound { .. } => (
                StatusCode::NOT_FOUND,
                K::InvalidRequestError,
                Some("model".into()),
                Some("model_not_found"),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                K::AuthenticationError,
                None,
                Some("invalid_api_key"),
            ),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                K::InvalidRequestError,
                None,
                Some("payload_too_large"),
            ),
            Self::RouteNotFound { .. } => (
                StatusCode::NOT_FOUND,
                K::NotFoundError,
                None,
                Some("unknown_route"),
            ),
            Self::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                K::InvalidRequestError,
                None,
                Some("method_not_allowed"),
            ),
            Self::Engine(err) => engine_report(err),
            Self::Tokenizer(TokenizerError::ChatTemplateRender { .. }) => (
                StatusCode::BAD_REQUEST,
                K::InvalidRequestError,
                Some("messages".into()),
                Some("chat_template_error"),
            ),
            Self::Tokenizer(TokenizerError::UnknownTokenId { .. }) => (
                StatusCode::BAD_REQUEST,
                K::InvalidRequestError,
                Some("prompt".into()),
                None,
            ),
            Self::Tokenizer(_) | Self::Generation(_) | Self::Bind { .. } | Self::Serve(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                K::ServerError,
                None,
                None,
            ),
        };
        ErrorReport {
            status,
            kind,
            param,
            code,
            message: self.to_string(),
        }
    }
}

fn engine_report(
    err: &EngineError,
) -> (StatusCode, ErrorKind, Option<String>, Option<&'static str>) {
    match err {
        EngineError::ContextOverflow { .. } => (
            StatusCode::BAD_REQUEST,
            K::InvalidRequestError,
            None,
            Some("context_length_exceeded"),
        ),
        EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, K::InvalidRequestError, None, None),
        EngineError::Sampling(SamplingError::InvalidParam { name, .. }) => (
            StatusCode::BAD_REQUEST,
            K::InvalidRequestError,
            Some((*name).to_string()),
            None,
        ),
        EngineError::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            K::ServiceUnavailable,
            None,
            Some("engine_shutting_down"),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            K::ServerError,
            None,
            None,
        ),
    }
}

#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: ErrorKind,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ErrorReport {
    /// `{"error":{"message","type","param","code"}}`.
    pub fn openai_json(&self) -> serde_json::Value {
        let body = OpenAiErrorBody {
            error: OpenAiError {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_value(body).unwrap_or_default()
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let report = self.report();
        if report.status.is_server_error() {
            tracing::warn!(status = %report.status, "request failed: {}", report.message);
        }
        (report.status, Json(report.openai_json())).into_response()
    }
}

/// A `ServerError` on an Ollama route: same status, Ollama's `{"error":"message"}` body.
#[derive(Debug)]
pub struct OllamaError(pub ServerError);

impl From<ServerError> for OllamaError {
    fn from(err: ServerError) -> Self {
        Self(err)
    }
}

impl From<EngineError> for OllamaError {
    fn from(err: EngineError) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let report = self.0.report();
        if report.status.is_server_error() {
            tracing::warn!(status = %report.status, "request failed: {}", report.message);
        }
        (
            report.status,
            Json(serde_json::json!({ "error": report.message })),
        )
            .into_response()
    }
}
