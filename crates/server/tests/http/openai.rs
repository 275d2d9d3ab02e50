//! OpenAI routes: chat and text completions (JSON and SSE), logprobs, `n`, usage, models.

use serde_json::{json, Value};

use crate::common::*;
use axum::http::StatusCode;
use hearth_tokenizer::{BosPolicy, ChatMessage, GenerationPrompt};

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn num_chat_prompt_tokens(messages: &[ChatMessage]) -> usize {
    let tokenizer = tokenizer();
    let text = tokenizer
        .chat_template()
        .unwrap()
        .render(messages, GenerationPrompt::Add)
        .unwrap();
    tokenizer
        .encode(&text, BosPolicy::AddIfModelDoes)
        .unwrap()
        .len()
}

/// Concatenated `delta.content` per choice index.
fn streamed_chat_texts(chunks: &[Value], num_choices: usize) -> Vec<String> {
    let mut texts = vec![String::new(); num_choices];
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let idx = choice["index"].as_u64().unwrap() as usize;
            texts[idx].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    texts
}

#[tokio::test]
async fn chat_completion_returns_the_generated_text_and_usage() {
    let app = app();
    let reply = send(
        &app.router,
        post_json("/v1/chat/completions", &chat_body(json!({}))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{body}"
    );
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], script_text());
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["logprobs"].is_null());
    let num_prompt_tokens =
        num_chat_prompt_tokens(&[ChatMessage::new("user", "What is the capital of France?")]);
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], num_prompt_tokens);
    assert_eq!(
        usage["completion_tokens"],
        script().len(),
        "EOS counts as a completion token"
    );
    assert_eq!(usage["total_tokens"], num_prompt_tokens + script().len());
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"].is_u64(),
        "{usage}"
    );
}

#[tokio::test]
async fn streamed_chat_text_equals_the_non_streamed_text_and_ends_with_done() {
    let app = app();
    let whole = send(
        &app.router,
        post_json("/v1/chat/completions", &chat_body(json!({}))),
    )
    .await
    .json();
    let reply = send(
        &app.router,
        post_json("/v1/chat/completions", &chat_body(json!({"stream": true}))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let chunks = reply.sse_chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert!(
            chunk.get("usage").is_none(),
            "usage only with include_usage: {chunk}"
        );
    }
    assert_eq!(
        streamed_chat_texts(&chunks, 1)[0],
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
}

#[tokio::test]
async fn include_usage_adds_a_final_chunk_with_empty_choices_and_usage() {
    let app = app();
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let chunks = send(&app.router, post_json("/v1/chat/completions", &body))
        .await
        .sse_chunks();
    let (last, others) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], script().len());
    assert_eq!(
        last["usage"]["total_tokens"].as_u64(),
        Some(last["usage"]["prompt_tokens"].as_u64().unwrap() + script().len() as u64)
    );
    assert!(
        others.iter().all(|chunk| chunk["usage"].is_null()),
        "earlier chunks carry usage: null"
    );
}

#[tokio::test]
async fn n_2_gives_two_indexed_choices_streamed_and_not() {
    let app = app();
    let body = chat_body(json!({"n": 2, "seed": 5}));
    let whole = send(&app.router, post_json("/v1/chat/completions", &body))
        .await
        .json();
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (idx, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], idx);
        assert_eq!(choice["message"]["content"], script_text());
    }
    assert_eq!(
        whole["usage"]["completion_tokens"],
        2 * script().len(),
        "completion tokens of both choices"
    );

    let body = chat_body(json!({"n": 2, "stream": true}));
    let chunks = send(&app.router, post_json("/v1/chat/completions", &body))
        .await
        .sse_chunks();
    assert_eq!(
        streamed_chat_texts(&chunks, 2),
        vec![script_text(), script_text()]
    );
    let finishes: Vec<_> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().clone())
        .filter(|c| !c["finish_reason"].is_null())
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(finishes.len(), 2);
    assert!(finishes.contains(&0) && finishes.contains(&1));
}

#[tokio::test]
async fn chat_logprobs_have_openais_shape() {
    let app = app();
    let body = chat_body(json!({"logprobs": true, "top_logprobs": 2}));
    let whole = send(&app.router, post_json("/v1/chat/completions", &body))
        .await
        .json();
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        content.len(),
        script().len() - 1,
        "one entry per emitted token (EOS excluded)"
    );
    let tokenizer = tokenizer();
    let first_id = script()[0];
    let first_text = tokenizer
        .decode(&[first_id], hearth_tokenizer::SkipSpecial::No)
        .unwrap();
    assert_eq!(content[0]["token"], first_text);
    assert_eq!(content[0]["logprob"], -0.5);
    assert_eq!(content[0]["bytes"], json!(first_text.as_bytes()));
    let top = content[0]["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[1]["logprob"], -1.5);
    assert!(top[1]["token"].is_string() && top[1]["bytes"].is_array());

    let body = chat_body(json!({"logprobs": true, "stream": true}));
    let chunks = send(&app.router, post_json("/v1/chat/completions", &body))
        .await
        .sse_chunks();
    let num_streamed: usize = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert_eq!(num_streamed, script().len() - 1);
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let app = app();
    for field in ["max_tokens", "max_completion_tokens"] {
        let body = chat_body(json!({ field: 3 }));
        let whole = send(&app.router, post_json("/v1/chat/completions", &body))
            .await
            .json();
        assert_eq!(
            whole["choices"][0]["finish_reason"], "length",
            "{field}: {whole}"
        );
        assert_eq!(whole["usage"]["completion_tokens"], 3);
    }
}

#[tokio::test]
async fn stop_strings_end_the_text_before_them() {
    let app = app();
    let whole = send(
        &app.router,
        post_json(
            "/v1/chat/completions",
            &chat_body(json!({"stop": ["Paris"]})),
        ),
    )
    .await
    .json();
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(text, script_text().split("Paris").next().unwrap());
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn content_parts_and_json_mode_shape_the_prompt() {
    let app = app();
    let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]});
    let plain = send(
        &app.router,
        post_json("/v1/chat/completions", &chat_body(json!({}))),
    )
    .await
    .json();
    let from_parts = send(
        &app.router,
        post_json("/v1/chat/completions", &chat_body(parts)),
    )
    .await
    .json();
    assert_eq!(
        plain["usage"]["prompt_tokens"],
        from_parts["usage"]["prompt_tokens"]
    );

    let json_mode = chat_body(json!({"response_format": {"type": "json_object"}}));
    let reply = send(&app.router, post_json("/v1/chat/completions", &json_mode))
        .await
        .json();
    let with_instruction = num_chat_prompt_tokens(&[
        ChatMessage::new(
            "system",
            "Respond with a single valid JSON object and nothing else: no prose, no code fences.",
        ),
        ChatMessage::new("user", "What is the capital of France?"),
    ]);
    assert_eq!(reply["usage"]["prompt_tokens"], with_instruction);
    let text_mode = chat_body(json!({"response_format": {"type": "text"}}));
    let reply = send(&app.router, post_json("/v1/chat/completions", &text_mode))
        .await
        .json();
    assert_eq!(
        reply["usage"]["prompt_tokens"],
        plain["usage"]["prompt_tokens"]
    );
}

#[tokio::test]
async fn completion_streamed_and_whole_texts_are_identical() {
    let app = app();
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 50});
    let whole = send(&app.router, post_json("/v1/completions", &body)).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["object"], "text_completion");
    assert!(whole["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(whole["choices"][0]["text"], script_text());
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    let tokenizer = tokenizer();
    let prompt_ids = tokenizer
        .encode("The capital of France is", BosPolicy::AddIfModelDoes)
        .unwrap();
    assert_eq!(whole["usage"]["prompt_tokens"], prompt_ids.len());

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let chunks = send(&app.router, post_json("/v1/completions", &streaming))
        .await
        .sse_chunks();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, script_text());
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn completion_prompt_may_be_token_ids_or_one_string_in_an_array() {
    let app = app();
    let tokenizer = tokenizer();
    let ids = tokenizer
        .encode("The capital of France is", BosPolicy::AddIfModelDoes)
        .unwrap();
    for prompt in [
        json!(ids),
        json!([ids]),
        json!(["The capital of France is"]),
    ] {
        let body = json!({"model": MODEL, "prompt": prompt});
        let reply = send(&app.router, post_json("/v1/completions", &body)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "prompt {prompt}: {}",
            reply.text()
        );
        assert_eq!(
            reply.json()["usage"]["prompt_tokens"],
            ids.len(),
            "prompt {prompt}"
        );
    }
}

#[tokio::test]
async fn completion_logprobs_have_the_legacy_shape() {
    let app = app();
    let body = json!({"model": MODEL, "prompt": "Hi", "logprobs": 3});
    let whole = send(&app.router, post_json("/v1/completions", &body))
        .await
        .json();
    let logprobs = &whole["choices"][0]["logprobs"];
    let num_tokens = script().len() - 1;
    for field in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(
            logprobs[field].as_array().map(Vec::len),
            Some(num_tokens),
            "{field}: {logprobs}"
        );
    }
    assert_eq!(logprobs["token_logprobs"][0], -0.5);
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 3);
    assert_eq!(logprobs["text_offset"][0], 0);
    let tokens: String = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens, script_text());
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let app = app();
    let list = send(&app.router, get("/v1/models")).await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["created"], 1_700_000_000);
    let one = send(&app.router, get(&format!("/v1/models/{MODEL}"))).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["id"], MODEL);
    let missing = send(&app.router, get("/v1/models/gpt-4")).await;
    let error = missing.assert_openai_error(StatusCode::NOT_FOUND, "invalid_request_error");
    assert_eq!(error["code"], "model_not_found");
}
