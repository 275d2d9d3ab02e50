//! `ApiJson<T>`: the JSON body extractor every POST route uses instead of axum's `Json`, so that
//! every body problem is a `ServerError` in our error shape, never axum's plain-text rejection.
//!
//! Owns: reading the body under the configured limit (413 past it), parsing it (400
//! `MalformedJson` for bad syntax, 400 `InvalidParam` naming the JSON path for a wrong type or
//! a missing field). Does not own: value ranges (`params`). Any `Content-Type` is accepted, as
//! Ollama's server does (its clients often send none).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::ServerError;
use crate::state::AppState;

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ServerError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ServerError> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ServerError::PayloadTooLarge {
                        limit_bytes: state.max_body_bytes(),
                    }
                } else {
                    ServerError::InvalidParam {
                        param: None,
                        message: format!("cannot read the request body: {}", rejection.body_text()),
                    }
                }
            })?;
        parse(&body).map(ApiJson)
    }
}

/// Parses a whole JSON document into `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            Category::Data => {
                let param = (path != ".").then_some(path);
                let message = match &param {
                    Some(param) => format!("invalid `{param}`: {inner}"),
                    None => format!("invalid request: {inner}"),
                };
                ServerError::InvalidParam { param, message }
            }
            Category::Syntax | Category::Eof | Category::Io => {
                ServerError::MalformedJson(inner.to_string())
            }
        }
    })?;
    deserializer
        .end()
        .map_err(|err| ServerError::MalformedJson(err.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        temperature: Option<f32>,
        messages: Vec<Message>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Message {
        content: String,
    }

    #[test]
    fn wrong_type_names_the_json_path() {
        let err = parse::<Body>(br#"{"messages":[{"content":3}]}"#).unwrap_err();
        assert_eq!(err.report().param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn broken_syntax_and_trailing_garbage_are_malformed_json() {
        assert!(matches!(
            parse::<Body>(br#"{"messages":["#),
            Err(ServerError::MalformedJson(_))
        ));
        assert!(matches!(
            parse::<Body>(br#"{"messages":[]} x"#),
            Err(ServerError::MalformedJson(_))
        ));
    }

    #[test]
    fn missing_field_is_an_invalid_request() {
        let err = parse::<Body>(br#"{}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `messages`"),
            "{err}"
        );
    }
}
