//! `AppState`: everything a handler needs, passed explicitly (no global state): the engine
//! handle, the metrics registry, the API key, the body limit, and the response-id counter.
//!
//! Owns: construction from `ServeOptions`, served-model name matching, response ids.
//! Does not own: the engine (it only holds a handle) or routing.
//! Invariant: cheap to clone (one `Arc`); every clone shares the same metrics and counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_engine::serve::EngineHandle;
use tokio::sync::watch;

use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::ServeOptions;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    handle: EngineHandle,
    metrics: Metrics,
    api_key: Option<String>,
    max_body_bytes: usize,
    /// Start time in nanoseconds: makes response ids unique across restarts.
    id_salt: u64,
    next_response_idx: AtomicU64,
    /// Set once when shutdown gives up waiting: every running generation ends.
    cancel: watch::Sender<bool>,
}

impl AppState {
    /// State for serving `handle` with `options`' API key and body limit.
    pub fn new(handle: EngineHandle, options: &ServeOptions) -> Self {
        let id_salt = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            inner: Arc::new(Inner {
                handle,
                metrics: Metrics::new(),
                api_key: options.api_key.clone().filter(|key| !key.is_empty()),
                max_body_bytes: options.max_body_bytes,
                id_salt,
                next_response_idx: AtomicU64::new(0),
                cancel: watch::Sender::new(false),
            }),
        }
    }

    pub fn handle(&self) -> &EngineHandle {
        &self.inner.handle
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn api_key(&self) -> Option<&str> {
        self.inner.api_key.as_deref()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// The name clients put in `model` fields.
    pub fn model_name(&self) -> &str {
        &self.inner.handle.model_info().name
    }

    /// Checks a request's `model` field: the served name, optionally with a `:latest` tag.
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ServerError> {
        let Some(requested) = requested else {
            return Err(ServerError::invalid_param("model", "`model` is required"));
        };
        let served = self.model_name();
        let base = |name: &'_ str| name.strip_suffix(":latest").unwrap_or(name).to_string();
        if base(requested) == base(served) {
            Ok(())
        } else {
            Err(ServerError::ModelNotFound {
                requested: requested.to_string(),
                served: served.to_string(),
            })
        }
    }

    /// Ends every running generation (their engine requests are aborted); used when a
    /// graceful shutdown runs out of time.
    pub fn cancel_generations(&self) {
        self.inner.cancel.send_replace(true);
    }

    /// Becomes `true` when `cancel_generations` is called.
    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.inner.cancel.subscribe()
    }

    /// A fresh response id such as `chatcmpl-1a2b3c…` (unique within this server's life).
    pub fn response_id(&self, prefix: &str) -> String {
        let idx = self.inner.next_response_idx.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{idx:08x}", self.inner.id_salt)
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
