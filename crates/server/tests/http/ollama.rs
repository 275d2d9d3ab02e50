//! Ollama routes: NDJSON streaming by default, `stream: false`, the final `done` object,
//! `options`, model names with `:latest`, tags/show/version, and Ollama's error shape.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

fn assert_final_object(last: &Value, done_reason: &str, eval_count: usize) {
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["done_reason"], done_reason, "{last}");
    assert_eq!(last["eval_count"], eval_count, "{last}");
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0, "{last}");
    let total = last["total_duration"].as_u64().unwrap();
    let prompt_eval = last["prompt_eval_duration"].as_u64().unwrap();
    let eval = last["eval_duration"].as_u64().unwrap();
    assert!(total >= prompt_eval + eval && total > 0, "{last}");
    assert_eq!(last["load_duration"], 0);
    assert!(
        last["created_at"].as_str().unwrap().ends_with('Z'),
        "{last}"
    );
}

#[tokio::test]
async fn api_chat_streams_ndjson_and_ends_with_a_done_object() {
    let app = app();
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}]});
    let reply = send(&app.router, post_json("/api/chat", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let lines = reply.ndjson();
    let (last, pieces) = lines.split_last().unwrap();
    assert!(!pieces.is_empty());
    for piece in pieces {
        assert_eq!(piece["done"], false);
        assert_eq!(piece["model"], MODEL);
        assert_eq!(piece["message"]["role"], "assistant");
        assert!(piece.get("done_reason").is_none(), "{piece}");
    }
    let text: String = pieces
        .iter()
        .map(|p| p["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, script_text());
    assert_eq!(last["message"]["content"], "");
    assert_final_object(last, "stop", script().len());
}

#[tokio::test]
async fn api_chat_without_streaming_gives_one_object_with_the_same_text() {
    let app = app();
    let body = json!({"model": format!("{MODEL}:latest"), "stream": false,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]});
    let reply = send(&app.router, post_json("/api/chat", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let whole = reply.json();
    assert_eq!(
        whole["model"],
        format!("{MODEL}:latest"),
        "the requested name is echoed"
    );
    assert_eq!(whole["message"]["content"], script_text());
    assert_final_object(&whole, "stop", script().len());
}

#[tokio::test]
async fn api_generate_streams_response_pieces_and_honors_num_predict() {
    let app = app();
    let body = json!({"model": MODEL, "prompt": "Capital of France?", "system": "Be brief."});
    let lines = send(&app.router, post_json("/api/generate", &body))
        .await
        .ndjson();
    let (last, pieces) = lines.split_last().unwrap();
    let text: String = pieces
        .iter()
        .map(|p| p["response"].as_str().unwrap())
        .collect();
    assert_eq!(text, script_text());
    assert_eq!(last["response"], "");
    assert_final_object(last, "stop", script().len());

    let body = json!({"model": MODEL, "prompt": "Capital of France?", "stream": false, "raw": true,
        "options": {"num_predict": 2, "temperature": 0.2, "top_k": 10, "seed": 3, "stop": ["zzz"], "repeat_penalty": 1.1}});
    let whole = send(&app.router, post_json("/api/generate", &body)).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text());
    assert_final_object(&whole.json(), "length", 2);
}

#[tokio::test]
async fn api_generate_with_an_empty_prompt_just_loads_the_model() {
    let app = app();
    let whole = send(
        &app.router,
        post_json("/api/generate", &json!({"model": MODEL})),
    )
    .await
    .json();
    assert_eq!(whole["done"], true);
    assert_eq!(whole["done_reason"], "load");
    assert_eq!(whole["response"], "");
}

#[tokio::test]
async fn json_format_is_accepted_and_other_formats_are_rejected() {
    let app = app();
    let ok = json!({"model": MODEL, "prompt": "Give me JSON", "format": "json", "stream": false});
    assert_eq!(
        send(&app.router, post_json("/api/generate", &ok))
            .await
            .status,
        StatusCode::OK
    );
    let bad = json!({"model": MODEL, "prompt": "Give me JSON", "format": "yaml"});
    let reply = send(&app.router, post_json("/api/generate", &bad)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["error"].as_str().unwrap().contains("format"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn ollama_errors_use_ollamas_shape() {
    let app = app();
    let unknown = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]});
    let reply = send(&app.router, post_json("/api/chat", &unknown)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.json()["error"].as_str().unwrap().contains("llama3"),
        "{}",
        reply.text()
    );
    let reply = send(&app.router, post("/api/chat", "{not json")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].is_string());
    let bad_option = json!({"model": MODEL, "prompt": "x", "options": {"top_p": 0}});
    let reply = send(&app.router, post_json("/api/generate", &bad_option)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("options.top_p"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn tags_show_and_version_describe_the_served_model() {
    let app = app();
    let tags = send(&app.router, get("/api/tags")).await.json();
    let entry = &tags["models"][0];
    assert_eq!(entry["name"], format!("{MODEL}:latest"));
    assert_eq!(entry["details"]["family"], "llama");
    assert_eq!(entry["details"]["parameter_size"], "135M");
    assert_eq!(entry["details"]["quantization_level"], "Q4_1");

    let show = send(
        &app.router,
        post_json("/api/show", &json!({"model": MODEL})),
    )
    .await;
    assert_eq!(show.status, StatusCode::OK, "{}", show.text());
    let show = show.json();
    assert!(
        show["template"].as_str().unwrap().contains("im_start"),
        "the model's chat template"
    );
    assert_eq!(show["model_info"]["llama.context_length"], MAX_MODEL_LEN);
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    let legacy = send(
        &app.router,
        post_json("/api/show", &json!({"name": format!("{MODEL}:latest")})),
    )
    .await;
    assert_eq!(legacy.status, StatusCode::OK);

    let version = send(&app.router, get("/api/version")).await.json();
    assert!(version["version"].as_str().is_some_and(|v| !v.is_empty()));
}
