//! Bearer-token authentication: when `ServeOptions::api_key` is set, every API route (OpenAI,
//! Ollama, `/metrics`) needs `Authorization: Bearer <key>`; `/health` stays open so load
//! balancers and supervisors can probe without the key.
//!
//! Owns: the check and its 401 (OpenAI shape on `/v1/*`, Ollama shape on `/api/*`).
//! Invariant: the key comparison takes time independent of where the strings differ.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{OllamaError, ServerError};
use crate::state::AppState;

pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.api_key() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    if presented.is_some_and(|key| constant_time_eq(key.as_bytes(), expected.as_bytes())) {
        return next.run(request).await;
    }
    if request.uri().path().starts_with("/api/") {
        OllamaError(ServerError::Unauthorized).into_response()
    } else {
        ServerError::Unauthorized.into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (idx, &byte) in a.iter().enumerate() {
        diff |= usize::from(byte ^ b.get(idx % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn equal_keys_match_and_others_do_not() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
