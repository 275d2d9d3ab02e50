//! Test harness: a real SmolLM2 tokenizer (from the GGUF asset), a scripted fake `Executor`
//! that "samples" a fixed token sequence, an engine over it, and helpers to send requests
//! through `router` without a socket and to read JSON, SSE and NDJSON bodies.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use hearth_engine::serve::{
    EngineConfig, EngineHandle, Executor, ModelInfo, SampledOutput, SamplingSetup, TokenLogprob,
};
use hearth_scheduler::{RequestId, StepPlan};
use hearth_server::{router, AppState, ServeOptions};
use hearth_tokenizer::{BosPolicy, Tokenizer};
use serde_json::Value;
use tower::ServiceExt;

pub const MODEL: &str = "smollm2-test";
/// What the scripted executor generates (then EOS).
pub const SCRIPT_TEXT: &str = "The capital of France is Paris.";
pub const MAX_MODEL_LEN: usize = 256;

pub fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let assets = std::env::var_os("HEARTH_ASSETS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/hearth/assets")
                });
            let path = assets.join("smollm2-135m-instruct-q4_1.gguf");
            let mut file = std::fs::File::open(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (run scripts/fetch-assets.sh)", path.display())
            });
            let content = candle_core::quantized::gguf_file::Content::read(&mut file)
                .expect("reading GGUF metadata");
            Arc::new(Tokenizer::from_gguf(&content).expect("building the SmolLM2 tokenizer"))
        })
        .clone()
}

/// The scripted tokens: `SCRIPT_TEXT`, then EOS.
pub fn script() -> Vec<u32> {
    let tokenizer = tokenizer();
    let mut ids = tokenizer
        .encode(SCRIPT_TEXT, BosPolicy::Never)
        .expect("encoding the script");
    ids.push(tokenizer.eos_ids()[0]);
    ids
}

/// "Samples" `script[i]` as a request's i-th token (repeating the last one past the end);
/// logprobs are made up but well-formed: `-0.5` for the token, alternatives descending.
pub struct ScriptedExecutor {
    script: Vec<u32>,
    step_delay: Duration,
    requests: HashMap<RequestId, (usize, Option<usize>)>,
}

impl ScriptedExecutor {
    pub fn new(script: Vec<u32>, step_delay: Duration) -> Self {
        Self {
            script,
            step_delay,
            requests: HashMap::new(),
        }
    }
}

impl Executor for ScriptedExecutor {
    fn add_request(&mut self, id: RequestId, setup: SamplingSetup) -> hearth_engine::Result<()> {
        setup.params.validate()?;
        self.requests.insert(id, (0, setup.logprobs));
        Ok(())
    }

    fn remove_request(&mut self, id: RequestId) {
        self.requests.remove(&id);
    }

    fn execute(&mut self, plan: &StepPlan) -> hearth_engine::Result<Vec<SampledOutput>> {
        std::thread::sleep(self.step_delay);
        let mut outputs = Vec::new();
        for scheduled in plan.requests.iter().filter(|r| r.samples) {
            let (position, logprobs) = self.requests.entry(scheduled.id).or_insert((0, None));
            let token_id = self.script[(*position).min(self.script.len() - 1)];
            *position += 1;
            let logprob = logprobs.map(|k| TokenLogprob {
                token_id,
                logprob: -0.5,
                top: (0..k)
                    .map(|i| (token_id + i as u32, -0.5 - i as f32))
                    .collect(),
            });
            outputs.push(SampledOutput {
                id: scheduled.id,
                token_id,
                logprob,
            });
        }
        Ok(outputs)
    }
}

pub fn engine(script: Vec<u32>, step_delay: Duration) -> EngineHandle {
    let tokenizer = tokenizer();
    let config = EngineConfig {
        block_size: 16,
        num_blocks: 128,
        max_num_batched_tokens: 512,
        max_num_seqs: 16,
        max_model_len: MAX_MODEL_LEN,
        vocab_size: tokenizer.vocab_size(),
        cache_salt: 0,
    };
    let info = ModelInfo {
        name: MODEL.into(),
        architecture: "llama".into(),
        context_length: MAX_MODEL_LEN,
        quantization: "Q4_1".into(),
        num_parameters: 134_515_008,
        format: "gguf".into(),
        size_bytes: 0,
        created: 1_700_000_000,
    };
    EngineHandle::spawn(
        Box::new(ScriptedExecutor::new(script, step_delay)),
        tokenizer,
        info,
        config,
    )
    .expect("starting the engine")
}

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
}

pub fn app_with(options: ServeOptions, script: Vec<u32>, step_delay: Duration) -> TestApp {
    let state = AppState::new(engine(script, step_delay), &options);
    TestApp {
        router: router(state.clone()),
        state,
    }
}

pub fn app() -> TestApp {
    app_with(ServeOptions::default(), script(), Duration::ZERO)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// SSE `data:` payloads in order; asserts the framing is `data: ...\n\n`.
    pub fn sse_data(&self) -> Vec<String> {
        let text = self.text();
        assert!(
            text.ends_with("\n\n"),
            "SSE body must end with a blank line: {text:?}"
        );
        text.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                    .to_string()
            })
            .collect()
    }

    /// SSE JSON chunks (everything but the final `[DONE]`, which is asserted).
    pub fn sse_chunks(&self) -> Vec<Value> {
        let mut data = self.sse_data();
        assert_eq!(
            data.pop().as_deref(),
            Some("[DONE]"),
            "stream must end with [DONE]: {}",
            self.text()
        );
        data.iter()
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}")))
            .collect()
    }

    pub fn ndjson(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("line {line:?}: {e}")))
            .collect()
    }

    /// Asserts an OpenAI-shaped error with `status` and `error.type`; returns `error`.
    pub fn assert_openai_error(&self, status: StatusCode, kind: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        let error = body
            .get("error")
            .cloned()
            .unwrap_or_else(|| panic!("no `error` in {body}"));
        assert_eq!(error["type"], kind, "{body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(
            error.get("param").is_some() && error.get("code").is_some(),
            "{body}"
        );
        error
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("reading the body");
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("a valid request")
}

pub fn post_json(uri: &str, body: &Value) -> Request<Body> {
    post(uri, body.to_string())
}

pub fn get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("a valid request")
}

/// The text of the script as the engine emits it (what every complete answer must be).
pub fn script_text() -> String {
    let tokenizer = tokenizer();
    let ids = tokenizer.encode(SCRIPT_TEXT, BosPolicy::Never).unwrap();
    tokenizer
        .decode(&ids, hearth_tokenizer::SkipSpecial::Yes)
        .unwrap()
}
