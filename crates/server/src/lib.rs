//! hearth-server: serves an `EngineHandle` over HTTP with OpenAI- and Ollama-compatible APIs.
//!
//! Owns: HTTP JSON ⇄ validated `EngineRequest`s, chat templates and tokenization of prompts,
//! SSE/NDJSON streaming, errors in each API's shape, auth, body limits, Prometheus metrics,
//! graceful shutdown. Does not own: models, tensors, scheduling (the engine's).
//!
//! Routes (`router`):
//! - OpenAI: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//!   `GET /v1/models/{model}`
//! - Ollama: `POST /api/chat`, `POST /api/generate`, `GET /api/tags`, `POST /api/show`,
//!   `GET /api/version`
//! - `GET /health` (never needs the API key), `GET /metrics` (Prometheus text)
//!
//! Invariants: no input makes a handler panic; every failure is a JSON error with the right
//! status (`error.rs`); a client disconnect drops the response body and with it the engine's
//! `DeltaStream`s, which aborts the requests; no global state except the optional global
//! metrics recorder `serve` installs.

mod auth;
mod error;
mod json;
mod metrics;
mod ollama;
mod openai;
mod params;
mod prompt;
mod state;
mod stream;

use std::future::{Future, IntoFuture};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use error::{ErrorKind, ErrorReport, OllamaError, ServerError};
pub use hearth_engine::serve::EngineHandle;
pub use metrics::Metrics;
pub use state::AppState;

/// Default `ServeOptions::max_body_bytes`: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// How `serve` listens and behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// When set, API routes need `Authorization: Bearer <key>` (`/health` stays open).
    pub api_key: Option<String>,
    /// After SIGTERM / Ctrl-C: how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            shutdown_timeout: Duration::from_secs(30),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Every route, with auth, the body limit, metrics and request tracing. No socket needed.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(openai::chat::chat_completions))
        .route("/v1/completions", post(openai::completions::completions))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::get_model))
        .route("/api/chat", post(ollama::generate::chat))
        .route("/api/generate", post(ollama::generate::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/metrics", get(prometheus_metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /health`: 200 while the server runs, with the engine's queue.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let stats = state.handle().stats();
    let (status, text) = if state.handle().is_running() {
        (axum::http::StatusCode::OK, "ok")
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "engine stopped",
        )
    };
    (
        status,
        Json(serde_json::json!({
            "status": text,
            "model": state.model_name(),
            "num_requests_running": stats.num_running,
            "num_requests_waiting": stats.num_waiting,
        })),
    )
}

/// `GET /metrics`: Prometheus text exposition.
async fn prometheus_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics().render(&state.handle().stats());
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

async fn route_not_found(request: Request) -> impl IntoResponse {
    let (method, path) = (
        request.method().to_string(),
        request.uri().path().to_string(),
    );
    let err = ServerError::RouteNotFound { method, path };
    if request.uri().path().starts_with("/api/") {
        OllamaError(err).into_response()
    } else {
        err.into_response()
    }
}

async fn method_not_allowed(request: Request) -> impl IntoResponse {
    let (method, path) = (
        request.method().to_string(),
        request.uri().path().to_string(),
    );
    ServerError::MethodNotAllowed { method, path }
}

/// Binds `options.host:port`, logs the address, and serves `handle` until SIGTERM or Ctrl-C;
/// then stops accepting and gives in-flight requests `options.shutdown_timeout` to finish.
/// Installs this server's metrics registry as the global `metrics` recorder when none is.
pub async fn serve(handle: EngineHandle, options: ServeOptions) -> Result<(), ServerError> {
    let state = AppState::new(handle, &options);
    if !state.metrics().install_global() {
        tracing::debug!("a global metrics recorder is already installed; /metrics shows the server's own metrics");
    }
    let addr = format!("{}:{}", options.host, options.port);
    let listener = TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(ServerError::Serve)?;
    if !local_addr.ip().is_loopback() && state.api_key().is_none() {
        tracing::warn!("listening on {local_addr} without an API key: anyone who can reach it can use the model");
    }
    tracing::info!(
        model = state.model_name(),
        "hearth listening on http://{local_addr}"
    );
    serve_on(listener, state, options.shutdown_timeout, shutdown_signal()).await
}

/// Serves `state` on `listener` until `shutdown` resolves, then waits up to
/// `shutdown_timeout` for in-flight requests (streams included); past it, cancels their
/// generations (the engine aborts them) and returns once the connections closed.
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        let _ = signalled_tx.send(true);
    };
    let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(signal);
    let mut server = std::pin::pin!(server.into_future());
    let deadline = async move {
        if signalled_rx.wait_for(|&signalled| signalled).await.is_err() {
            // The sender is gone without signalling: the server ended by itself.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::select! {
        result = &mut server => return result.map_err(ServerError::Serve),
        () = deadline => {}
    }
    tracing::warn!(
        "in-flight requests did not finish within {shutdown_timeout:?}; cancelling them"
    );
    state.cancel_generations();
    // Cancelled generations end their responses at once; then the connections close.
    match tokio::time::timeout(CLOSE_AFTER_CANCEL, server).await {
        Ok(result) => result.map_err(ServerError::Serve),
        Err(_) => Ok(()),
    }
}

/// How long connections get to close after their generations were cancelled.
const CLOSE_AFTER_CANCEL: Duration = Duration::from_secs(2);

/// Resolves on Ctrl-C, or SIGTERM on Unix (a signal that cannot be watched never fires).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
