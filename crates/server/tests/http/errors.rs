//! Every class of bad request gets OpenAI's error JSON with the right status, type and param:
//! malformed JSON, wrong types, out-of-range values, unknown models, prompts that overflow the
//! context, oversized bodies, unknown routes, auth, and an engine that is gone.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hearth_server::{AppState, ServeOptions};
use serde_json::{json, Value};

use crate::common::*;

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[tokio::test]
async fn malformed_json_is_a_400_in_openai_shape() {
    let app = app();
    let reply = send(
        &app.router,
        post("/v1/chat/completions", r#"{"model": "x", "messages": ["#),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
    assert_eq!(error["code"], "invalid_json");
    // Also without a content type (Ollama and curl clients often send none).
    let request = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .body(Body::from("nope"))
        .unwrap();
    send(&app.router, request)
        .await
        .assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
}

#[tokio::test]
async fn wrong_types_and_missing_fields_are_400s_naming_the_parameter() {
    let app = app();
    for (body, param) in [
        (chat(json!({"temperature": "hot"})), "temperature"),
        (
            chat(json!({"messages": [{"role": "user", "content": 5}]})),
            "messages[0].content",
        ),
        (
            chat(json!({"messages": [{"role": "tool", "content": "x"}]})),
            "messages[0].role",
        ),
        (chat(json!({"n": -1})), "n"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
    ] {
        let reply = send(&app.router, post_json("/v1/chat/completions", &body)).await;
        let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    let reply = send(
        &app.router,
        post_json("/v1/completions", &json!({"model": MODEL})),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
    assert!(
        error["message"].as_str().unwrap().contains("prompt"),
        "{error}"
    );
}

#[tokio::test]
async fn out_of_range_values_are_400s_naming_the_parameter() {
    let app = app();
    for (extra, param) in [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"min_p": 1.5}), "min_p"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"top_k": -5}), "top_k"),
        (json!({"n": 9}), "n"),
        (json!({"n": 0}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": [""]}), "stop"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
            "response_format.type",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages[0].content[0].type",
        ),
    ] {
        let body = chat(extra.clone());
        let reply = send(&app.router, post_json("/v1/chat/completions", &body)).await;
        let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
        assert_eq!(error["param"], param, "{extra}: {error}");
    }
    for (extra, param) in [
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"echo": true}), "echo"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
    ] {
        let mut body = json!({"model": MODEL, "prompt": "hi"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let reply = send(&app.router, post_json("/v1/completions", &body)).await;
        let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
        assert_eq!(error["param"], param, "{extra}: {error}");
    }
}

#[tokio::test]
async fn unknown_model_is_a_404_model_not_found() {
    let app = app();
    let reply = send(
        &app.router,
        post_json("/v1/chat/completions", &chat(json!({"model": "gpt-4o"}))),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::NOT_FOUND, "invalid_request_error");
    assert_eq!(error["code"], "model_not_found");
    assert!(error["message"].as_str().unwrap().contains("gpt-4o"));
}

#[tokio::test]
async fn prompts_that_overflow_the_context_are_400s_with_the_engines_message() {
    let app = app();
    let long_prompt = "word ".repeat(MAX_MODEL_LEN + 10);
    let reply = send(
        &app.router,
        post_json(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": long_prompt}),
        ),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
    assert_eq!(error["code"], "context_length_exceeded");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the model's context of 256 tokens"),
        "{error}"
    );
    // A short prompt with too many new tokens is refused the same way, not truncated.
    let reply = send(
        &app.router,
        post_json("/v1/chat/completions", &chat(json!({"max_tokens": 1000}))),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
    assert_eq!(error["code"], "context_length_exceeded");
}

#[tokio::test]
async fn prompt_token_ids_outside_the_vocabulary_are_400s() {
    let app = app();
    let reply = send(
        &app.router,
        post_json(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": [1, 999_999]}),
        ),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::BAD_REQUEST, "invalid_request_error");
    assert!(
        error["message"].as_str().unwrap().contains("999999"),
        "{error}"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let options = ServeOptions {
        max_body_bytes: 1024,
        ..ServeOptions::default()
    };
    let app = app_with(options, script(), Duration::ZERO);
    let body = chat(json!({"messages": [{"role": "user", "content": "x".repeat(4096)}]}));
    let reply = send(&app.router, post_json("/v1/chat/completions", &body)).await;
    let error = reply.assert_openai_error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error");
    assert!(
        error["message"].as_str().unwrap().contains("1024"),
        "{error}"
    );
    // Under the limit is fine.
    let reply = send(
        &app.router,
        post_json("/v1/chat/completions", &chat(json!({}))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = app();
    let reply = send(&app.router, get("/v2/everything")).await;
    reply.assert_openai_error(StatusCode::NOT_FOUND, "not_found_error");
    let reply = send(&app.router, get("/v1/chat/completions")).await;
    reply.assert_openai_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error");
    let reply = send(&app.router, get("/api/nothing")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.json()["error"].is_string(),
        "Ollama shape under /api/"
    );
}

fn with_bearer(mut request: Request<Body>, key: &str) -> Request<Body> {
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

#[tokio::test]
async fn api_key_is_required_everywhere_but_health() {
    let options = ServeOptions {
        api_key: Some("s3cret".into()),
        ..ServeOptions::default()
    };
    let app = app_with(options, script(), Duration::ZERO);
    let reply = send(
        &app.router,
        post_json("/v1/chat/completions", &chat(json!({}))),
    )
    .await;
    let error = reply.assert_openai_error(StatusCode::UNAUTHORIZED, "authentication_error");
    assert_eq!(error["code"], "invalid_api_key");
    let reply = send(&app.router, with_bearer(get("/v1/models"), "wrong")).await;
    reply.assert_openai_error(StatusCode::UNAUTHORIZED, "authentication_error");
    assert_eq!(
        send(&app.router, get("/metrics")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = send(&app.router, get("/api/tags")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.json()["error"].is_string(),
        "Ollama shape under /api/"
    );

    let reply = send(
        &app.router,
        with_bearer(
            post_json("/v1/chat/completions", &chat(json!({}))),
            "s3cret",
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        send(&app.router, with_bearer(get("/api/tags"), "s3cret"))
            .await
            .status,
        StatusCode::OK
    );
    let health = send(&app.router, get("/health")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
}

/// Panics on its first step, which ends the engine thread.
struct CrashingExecutor;

impl hearth_engine::serve::Executor for CrashingExecutor {
    fn add_request(
        &mut self,
        _id: hearth_scheduler::RequestId,
        _setup: hearth_engine::serve::SamplingSetup,
    ) -> hearth_engine::Result<()> {
        Ok(())
    }

    fn remove_request(&mut self, _id: hearth_scheduler::RequestId) {}

    fn execute(
        &mut self,
        _plan: &hearth_scheduler::StepPlan,
    ) -> hearth_engine::Result<Vec<hearth_engine::serve::SampledOutput>> {
        panic!("simulated engine crash (expected by this test)");
    }
}

#[tokio::test]
async fn a_dead_engine_fails_the_running_request_and_refuses_new_ones_with_503() {
    let tokenizer = tokenizer();
    let working = engine(script(), Duration::ZERO);
    let handle = hearth_engine::serve::EngineHandle::spawn(
        Box::new(CrashingExecutor),
        tokenizer,
        working.model_info().clone(),
        working.config().clone(),
    )
    .unwrap();
    let state = AppState::new(handle, &ServeOptions::default());
    let router = hearth_server::router(state);
    let reply = send(&router, post_json("/v1/chat/completions", &chat(json!({})))).await;
    reply.assert_openai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    // The engine thread unwinds after the first request's stream ended; a request sent while
    // it is still dying is lost (500). Once it is gone, `add` refuses with 503.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(&router, post_json("/v1/chat/completions", &chat(json!({})))).await;
        if reply.status == StatusCode::INTERNAL_SERVER_ERROR && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let error =
            reply.assert_openai_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
        assert_eq!(error["code"], "engine_shutting_down");
        break;
    }
    let health = send(
        &router,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/health must report the dead engine"
    );
}
