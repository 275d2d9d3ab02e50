//! Request lifetime: a client that disconnects aborts its engine request; graceful shutdown
//! lets an in-flight stream finish, and the shutdown timeout drops one that does not.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures_util::StreamExt;
use hearth_server::{serve_on, AppState, ServeOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::common::*;

/// A script that does not end by itself: one token repeated (no EOS). With `SLOW_STEP` per
/// step it runs for `MAX_MODEL_LEN * SLOW_STEP` (over 10 s), far past every wait below.
const SLOW_STEP: Duration = Duration::from_millis(50);

fn endless() -> Vec<u32> {
    vec![
        tokenizer()
            .encode(" la", hearth_tokenizer::BosPolicy::Never)
            .unwrap()[0],
    ]
}

async fn wait_until_idle(state: &AppState, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let stats = state.handle().stats();
        if stats.num_running == 0 && stats.num_waiting == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn dropping_a_streaming_response_aborts_the_engine_request() {
    let app = app_with(ServeOptions::default(), endless(), SLOW_STEP);
    let body = json!({"model": MODEL, "prompt": "Sing", "stream": true});
    let response = app
        .router
        .clone()
        .oneshot(post_json("/v1/completions", &body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut frames = response.into_body().into_data_stream();
    for _ in 0..3 {
        let frame = frames
            .next()
            .await
            .expect("a chunk")
            .expect("a readable chunk");
        assert!(frame.starts_with(b"data: {"), "{frame:?}");
    }
    assert_eq!(
        app.state.handle().stats().num_running,
        1,
        "the request is generating"
    );
    drop(frames);
    assert!(
        wait_until_idle(&app.state, Duration::from_secs(3)).await,
        "the engine kept generating for a gone client"
    );
}

/// Sends a raw HTTP/1.1 request; returns the connection to read the response from.
async fn open_stream(
    addr: std::net::SocketAddr,
    body: &serde_json::Value,
) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish() {
    let options = ServeOptions::default();
    let state = AppState::new(engine(script(), Duration::from_millis(20)), &options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(listener, state, Duration::from_secs(10), async {
        let _ = stop_rx.await;
    }));
    let mut stream = open_stream(
        addr,
        &json!({"model": MODEL, "prompt": "Capital?", "stream": true}),
    )
    .await;
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        &first[..n]
    );
    stop_tx.send(()).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: [DONE]"), "the stream was cut: {rest}");
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn shutdown_timeout_drops_requests_that_take_too_long() {
    let state = AppState::new(engine(endless(), SLOW_STEP), &ServeOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        state.clone(),
        Duration::from_millis(200),
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut stream = open_stream(
        addr,
        &json!({"model": MODEL, "prompt": "Sing", "stream": true}),
    )
    .await;
    let mut first = [0u8; 64];
    let _ = stream.read(&mut first).await.unwrap();
    let stopped_at = Instant::now();
    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        stopped_at.elapsed()
    );
    assert!(
        wait_until_idle(&state, Duration::from_secs(3)).await,
        "the dropped request was not aborted"
    );
}
