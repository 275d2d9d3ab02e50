//! Prometheus metrics: the registry (kept in `AppState`, recorded through
//! `metrics::with_local_recorder`, so tests and several servers never share global state), the
//! HTTP request counter middleware, per-request latency tracking, and the `/metrics` text.
//!
//! Owns: metric names, histogram buckets, what is measured where. Does not own: the engine's
//! counters (read from `EngineHandle::stats()` at scrape time and exported as gauges/counters).
//!
//! Latencies are measured in the server, per engine request (one per choice):
//! - `hearth_time_to_first_token_seconds`: from the HTTP request's arrival (`Arrival`, stamped
//!   before the body is read, the chat template applied and the prompt tokenized) to the first delta that carries a generated token.
//! - `hearth_inter_token_latency_seconds`: the gap between consecutive token-carrying deltas,
//!   divided evenly among the tokens of the later delta (one sample per token).
//! - `hearth_request_duration_seconds`: from arrival to the final delta.
//!
//! Requests aborted by the client record TTFT/ITL samples seen so far, not a duration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use hearth_engine::serve::{Delta, EngineStats, Usage};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::state::AppState;

pub const HTTP_REQUESTS: &str = "hearth_http_requests_total";
pub const TTFT: &str = "hearth_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "hearth_inter_token_latency_seconds";
pub const REQUEST_DURATION: &str = "hearth_request_duration_seconds";
pub const PROMPT_TOKENS: &str = "hearth_prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "hearth_generation_tokens_total";
pub const REQUESTS_RUNNING: &str = "hearth_requests_running";
pub const REQUESTS_WAITING: &str = "hearth_requests_waiting";
pub const KV_BLOCKS_USED: &str = "hearth_kv_blocks_used";
pub const KV_BLOCKS_TOTAL: &str = "hearth_kv_blocks_total";
pub const PREFIX_CACHE_HIT_RATE: &str = "hearth_prefix_cache_hit_rate";
pub const PREFIX_CACHE_QUERY_TOKENS: &str = "hearth_prefix_cache_query_tokens_total";
pub const PREFIX_CACHE_HIT_TOKENS: &str = "hearth_prefix_cache_hit_tokens_total";
pub const PREEMPTIONS: &str = "hearth_preemptions_total";

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The Prometheus registry and its renderer.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let builder = [
            (TTFT, TTFT_BUCKETS),
            (INTER_TOKEN_LATENCY, ITL_BUCKETS),
            (REQUEST_DURATION, DURATION_BUCKETS),
        ]
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
        });
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            Err(err) => {
                tracing::warn!("histogram buckets rejected ({err}); latencies export as summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let metrics = Self {
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
        };
        metrics.record(describe_all);
        metrics
    }

    /// Also makes this registry the process's global recorder, so `metrics` macros in other
    /// crates (the engine) land here. False when another recorder is already installed; this
    /// registry still records the server's metrics and renders them.
    pub fn install_global(&self) -> bool {
        metrics::set_global_recorder(self.recorder.clone()).is_ok()
    }

    fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&*self.recorder, f)
    }

    pub fn record_http(&self, route: &str, status: u16) {
        self.record(|| {
            counter!(HTTP_REQUESTS, "route" => route.to_string(), "status" => status.to_string())
                .increment(1)
        });
    }

    /// The Prometheus text exposition, with the engine's state as of `stats`.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.record(|| {
            gauge!(REQUESTS_RUNNING).set(stats.num_running as f64);
            gauge!(REQUESTS_WAITING).set(stats.num_waiting as f64);
            gauge!(KV_BLOCKS_USED).set(stats.num_kv_blocks_used as f64);
            gauge!(KV_BLOCKS_TOTAL).set(stats.num_kv_blocks_total as f64);
            let hit_rate = if stats.num_prefix_query_tokens == 0 {
                0.0
            } else {
                stats.num_prefix_hit_tokens as f64 / stats.num_prefix_query_tokens as f64
            };
            gauge!(PREFIX_CACHE_HIT_RATE).set(hit_rate);
            counter!(PREFIX_CACHE_QUERY_TOKENS).absolute(stats.num_prefix_query_tokens);
            counter!(PREFIX_CACHE_HIT_TOKENS).absolute(stats.num_prefix_hit_tokens);
            counter!(PREEMPTIONS).absolute(stats.num_preemptions);
        });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe_all() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by matched route and status code"
    );
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Request arrival to the first generated token"
    );
    describe_histogram!(
        INTER_TOKEN_LATENCY,
        Unit::Seconds,
        "Time between generated tokens"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Request arrival to the final token"
    );
    describe_counter!(PROMPT_TOKENS, "Prompt tokens of finished requests");
    describe_counter!(GENERATION_TOKENS, "Generated tokens of finished requests");
    describe_gauge!(REQUESTS_RUNNING, "Requests the engine is running");
    describe_gauge!(REQUESTS_WAITING, "Requests waiting for the engine");
    describe_gauge!(KV_BLOCKS_USED, "KV-cache blocks referenced by requests");
    describe_gauge!(KV_BLOCKS_TOTAL, "KV-cache blocks in the pool");
    describe_gauge!(
        PREFIX_CACHE_HIT_RATE,
        "Prefix-cache hit tokens / query tokens since start"
    );
    describe_counter!(
        PREFIX_CACHE_QUERY_TOKENS,
        "Prompt tokens looked up in the prefix cache"
    );
    describe_counter!(
        PREFIX_CACHE_HIT_TOKENS,
        "Prompt tokens found in the prefix cache"
    );
    describe_counter!(PREEMPTIONS, "Requests preempted to free KV-cache blocks");
}

/// When the server first saw a request (set by `track_http`, the outermost of our layers).
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

impl<S: Send + Sync> FromRequestParts<S> for Arrival {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Arrival>()
            .copied()
            .unwrap_or(Arrival(Instant::now())))
    }
}

/// Middleware: stamps the request's `Arrival`; counts every response by matched route
/// (`unmatched` for unknown routes) and status.
pub async fn track_http(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(Arrival(Instant::now()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics()
        .record_http(&route, response.status().as_u16());
    response
}

/// Latency bookkeeping of one engine request (one choice).
pub struct RequestTracker {
    state: AppState,
    arrived: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl RequestTracker {
    pub fn new(state: AppState, arrived: Instant) -> Self {
        Self {
            state,
            arrived,
            first_token_at: None,
            last_token_at: None,
        }
    }

    /// Records TTFT or inter-token latency for a delta; the final delta's usage and duration.
    pub fn observe(&mut self, delta: &Delta) {
        let now = Instant::now();
        let num_tokens = delta.token_ids.len();
        if num_tokens > 0 {
            match self.last_token_at {
                None => {
                    self.first_token_at = Some(now);
                    let ttft = now.duration_since(self.arrived);
                    self.state
                        .metrics()
                        .record(|| histogram!(TTFT).record(ttft.as_secs_f64()));
                }
                Some(last) => {
                    let per_token = now.duration_since(last).as_secs_f64() / num_tokens as f64;
                    self.state.metrics().record(|| {
                        histogram!(INTER_TOKEN_LATENCY).record_many(per_token, num_tokens)
                    });
                }
            }
            self.last_token_at = Some(now);
        }
        if let Some(finish) = &delta.finish {
            self.record_finish(&finish.usage, now.duration_since(self.arrived));
        }
    }

    fn record_finish(&self, usage: &Usage, duration: Duration) {
        self.state.metrics().record(|| {
            counter!(PROMPT_TOKENS).increment(usage.prompt_tokens as u64);
            counter!(GENERATION_TOKENS).increment(usage.completion_tokens as u64);
            histogram!(REQUEST_DURATION).record(duration.as_secs_f64());
        });
    }
}
