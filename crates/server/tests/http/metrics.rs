//! `/metrics`: Prometheus text with the server's request metrics and the engine's gauges.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn metrics_exposes_request_latency_token_and_engine_metrics() {
    let app = app();
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": true});
    assert_eq!(
        send(&app.router, post_json("/v1/chat/completions", &body))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app.router, get("/nowhere")).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = send(&app.router, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = reply.text();
    for expected in [
        r#"hearth_http_requests_total{route="/v1/chat/completions",status="200"} 1"#,
        r#"hearth_http_requests_total{route="unmatched",status="404"} 1"#,
        "hearth_time_to_first_token_seconds_bucket{le=\"0.01\"}",
        "hearth_time_to_first_token_seconds_count 1",
        "hearth_inter_token_latency_seconds_bucket",
        "hearth_request_duration_seconds_count 1",
        "hearth_requests_running 0",
        "hearth_requests_waiting 0",
        "hearth_kv_blocks_used",
        "hearth_kv_blocks_total 128",
        "hearth_prefix_cache_hit_rate",
        "hearth_prefix_cache_query_tokens_total",
        "hearth_prefix_cache_hit_tokens_total",
        "hearth_preemptions_total 0",
        "# HELP hearth_time_to_first_token_seconds",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let generated = script().len();
    assert!(
        text.contains(&format!("hearth_generation_tokens_total {generated}")),
        "{text}"
    );
    // One sample per token after the first (EOS's delta carries no token id).
    let num_itl_samples = generated - 2;
    assert!(
        text.contains(&format!(
            "hearth_inter_token_latency_seconds_count {num_itl_samples}"
        )),
        "{text}"
    );
    let prompt_line = text
        .lines()
        .find(|l| l.starts_with("hearth_prompt_tokens_total "))
        .unwrap();
    assert!(
        prompt_line
            .split(' ')
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0,
        "{prompt_line}"
    );
}
